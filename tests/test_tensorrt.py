"""The TensorRT backend: strongly-typed fp16 plans, where ``tensorrt`` imports and a GPU is present."""
import json
import shutil

import numpy as np
import pytest
import torch

trt = pytest.importorskip("tensorrt")

from engine_helpers import sharp_model  # noqa: E402
from segvit_rt import Runtime, engines  # noqa: E402
from segvit_rt.build import TOLERANCES, build_engine  # noqa: E402
from segvit_rt.data import normalize  # noqa: E402
from segvit_rt.engines import EngineError, load_engine, read_engine  # noqa: E402
from segvit_rt.evaluate import predict_image  # noqa: E402
from segvit_rt.inference import model_logits_fn  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.tensorrt]


@pytest.fixture(scope="module")
def model():
    return sharp_model("shrunk").cuda()


@pytest.fixture(scope="module")
def plan(tmp_path_factory, model):
    return build_engine(model, backend="tensorrt", precision="fp16", max_batch=4,
                        out=tmp_path_factory.mktemp("trt") / "fp16", log=lambda _: None)


def test_auto_picks_tensorrt():
    assert engines.auto_backend()[0] == "tensorrt"


def test_fp16_plan_matches_pytorch_for_any_batch(plan, model):
    meta = read_engine(plan)
    assert meta["artifact"] == "model.plan" and meta["versions"]["tensorrt"] == trt.__version__
    assert meta["compute_capability"] == list(torch.cuda.get_device_capability())
    assert not (plan / "typed_graph.onnx").exists()
    engine = load_engine(plan)
    for batch in (1, 3, 6):  # 6 > max_batch: two enqueues
        x = torch.randn(batch, 3, 128, 128, generator=torch.Generator().manual_seed(batch)).cuda()
        cls, masks = engine(x)
        torch.cuda.synchronize()
        with torch.no_grad():
            ref = model(x)
        assert cls.dtype == torch.float32 and masks.shape == ref["pred_masks"].shape
        assert (masks - ref["pred_masks"]).abs().max() <= TOLERANCES["fp16"].bound(ref["pred_masks"])
        assert (cls - ref["pred_logits"]).abs().max() <= TOLERANCES["fp16"].bound(ref["pred_logits"])


def test_runtime_on_a_plan(plan, model):
    img = np.random.default_rng(0).integers(0, 256, size=(150, 220, 3), dtype=np.uint8)
    labels = Runtime(plan).segment(img)
    x = normalize(img, model.cfg.mean, model.cfg.std)[None].cuda()
    with torch.no_grad():
        expected = predict_image(model_logits_fn(model), x, 128, 96)[0].cpu().numpy()
    assert labels.shape == (150, 220) and (labels == expected).mean() >= 0.99


def test_plans_from_another_tensorrt_or_gpu_are_refused(plan, tmp_path):
    copy = shutil.copytree(plan, tmp_path / "copy")
    meta = json.loads((copy / "engine.json").read_text())
    (copy / "engine.json").write_text(json.dumps({**meta, "versions": {**meta["versions"], "tensorrt": "8.6.1"}}))
    with pytest.raises(EngineError, match="built by TensorRT 8.6.1"):
        load_engine(copy)
    (copy / "engine.json").write_text(json.dumps({**meta, "compute_capability": [1, 0]}))
    with pytest.raises(EngineError, match="compute capability"):
        load_engine(copy)
    (copy / "engine.json").write_text(json.dumps({**meta, "gpu": "Other GPU"}))  # same capability, another model
    with pytest.warns(UserWarning, match="was built on a Other GPU and runs on a .*: TensorRT tunes a plan"):
        load_engine(copy)


@pytest.mark.parametrize("variant", ["full", "shrunk"])
def test_plan_with_the_atm_plugin_matches_pytorch(variant, tmp_path):
    """``kernels="triton"``: each ATM mask layer runs our Triton kernel as an AOT plugin in the plan."""
    model = sharp_model(variant).cuda()
    out = build_engine(model, backend="tensorrt", precision="fp16", kernels="triton", max_batch=4,
                       out=tmp_path / variant, log=lambda _: None)
    assert read_engine(out)["kernels"] == "triton"
    engine = load_engine(out)
    for batch in (1, 3):
        x = torch.randn(batch, 3, 128, 128, generator=torch.Generator().manual_seed(batch)).cuda()
        cls, masks = engine(x)
        torch.cuda.synchronize()
        with torch.no_grad():
            ref = model(x)
        assert (masks - ref["pred_masks"]).abs().max() <= TOLERANCES["fp16"].bound(ref["pred_masks"])
        assert (cls - ref["pred_logits"]).abs().max() <= TOLERANCES["fp16"].bound(ref["pred_logits"])
