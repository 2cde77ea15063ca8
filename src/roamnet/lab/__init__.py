"""The namespace lab: plan (pure), engine, hypervisor, moves, inspect, state directory, daemon."""
