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


@pytest.mark.parametrize("plant, message", [
    ("data/ADEChallengeData2016/images/real_photo.jpg", "is not synthetic data the demo wrote"),
    ("overlays/my_notes.txt", "holds what the demo did not write (my_notes.txt)"),
    ("engine/notes.txt", "holding other things than an engine"),
    ("overlays", "overlays is a file, where the demo writes a folder"),
    ("grid.png/notes.txt", "grid.png is a folder, where the demo writes a file"),
    ("results.json/notes.txt", "results.json is a folder, where the demo writes a file"),
])
def test_the_demo_never_replaces_folders_it_did_not_write(tmp_path, capsys, plant, message):
    """It replaces data/ADEChallengeData2016, overlays/ and engine/ whole: someone else's files there
    (a real ADE20K tree, notes) make it stop before anything is written."""
    out = tmp_path / "demo"
    planted = out / plant
    planted.parent.mkdir(parents=True)
    planted.write_text("precious")
    (out / "readme.txt").write_text("left alone")
    with pytest.raises(SystemExit) as exc:
        demo.main(["--out", str(out), "--quiet", "--device", "cpu"])
    assert exc.value.code == 2 and message in capsys.readouterr().err
    assert planted.read_text() == "precious" and (out / "readme.txt").read_text() == "left alone"
    assert sorted(p.name for p in out.iterdir()) == sorted({plant.split("/")[0], "readme.txt"})


def test_the_demo_on_cuda_without_a_gpu_and_when_stopped(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(demo.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exc:
        demo.main(["--out", str(tmp_path / "a"), "--quiet", "--device", "cuda"])
    assert exc.value.code == 2 and "torch sees no CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "build_engine", stopped)
    with pytest.raises(SystemExit) as exc:
        demo.main(["--out", str(tmp_path / "b"), "--quiet", "--device", "cpu"])
    assert exc.value.code == 130 and "interrupted: every output the demo wrote is whole or absent" in \
        capsys.readouterr().err
