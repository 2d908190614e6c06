"""``segvit_rt.Runtime`` and ``python -m segvit_rt.segment`` against the PyTorch model they were built from."""
import os
import pickle
import shutil
import subprocess
import sys
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import segvit_rt
from segvit_rt import segment
from segvit_rt.data import normalize
from segvit_rt.engines import EngineError
from segvit_rt.evaluate import predict_image
from segvit_rt.inference import model_logits_fn
from segvit_rt.ops.reference import segment_postprocess


@pytest.fixture(scope="module")
def runtime(onnx_engine):
    return segvit_rt.Runtime(onnx_engine)


def image(h, w, seed=0):
    """Blocky colour regions plus noise: a texture the sharpened model splits into several classes."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    big = np.asarray(Image.fromarray(cells).resize((w, h), Image.NEAREST)).astype(np.int16)
    return np.clip(big + rng.integers(-20, 21, size=big.shape), 0, 255).astype(np.uint8)


def pytorch_labels(model, img, mode="slide"):
    x = normalize(img, model.cfg.mean, model.cfg.std)[None]
    with torch.no_grad():
        return predict_image(model_logits_fn(model), x, model.cfg.crop_size, model.cfg.slide_stride, mode)[0].numpy()


@pytest.mark.parametrize("hw", [(160, 160), (96, 300), (50, 70), (257, 131)])
def test_slide_mode_matches_the_pytorch_evaluation(runtime, shrunk, hw):
    img = image(*hw, seed=hw[0])
    labels = runtime.segment(img)
    assert labels.shape == hw and labels.dtype == np.uint8
    expected = pytorch_labels(shrunk, img)
    assert len(np.unique(expected)) >= 2, "the comparison needs a label map with boundaries"
    assert (labels == expected).mean() >= 0.999


def test_slide_mode_follows_the_presets_test_scale(onnx_engine, shrunk):
    runtime = segvit_rt.Runtime(onnx_engine)
    runtime.cfg = replace(runtime.cfg, image_scale=(150, 150), test_min_size=120)  # PASCAL-Context's kind of rule
    engine, windows = runtime.engine, []
    runtime.engine = lambda x: (windows.append(x.shape[0]), engine(x))[1]
    img = image(100, 120, seed=5)
    labels = runtime.segment(img)
    assert sum(windows) == 4  # resized to 150x180: 2x2 windows of 128 (the default scale, 128x154, gives 2)
    x = normalize(img, shrunk.cfg.mean, shrunk.cfg.std)[None]
    with torch.no_grad():
        expected = predict_image(model_logits_fn(shrunk), x, 128, 96, "slide", (150, 150), 120)[0].numpy()
    assert labels.shape == (100, 120) and (labels == expected).mean() >= 0.999


def test_whole_mode_resizes_to_the_engine_input(onnx_engine, shrunk):
    runtime = segvit_rt.Runtime(onnx_engine, mode="whole")
    img = image(90, 200, seed=3)
    labels = runtime.segment(img)
    x = normalize(img, shrunk.cfg.mean, shrunk.cfg.std)[None]
    x = F.interpolate(x, size=(128, 128), mode="bilinear", align_corners=False)
    with torch.no_grad():
        out = shrunk(x)
    expected = segment_postprocess(out["pred_logits"], out["pred_masks"], (90, 200))[0].numpy()
    assert labels.shape == (90, 200) and len(np.unique(expected)) >= 2
    assert (labels == expected).mean() >= 0.999


def test_every_input_kind_gives_the_same_labels(runtime, tmp_path):
    img = image(120, 140, seed=7)
    path = tmp_path / "img.png"
    Image.fromarray(img).save(path)
    rgba = np.concatenate([img, np.full((120, 140, 1), 255, np.uint8)], axis=2)
    chw = torch.from_numpy(img).permute(2, 0, 1)
    reference = runtime.segment(img)
    for src in (path, str(path), Image.fromarray(img), rgba, chw, chw.float() / 255):
        np.testing.assert_array_equal(runtime.segment(src), reference)
    sideways = tmp_path / "phone.png"  # stored turned, with the EXIF tag that turns it back for display
    exif = Image.Exif()
    exif[0x0112] = 8
    Image.fromarray(np.rot90(img, -1)).save(sideways, exif=exif)
    np.testing.assert_array_equal(runtime.segment(sideways), reference)
    assert runtime.overlay(sideways, reference).size == (140, 120)


def test_grayscale_input(runtime):
    gray = image(100, 100, seed=2)[..., 0]
    np.testing.assert_array_equal(runtime.segment(gray), runtime.segment(np.repeat(gray[..., None], 3, axis=2)))


@pytest.mark.parametrize("mode", ["slide", "whole"])
def test_single_pixels_and_thin_strips(onnx_engine, mode):
    runtime = segvit_rt.Runtime(onnx_engine, mode=mode)
    for hw in [(1, 1), (1, 700), (700, 1), (2, 3)]:
        labels = runtime.segment(image(*hw, seed=4))
        assert labels.shape == hw and labels.max() < runtime.num_classes


@pytest.mark.parametrize("file", ["engine.json", "model.onnx"])
def test_a_file_of_the_engine_loads_its_folder(runtime, onnx_engine, file):
    img = image(70, 90)
    given = segvit_rt.Runtime(onnx_engine / file)
    assert given.engine.path == onnx_engine
    assert np.array_equal(given.segment(img), runtime.segment(img))


def test_runtime_is_listed_in_the_package(runtime):
    assert "Runtime" in dir(segvit_rt) and segvit_rt.Runtime is type(runtime)


def test_a_bare_import_reaches_every_submodule_the_readme_names():
    """As the README writes them, in a fresh interpreter (here they are imported already)."""
    script = ("import segvit_rt, sys, pydoc\n"
              "assert {'weights', 'flops', 'engines', 'ops'} <= set(dir(segvit_rt))\n"
              "pydoc.render_doc(segvit_rt)\n"  # help(): must not import triton (see segvit_rt.__dir__)
              "assert 'triton' not in sys.modules\n"
              "print(segvit_rt.weights.load_weights.__name__, segvit_rt.flops.gflops.__name__, "
              "segvit_rt.kernels.atm_attention.__name__, segvit_rt.engines.load_engine.__name__)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(segvit_rt.__file__).parents[1])})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["load_weights", "gflops", "atm_attention", "load_engine"]


def test_segment_batch_equals_one_by_one(runtime):
    imgs = [image(130, 130, seed=1), image(64, 200, seed=2), image(130, 130, seed=3)]
    batch = runtime.segment_batch(imgs)
    assert [b.shape for b in batch] == [(130, 130), (64, 200), (130, 130)]
    for got, img in zip(batch, imgs):
        np.testing.assert_array_equal(got, runtime.segment(img))
    stacked = np.stack([imgs[0], imgs[2]])  # a 4-D NxHxWx3 batch, and its NxCxHxW tensor
    for batch4d in (stacked, torch.from_numpy(stacked).permute(0, 3, 1, 2)):
        for got, img in zip(runtime.segment_batch(batch4d), (imgs[0], imgs[2]), strict=True):
            np.testing.assert_array_equal(got, runtime.segment(img))


def test_segment_batch_reads_and_runs_a_group_at_a_time(runtime, monkeypatch):
    """A generator of more images than the engine's batch (4): read lazily, run in groups (also cut by
    BATCH_PIXELS), same labels; a bad item is named by its position."""
    from segvit_rt import runtime as runtime_module

    imgs = [image(70 + 10 * (i % 2), 90, seed=20 + i) for i in range(7)]
    read, groups = [], []
    real_segment = runtime._segment
    monkeypatch.setattr(runtime, "_segment", lambda rgbs: (groups.append(len(rgbs)), real_segment(rgbs))[1])

    def lazily():
        for i, img in enumerate(imgs):
            read.append(i)
            assert len(read) - sum(groups) <= 4, "read ahead of the group being run"
            yield img

    labels = runtime.segment_batch(lazily())
    assert groups == [4, 3]
    monkeypatch.setattr(runtime_module, "BATCH_PIXELS", 2 * 70 * 90)  # two images reach it
    assert runtime.segment_batch(imgs[:5]) and groups[2:] == [2, 2, 1]
    monkeypatch.undo()
    for got, img in zip(labels, imgs, strict=True):
        np.testing.assert_array_equal(got, runtime.segment(img))
    with pytest.raises(ValueError, match=r"image 2 of the batch: float image arrays must hold values in \[0, 1\]"):
        runtime.segment_batch([imgs[0], imgs[1], imgs[2].astype(np.float32)])


def test_a_runtime_pickles_as_its_engine(runtime):
    """For process pools: the copy loads the engine again and gives the same labels."""
    copy = pickle.loads(pickle.dumps(runtime))
    assert copy is not runtime and copy.engine.path == runtime.engine.path and copy.mode == runtime.mode
    img = image(90, 110, seed=4)
    np.testing.assert_array_equal(copy.segment(img), runtime.segment(img))


def test_a_runtime_of_a_relative_engine_path_pickles_from_another_folder(onnx_engine, monkeypatch, tmp_path):
    monkeypatch.chdir(onnx_engine.parent)
    runtime = segvit_rt.Runtime(onnx_engine.name)
    monkeypatch.chdir(tmp_path)
    copy = pickle.loads(pickle.dumps(runtime))
    assert copy.engine.path == onnx_engine.resolve()


def test_segment_batch_refuses_a_single_image(runtime, tmp_path):
    img = image(40, 50)
    Image.fromarray(img).save(tmp_path / "one.png")
    singles = [img, torch.from_numpy(img).permute(2, 0, 1), str(tmp_path / "one.png"), tmp_path / "one.png",
               Image.fromarray(img)]
    for single in singles:
        with pytest.raises(TypeError, match="segment_batch takes a list of images .*for one image use segment"):
            runtime.segment_batch(single)


def test_overlay_and_metadata(runtime, shrunk):
    img = image(60, 80)
    labels = runtime.segment(img)
    over = runtime.overlay(img, labels, alpha=0.0)
    assert isinstance(over, Image.Image) and over.size == (80, 60)
    np.testing.assert_array_equal(np.asarray(over), img)
    colours = np.asarray(runtime.overlay(img, labels, alpha=1.0))
    np.testing.assert_array_equal(colours, runtime.palette[labels])
    assert runtime.class_names == list(shrunk.cfg.names()) and runtime.palette.shape == (5, 3)


def test_bad_inputs_are_clear_errors(runtime, onnx_engine, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        runtime.segment(tmp_path / "missing.jpg")
    with pytest.raises(ValueError, match="HxWx3"):
        runtime.segment(np.zeros((10, 10, 2), np.uint8))
    with pytest.raises(TypeError, match="uint8"):
        runtime.segment(np.zeros((10, 10, 3), np.int32))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        runtime.segment(np.full((10, 10, 3), 3.0, np.float32))
    with pytest.raises(ValueError, match="mode"):
        segvit_rt.Runtime(onnx_engine, mode="tiles")
    with pytest.raises(ValueError, match="mode must be one of"):
        runtime.mode = "wholeimage"  # a typo set later is refused too, not run as the slide mode
    assert runtime.mode == "slide"
    broken = shutil.copytree(onnx_engine, tmp_path / "broken")
    (broken / "model.onnx").write_bytes((broken / "model.onnx").read_bytes()[:1000])
    with pytest.raises(EngineError, match="truncated"):
        segvit_rt.Runtime(broken)


# ------------------------------------------------------------------ CLI


def test_segment_cli_writes_labels_and_overlays(runtime, onnx_engine, tmp_path, capsys):
    paths = []
    for i, hw in enumerate([(100, 120), (140, 90)]):
        paths.append(tmp_path / f"photo{i}.png")
        Image.fromarray(image(*hw, seed=10 + i)).save(paths[-1])
    out = tmp_path / "out"
    out.mkdir()
    (out / ".photo0_overlay.png.abcd1234.tmp").write_bytes(b"half a PNG")  # an earlier run's, killed mid-write
    segment.main([*map(str, paths), "--engine", str(onnx_engine), "--out", str(out), "--quiet"])
    assert capsys.readouterr().out == f"segmented 2 images into {out}\n"
    assert sorted(os.listdir(out)) == [f"{p.stem}_{kind}.png" for p in paths for kind in ("labels", "overlay")]
    for p in paths:
        labels = np.asarray(Image.open(out / f"{p.stem}_labels.png"))
        np.testing.assert_array_equal(labels, runtime.segment(p))
        overlay = Image.open(out / f"{p.stem}_overlay.png")
        assert overlay.size == Image.open(p).size and overlay.mode == "RGB"
    paths.append(tmp_path / "photo2.png")  # the size of photo0: the two share engine calls
    Image.fromarray(image(100, 120, seed=12)).save(paths[-1])
    segment.main([*map(str, paths), "--engine", str(onnx_engine), "--out", str(tmp_path / "batched"), "--quiet",
                  "--batch", "3"])
    for p in paths:
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "batched" / f"{p.stem}_labels.png")),
                                      runtime.segment(p))
    with pytest.raises(SystemExit):
        segment.main([str(paths[0]), "--engine", str(onnx_engine), "--out", str(out), "--batch", "0"])
    assert "--batch must be >= 1" in capsys.readouterr().err


def test_segment_cli_takes_folders_and_skips_unreadable_images(runtime, onnx_engine, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(image(60, 80, seed=1)).save(photos / "a.png")
    Image.fromarray(image(70, 50, seed=2)).save(photos / "c.jpg")
    (photos / "b.jpg").write_bytes(b"not a jpeg")
    (photos / "notes.txt").write_text("not an image, not an input")
    (photos / "._a.png").write_bytes(b"macOS resource fork, not an input")
    (photos / "nested").mkdir()
    Image.fromarray(image(40, 40, seed=5)).save(photos / "nested" / "e.png")  # a subfolder: not searched
    (photos / "gone.png").symlink_to(tmp_path / "deleted.png")
    single = tmp_path / "d.png"
    Image.fromarray(image(40, 40, seed=3)).save(single)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        segment.main([str(photos), str(single), "--engine", str(onnx_engine), "--out", str(out), "--quiet"])
    captured = capsys.readouterr()
    assert exc.value.code == 1
    assert (f"note: {photos}: skipped subfolder nested (not searched: pass them too) and broken link gone.png "
            "and 1 file without an image suffix notes.txt (pass one by name to segment it anyway)") in captured.err
    assert f"segmented 3 images into {out}" in captured.out
    assert "1 of 4 images could not be segmented" in captured.err and "b.jpg" in captured.err
    assert sorted(p.name for p in out.iterdir()) == [
        f"{stem}_{kind}.png" for stem in "acd" for kind in ("labels", "overlay")
    ]
    np.testing.assert_array_equal(np.asarray(Image.open(out / "c_labels.png")), runtime.segment(photos / "c.jpg"))
    (out / "a_overlay.png").unlink()  # as if stopped between a's two outputs
    written = {name: (out / name).stat().st_mtime_ns for name in ("d_labels.png", "a_labels.png")}
    segment.main([str(photos / "a.png"), str(single), "--engine", str(onnx_engine), "--out", str(out), "--quiet",
                  "--skip-existing"])
    assert f"segmented 1 image into {out} (1 image already done there" in capsys.readouterr().out
    assert (out / "a_overlay.png").is_file()  # only what was missing is written
    assert {name: (out / name).stat().st_mtime_ns for name in written} == written


def test_segment_cli_segments_a_file_given_twice_once(runtime, onnx_engine, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(image(60, 80, seed=1)).save(photos / "a.png")
    (photos / "b.png").symlink_to(photos / "a.png")  # another name: two inputs, two outputs
    out = tmp_path / "out"
    segment.main([str(photos), str(photos / "a.png"), str(tmp_path / "photos" / ".." / "photos" / "a.png"),
                  "--engine", str(onnx_engine), "--out", str(out), "--quiet"])
    captured = capsys.readouterr()
    assert f"note: {photos / 'a.png'} is given twice (also as {photos / 'a.png'}): segmented once" in captured.err
    assert captured.err.count("is given twice") == 2 and f"segmented 2 images into {out}" in captured.out
    assert sorted(p.name for p in out.iterdir()) == [f"{s}_{k}.png" for s in "ab" for k in ("labels", "overlay")]
    other = tmp_path / "other"
    (other / "sub").mkdir(parents=True)
    Image.fromarray(image(30, 30, seed=2)).save(other / "a.png")
    (photos / "link").symlink_to(other / "sub")
    through_link = photos / "link" / ".." / "a.png"  # other/a.png, though abspath makes it photos/a.png
    paths, _ = segment.expand_inputs([str(photos / "a.png"), str(through_link)])
    assert paths == [photos / "a.png", through_link]  # two files: kept (and refused later for their one stem)


def test_runtime_names_a_bad_device_or_a_file_given_as_the_engine(onnx_engine, tmp_path):
    with pytest.raises(EngineError, match=r"unknown device 'gpu': engines run on 'cpu' or 'cuda'"):
        segvit_rt.Runtime(onnx_engine, device="gpu")
    photo = tmp_path / "photo.bmp"
    Image.fromarray(image(8, 8)).save(photo)
    with pytest.raises(EngineError, match=r"photo.bmp is a file, not an engine"):
        segvit_rt.Runtime(photo)


def test_no_readable_image_leaves_no_output_folder(onnx_engine, tmp_path, capsys):
    (tmp_path / "a.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(SystemExit) as exc:
        segment.main([str(tmp_path / "a.jpg"), "--engine", str(onnx_engine), "--out", str(tmp_path / "out"), "--quiet"])
    assert exc.value.code == 1 and "1 of 1 images could not be segmented" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_image_whose_output_names_would_be_too_long_is_skipped_and_named(onnx_engine, tmp_path, capsys):
    """A 246-byte stem is a legal image name, but ``<stem>_overlay.png`` is not: that image is skipped
    (and reported) as an unreadable one is, the others segmented; a 235-byte one is written whole."""
    long_stem, near_stem, latin1 = "x" * 246, "n" * 235, os.fsdecode(b"caf\xe9")  # the last: not UTF-8
    paths = [tmp_path / f"{stem}.png" for stem in (latin1, long_stem, near_stem)]
    for path in paths:
        Image.fromarray(image(40, 40)).save(path)
    out = tmp_path / "out"
    for extra, done in (([], 2), (["--skip-existing"], 0)):  # a second run skips it again, not stopping
        with pytest.raises(SystemExit) as exc:
            segment.main([*map(str, paths), "--engine", str(onnx_engine), "--out", str(out), "--quiet", *extra])
        captured = capsys.readouterr()
        assert exc.value.code == 1 and f"segmented {done} images into {out}" in captured.out
        assert "would be a file name of 258 bytes, more than a file system takes (255); rename the image" in captured.err
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{stem}_{kind}.png" for stem in (latin1, near_stem) for kind in ("labels", "overlay"))


def test_segment_cli_on_its_own_output_folder_and_when_stopped(onnx_engine, tmp_path, capsys, monkeypatch):
    photos, out = tmp_path / "photos", tmp_path / "photos" / "out"
    photos.mkdir()
    for name in ("a", "b"):
        Image.fromarray(image(40, 60, seed=len(name))).save(photos / f"{name}.png")
    segment.main([str(photos), "--engine", str(onnx_engine), "--out", str(out), "--quiet"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:  # the outputs folder as input: nothing in it is an image to segment
        segment.main([str(out), "--engine", str(onnx_engine), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "holds only outputs" in err and "its 4 files named *_labels.png" in err
    assert len(os.listdir(out)) == 4

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(segment, "save_png", full_disk)
    with pytest.raises(SystemExit) as exc:
        segment.main([str(photos), "--engine", str(onnx_engine), "--out", str(tmp_path / "o2"), "--quiet"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and f"cannot write the outputs of {photos / 'a.png'}" in err and "No space" in err

    def encoder_error(*args):
        raise OSError("encoder error -2 when writing image file")  # Pillow's: no errno

    monkeypatch.setattr(segment, "save_png", encoder_error)
    with pytest.raises(SystemExit):
        segment.main([str(photos), "--engine", str(onnx_engine), "--out", str(tmp_path / "o2"), "--quiet"])
    err = capsys.readouterr().err
    assert "error: cannot write the outputs of" in err and "encoder error -2" in err and "Errno" not in err

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(segment, "save_png", stopped)
    with pytest.raises(SystemExit) as exc:
        segment.main([str(photos), "--engine", str(onnx_engine), "--out", str(tmp_path / "o3"), "--quiet"])
    assert exc.value.code == 130 and "rerun the same command with --skip-existing" in capsys.readouterr().err
    monkeypatch.setattr(segvit_rt.Runtime, "__init__", stopped)  # while the engine loads
    with pytest.raises(SystemExit) as exc:
        segment.main([str(photos), "--engine", str(onnx_engine), "--out", str(tmp_path / "o4"), "--quiet"])
    assert exc.value.code == 130


def test_segment_cli_errors(onnx_engine, tmp_path, capsys):
    a = tmp_path / "a" / "same.png"
    b = tmp_path / "b" / "same.png"
    for p in (a, b):
        p.parent.mkdir()
        Image.fromarray(image(40, 40)).save(p)
    with pytest.raises(SystemExit) as exc:
        segment.main([str(a), str(b), "--engine", str(onnx_engine), "--out", str(tmp_path / "o")])
    assert exc.value.code == 2 and "share the stem 'same'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        segment.main([str(tmp_path / "gone.png"), "--engine", str(onnx_engine), "--out", str(tmp_path / "o")])
    assert "gone.png" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        segment.main([str(a), "--engine", str(tmp_path / "no_engine"), "--out", str(tmp_path / "o")])
    assert "no_engine" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        segment.main([str(tmp_path / "empty"), "--engine", str(onnx_engine), "--out", str(tmp_path / "o")])
    assert "no image files" in capsys.readouterr().err
    upper = tmp_path / "b" / "SAME.jpg"  # one file with same.png on case-insensitive file systems
    Image.fromarray(image(40, 40)).save(upper)
    with pytest.raises(SystemExit):
        segment.main([str(a), str(upper), "--engine", str(onnx_engine), "--out", str(tmp_path / "o")])
    assert "share the stem" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit):
        segment.main([str(a), "--engine", str(onnx_engine), "--out", str(tmp_path / "file")])
    assert "is a file, not a folder" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("given", ["folder", "file"])
def test_segment_cli_never_writes_over_an_input(onnx_engine, tmp_path, capsys, given):
    """A folder with img.png and a mask of the user's named img_labels.png, segmented into itself; the
    image given by its folder, or by name (or a shell glob): the same protection."""
    folder = tmp_path / "shots"
    folder.mkdir()
    Image.fromarray(image(40, 40, seed=1)).save(folder / "img.png")
    mask = np.full((40, 40), 3, np.uint8)
    Image.fromarray(mask).save(folder / "img_labels.png")
    source = str(folder if given == "folder" else folder / "img.png")
    with pytest.raises(SystemExit) as exc:
        segment.main([source, "--engine", str(onnx_engine), "--out", str(folder), "--quiet"])
    assert exc.value.code == 2 and "is already in the input folder" in capsys.readouterr().err
    np.testing.assert_array_equal(np.asarray(Image.open(folder / "img_labels.png")), mask)
    assert sorted(p.name for p in folder.iterdir()) == ["img.png", "img_labels.png"]
    # Continuing a run into the input folder: img.png's outputs are there, so it is skipped and
    # nothing is overwritten; the earlier outputs are not inputs.
    Image.fromarray(image(40, 40, seed=2)).save(folder / "img_overlay.png")
    segment.main([source, "--engine", str(onnx_engine), "--out", str(folder), "--quiet", "--skip-existing"])
    np.testing.assert_array_equal(np.asarray(Image.open(folder / "img_labels.png")), mask)
    assert f"segmented 0 images into {folder} (1 image already done there" in capsys.readouterr().out
    assert sorted(p.name for p in folder.iterdir()) == ["img.png", "img_labels.png", "img_overlay.png"]


def test_segment_cli_refuses_an_out_inside_the_engine_folder(onnx_engine, tmp_path, capsys):
    Image.fromarray(image(40, 40, seed=1)).save(tmp_path / "img.png")
    for out in (onnx_engine, onnx_engine / "labels"):
        with pytest.raises(SystemExit) as exc:
            segment.main([str(tmp_path / "img.png"), "--engine", str(onnx_engine / "engine.json"), "--out", str(out)])
        assert exc.value.code == 2 and f"--out {out} is inside the --engine folder" in capsys.readouterr().err
    assert not (onnx_engine / "labels").exists() and not (onnx_engine / "img_labels.png").exists()


def test_segment_cli_into_its_input_folder_resumes_without_segmenting_its_outputs(onnx_engine, tmp_path, capsys):
    folder = tmp_path / "shots"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(image(40, 48, seed=i)).save(folder / f"m{i}.png")
    segment.main([str(folder), "--engine", str(onnx_engine), "--out", str(folder), "--quiet"])
    done = sorted(p.name for p in folder.iterdir())
    assert len(done) == 9 and f"segmented 3 images into {folder}\n" == capsys.readouterr().out
    (folder / "m1_overlay.png").unlink()  # as if stopped before m1's overlay
    for _ in range(2):
        segment.main([str(folder), "--engine", str(onnx_engine), "--out", str(folder), "--quiet", "--skip-existing"])
    assert sorted(p.name for p in folder.iterdir()) == done
    printed = capsys.readouterr().out
    assert f"segmented 1 image into {folder} (2 images already done there" in printed
    assert f"segmented 0 images into {folder} (3 images already done there" in printed
    with pytest.raises(SystemExit) as exc:  # without --skip-existing the earlier outputs stay protected
        segment.main([str(folder), "--engine", str(onnx_engine), "--out", str(folder), "--quiet"])
    assert exc.value.code == 2 and "already in the input folder" in capsys.readouterr().err


def test_segment_cli_skips_an_image_whose_header_claims_a_huge_size(onnx_engine, tmp_path, capsys):
    folder = tmp_path / "shots"
    folder.mkdir()
    Image.fromarray(image(40, 40, seed=1)).save(folder / "a.png")
    Image.fromarray(image(40, 40, seed=2)).save(folder / "b.png")
    data = bytearray((folder / "b.png").read_bytes())
    data[16:24] = (20000).to_bytes(4, "big") + (10000).to_bytes(4, "big")  # IHDR width, height
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")  # and its checksum, so the header reads
    (folder / "b.png").write_bytes(bytes(data))
    with pytest.raises(SystemExit) as exc:
        segment.main([str(folder), "--engine", str(onnx_engine), "--out", str(tmp_path / "o"), "--quiet"])
    captured = capsys.readouterr()
    assert exc.value.code == 1 and "b.png" in captured.err and "MAX_IMAGE_PIXELS" in captured.err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["a_labels.png", "a_overlay.png"]


def test_more_than_256_classes_come_back_as_int32_labels(onnx_engine):
    """Labels past 255 must not wrap: an engine of 300 classes (stood in for by a function whose three
    queries vote for classes 7, 150 and 299) gives int32 label maps."""
    runtime = segvit_rt.Runtime(onnx_engine)
    runtime.class_names = [f"class_{i}" for i in range(300)]
    votes = torch.full((3, 301), -6.0)
    votes[0, 7] = votes[1, 150] = votes[2, 299] = 6.0
    weight = torch.tensor([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 4.0]])

    def engine(x):
        masks = torch.einsum("qc,nchw->nqhw", weight, F.avg_pool2d(x, 4))
        return votes.expand(x.shape[0], -1, -1), masks

    runtime.engine = engine
    img = image(96, 140, seed=3)
    for mode in ("slide", "whole"):
        runtime.mode = mode
        labels = runtime.segment(img)
        assert labels.dtype == np.int32 and set(np.unique(labels)) == {7, 150, 299}
