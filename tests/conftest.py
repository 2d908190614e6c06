"""Fixtures shared by the engine and runtime tests (built once per session: builds copy the model,
and tests that change an engine work on a copy of it)."""
import pytest

from engine_helpers import sharp_model
from segvit_rt.build import build_engine


@pytest.fixture(scope="session")
def shrunk():
    return sharp_model("shrunk")


@pytest.fixture(scope="session")
def onnx_engine(tmp_path_factory, shrunk):
    """A dynamic-batch fp32 ONNX engine of the shrunk model, batches of at most 4."""
    return build_engine(shrunk, backend="onnx", precision="fp32", max_batch=4,
                        out=tmp_path_factory.mktemp("eng") / "onnx_fp32", log=lambda _: None)
