"""The README's main job (``python -m segvit_rt.demo``) end to end, on a few held-out images."""
import json

import numpy as np
import pytest
from PIL import Image

from engine_helpers import save_test_weights, sharp_model
from segvit_rt import demo
from segvit_rt.data import EvalTransform, open_dataset
from segvit_rt.evaluate import evaluate_model
from segvit_rt.weights import WeightsError

SYNTH = dict(classes=5, train=2, val=3, size=160, seed=0)


def test_demo_reports_the_same_miou_as_the_pytorch_evaluation(tmp_path, capsys):
    model = sharp_model("shrunk")
    weights = save_test_weights(tmp_path / "w.safetensors", model, synth=SYNTH)
    out = tmp_path / "demo"
    results = demo.run_demo(out, "shrunk", weights=weights, progress=False, device="cpu")
    printed = capsys.readouterr().out
    assert "images/s through the onnx fp32 engine on cpu" in printed and "mIoU" in printed
    assert "undefined" not in printed and "chance: constant mIoU" in printed

    data = out / "data" / "ADEChallengeData2016"
    dataset = open_dataset(data, "validation", transform=EvalTransform(model.cfg.mean, model.cfg.std))
    assert len(dataset) == SYNTH["val"]
    expected = evaluate_model(model, dataset, mode="slide")
    assert results["images"] == SYNTH["val"] and results["images_per_s"] > 0
    assert results["mIoU"] == pytest.approx(expected["mIoU"], abs=2e-3)
    assert results["aAcc"] == pytest.approx(expected["aAcc"], abs=2e-3)
    assert json.loads((out / "results.json").read_text())["mIoU"] == pytest.approx(results["mIoU"])

    overlays = sorted((out / "overlays").iterdir())
    assert [p.name for p in overlays] == [f"synth_validation_{i:06d}_overlay.png" for i in range(SYNTH["val"])]
    assert Image.open(overlays[0]).size == (SYNTH["size"], SYNTH["size"])
    grid = np.asarray(Image.open(out / "grid.png"))
    assert grid.shape[0] > 2 * SYNTH["size"] and grid.shape[1] > 3 * SYNTH["size"]  # 3 rows x 3 panels

    # into the same folder
    again = demo.run_demo(out, "shrunk", weights=weights, max_images=1, progress=False, device="cpu")
    assert again["images"] == 1
    assert [p.name for p in (out / "overlays").iterdir()] == ["synth_validation_000000_overlay.png"]


def test_weights_without_a_synthetic_record_are_refused(tmp_path):
    weights = save_test_weights(tmp_path / "w.safetensors", sharp_model("shrunk"))
    with pytest.raises(WeightsError, match="records no synthetic dataset"):
        demo.run_demo(tmp_path / "demo", "shrunk", weights=weights, progress=False, device="cpu")


def test_missing_bundled_weights_are_trained_first(tmp_path, monkeypatch):
    calls = []

    class Trained(Exception):
        pass

    def fake_train(variant, work):
        calls.append((variant, work))
        raise Trained

    monkeypatch.setattr(demo, "default_weights", lambda variant: tmp_path / "absent.safetensors")
    monkeypatch.setattr(demo, "train_demo_weights", fake_train)
    with pytest.raises(Trained):
        demo.run_demo(tmp_path / "demo", "shrunk", progress=False, device="cpu")
    assert calls == [("shrunk", tmp_path / "demo" / "train")]
    with pytest.raises(WeightsError, match="not found"):
        demo.run_demo(tmp_path / "demo", "shrunk", weights=tmp_path / "typo.safetensors", progress=False,
                      device="cpu")
