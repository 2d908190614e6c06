"""Whole-image and sliding-window inference helpers."""
import pytest
import torch

import segvit_rt
from segvit_rt.inference import model_logits_fn, predict_labels, slide_scores, whole_scores, window_starts
from segvit_rt.inference import test_size as resize_for_test
from segvit_rt.ops.reference import semantic_logits


def test_windows_cover_the_axis_and_end_flush():
    assert window_starts(200, 128, 96) == [0, 72]
    assert window_starts(128, 128, 96) == [0]
    assert window_starts(100, 128, 96) == [0]  # smaller than a crop: one padded window
    starts = window_starts(1000, 640, 608)
    assert starts[0] == 0 and starts[-1] == 1000 - 640
    covered = set()
    for s in window_starts(517, 128, 96):
        covered |= set(range(s, s + 128))
    assert covered == set(range(517))


def test_test_resize_follows_mmseg_keep_ratio():
    assert resize_for_test(512, 683, 640) == (640, 854)  # short side to 640
    assert resize_for_test(100, 1000, 128) == (51, 512)  # long side capped at 4x crop
    assert resize_for_test(1, 5000, 128) == (1, 512)  # a strip keeps one row
    # PASCAL-Context's official test resize: scale (520, 520), min_size 480 -> short side 520, long side free
    assert resize_for_test(375, 500, 480, (520, 520), 480) == (520, 693)
    assert resize_for_test(100, 2000, 480, (520, 520), 480) == (520, 10400)
    assert resize_for_test(375, 500, 480, (520, 520)) == (390, 520)  # without min_size: fit inside 520x520
    assert resize_for_test(5000, 1, 128) == (512, 1)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return segvit_rt.create_model("tiny", "full").eval()


def test_slide_equals_whole_when_image_is_one_crop(model):
    x = torch.randn(1, 3, 128, 128)
    fn = model_logits_fn(model)
    with torch.no_grad():
        torch.testing.assert_close(slide_scores(fn, x, 128, 96), whole_scores(fn, x))


def test_slide_averages_overlapping_windows(model):
    x = torch.randn(1, 3, 128, 200)
    fn = model_logits_fn(model)
    with torch.no_grad():
        scores = slide_scores(fn, x, 128, 96)
        left = semantic_logits(*fn(x[..., :128]), (128, 128))
        right = semantic_logits(*fn(x[..., 72:]), (128, 128))
    torch.testing.assert_close(scores[..., :72], left[..., :72])
    torch.testing.assert_close(scores[..., 128:], right[..., 56:])
    torch.testing.assert_close(scores[..., 72:128], (left[..., 72:] + right[..., :56]) / 2)


def test_predict_labels_resizes_to_the_original_and_checks_mode(model):
    x = torch.randn(2, 3, 96, 150)  # smaller than a crop on one side, not a multiple of 32
    fn = model_logits_fn(model)
    with torch.no_grad():
        for mode in ("slide", "whole"):
            labels = predict_labels(fn, x, 128, 96, mode=mode, out_hw=(50, 75))
            assert labels.shape == (2, 50, 75) and labels.dtype == torch.int64
    with pytest.raises(ValueError, match="inference mode"):
        predict_labels(fn, x, 128, 96, mode="tiles")


def test_a_stride_past_the_crop_is_refused():
    with pytest.raises(ValueError, match="stride must be in 1..crop"):
        slide_scores(lambda x: None, torch.zeros(1, 3, 100, 100), crop=32, stride=40)


def _pixelwise_logits_fn(num_classes=3, seed=0):
    """A ``logits_fn`` whose scores at each pixel depend only on that pixel: query q's mask logit is a
    linear function of the pixel's channels, at the input's own resolution, and query q votes for
    class q. Sliding windows and the whole image must then give the same scores everywhere."""
    g = torch.Generator().manual_seed(seed)
    weight = 3 * torch.randn(num_classes, 3, generator=g)
    votes = torch.full((num_classes, num_classes + 1), -4.0)
    votes[torch.arange(num_classes), torch.arange(num_classes)] = 4.0

    def run(x):
        return votes.expand(x.shape[0], -1, -1), torch.einsum("qc,nchw->nqhw", weight, x)

    return run


@pytest.mark.parametrize("mode", ["slide", "whole"])
@pytest.mark.parametrize("scale, test_hw", [(None, (64, 137)), ((100, 40), (40, 86))],
                         ids=["three-windows", "windows-padded"])
def test_predict_image_resizes_scores_back_and_windows_add_up(mode, scale, test_hw):
    """With pixel-wise scores, ``predict_image`` must equal: resize the image to the test size
    (bilinear), score it, resize the scores to the original size (bilinear), argmax. The 70x150
    image (crop 64, stride 48) becomes 64x137, one row of three overlapping windows, or with a
    test scale of (100, 40), 40x86: two windows zero-padded to the crop."""
    from segvit_rt.inference import predict_image

    fn = _pixelwise_logits_fn()
    image = torch.nn.functional.interpolate(torch.randn(2, 3, 9, 19), size=(70, 150), mode="bilinear")
    resized = torch.nn.functional.interpolate(image, size=test_hw, mode="bilinear", align_corners=False)
    scores = semantic_logits(*fn(resized), test_hw)
    expected = torch.nn.functional.interpolate(scores, size=(70, 150), mode="bilinear", align_corners=False)
    expected = expected.argmax(1)
    assert len(expected.unique()) == 3
    labels = predict_image(fn, image, crop=64, stride=48, mode=mode, scale=scale)
    assert labels.shape == (2, 70, 150)
    assert torch.equal(labels, expected)
