"""Datasets (the ADE20K, COCO-Stuff 10k, PASCAL-Context and generic layouts, errors) and the train/eval transforms."""
import colorsys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from dataset_layouts import make_ade, make_coco_stuff, make_context, make_generic, random_image
from segvit_rt.class_names import COCO_STUFF_CLASSES
from segvit_rt.data import (
    ADE20K_CLASSES,
    IGNORE_INDEX,
    ADE20KDataset,
    COCOStuff10kDataset,
    COCOStuff164kDataset,
    DatasetError,
    EvalTransform,
    GenericSegDataset,
    PascalContextDataset,
    TrainTransform,
    normalize,
    open_dataset,
    sample_rng,
)
from segvit_rt.data.datasets import read_image
from segvit_rt.data.transforms import _hsv_to_rgb, _rgb_to_hsv, photometric_distortion

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)


# ---------------------------------------------------------------- layouts


def test_ade20k_layout_maps_labels_and_accepts_either_root(tmp_path):
    ann = np.array([[0, 1, 2, 150]] * 6, dtype=np.uint8)
    base = make_ade(tmp_path, [ann, ann[:, ::-1]])
    for root in (tmp_path, base):
        ds = ADE20KDataset(root, "training")
        assert len(ds) == 2 and ds.num_classes == 150 and ds.classes == ADE20K_CLASSES
        image, label = ds[0]
        assert image.shape == (6, 4, 3) and image.dtype == np.uint8
        assert label.dtype == np.int64
        np.testing.assert_array_equal(label[0], [IGNORE_INDEX, 0, 1, 149])


def test_ade20k_classes_txt_sets_k_and_train_alias(tmp_path):
    make_ade(tmp_path, [np.array([[0, 1], [2, 3]])], classes=["a", "b", "c"])
    ds = open_dataset(tmp_path, "train")
    assert isinstance(ds, ADE20KDataset)
    with pytest.raises(ValueError, match="choose split"):
        open_dataset(tmp_path, None)
    assert ds.classes == ("a", "b", "c") and ds.split == "training"
    np.testing.assert_array_equal(ds[0][1], [[IGNORE_INDEX, 0], [1, 2]])
    classes_txt = tmp_path / "ADEChallengeData2016" / "classes.txt"
    classes_txt.write_text("\ufeffa\nb\nc\n", encoding="utf-8")  # as Notepad saves UTF-8: a BOM first
    assert open_dataset(tmp_path, "train").classes == ("a", "b", "c")


def test_coco_stuff_10k_layout(tmp_path):
    ann = np.array([[0, 1, 2, 171]] * 5, dtype=np.uint8)
    base = make_coco_stuff(tmp_path, {"train2014": [ann, ann[:, ::-1]], "test2014": [ann]})
    (base / "imagesLists").mkdir()  # the converter's lists, not needed
    (base / "annotations" / "train2014" / "COCO_train2014_000000000000_color.png").write_bytes(b"")  # not a mask
    for root in (tmp_path, base):
        ds = open_dataset(root, "train")
        assert isinstance(ds, COCOStuff10kDataset) and ds.split == "train2014" and len(ds) == 2
        assert ds.classes == COCO_STUFF_CLASSES and ds.num_classes == 171
        image, label = ds[0]
        assert image.shape == (5, 4, 3)
        np.testing.assert_array_equal(label[0], [IGNORE_INDEX, 0, 1, 170])
    for split in ("validation", "val", "test", "test2014"):
        val = open_dataset(tmp_path, split)
        assert val.split == "test2014" and len(val) == 1
    with pytest.raises(ValueError, match="train2014.*test2014"):
        COCOStuff10kDataset(tmp_path, "val2017")
    bad = base / "annotations" / "train2014" / "COCO_train2014_000000000001_labelTrainIds.png"
    Image.fromarray(np.full((5, 4), 172, np.uint8)).save(bad)
    with pytest.raises(DatasetError, match=r"COCO_train2014_000000000001_labelTrainIds\.png.*172.*1\.\.171"):
        open_dataset(tmp_path, "train")[1]
    bad.unlink()
    with pytest.raises(DatasetError, match="1 images without a mask.*COCO_train2014_000000000001"):
        open_dataset(tmp_path, "train")


def test_coco_stuff_10k_evaluation_copy_without_train2014(tmp_path):
    make_coco_stuff(tmp_path, {"test2014": [np.array([[1, 2]])]})
    val = open_dataset(tmp_path, "validation")
    assert isinstance(val, COCOStuff10kDataset) and len(val) == 1


def test_coco_stuff_164k_layout(tmp_path):
    """Labels 0..170 as stored, 255 ignored: no shift (the 10k converter's 0 = unlabelled is not here)."""
    ann = np.array([[0, 1, 170, 255]] * 5, dtype=np.uint8)
    base = make_coco_stuff(tmp_path, {"train2017": [ann, ann], "val2017": [ann[:, ::-1]]}, folder="coco_stuff164k")
    for root in (tmp_path, base):
        ds = open_dataset(root, "training")
        assert isinstance(ds, COCOStuff164kDataset) and ds.split == "train2017" and len(ds) == 2
        assert ds.classes == COCO_STUFF_CLASSES
        np.testing.assert_array_equal(ds[0][1][0], [0, 1, 170, IGNORE_INDEX])
    val = open_dataset(tmp_path, "val")
    assert val.split == "val2017" and len(val) == 1
    np.testing.assert_array_equal(val[0][1][0], [IGNORE_INDEX, 170, 1, 0])
    Image.fromarray(np.full((5, 4), 171, np.uint8)).save(
        base / "annotations" / "train2017" / "COCO_train2017_000000000001_labelTrainIds.png")
    with pytest.raises(DatasetError, match=r"000000000001_labelTrainIds\.png.*171.*0\.\.170 or 255"):
        open_dataset(tmp_path, "train")[1]


def test_pascal_context_layout(tmp_path):
    ann = np.array([[0, 1, 59, 255]] * 3, dtype=np.uint8)
    base = make_context(tmp_path, {"train": [ann, ann, ann], "val": [ann[:, ::-1]]})
    for root in (tmp_path, tmp_path / "VOCdevkit", base):
        ds = open_dataset(root, "training")
        assert isinstance(ds, PascalContextDataset) and ds.split == "train" and len(ds) == 3
        assert ds.num_classes == 60 and ds.classes[0] == "background"
        image, label = ds[2]
        assert image.shape == (3, 4, 3)
        np.testing.assert_array_equal(label[0], [0, 1, 59, IGNORE_INDEX])
    assert len(open_dataset(tmp_path, "val")) == 1  # only the listed stems, not all of JPEGImages
    val_list = base / "ImageSets" / "SegmentationContext" / "val.txt"
    listed = val_list.read_text()
    val_list.write_text(listed + listed)  # a stem twice would count twice in the metric
    with pytest.raises(DatasetError, match=r"val\.txt lists 2008_val0000 more than once"):
        open_dataset(tmp_path, "val")
    val_list.write_text(listed)
    Image.fromarray(np.full((3, 4), 60, np.uint8)).save(base / "SegmentationClassContext" / "2008_train0001.png")
    with pytest.raises(DatasetError, match=r"2008_train0001\.png.*60.*0\.\.59 or 255"):
        open_dataset(tmp_path, "train")[1]
    (base / "JPEGImages" / "2008_train0002.jpg").unlink()
    with pytest.raises(DatasetError, match=r"train\.txt lists files that are missing: .*2008_train0002\.jpg$"):
        open_dataset(tmp_path, "train")
    mask = base / "SegmentationClassContext" / "2008_train0000.png"
    mask.rename(mask.with_suffix(".jpg"))
    with pytest.raises(DatasetError, match=r"missing: .*2008_train0000\.png.*; not read, for their suffix: "
                                           r"2008_train0000\.jpg, where \.png are read$"):
        open_dataset(tmp_path, "train")
    (base / "ImageSets" / "SegmentationContext" / "val.txt").unlink()
    with pytest.raises(FileNotFoundError, match="split list not found.*val.txt"):
        open_dataset(tmp_path, "validation")


def test_pascal_context_59_class_protocol_ignores_background(tmp_path):
    ann = np.array([[0, 1, 59, 255]] * 3, dtype=np.uint8)
    make_context(tmp_path, {"train": [ann], "val": [ann]})
    ds = open_dataset(tmp_path, "training", context_classes=59)
    assert isinstance(ds, PascalContextDataset) and ds.num_classes == 59 and ds.classes[0] == "aeroplane"
    np.testing.assert_array_equal(ds[0][1][0], [IGNORE_INDEX, 0, 58, IGNORE_INDEX])
    Image.fromarray(np.full((3, 4), 60, np.uint8)).save(
        tmp_path / "VOCdevkit" / "VOC2010" / "SegmentationClassContext" / "2008_train0000.png")
    with pytest.raises(DatasetError, match=r"60.*0 \(background, ignored\), 1\.\.59 or 255"):
        ds[0]
    with pytest.raises(ValueError, match="59- and 60-class protocols, not 21"):
        PascalContextDataset(tmp_path, "training", classes=21)


def test_a_folder_with_several_data_sets_is_refused(tmp_path):
    ann = np.ones((4, 4))
    make_coco_stuff(tmp_path, {"train2014": [ann], "test2014": [ann]})
    make_context(tmp_path, {"train": [ann], "val": [ann]})
    with pytest.raises(ValueError, match="several data sets.*COCO-Stuff 10k.*PASCAL-Context.*pass the folder"):
        open_dataset(tmp_path, "training")
    assert isinstance(open_dataset(tmp_path / "coco_stuff10k", "training"), COCOStuff10kDataset)
    assert isinstance(open_dataset(tmp_path / "VOCdevkit", "training"), PascalContextDataset)


def test_a_generic_tree_beside_a_benchmark_layout_is_refused_and_its_classes_stay_its_own(tmp_path):
    make_ade(tmp_path, [np.ones((4, 4))])
    make_generic(tmp_path, [np.zeros((4, 4))], ["cat", "dog"], split="train")  # classes.txt lands in tmp_path
    with pytest.raises(ValueError, match="several data sets.*ADE20K.*the generic layout"):
        open_dataset(tmp_path, "training")
    with pytest.warns(UserWarning, match="classes.txt is not read"):
        ade = open_dataset(tmp_path / "ADEChallengeData2016", "training")
    assert isinstance(ade, ADE20KDataset) and ade.classes == ADE20K_CLASSES  # not the generic tree's list


def test_hidden_files_are_not_samples(tmp_path):
    base = make_ade(tmp_path, [np.ones((4, 4))])
    (base / "images" / "training" / "._img_0.jpg").write_bytes(b"macOS resource fork")
    (base / "annotations" / "training" / ".img_9.png").write_bytes(b"")
    ds = open_dataset(tmp_path, "training")
    assert [image.name for image, _ in ds.samples] == ["img_0.jpg"]


def test_generic_layout_with_split_palette_masks_and_ignore_index(tmp_path):
    mask = np.array([[0, 1, 2], [7, 2, 0]], dtype=np.uint8)
    images = make_generic(tmp_path, [mask], ["x", "y", "z"], split="val")
    palette_mask = Image.fromarray(mask).convert("P")  # palette indices must read as stored values
    palette_mask.save(tmp_path / "masks" / "val" / "s0.png")
    ds = GenericSegDataset(tmp_path, "val", ignore_index=7)
    image, label = ds[0]
    np.testing.assert_array_equal(image, images[0])  # png images: lossless
    np.testing.assert_array_equal(label, [[0, 1, 2], [IGNORE_INDEX, 2, 0]])
    auto = open_dataset(tmp_path, "validation", ignore_index=7)  # alias of "val"
    assert isinstance(auto, GenericSegDataset) and auto.num_classes == 3


def test_generic_ignore_index_must_not_be_a_class(tmp_path):
    make_generic(tmp_path, [np.zeros((2, 2))], ["a", "b"])
    with pytest.raises(ValueError, match="ignore_index 1"):
        GenericSegDataset(tmp_path, ignore_index=1)


def test_open_dataset_names_every_layout_when_nothing_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="ADEChallengeData2016.*train2014.*JPEGImages.*images/, masks/"):
        open_dataset(tmp_path, "training")


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "LA"])
def test_images_become_rgb_uint8(tmp_path, mode):
    rng = np.random.default_rng(2)
    rgb = random_image(rng, 5, 7)
    make_generic(tmp_path, [np.zeros((5, 7))], ["a"])
    source = Image.fromarray(rgb)
    converted = source.convert(mode)
    converted.save(tmp_path / "images" / "s0.png")
    image, _ = GenericSegDataset(tmp_path)[0]
    assert image.dtype == np.uint8 and image.shape == (5, 7, 3)
    np.testing.assert_array_equal(image, np.asarray(converted.convert("RGB")))
    if mode in ("L", "LA"):  # gray replicated over the three channels
        assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()
    if mode == "RGBA":  # alpha dropped, colour kept
        np.testing.assert_array_equal(image, rgb)


# ---------------------------------------------------------------- errors


def test_unpaired_files_are_listed_both_ways(tmp_path):
    base = make_ade(tmp_path, [np.ones((4, 4))] * 3)
    (base / "annotations" / "training" / "img_1.png").unlink()
    Image.fromarray(np.ones((4, 4), np.uint8)).save(base / "annotations" / "training" / "orphan.png")
    with pytest.raises(DatasetError) as err:
        ADE20KDataset(tmp_path)
    message = str(err.value)
    assert "1 images without a mask" in message and "img_1" in message
    assert "1 masks without an image" in message and "orphan" in message
    assert "not read" not in message
    Image.fromarray(np.ones((4, 4), np.uint8)).save(base / "annotations" / "training" / "img_1.jpg")
    with pytest.raises(DatasetError, match=r"none in .* for img_1; not read, for their suffix: img_1\.jpg, "
                                           r"where \.png are read\)"):
        ADE20KDataset(tmp_path)


def test_two_images_with_one_stem_are_ambiguous(tmp_path):
    make_generic(tmp_path, [np.zeros((3, 3))], ["a"])
    Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(tmp_path / "images" / "s0.jpg")
    with pytest.raises(DatasetError, match=r"share the stem 's0'"):
        GenericSegDataset(tmp_path)


def test_empty_split_and_missing_folder(tmp_path):
    make_ade(tmp_path, [np.ones((4, 4))], split="training")
    with pytest.raises(DatasetError, match="empty split.*validation"):
        ADE20KDataset(tmp_path, "validation")
    with pytest.raises(FileNotFoundError, match="masks"):
        (tmp_path / "gen" / "images").mkdir(parents=True)
        (tmp_path / "gen" / "classes.txt").write_text("a\n")
        GenericSegDataset(tmp_path / "gen")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_unreadable_image_names_the_file(tmp_path, damage):
    base = make_ade(tmp_path, [np.ones((64, 64))] * 2)
    bad = base / "images" / "training" / "img_1.jpg"
    data = bad.read_bytes()
    bad.write_bytes(b"not a jpeg at all" * 10 if damage == "garbage" else data[: len(data) // 2])
    ds = ADE20KDataset(tmp_path)  # pairing is fine, contents are checked per sample
    ds[0]
    with pytest.raises(DatasetError, match=r"cannot read image .*img_1\.jpg"):
        ds[1]
    with pytest.raises(DatasetError, match=r"img_1\.jpg"):
        ds.verify()


def test_empty_files_are_named_as_empty(tmp_path):
    base = make_ade(tmp_path, [np.ones((8, 8))] * 2)
    (base / "images" / "training" / "img_0.jpg").write_bytes(b"")
    (base / "annotations" / "training" / "img_1.png").write_bytes(b"")
    ds = ADE20KDataset(tmp_path)
    with pytest.raises(DatasetError, match=r"cannot read image .*img_0\.jpg: the file is empty \(0 bytes\)"):
        ds[0]
    with pytest.raises(DatasetError, match=r"cannot read mask .*img_1\.png: the file is empty \(0 bytes\)"):
        ds[1]


@pytest.mark.parametrize("broken", ["image", "mask", "both"])
def test_a_broken_link_among_the_samples_is_named(tmp_path, broken):
    """A sample whose file is a dangling link is an error (was: the pair silently dropped, or a
    mask reported missing although its name is there)."""
    base = make_ade(tmp_path, [np.ones((8, 8))] * 2)
    targets = {"image": ["images/training/img_1.jpg"], "mask": ["annotations/training/img_1.png"]}
    targets["both"] = targets["image"] + targets["mask"]
    for name in targets[broken]:
        (base / name).unlink()
        (base / name).symlink_to(tmp_path / "moved" / Path(name).name)
    with pytest.raises(DatasetError, match=r"img_1\.(jpg|png) is a broken link \(to .*moved"):
        ADE20KDataset(tmp_path)


def test_exif_tags_and_16_bit_images(tmp_path):
    """Images are read as stored (the benchmarks' masks were drawn on stored pixels), except one whose
    EXIF tag turns it to its mask's size; 16-bit grayscale is scaled to 8 bits, not clipped."""
    base = make_ade(tmp_path, [np.ones((30, 20)), np.ones((20, 30))])
    y, x = np.mgrid[0:20, 0:30]
    landscape = np.stack([x * 8, y * 12, np.full_like(x, 100)], axis=2).astype(np.uint8)  # smooth: JPEG keeps it
    for i, orientation in enumerate((6, 3)):  # turn clockwise to display; upside down
        exif = Image.Exif()
        exif[0x0112] = orientation
        Image.fromarray(landscape).save(base / "images" / "training" / f"img_{i}.jpg", exif=exif, quality=100,
                                        subsampling=0)
    ds = ADE20KDataset(tmp_path)
    image, label = ds.load(0)  # a portrait mask: drawn on the photo as displayed
    assert image.shape == (30, 20, 3) and label.shape == (30, 20)
    assert np.abs(image.astype(int) - np.rot90(landscape, -1)).mean() < 3  # JPEG, so not exact
    image, _ = ds.load(1)  # same size either way: as stored
    assert np.abs(image.astype(int) - landscape).mean() < 3
    Image.fromarray(np.full((30, 20), 65535, np.uint16)).save(tmp_path / "wide.png")
    assert (read_image(tmp_path / "wide.png") == 255).all(), "16-bit white stays white (PIL's conversion clips)"


def test_label_out_of_range_names_file_and_value(tmp_path):
    make_ade(tmp_path, [np.array([[0, 1], [3, 4]])], classes=["a", "b", "c"])
    with pytest.raises(DatasetError, match=r"img_0\.png has labels out of range \(4\)"):
        ADE20KDataset(tmp_path)[0]
    make_generic(tmp_path / "g", [np.array([[0, 5], [255, 1]])], ["a", "b"])
    with pytest.raises(DatasetError, match=r"s0\.png has labels out of range \(5\)"):
        GenericSegDataset(tmp_path / "g")[0]


def test_size_mismatch_names_both_files(tmp_path):
    base = make_ade(tmp_path, [np.ones((8, 8))])
    Image.fromarray(np.ones((8, 9), np.uint8)).save(base / "annotations" / "training" / "img_0.png")
    with pytest.raises(DatasetError, match=r"size mismatch: image .*img_0\.jpg is 8x8 but mask .*img_0\.png is 9x8"):
        ADE20KDataset(tmp_path)[0]


def test_colour_mask_is_rejected(tmp_path):
    make_generic(tmp_path, [np.zeros((3, 3))], ["a"])
    Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(tmp_path / "masks" / "s0.png")
    with pytest.raises(DatasetError, match=r"s0\.png has RGB pixels"):
        GenericSegDataset(tmp_path)[0]


# ---------------------------------------------------------------- normalisation


def test_normalize_matches_formula_and_channel_order():
    image = random_image(np.random.default_rng(3), 5, 6)
    out = normalize(image, MEAN, STD)
    assert out.shape == (3, 5, 6) and out.dtype == torch.float32
    expected = (torch.from_numpy(image).double() - torch.tensor(MEAN, dtype=torch.float64)) / torch.tensor(
        STD, dtype=torch.float64)
    torch.testing.assert_close(out, expected.permute(2, 0, 1).float())


def test_normalize_rejects_bad_input():
    image = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="uint8"):
        normalize(image.astype(np.float32), MEAN, STD)
    with pytest.raises(ValueError, match="HxWx3"):
        normalize(image[..., 0], MEAN, STD)
    with pytest.raises(TypeError, match="numpy"):
        normalize(torch.from_numpy(image), MEAN, STD)
    with pytest.raises(ValueError, match="positive"):
        normalize(image, MEAN, (1.0, 0.0, 1.0))


def test_eval_transform_keeps_size_and_labels():
    rng = np.random.default_rng(4)
    image, label = random_image(rng, 7, 9), rng.integers(0, 5, size=(7, 9))
    out_image, out_label = EvalTransform(MEAN, STD)(image, label)
    torch.testing.assert_close(out_image, normalize(image, MEAN, STD))
    assert out_label.dtype == torch.int64
    np.testing.assert_array_equal(out_label.numpy(), label)
    with pytest.raises(ValueError, match="does not match"):
        EvalTransform(MEAN, STD)(image, label[:, :5])


# ---------------------------------------------------------------- training transform


def _denormalize(image):
    return image.permute(1, 2, 0).numpy() * np.array(STD) + np.array(MEAN)


def test_resize_fits_scale_keeping_aspect():
    t = TrainTransform(64, MEAN, STD, scale=(400, 100), ratio_range=(1.0, 1.0))
    image, label = np.zeros((50, 100, 3), np.uint8), np.zeros((50, 100), np.int64)
    out_image, out_label = t.resize(image, label, np.random.default_rng(0))
    assert out_image.shape == (100, 200, 3) and out_label.shape == (100, 200)  # short edge limit: x2
    t = TrainTransform(64, MEAN, STD, scale=(120, 100), ratio_range=(0.5, 0.5))
    out_image, out_label = t.resize(image, label, np.random.default_rng(0))
    assert out_label.shape == (30, 60)  # long edge limit 60: x0.6


def test_output_shapes_and_padding_with_ignore():
    rng = np.random.default_rng(5)
    image, label = random_image(rng, 20, 30), rng.integers(0, 3, size=(20, 30))
    t = TrainTransform((32, 40), MEAN, STD, scale=(30, 20), ratio_range=(1.0, 1.0),
                       flip_prob=0.0, photometric=False)
    out_image, out_label = t(image, label, rng)
    assert out_image.shape == (3, 32, 40) and out_image.dtype == torch.float32
    assert out_label.shape == (32, 40) and out_label.dtype == torch.int64
    np.testing.assert_array_equal(out_label[:20, :30].numpy(), label)
    assert (out_label[20:] == IGNORE_INDEX).all() and (out_label[:, 30:] == IGNORE_INDEX).all()
    assert (out_image[:, 20:] == 0).all() and (out_image[:, :, 30:] == 0).all()
    np.testing.assert_allclose(_denormalize(out_image[:, :20, :30]), image, atol=1e-3)


def test_default_pipeline_on_large_input_gives_the_crop():
    rng = np.random.default_rng(6)
    image, label = random_image(rng, 90, 120), rng.integers(0, 4, size=(90, 120))
    label[:5] = IGNORE_INDEX
    t = TrainTransform(48, MEAN, STD)
    assert t.scale == (192, 48)
    for seed in range(5):
        out_image, out_label = t(image, label, np.random.default_rng(seed))
        assert out_image.shape == (3, 48, 48) and out_label.shape == (48, 48)
        assert set(out_label.unique().tolist()) <= {0, 1, 2, 3, IGNORE_INDEX}
        pixels = _denormalize(out_image)
        assert pixels.min() > -1e-3 and pixels.max() < 255 + 1e-3  # photometric output stays in range


def test_crop_respects_cat_max_ratio():
    label = np.zeros((32, 64), np.int64)
    label[:, 44:] = 1
    label[:, 56:] = IGNORE_INDEX  # ignored pixels do not count
    image = np.zeros((32, 64, 3), np.uint8)

    def largest_share(cat_max_ratio, seed):
        t = TrainTransform(32, MEAN, STD, scale=(64, 32), ratio_range=(1.0, 1.0),
                           cat_max_ratio=cat_max_ratio, photometric=False)
        crop = t(image, label, np.random.default_rng(seed))[1]
        counts = torch.bincount(crop[crop != IGNORE_INDEX], minlength=2)
        return counts.max().item() / counts.sum().item()

    seeds = range(200)
    unconstrained = np.mean([largest_share(1.0, s) < 0.75 for s in seeds])
    constrained = np.mean([largest_share(0.75, s) < 0.75 for s in seeds])
    assert unconstrained < 0.5  # most random crops are dominated by class 0...
    assert constrained > 0.97  # ...the retries avoid that
    # a single-class image cannot satisfy the rule: the crop still comes back
    t = TrainTransform(16, MEAN, STD, scale=(64, 32), ratio_range=(1.0, 1.0))
    assert t(image, np.zeros_like(label), np.random.default_rng(0))[1].shape == (16, 16)


def test_flip_moves_image_and_label_together():
    label = np.repeat(np.arange(12)[None] % 5, 10, axis=0)  # 10x12, varies along x
    label[2, 3] = IGNORE_INDEX
    image = np.stack([label * 40 % 256, label * 7, 255 - label], axis=-1).astype(np.uint8)
    kw = dict(crop_size=(10, 12), mean=MEAN, std=STD, scale=(12, 10), ratio_range=(1.0, 1.0), photometric=False)
    kept_image, kept_label = TrainTransform(flip_prob=0.0, **kw)(image, label, np.random.default_rng(0))
    flip_image, flip_label = TrainTransform(flip_prob=1.0, **kw)(image, label, np.random.default_rng(0))
    np.testing.assert_array_equal(kept_label.numpy(), label)
    np.testing.assert_array_equal(flip_label.numpy(), label[:, ::-1])
    torch.testing.assert_close(flip_image, kept_image.flip(-1))


def test_resize_keeps_image_and_label_aligned():
    blocks = np.kron(np.arange(16).reshape(4, 4) % 6, np.ones((16, 16), np.int64))  # 64x64
    image = np.repeat((blocks * 40)[..., None], 3, axis=-1).astype(np.uint8)
    t = TrainTransform(48, MEAN, STD, scale=(256, 64), photometric=False)
    for seed in range(6):
        out_image, out_label = t(image, blocks, np.random.default_rng(seed))
        valid = out_label != IGNORE_INDEX
        grey = _denormalize(out_image)[..., 0]
        agree = np.abs(grey - out_label.numpy() * 40) < 20
        assert agree[valid.numpy()].mean() > 0.9  # only pixels on block edges may disagree


def test_photometric_distortion_keeps_grey_grey_and_range():
    grey = np.repeat(np.linspace(0, 255, 40).reshape(5, 8, 1), 3, axis=-1).astype(np.uint8)
    colour = random_image(np.random.default_rng(7), 5, 8)
    changed = 0
    for seed in range(20):
        out = photometric_distortion(grey, np.random.default_rng(seed))
        np.testing.assert_allclose(out[..., 0], out[..., 1], atol=1e-3)
        np.testing.assert_allclose(out[..., 1], out[..., 2], atol=1e-3)
        out = photometric_distortion(colour, np.random.default_rng(seed))
        assert out.min() >= 0 and out.max() <= 255
        changed += np.abs(out - colour).mean() > 1
        np.testing.assert_array_equal(out, photometric_distortion(colour, np.random.default_rng(seed)))
    assert changed >= 15  # each of the 4 steps fires with p=1/2: all off 1 time in 16


def test_hsv_round_trip_matches_colorsys():
    rgb = np.random.default_rng(8).uniform(0, 255, size=(500, 3))
    hue, sat, value = _rgb_to_hsv(rgb)
    expected = np.array([colorsys.rgb_to_hsv(*p) for p in rgb / 255])
    np.testing.assert_allclose(hue, expected[:, 0], atol=1e-9)
    np.testing.assert_allclose(sat, expected[:, 1], atol=1e-9)
    np.testing.assert_allclose(_hsv_to_rgb(hue, sat, value), rgb, atol=1e-6)


def test_train_transform_rejects_bad_input():
    t = TrainTransform(16, MEAN, STD)
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(TypeError, match="integer"):
        t(image, np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError, match="does not match"):
        t(image, np.zeros((8, 9), np.int64))
    with pytest.raises(ValueError, match=">= 0"):
        t(image, np.full((8, 8), -1))
    with pytest.raises(ValueError, match="crop_size"):
        TrainTransform(0, MEAN, STD)


# ---------------------------------------------------------------- reproducible augmentation


def test_augmentation_depends_only_on_seed_epoch_index(tmp_path):
    make_ade(tmp_path, [np.random.default_rng(i).integers(0, 4, size=(40, 56)) for i in range(4)],
             classes=["a", "b", "c"])

    def dataset(seed=0):
        return ADE20KDataset(tmp_path, transform=TrainTransform(32, MEAN, STD), seed=seed)

    a, b = dataset(), dataset()
    for index in range(4):
        for x, y in zip(a[index], b[index]):
            torch.testing.assert_close(x, y, rtol=0, atol=0)
    a.set_epoch(1)
    assert not torch.equal(a[0][0], b[0][0])
    assert not torch.equal(dataset(seed=1)[0][0], b[0][0])
    assert sample_rng(3, 1, 2).random() == sample_rng(3, 1, 2).random() != sample_rng(3, 2, 1).random()
    # worker processes draw the same augmentations as the main process
    serial = list(DataLoader(b, batch_size=2, num_workers=0))
    parallel = list(DataLoader(b, batch_size=2, num_workers=2))
    assert serial[0][0].shape == (2, 3, 32, 32) and serial[0][1].shape == (2, 32, 32)
    for (xs, ys), (xp, yp) in zip(serial, parallel):
        assert torch.equal(xs, xp) and torch.equal(ys, yp)


def test_raw_coco_stuff_maps_are_named_with_the_converter_that_makes_train_ids(tmp_path):
    """mmseg's guide unzips the raw stuffthingmaps into annotations/<split>/; its converter then writes
    the *_labelTrainIds.png masks beside them. Without that step each image's raw map is right there."""
    base = make_coco_stuff(tmp_path, {"train2017": [np.zeros((3, 3))] * 2, "val2017": [np.zeros((3, 3))]},
                           folder="coco_stuff164k")
    for trainids in (base / "annotations" / "train2017").glob("*_labelTrainIds.png"):
        trainids.rename(trainids.with_name(trainids.name.replace("_labelTrainIds", "")))
    with pytest.raises(DatasetError, match=r"2 images without a mask .*not read, for lacking _labelTrainIds: "
                                           r"COCO_train2017_000000000000\.png, COCO_train2017_000000000001\.png, "
                                           r"which look like raw maps: mmseg's converter \(tools/dataset_converters/"
                                           r"coco_stuff164k\.py"):
        open_dataset(tmp_path, "training")
