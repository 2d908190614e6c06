"""``python -m segvit_rt.evaluate`` against metrics computed here from the model's own forward pass."""
import json
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

import segvit_rt
from engine_helpers import sharp_model, sharpen
from segvit_rt import evaluate
from segvit_rt.data import normalize
from segvit_rt.data.synth import generate
from segvit_rt.evaluate import evaluate_model, predict_image
from segvit_rt.inference import model_logits_fn
from segvit_rt.weights import save_weights

K = 3


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    ade = generate(root / "data", classes=K, train=1, val=3, size=64, seed=2, progress=False)
    torch.manual_seed(0)
    model = sharpen(segvit_rt.create_model("tiny", num_classes=K, crop_size=64, slide_stride=48).eval())
    names = (ade / "classes.txt").read_text().split()
    weights = save_weights(root / "w.safetensors", model, class_names=names)
    return root, ade, model, weights


def expected_miou(model, ade) -> float:
    """mIoU by hand: the 64-pixel images equal the 64-pixel crop, so one forward pass each, no resizing.
    (Resizing and windows are checked in test_inference.py.) The model must predict several classes,
    or the mIoU would not depend on where it puts them."""
    inter, union, predicted = np.zeros(K), np.zeros(K), set()
    for img_path in sorted((ade / "images" / "validation").glob("*.jpg")):
        image = np.asarray(Image.open(img_path).convert("RGB"))
        ann = np.asarray(Image.open(ade / "annotations" / "validation" / f"{img_path.stem}.png")).astype(int)
        label = np.where(ann == 0, 255, ann - 1)
        x = normalize(image, model.cfg.mean, model.cfg.std)[None]
        with torch.no_grad():
            pred = model.semantic_logits(x).argmax(1)[0].numpy()
        predicted |= set(np.unique(pred).tolist())
        valid = label != 255
        for c in range(K):
            p, t = (pred == c) & valid, (label == c) & valid
            inter[c] += (p & t).sum()
            union[c] += (p | t).sum()
    assert len(predicted) >= 2, f"the test model predicts only {predicted}"
    return float(np.mean(inter[union > 0] / union[union > 0]))


@pytest.mark.parametrize("mode", ["slide", "whole"])
def test_cli_metrics_match_a_hand_computation(setup, mode, capsys):
    root, ade, model, weights = setup
    out_json = root / f"metrics_{mode}.json"
    chart = root / f"iou_{mode}.png"
    evaluate.main(["--weights", str(weights), "--data", str(ade.parent), "--mode", mode, "--json", str(out_json),
                   "--chart", str(chart), "--quiet"])
    printed = capsys.readouterr().out
    metrics = json.loads(out_json.read_text())
    assert metrics["mIoU"] == pytest.approx(expected_miou(model, ade), abs=1e-9)
    assert metrics["images"] == 3 and metrics["mode"] == mode and metrics["crop"] == 64
    assert metrics["stride"] == (48 if mode == "slide" else None)  # whole mode has no windows
    assert len(metrics["IoU"]) == K and metrics["class_names"] == (ade / "classes.txt").read_text().split()
    assert f"mIoU {100 * metrics['mIoU']:6.2f}" in printed
    assert all(name in printed for name in metrics["class_names"])
    assert printed.endswith(f"wrote {out_json}\nwrote {chart}\n")
    with Image.open(chart) as png:
        assert png.format == "PNG" and png.width >= 500 and png.height >= 100


def test_split_none_evaluates_a_generic_folder_without_split_folders(setup, tmp_path, capsys):
    """The same validation images as a flat images/ + masks/ folder (0..K-1, 255 ignore)."""
    root, ade, model, weights = setup
    flat = tmp_path / "flat"
    (flat / "images").mkdir(parents=True)
    (flat / "masks").mkdir()
    (flat / "classes.txt").write_text((ade / "classes.txt").read_text())
    for img_path in sorted((ade / "images" / "validation").glob("*.jpg")):
        (flat / "images" / img_path.name).write_bytes(img_path.read_bytes())
        ann = np.asarray(Image.open(ade / "annotations" / "validation" / f"{img_path.stem}.png")).astype(int)
        Image.fromarray(np.where(ann == 0, 255, ann - 1).astype(np.uint8)).save(flat / "masks" / f"{img_path.stem}.png")
    with pytest.raises(SystemExit):
        evaluate.main(["--weights", str(weights), "--data", str(flat), "--quiet"])
    assert "split 'validation' not found" in capsys.readouterr().err
    metrics = evaluate.main(["--weights", str(weights), "--data", str(flat), "--split", "none", "--quiet"])
    assert metrics["images"] == 3 and metrics["mIoU"] == pytest.approx(expected_miou(model, ade), abs=1e-9)
    split = tmp_path / "split"  # the generic layout with split folders, read with --split none
    for sub in ("images", "masks"):
        (split / sub).mkdir(parents=True)
        (flat / sub).rename(split / sub / "validation")
    (split / "classes.txt").write_text((ade / "classes.txt").read_text())
    with pytest.raises(SystemExit):
        evaluate.main(["--weights", str(weights), "--data", str(split), "--split", "none", "--quiet"])
    assert "it holds folders (validation): name one as the split (evaluate --split NAME)" in capsys.readouterr().err


def test_outputs_that_would_overwrite_an_input_or_each_other_and_zero_windows_are_refused(setup, capsys):
    root, ade, model, weights = setup
    before = weights.read_bytes()
    mask = ade / "annotations" / "validation" / sorted(os.listdir(ade / "annotations" / "validation"))[0]
    mask_bytes, classes = mask.read_bytes(), (ade / "classes.txt").read_text()
    cases = [(["--json", str(weights)], "--json .* is the --weights file"),
             (["--chart", str(weights)], "--chart .* is the --weights file"),
             (["--chart", str(mask)], "--chart .* is inside .*annotations/validation, a folder of the data set's samples"),
             (["--json", str(ade / "images" / "validation" / "m.json")], "--json .* is inside .*images/validation"),
             (["--chart", str(root / "iou.jpg")], r"--chart .*iou.jpg: the chart is a PNG image; name it \*.png"),
             (["--json", str(ade / "classes.txt")], r"--json .*classes.txt is a file the data set reads: it would "
                                                    "be replaced"),
             (["--json", str(root / "x.png"), "--chart", str(root / "x.png")], "name the same file"),
             (["--stride", "0"], "--stride must be >= 1, got 0"),
             (["--crop", "0"], "--crop must be >= 1, got 0")]
    for extra, message in cases:
        with pytest.raises(SystemExit) as exc:
            evaluate.main(["--weights", str(weights), "--data", str(ade.parent), "--quiet", *extra])
        assert exc.value.code == 2
        assert re.search(message, capsys.readouterr().err)
    again = ade / "metrics.json"  # an output of our own inside the data set's folder: a rerun replaces it
    for _ in range(2):
        evaluate.main(["--weights", str(weights), "--data", str(ade.parent), "--quiet", "--json", str(again)])
    assert json.loads(again.read_text())["images"] == 3
    assert weights.read_bytes() == before and mask.read_bytes() == mask_bytes
    assert (ade / "classes.txt").read_text() == classes
    assert not (root / "iou.jpg").exists() and not (ade / "images" / "validation" / "m.json").exists()


def test_predictions_come_back_at_the_original_size():
    torch.manual_seed(0)
    model = segvit_rt.create_model("tiny", variant="shrunk", num_classes=K, crop_size=64, slide_stride=48).eval()
    image = torch.randn(1, 3, 70, 150)  # not a multiple of 32, not square: resized, padded, slid
    with torch.no_grad():
        for mode in ("slide", "whole"):
            labels = predict_image(model_logits_fn(model), image, crop=64, stride=48, mode=mode)
            assert labels.shape == (1, 70, 150) and labels.dtype == torch.int64
            assert 0 <= labels.min() and labels.max() < K


def test_evaluation_resizes_to_the_presets_test_scale(setup):
    """A PASCAL-Context-style rule (scale 96x96, min size 80: the short side to 96) turns the 64-pixel
    images into 96x96, which takes 2x2 windows of 64 each instead of one."""
    _, ade, model, _ = setup
    from segvit_rt.data import EvalTransform, open_dataset

    ds = open_dataset(ade, "validation", transform=EvalTransform(model.cfg.mean, model.cfg.std))
    scaled = segvit_rt.create_model("tiny", num_classes=K, crop_size=64, slide_stride=48, image_scale=(96, 96),
                                    test_min_size=80).eval()
    scaled.load_state_dict(model.state_dict())
    windows = []
    scaled.register_forward_pre_hook(lambda _, args: windows.append(args[0].shape[0]))
    evaluate_model(scaled, ds, "slide")
    assert sum(windows) == 3 * 4


def test_a_smaller_crop_scales_the_stride_with_it(setup):
    """--crop 32 on weights trained at crop 64 / stride 48 slides every 24 pixels (a stride of 48 would
    be larger than the window); an explicit --stride is kept."""
    _, ade, _, weights = setup
    metrics = evaluate.main(["--weights", str(weights), "--data", str(ade.parent), "--crop", "32", "--quiet"])
    assert (metrics["crop"], metrics["stride"]) == (32, 24)
    metrics = evaluate.main(["--weights", str(weights), "--data", str(ade.parent), "--crop", "32", "--stride", "30",
                             "--quiet"])
    assert (metrics["crop"], metrics["stride"]) == (32, 30)
    assert segvit_rt.get_config("tiny").stride_at(128) == 96 and segvit_rt.get_config("tiny").stride_at(64) == 48


def test_sharded_evaluation_sums_to_the_whole(setup):
    """Each replica evaluates every world_size-th image; without a process group the shards' confusion
    counts stay separate, so their pixel-weighted aAcc must recombine to the whole split's."""
    _, ade, model, _ = setup
    from segvit_rt.data import EvalTransform, open_dataset

    ds = open_dataset(ade, "validation", transform=EvalTransform(model.cfg.mean, model.cfg.std))
    whole = evaluate_model(model, ds, "whole")
    shards = [evaluate_model(model, ds, "whole", rank=r, world_size=2) for r in range(2)]
    pixels = [sum((ds[i][1] != 255).sum().item() for i in range(r, len(ds), 2)) for r in range(2)]
    combined = sum(s["aAcc"] * n for s, n in zip(shards, pixels)) / sum(pixels)
    assert combined == pytest.approx(whole["aAcc"], rel=1e-12)


def test_errors_name_the_problem(setup, tmp_path, capsys):
    root, ade, _, weights = setup

    def fails(args, needle):
        with pytest.raises(SystemExit) as exc:
            evaluate.main(["--quiet", *args])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and needle in err, err

    fails(["--weights", str(tmp_path / "none.safetensors"), "--data", str(ade)], "weights file not found")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 64)
    fails(["--weights", str(tmp_path / "bad.safetensors"), "--data", str(ade)], "not a readable safetensors")
    fails(["--weights", str(weights), "--data", str(tmp_path)], "no dataset at")
    other = generate(tmp_path / "five", classes=5, train=1, val=1, size=32, seed=0, progress=False)
    fails(["--weights", str(weights), "--data", str(other)], "the dataset has 5 classes, the model 3")
    fails(["--weights", str(weights), "--data", str(ade), "--stride", "100"],
          "--stride 100 is larger than the window (--crop 64)")
    fails(["--weights", str(weights), "--data", str(ade), "--crop", "32", "--stride", "48"],
          "--stride 48 is larger than the window (--crop 32)")
    fails(["--weights", str(weights), "--data", str(ade), "--crop", "50"], "--crop 50 must be a multiple of 16")
    fails(["--weights", str(weights), "--data", str(ade), "--split", "none"],
          "holds the ADE20K layout: choose split 'training' or 'validation'")
    fails(["--weights", str(weights), "--data", str(ade), "--split", "bogus"], "split must be one of")
    engine = tmp_path / "engine"
    engine.mkdir()
    (engine / "engine.json").write_text(json.dumps({"weights": {"path": "/runs/w.safetensors"}}))
    (engine / "model.onnx").write_bytes(b"")
    for given in (engine, engine / "engine.json", engine / "model.onnx"):
        fails(["--weights", str(given), "--data", str(ade)], f"--weights {given} is an engine: evaluate it with "
              f"--engine {engine}, or --weights /runs/w.safetensors, the file it was built from")


def test_multi_scale_and_flip_testing():
    model = sharp_model("full")  # crop 128, stride 96; label maps with boundaries
    logits_fn = model_logits_fn(model)
    image = torch.randn(1, 3, 128, 200, generator=torch.Generator().manual_seed(1))  # at the test scale: no resize
    with torch.no_grad():
        single = predict_image(logits_fn, image, 128, 96)
        assert len(single.unique()) >= 2
        one_view = predict_image(logits_fn, image, 128, 96, ratios=(1.0,), flip=False)
        assert (one_view == single).float().mean() >= 0.999  # softmax keeps each pixel's order
        # the mirror view is mirrored back: the mirrored image's result is the mirrored result
        both = predict_image(logits_fn, image, 128, 96, ratios=(1.0,), flip=True)
        assert not torch.equal(both, both.flip(-1))
        assert torch.equal(predict_image(logits_fn, image.flip(-1), 128, 96, ratios=(1.0,), flip=True),
                           both.flip(-1))
        windows = []
        handle = model.register_forward_pre_hook(lambda _, args: windows.append(args[0].shape[0]))
        labels = predict_image(logits_fn, image, 128, 96, ratios=(0.5, 1.0), flip=True)
        handle.remove()
    assert labels.shape == (1, 128, 200)
    assert sum(windows) == (1 + 2) * 2  # 64x100 at half scale: one window; 128x200: two; each also mirrored


def test_cli_tta(setup, capsys, monkeypatch):
    root, ade, _, weights = setup
    views = []
    original = evaluate.predict_image
    monkeypatch.setattr(evaluate, "predict_image", lambda *a, **k: (views.append(k), original(*a, **k))[1])
    metrics = evaluate.main(["--weights", str(weights), "--data", str(ade.parent), "--tta", "--quiet"])
    assert metrics["tta"] is True and 0.0 <= metrics["mIoU"] <= 1.0
    assert "multi-scale + flip" in capsys.readouterr().out
    assert len(views) == 3 and all(k["ratios"] == evaluate.MS_RATIOS and k["flip"] for k in views)


def test_ratios_of_one_size_run_once_and_count_as_many():
    model = sharp_model("full")
    image = torch.randn(1, 3, 96, 150, generator=torch.Generator().manual_seed(2))
    windows = []
    handle = model.register_forward_pre_hook(lambda _, args: windows.append(args[0].shape[0]))
    with torch.no_grad():  # min_size 128: ratios 0.5 and 1.0 both give the short side 128
        labels = predict_image(model_logits_fn(model), image, 128, 96, scale=(512, 128), min_size=128,
                               ratios=(0.5, 1.0), flip=False)
    handle.remove()
    assert sum(windows) == 2  # one 128x200 view: two windows
    with torch.no_grad():
        once = predict_image(model_logits_fn(model), image, 128, 96, scale=(512, 128), min_size=128,
                             ratios=(1.0,), flip=False)
    assert torch.equal(labels, once)


def test_a_split_without_labelled_pixels_gives_undefined_metrics_not_a_crash(setup):
    _, _, model, _ = setup

    class AllIgnore:
        num_classes = K

        def __len__(self):
            return 2

        def __getitem__(self, i):
            return torch.zeros(3, 64, 64), torch.full((64, 64), 255, dtype=torch.int64)

    metrics = evaluate_model(model, AllIgnore(), "whole")
    assert metrics["chance"] is None and np.isnan(metrics["mIoU"]) and np.isnan(metrics["aAcc"])
    assert "no pixel of these images is labelled" in evaluate.format_table(metrics, ["a", "b", "c"])


@pytest.fixture(scope="module")
def engine(setup):
    """An fp32 ONNX engine of the setup model (its logits agree with PyTorch to ~1e-6)."""
    from segvit_rt.build import build_engine

    root, _, model, weights = setup
    return build_engine(model, backend="onnx", precision="fp32", max_batch=2, out=root / "engine", weights=weights,
                        log=lambda _: None)


@pytest.mark.parametrize("mode", ["slide", "whole"])
def test_an_engine_is_evaluated_through_the_runtime(setup, engine, mode, capsys, monkeypatch):
    root, ade, model, _ = setup
    segmented = []
    original = evaluate.Runtime.segment
    monkeypatch.setattr(evaluate.Runtime, "segment", lambda self, img: (segmented.append(img.shape), original(self, img))[1])
    out_json = root / f"engine_{mode}.json"
    metrics = evaluate.main(["--engine", str(engine), "--data", str(ade.parent), "--mode", mode, "--json", str(out_json),
                             "--quiet"])
    # 3 images of 64x64, rounding-level logit differences: a flipped near-tie pixel moves mIoU ~1e-4
    assert metrics["mIoU"] == pytest.approx(expected_miou(model, ade), abs=2e-3)
    assert segmented == [(64, 64, 3)] * 3  # the images as stored (uint8 RGB), each through Runtime.segment
    saved = json.loads(out_json.read_text())
    assert (saved["engine"], saved["backend"], saved["precision"], saved["mode"]) == (str(engine), "onnx", "fp32", mode)
    assert "weights" not in saved and saved["crop"] == 64 and saved["stride"] == (48 if mode == "slide" else None)
    printed = capsys.readouterr().out
    windows = "crop 64, stride 48" if mode == "slide" else "crop 64"  # whole mode has no stride to tell
    assert f"mIoU {100 * metrics['mIoU']:6.2f}" in printed and f"{mode}, {windows}, onnx fp32 engine)" in printed
    stride = evaluate.main(["--engine", str(engine), "--data", str(ade.parent), "--stride", "32", "--quiet"])
    assert stride["stride"] == 32


def test_a_stride_in_whole_mode_is_refused(setup, capsys):
    root, ade, _, weights = setup
    with pytest.raises(SystemExit) as exc:
        evaluate.main(["--weights", str(weights), "--data", str(ade.parent), "--mode", "whole", "--stride", "7"])
    assert exc.value.code == 2 and "--stride is the slide mode's window stride: --mode whole has no windows" in (
        capsys.readouterr().err)


def test_engine_evaluation_refuses_what_an_engine_cannot_do(setup, engine, tmp_path, capsys):
    root, ade, _, weights = setup

    def fails(args, needle):
        with pytest.raises(SystemExit) as exc:
            evaluate.main(["--quiet", "--data", str(ade), *args])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and needle in err, err

    for flag, why in ((["--crop", "32"], "its window is its input size"),
                      (["--kernels", "reference"], "its ops were compiled in by the build"),
                      (["--tta"], "the Runtime segments one view")):
        fails(["--engine", str(engine), *flag], f"{flag[0]} is for --weights, not an engine ({why}")
    fails(["--engine", str(engine), "--stride", "65"], "--stride 65 is larger than the engine's window (64)")
    fails(["--engine", str(weights)], f"--engine {weights} is a weights file: evaluate it with --weights")
    fails(["--engine", str(engine / "engine.json"), "--json", str(engine / "m.json")],
          f"--json {engine / 'm.json'} is inside the --engine folder {engine}")
    fails(["--weights", str(engine)], f"evaluate it with --engine {engine}, or --weights {weights}")
    other = generate(tmp_path / "five", classes=5, train=1, val=1, size=32, seed=0, progress=False)
    with pytest.raises(SystemExit):
        evaluate.main(["--quiet", "--engine", str(engine), "--data", str(other)])
    assert "the dataset has 5 classes, the engine 3" in capsys.readouterr().err
    assert sorted(p.name for p in engine.iterdir()) == ["engine.json", "model.onnx"]


def test_class_names_in_another_order_are_told_before_the_work(setup, tmp_path, capsys, monkeypatch):
    from segvit_rt.weights import load_weights

    _, ade, model, weights = setup
    names = (ade / "classes.txt").read_text().split()
    told_before = []
    original = evaluate.evaluate_model
    monkeypatch.setattr(evaluate, "evaluate_model",
                        lambda *a, **k: (told_before.append(capsys.readouterr().err), original(*a, **k))[1])
    for order, told in ((names[::-1], "lists the weights' class names in another order (first difference at "
                                      "index 0): its label numbers mean other classes than the model's"),
                        (["x", "y", "z"], f"the dataset's class names differ from the weights' ({names} ... vs ['x', 'y', 'z']")):
        renamed = save_weights(tmp_path / "w.safetensors", load_weights(weights), class_names=order)
        evaluate.main(["--weights", str(renamed), "--data", str(ade.parent), "--quiet"])
        assert told in told_before[-1]
