"""Shared pytest set-up for tests/ and benchmarks/.

Without CUDA the Triton kernels run through the Triton interpreter on CPU
tensors; ``TRITON_INTERPRET`` must be set before triton is first imported, so it
is set here, at collection start.
"""
import os
import signal

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _interrupted(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


# A run stopped by SIGTERM (a CI timeout, a plain `timeout`) ends as an interrupted session, as one
# stopped by SIGINT (gpu_check.sh's step limits) does: its summary is printed and pytest-benchmark
# still writes the JSON of what was measured.
signal.signal(signal.SIGTERM, _interrupted)


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)


@pytest.fixture
def device():
    """The device kernel tests run on: CUDA when present, else CPU through the Triton interpreter."""
    return torch.device("cuda" if HAS_CUDA else "cpu")
