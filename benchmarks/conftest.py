"""Every benchmark run's figures are kept: pytest-benchmark's JSON goes to ``benchmarks/out/benchmarks.json``
unless ``--benchmark-json`` names another file (``gpu_check.sh`` names one per step), so
``python benchmarks/summarize.py benchmarks/out/benchmarks.json`` prints a CPU run's table and goals.

The JSON is written to a temporary first and replaces the file only when the run timed something:
a collect-only run, one that selects no benchmark or one stopped before pytest-benchmark could
write keeps the last run's figures. After the results, a run lists the configs the kernels'
autotuners chose (on a GPU; ``gpu_check.sh`` keeps them in its log)."""
import json
import os
import warnings
from pathlib import Path

import pytest

OUT = Path(__file__).resolve().parent / "out"
KEPT = OUT / "benchmarks.json"
PENDING = OUT / ".benchmarks.json.pending"


def _times_benchmarks(config) -> bool:
    skip = ("collectonly", "benchmark_disable", "benchmark_skip")
    return (config.pluginmanager.hasplugin("benchmark") and not any(getattr(config.option, o, False) for o in skip)
            and not getattr(config.option, "numprocesses", None))  # pytest-benchmark times nothing under xdist


@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark's own pytest_configure reads the option
def pytest_configure(config):
    if getattr(config.option, "benchmark_json", None) is not None or not _times_benchmarks(config):
        return
    try:
        OUT.mkdir(exist_ok=True)
        config.option.benchmark_json = open(PENDING, "wb")  # pytest-benchmark writes and closes it
    except OSError as e:
        warnings.warn(f"benchmark figures will not be kept: cannot write {PENDING} ({e.strerror})", stacklevel=1)
        return
    config._segvit_pending_json = PENDING


def pytest_unconfigure(config):
    pending = getattr(config, "_segvit_pending_json", None)
    if pending is None:
        return
    config.option.benchmark_json.close()  # already closed when pytest-benchmark wrote
    try:
        timed = json.loads(pending.read_text()).get("benchmarks") if pending.stat().st_size else None
    except (OSError, ValueError):
        timed = None
    if timed:
        os.replace(pending, KEPT)
    else:
        pending.unlink(missing_ok=True)


def pytest_terminal_summary(terminalreporter):
    """The configs our kernels' autotuners chose in this run (only a GPU tunes: the interpreter has one)."""
    import sys

    listing = getattr(sys.modules.get("segvit_rt.kernels"), "tuned_configs", None)
    lines = listing() if listing is not None else []
    if lines:
        terminalreporter.section("tuned kernel configs")
        for line in lines:
            terminalreporter.write_line(line)
