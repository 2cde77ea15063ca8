"""`roamnet run` and `roamnet demo`: a scenario's lab, streams and steps, then its report."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from roamnet.cli.common import FORMAT, _fail, _need_root, err, out


def _run(path: Path, fmt: str, plot_path: Path | None) -> None:
    from roamnet.experiments.plot import plot
    from roamnet.experiments.report import render_table
    from roamnet.experiments.runner import run_scenario
    from roamnet.intent.model import IntentError
    from roamnet.intent.scenario import load_scenario
    from roamnet.lab.daemon import DaemonError
    from roamnet.lab.errors import LabError

    _need_root()
    try:
        scn = load_scenario(path)
    except IntentError as exc:
        _fail(exc)
    try:
        with err.status("starting") as status:
            report, t0 = run_scenario(scn, progress=lambda m: status.update(m))
    except (LabError, DaemonError) as exc:
        _fail(exc)
    if plot_path:
        plot(report, plot_path, t0)
    if fmt == "json":
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        render_table(report, out)
        if plot_path:
            out.print(f"plot: {plot_path}")
    unmet = report.unmet()
    if unmet:
        err.print("expectation not met: " + ", ".join(f"{s.name} (expected {s.expect})" for s in unmet))
        sys.exit(3)


@click.command()
@click.argument("scenario", type=click.Path(dir_okay=False, path_type=Path))
@FORMAT
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a PNG: every migration zoomed in per stream (arrivals, lost packets, the dark "
                   "window, the phases), under an overview of the run.")
def run(scenario: Path, fmt: str, plot_path: Path | None) -> None:
    """Build the scenario's lab, run its streams and steps, tear down, report.

    Exit 3 if a stream did not do what the scenario expects of it (`expect:`): a `delivered` stream
    (the default) that did not survive (TCP: the connection broke; UDP: nothing sent after the last
    migration arrived), or a `denied` stream that received anything. Exit 1 on a bad scenario or a
    lab error.
    """
    _run(scenario, fmt, plot_path)


@click.command()
@FORMAT
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), help="PNG plot path.")
def demo(fmt: str, plot_path: Path | None) -> None:
    """Two data centers; vm1 moves inside dc1, then to dc2, under UDP and TCP streams.

    Exit 3 if a stream did not survive (as `run`)."""
    from roamnet.intent.scenario import packaged_example

    _run(packaged_example("demo.yaml"), fmt, plot_path)

