"""Image loading (every accepted input kind, conversions, clear errors) and label/overlay output."""
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from segvit_rt.images import colorize, image_grid, load_image, overlay, save_labels


@pytest.fixture
def rgb():
    return np.random.default_rng(0).integers(0, 256, size=(12, 17, 3), dtype=np.uint8)


def test_rgb_array_is_returned_as_a_copy(rgb):
    out = load_image(rgb)
    assert out.dtype == np.uint8 and out.shape == (12, 17, 3)
    np.testing.assert_array_equal(out, rgb)
    out[0, 0] = rgb[0, 0] + 1
    assert (out[0, 0] != rgb[0, 0]).any(), "load_image must not alias the caller's array"
    assert out.flags.writeable


def test_png_path_and_pil_image(rgb, tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(rgb).save(path)
    np.testing.assert_array_equal(load_image(path), rgb)
    np.testing.assert_array_equal(load_image(str(path)), rgb)
    np.testing.assert_array_equal(load_image(Image.fromarray(rgb)), rgb)


def test_grayscale_is_replicated(rgb):
    gray = rgb[..., 0]
    for src in (gray, gray[..., None], Image.fromarray(gray), torch.from_numpy(gray), torch.from_numpy(gray)[None]):
        out = load_image(src)
        assert out.shape == (12, 17, 3)
        for c in range(3):
            np.testing.assert_array_equal(out[..., c], gray)


def test_alpha_is_dropped(rgb):
    alpha = np.full((12, 17, 1), 7, np.uint8)
    rgba = np.concatenate([rgb, alpha], axis=2)
    np.testing.assert_array_equal(load_image(rgba), rgb)
    np.testing.assert_array_equal(load_image(Image.fromarray(rgba, mode="RGBA")), rgb)
    np.testing.assert_array_equal(load_image(torch.from_numpy(rgba).permute(2, 0, 1)), rgb)


def test_premultiplied_alpha_modes_are_converted(rgb):
    """La and RGBa (alpha premultiplied): opaque pixels keep their values; Pillow cannot turn La into RGB."""
    rgba = np.concatenate([rgb, np.full((12, 17, 1), 255, np.uint8)], axis=2)
    np.testing.assert_array_equal(load_image(Image.fromarray(rgba, mode="RGBA").convert("RGBa")), rgb)
    gray = Image.fromarray(rgb).convert("L")
    la = Image.merge("LA", (gray, Image.new("L", gray.size, 255))).convert("La")
    np.testing.assert_array_equal(load_image(la), np.repeat(np.asarray(gray)[..., None], 3, axis=2))


def test_palette_and_16_bit_images(rgb, tmp_path):
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    np.testing.assert_array_equal(load_image(pal), np.asarray(pal.convert("RGB")))
    wide = (np.arange(12 * 17, dtype=np.uint16).reshape(12, 17) * 300)
    path = tmp_path / "wide.png"
    Image.fromarray(wide).save(path)
    out = load_image(path)
    np.testing.assert_array_equal(out[..., 0], ((wide.astype(np.int64) + 128) // 257).astype(np.uint8))


def test_a_dark_16_bit_png_in_mode_I_is_scaled_whatever_its_brightest_pixel():
    """Older Pillow opens 16-bit PNGs as mode "I": one of values up to 255 is still 16-bit."""
    dark = np.array([[0, 200], [255, 100]], dtype=np.int32)
    png = Image.fromarray(dark, mode="I")
    png.format = "PNG"  # as Image.open sets it
    np.testing.assert_array_equal(load_image(png)[..., 0], (dark + 128) // 257)
    np.testing.assert_array_equal(load_image(Image.fromarray(dark, mode="I"))[..., 0], dark)  # made in memory


def orientation_tag(orientation: int) -> Image.Exif:
    """EXIF saying how to turn the stored pixels for display."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


@pytest.mark.parametrize("orientation, displayed", [
    (1, lambda a: a),
    (3, lambda a: np.rot90(a, 2)),         # upside down
    (6, lambda a: np.rot90(a, -1)),        # turn clockwise to display (portrait phone photo)
    (8, lambda a: np.rot90(a, 1)),         # turn counter-clockwise
    (2, lambda a: a[:, ::-1]),             # mirrored
])
def test_exif_orientation_gives_the_image_as_displayed(rgb, tmp_path, orientation, displayed):
    path = tmp_path / "photo.png"
    Image.fromarray(rgb).save(path, exif=orientation_tag(orientation))
    expected = displayed(rgb)
    np.testing.assert_array_equal(load_image(path), expected)
    with Image.open(path) as opened:
        np.testing.assert_array_equal(load_image(opened), expected)
        assert opened.size == (17, 12), "the caller's PIL image is not turned in place"


def test_inputs_that_cannot_be_an_image_say_why(rgb, monkeypatch):
    cases = [("https://example.com/cat.jpg", ValueError, "is a URL: images are read from local files"),
             ("file:///tmp/cat.jpg", ValueError, "is a URL"),
             ("", ValueError, "empty image path"),
             (np.stack([rgb, rgb]), ValueError, "for a batch, pass the 4-D batch itself to Runtime.segment_batch"),
             (torch.zeros(3, 4, 4, device="meta"), ValueError, "meta device holds no pixels"),
             (3, TypeError, "cannot read an image from 'int'")]
    for src, error, message in cases:
        with pytest.raises(error, match=message):
            load_image(src)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # arrays stop where files do: 2x this many pixels
    assert load_image(rgb[:10, :10]).shape == (10, 10, 3)
    with pytest.raises(ValueError, match=r"17x12 = 204 pixels is past the limit of 100 .*MAX_IMAGE_PIXELS"):
        load_image(rgb)


def test_an_8_bit_image_stored_as_uint16_is_warned_about(rgb):
    with pytest.warns(UserWarning, match="uint16 image array holding only values 0-255"):
        dark = load_image(rgb.astype(np.uint16))
    assert dark.max() <= 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_image(rgb.astype(np.uint16) * 257)  # real 16-bit values: no warning
    gray = rgb[..., 0].astype(np.uint16)
    with pytest.warns(UserWarning, match="'I;16' image holding only values 0-255"):  # the same pixels as a PIL image
        assert load_image(Image.fromarray(gray)).max() <= 1


def test_tensors_are_channels_first(rgb):
    chw = torch.from_numpy(rgb).permute(2, 0, 1)
    np.testing.assert_array_equal(load_image(chw), rgb)
    np.testing.assert_array_equal(load_image(chw.float() / 255.0), rgb)
    with pytest.raises(ValueError, match="channels first"):
        load_image(torch.from_numpy(rgb))  # HxWx3 tensor: 12 rows is not a channel count
    with pytest.raises(ValueError, match="for a batch, pass the 4-D batch itself to Runtime.segment_batch"):
        load_image(chw[None])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        load_image(chw.float())
    with pytest.raises(TypeError, match="uint8"):
        load_image(chw.long())
    strip = rgb[:3]  # a 3x17 image: as a tensor channels last, (3, 17, 3) also reads as 3 channels of 17x3
    with pytest.warns(UserWarning, match=r"shape \(3, 17, 3\) is read channels first .*t.permute\(2, 0, 1\)"):
        assert load_image(torch.from_numpy(strip)).shape == (17, 3, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # unambiguous shapes say nothing
        np.testing.assert_array_equal(load_image(torch.from_numpy(strip).permute(2, 0, 1)), strip)
        load_image(torch.zeros(20, 3, dtype=torch.uint8))  # HxW


def test_float_and_16_bit_arrays_as_tensors_and_files_are(rgb, tmp_path):
    np.testing.assert_array_equal(load_image(rgb.astype(np.float64) / 255), rgb)
    np.testing.assert_array_equal(load_image(rgb.astype(np.float32) / 255), rgb)
    with pytest.raises(ValueError, match=r"float image arrays must hold values in \[0, 1\], got \[0.0, 255.0\]; "
                                         r"pass uint8 arrays"):
        load_image(rgb.astype(np.float32))
    overshoot = rgb.astype(np.float32) / 255
    overshoot[0, 0, 0] = np.nextafter(np.float32(1), np.float32(2))  # rounding past 1 must not print as 1
    with pytest.raises(ValueError, match=r"got \[0.0, 1.0000001192092896\]; clip them to \[0, 1\]"):
        load_image(overshoot)
    with pytest.raises(ValueError, match=r"float image tensors .* got \[0.0, 1.0000001192092896\]; clip them"):
        load_image(torch.from_numpy(overshoot).permute(2, 0, 1))
    wide = rgb.astype(np.float64) / 255
    wide[0, 0, 0] = np.nextafter(1.0, 2.0)
    with pytest.raises(ValueError, match=r"got \[0.0, 1.0000000000000002\]; clip them"):
        load_image(wide)
    with pytest.raises(ValueError, match=r"got \[-1.0, 1.0\]; scale them to \[0, 1\]"):
        load_image(wide.clip(0, 1) * 2 - 1)
    with pytest.raises(ValueError, match=r"got \[nan, nan\]; they hold NaN"):
        load_image(np.full((2, 2, 3), np.nan))
    wide = (np.arange(12 * 17, dtype=np.uint16).reshape(12, 17) * 300)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    np.testing.assert_array_equal(load_image(wide), load_image(tmp_path / "wide.png"))
    np.testing.assert_array_equal(load_image(wide.astype(">u2")), load_image(wide))  # big-endian too
    with pytest.raises(TypeError, match="uint8 .*, uint16 .* or float in \\[0, 1\\], got bool"):
        load_image(rgb > 100)


def test_a_closed_pil_image_and_a_folder_are_named(rgb, tmp_path):
    Image.fromarray(rgb).save(tmp_path / "a.png")
    with Image.open(tmp_path / "a.png") as im:
        pass
    with pytest.raises(ValueError, match="the PIL image is closed"):
        load_image(im)
    with Image.open(tmp_path / "a.png") as loaded:
        loaded.load()
    np.testing.assert_array_equal(load_image(loaded), rgb)  # closed after loading: its pixels are there
    with pytest.raises(ValueError, match="is a folder, not an image file"):
        load_image(tmp_path)


def test_bad_arrays_and_types(rgb):
    with pytest.raises(ValueError, match="HxWx3"):
        load_image(rgb[..., :2])
    with pytest.raises(ValueError, match="empty"):
        load_image(np.zeros((0, 4, 3), np.uint8))
    with pytest.raises(TypeError, match="list"):
        load_image([[1, 2, 3]])


def test_unreadable_files_name_the_path(tmp_path, rgb):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        load_image(missing)
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="garbage.png"):
        load_image(garbage)
    good = tmp_path / "cut.png"
    Image.fromarray(rgb).save(good)
    cut = tmp_path / "cut_short.png"
    cut.write_bytes(good.read_bytes()[:60])
    with pytest.raises(ValueError, match="cut_short.png"):
        load_image(cut)


def test_overlay_blends_with_class_colours(rgb):
    labels = np.zeros((12, 17), np.int64)
    labels[:, 8:] = 1
    pal = np.array([[255, 0, 0], [0, 0, 255]], np.uint8)
    np.testing.assert_array_equal(np.asarray(overlay(rgb, labels, pal, alpha=0.0)), rgb)
    np.testing.assert_array_equal(np.asarray(overlay(rgb, labels, pal, alpha=1.0)), colorize(labels, pal))
    half = np.asarray(overlay(rgb, labels, pal, alpha=0.5)).astype(int)
    expected = (rgb.astype(float) + colorize(labels, pal)) / 2
    assert np.abs(half - expected).max() <= 0.5 + 1e-9
    with pytest.raises(ValueError, match=r"labels of shape \(17, 12\) do not match the image's \(height, width\) "
                                         r"\(12, 17\)"):
        overlay(rgb, labels.T, pal)
    for alpha in (1.5, None, float("nan"), True):
        with pytest.raises(ValueError, match="alpha must be a number in"):
            overlay(rgb, labels, pal, alpha=alpha)


def test_save_labels_round_trip_8_and_16_bit(tmp_path):
    small = np.random.default_rng(1).integers(0, 150, size=(9, 11))
    save_labels(small, tmp_path / "small.png")
    back = np.asarray(Image.open(tmp_path / "small.png"))
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, small)
    big = np.random.default_rng(2).integers(0, 1000, size=(9, 11))
    save_labels(big, tmp_path / "big.png")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "big.png")).astype(np.int64), big)
    with pytest.raises(ValueError, match="0..65535"):
        save_labels(-small, tmp_path / "neg.png")
    assert not (tmp_path / "neg.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.png", "small.png"], "no temporary files left"
    save_labels(small, tmp_path / "of_300.png", num_classes=300)  # every map of a 300-class model is 16-bit
    back = np.asarray(Image.open(tmp_path / "of_300.png"))
    assert back.dtype != np.uint8 and np.array_equal(back.astype(np.int64), small)


def test_image_grid_layout(rgb):
    grid = np.asarray(image_grid([[rgb, rgb], [rgb[:5]]], gap=2))
    assert grid.shape == (2 * 12 + 2, 2 * 17 + 2, 3)
    np.testing.assert_array_equal(grid[:12, :17], rgb)
    np.testing.assert_array_equal(grid[14:19, :17], rgb[:5])
    assert (grid[14:, 19:] == 255).all()  # the missing cell stays blank


@pytest.mark.parametrize("mode, fix", [("F", r"pass np.asarray\(image\) scaled to \[0, 1\]"),
                                       ("LAB", "convert to RGB first")])
def test_modes_without_a_plain_rgb_meaning_are_refused(mode, fix):
    im = Image.new(mode, (4, 3))
    with pytest.raises(ValueError, match=f"'{mode}' images are not taken.*: {fix}"):
        load_image(im)
