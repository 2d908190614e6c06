"""Every benchmark run's figures are kept: pytest-benchmark's JSON goes to ``benchmarks/out/benchmarks.json``
unless ``--benchmark-json`` names another file (``gpu_check.sh`` names one per step), so
``python benchmarks/summarize.py benchmarks/out/benchmarks.json`` prints a CPU run's table and goals."""
from pathlib import Path

import pytest

OUT = Path(__file__).resolve().parent / "out"


@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark's own pytest_configure reads the option
def pytest_configure(config):
    if config.getoption("benchmark_json", default=None) is None and not config.getoption("benchmark_disable", False):
        OUT.mkdir(exist_ok=True)
        config.option.benchmark_json = open(OUT / "benchmarks.json", "wb")  # pytest-benchmark writes and closes it
