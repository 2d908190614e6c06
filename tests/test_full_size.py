"""Banded upsample-and-argmax (``ops.full_size``) against the full-size computation it stands in for."""
import pytest
import torch
import torch.nn.functional as F

from segvit_rt import inference, ops
from segvit_rt.ops import full_size, reference

SIZES = [((40, 53), (640, 853)), ((7, 5), (100, 33)), ((30, 30), (31, 29)), ((1, 1), (5, 7)), ((12, 9), (3, 2))]


@pytest.mark.parametrize("in_hw, out_hw", SIZES)
def test_band_rows_are_bilinear_interpolation(in_hw, out_hw):
    x = torch.randn(2, 3, *in_hw, generator=torch.Generator().manual_seed(0))
    full = F.interpolate(x, size=out_hw, mode="bilinear", align_corners=False)
    rows = full_size.bilinear_taps(in_hw[0], out_hw[0], x.device)
    cols = full_size.bilinear_taps(in_hw[1], out_hw[1], x.device)
    y0, y1 = out_hw[0] // 3, out_hw[0] // 3 + max(1, out_hw[0] // 2)
    torch.testing.assert_close(full_size.upsample_band(x, rows, cols, y0, y1), full[..., y0:y1, :], rtol=0, atol=2e-5)


def test_upsample_argmax_in_class_chunks_is_exact():
    scores = torch.randn(2, 9, 40, 53, generator=torch.Generator().manual_seed(1))
    scores[:, 4] = scores[:, 2]  # ties go to the lower class, as argmax
    full = F.interpolate(scores, size=(301, 405), mode="bilinear", align_corners=False).argmax(1)
    for classes_per_chunk in (1, 2, 4, 9):
        labels = full_size.upsample_argmax(scores, (301, 405), budget=4 * 2 * 301 * 405 * classes_per_chunk)
        assert torch.equal(labels, full)


def test_nan_scores_give_argmax_labels():
    scores = torch.randn(1, 5, 6, 7, generator=torch.Generator().manual_seed(5))
    scores[0, 1, 2:4, 1:5] = float("nan")
    scores[0, 3, 1:3, :] = float("nan")
    full = F.interpolate(scores, size=(11, 11), mode="bilinear", align_corners=False).argmax(1)
    assert torch.equal(full_size.upsample_argmax(scores, (11, 11), budget=4 * 11 * 11 * 2), full)


def test_segment_postprocess_in_bands_matches_the_reference():
    g = torch.Generator().manual_seed(2)
    cls, masks = torch.randn(2, 12, 8, generator=g), 3 * torch.randn(2, 12, 16, 16, generator=g)
    expected = reference.segment_postprocess(cls, masks, (250, 333))
    got = full_size.segment_postprocess(cls, masks, (250, 333), budget=50_000)
    assert got.shape == expected.shape and (got == expected).float().mean() >= 0.9999


def test_large_outputs_switch_to_bands(monkeypatch):
    """Above the budget, ``ops.segment_postprocess`` runs in bands."""
    calls = []
    original = full_size.segment_postprocess
    monkeypatch.setattr(full_size, "segment_postprocess", lambda *a, **k: (calls.append(1), original(*a, **k))[1])
    g = torch.Generator().manual_seed(3)
    cls, masks = torch.randn(1, 6, 5, generator=g), torch.randn(1, 6, 8, 8, generator=g)
    small = ops.segment_postprocess(cls, masks, (64, 64))
    assert calls == []
    monkeypatch.setattr(full_size, "BUDGET", 4 * 11 * 64 * 5)  # about 5 rows of 11 channels
    assert (ops.segment_postprocess(cls, masks, (64, 64)) == small).float().mean() >= 0.999
    assert calls == [1]


def test_predicted_labels_are_the_argmax_of_the_resized_scores():
    g = torch.Generator().manual_seed(4)
    cls, masks, img = torch.randn(1, 6, 5, generator=g), torch.randn(1, 6, 8, 8, generator=g), torch.randn(1, 3, 32, 40)

    def logits_fn(x):
        return cls.expand(x.shape[0], -1, -1), masks.expand(x.shape[0], -1, -1, -1)

    scores = inference.slide_scores(logits_fn, img, 32, 24)
    expected = F.interpolate(scores, size=(77, 51), mode="bilinear", align_corners=False).argmax(1)
    assert torch.equal(inference.predict_labels(logits_fn, img, 32, 24, out_hw=(77, 51)), expected)
