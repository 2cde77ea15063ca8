"""Experiments on a lab: traffic endpoints, the scenario runner, loss analysis, WAN path observation,
reports and plots."""
