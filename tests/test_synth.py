"""The procedural dataset: layout, determinism, atomic writes, and that only texture tells classes apart."""
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from segvit_rt.data import IGNORE_INDEX, ADE20KDataset, generate, synth


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_labels_and_class_list(tmp_path):
    root = generate(tmp_path, classes=5, train=12, val=4, size=64, progress=False)
    assert root == tmp_path / "ADEChallengeData2016"
    assert len(list((root / "images" / "training").glob("*.jpg"))) == 12
    assert len(list((root / "annotations" / "validation").glob("*.png"))) == 4
    train = ADE20KDataset(tmp_path, "training")
    assert train.classes == tuple(synth.class_names(5)) and len(set(train.classes)) == 5
    seen = set()
    for index in range(len(train)):
        image, label = train[index]
        assert image.shape == (64, 64, 3) and label.shape == (64, 64)
        values = set(np.unique(label).tolist())
        assert values <= set(range(5)) | {IGNORE_INDEX}
        assert 0 < (label == IGNORE_INDEX).mean() < 0.15  # a thin ignore band on region boundaries
        seen |= values
    assert seen == set(range(5)) | {IGNORE_INDEX}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = generate(tmp_path / "a", classes=4, train=3, val=2, size=48, seed=7, progress=False)
    b = generate(tmp_path / "b", classes=4, train=3, val=2, size=48, seed=7, progress=False)
    c = generate(tmp_path / "c", classes=4, train=3, val=2, size=48, seed=8, progress=False)
    files_a = _files(a)
    assert files_a == _files(b)
    files_c = _files(c)
    differing = [name for name in files_a if name.suffix == ".jpg" and files_a[name] != files_c[name]]
    assert len(differing) == 5


def test_existing_dataset_is_kept_unless_overwrite(tmp_path):
    root = generate(tmp_path, classes=3, train=2, val=1, size=32, seed=0, progress=False)
    before = _files(root)
    with pytest.raises(FileExistsError, match="overwrite"):
        generate(tmp_path, classes=3, train=2, val=1, size=32, seed=1, progress=False)
    assert _files(root) == before
    generate(tmp_path, classes=3, train=3, val=1, size=32, seed=1, overwrite=True, progress=False)
    assert len(list((root / "images" / "training").iterdir())) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ADEChallengeData2016"]


def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    real_render = synth.render_sample
    calls = []

    def render_then_fail(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_render(*args)

    monkeypatch.setattr(synth, "render_sample", render_then_fail)
    with pytest.raises(KeyboardInterrupt):
        generate(tmp_path, classes=3, train=4, val=2, size=32, progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, message", [
    (dict(classes=1, train=1, val=1), "classes"),
    (dict(classes=255, train=1, val=1), "classes"),
    (dict(classes=3, train=0, val=1), "at least one image"),
    (dict(classes=3, train=1, val=1, size=16), "size"),
])
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(tmp_path, progress=False, **kwargs)


def test_command_line(tmp_path, capsys):
    done = subprocess.run(
        [sys.executable, "-m", "segvit_rt.data.synth", str(tmp_path), "--classes", "3", "--train", "2",
         "--val", "1", "--size", "32", "--seed", "3", "--quiet"],
        capture_output=True, text=True, check=True,
    )
    assert done.stdout.strip() == str(tmp_path / "ADEChallengeData2016")
    assert "RuntimeWarning" not in done.stderr
    assert _files(tmp_path / "ADEChallengeData2016") == _files(
        generate(tmp_path / "api", classes=3, train=2, val=1, size=32, seed=3, progress=False))
    with pytest.raises(SystemExit) as failed:
        synth.main([str(tmp_path), "--classes", "3", "--train", "2", "--val", "1"])
    assert failed.value.code != 0 and "ADEChallengeData2016 already exists: pass --overwrite to replace it" in \
        capsys.readouterr().err


# ---------------------------------------------------------------- what identifies a class


def _box_mean(a, r):
    k = 2 * r + 1
    c = np.pad(a, ((r + 1, r), (r + 1, r)), mode="edge").cumsum(0).cumsum(1)
    return (c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]) / (k * k)


def _region_features(root, split, num_classes):
    """Per (image, class): mean colour, and texture statistics of the grey image.

    Texture: magnitude-weighted histogram of gradient orientation folded to be
    mirror-invariant, and the structure-tensor coherence at two window sizes
    (how line-like the texture is locally).
    """
    labels, colours, textures = [], [], []
    for image_path in sorted((root / "images" / split).glob("*.jpg")):
        image = np.asarray(Image.open(image_path), dtype=np.float64)
        annotation = np.asarray(Image.open(root / "annotations" / split / f"{image_path.stem}.png"))
        gy, gx = np.gradient(image @ np.array([0.299, 0.587, 0.114]))
        energy, c2, s2 = gx * gx + gy * gy, gx * gx - gy * gy, 2 * gx * gy
        coherence = [np.hypot(_box_mean(c2, r), _box_mean(s2, r)) / np.maximum(_box_mean(energy, r), 1e-6)
                     for r in (2, 7)]
        for cls in range(num_classes):
            inside = _box_mean((annotation == cls + 1).astype(np.float64), 4) > 0.999  # away from edges
            if inside.sum() < 200:
                continue
            angle = np.arctan2(gy[inside], gx[inside]) % np.pi
            folded = np.minimum(angle, np.pi - angle)
            hist = np.histogram(folded, bins=6, range=(0, np.pi / 2), weights=np.sqrt(energy[inside]))[0]
            labels.append(cls)
            colours.append(image[inside].mean(axis=0))
            textures.append(np.concatenate([hist / hist.sum(), [c[inside].mean() for c in coherence]]))
    return np.array(labels), np.array(colours), np.array(textures)


def _nearest_centroid_accuracy(train_x, train_y, test_x, test_y, num_classes):
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-9
    train_x, test_x = (train_x - mu) / sd, (test_x - mu) / sd
    centroids = np.stack([train_x[train_y == k].mean(0) for k in range(num_classes)])
    predicted = ((test_x[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
    return (predicted == test_y).mean()


def test_colour_does_not_identify_a_class_texture_does(tmp_path):
    k = 6
    root = generate(tmp_path, classes=k, train=60, val=30, seed=1, progress=False)
    train_y, train_colour, train_texture = _region_features(root, "training", k)
    test_y, test_colour, test_texture = _region_features(root, "validation", k)
    assert len(test_y) >= 60 and set(train_y.tolist()) == set(range(k))
    chance = 1.0 / k
    by_colour = _nearest_centroid_accuracy(train_colour, train_y, test_colour, test_y, k)
    by_texture = _nearest_centroid_accuracy(train_texture, train_y, test_texture, test_y, k)
    assert by_colour < chance + 0.12, f"mean colour predicts the class ({by_colour:.2f}, chance {chance:.2f})"
    print(f"nearest-centroid accuracy: colour {by_colour:.2f}, texture {by_texture:.2f}, chance {chance:.2f}")
    assert by_texture > 0.6, f"texture statistics do not separate classes ({by_texture:.2f})"
