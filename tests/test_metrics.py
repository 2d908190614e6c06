"""Confusion-matrix metrics against counts worked out by hand."""
import math

import pytest
import torch

from segvit_rt.metrics import ConfusionMatrix, chance_levels

IGN = 255


def test_hand_counted_case():
    label = torch.tensor([[0, 0, 0, 1], [1, 2, IGN, IGN]])
    pred = torch.tensor([[0, 0, 1, 1], [0, 2, 3, 0]])
    cm = ConfusionMatrix(4)
    cm.update(pred, label)
    m = cm.compute()
    # class 0: TP 2, FN 1 (->1), FP 1 (label 1 -> 0): IoU 2/4. class 1: TP 1, FN 1, FP 1: 1/3.
    # class 2: TP 1: 1. class 3: only predicted on an ignored pixel, never labelled: no IoU.
    assert m["IoU"][:3] == pytest.approx([0.5, 1 / 3, 1.0])
    assert math.isnan(m["IoU"][3]) and math.isnan(m["Acc"][3])
    assert m["mIoU"] == pytest.approx((0.5 + 1 / 3 + 1.0) / 3)
    assert m["aAcc"] == pytest.approx(4 / 6)
    assert m["Acc"][:3] == pytest.approx([2 / 3, 1 / 2, 1.0])
    assert m["mAcc"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)


def test_predicted_but_unlabelled_class_scores_zero():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]))
    m = cm.compute()
    assert m["IoU"][0] == pytest.approx(0.5) and m["IoU"][1] == pytest.approx(0.5)
    assert math.isnan(m["IoU"][2])
    cm.update(torch.tensor([2]), torch.tensor([1]))  # now class 2 is predicted, never labelled
    assert cm.compute()["IoU"][2] == 0.0


def test_batches_accumulate_like_one_batch():
    g = torch.Generator().manual_seed(0)
    label = torch.randint(0, 5, (4, 16, 16), generator=g)
    label[label == 4] = IGN
    pred = torch.randint(0, 4, (4, 16, 16), generator=g)
    whole, parts = ConfusionMatrix(4), ConfusionMatrix(4)
    whole.update(pred, label)
    for i in range(4):
        parts.update(pred[i], label[i])
    assert torch.equal(whole.mat, parts.mat)
    assert whole.mat.sum().item() == (label != IGN).sum().item()


def test_perfect_prediction():
    label = torch.tensor([[0, 1], [2, IGN]])
    cm = ConfusionMatrix(3)
    cm.update(label.clamp(max=2), label)
    m = cm.compute()
    assert m["mIoU"] == 1.0 and m["aAcc"] == 1.0


@pytest.mark.parametrize(
    "pred, label, error, match",
    [
        (torch.tensor([0, 1]), torch.tensor([0, 1, 1]), ValueError, "shape"),
        (torch.tensor([0, 3]), torch.tensor([0, 1]), ValueError, r"prediction values \[3\]"),
        (torch.tensor([0, 1]), torch.tensor([0, 7]), ValueError, r"label values \[7\]"),
        (torch.tensor([0.0, 1.0]), torch.tensor([0, 1]), TypeError, "integer"),
    ],
)
def test_bad_inputs_raise(pred, label, error, match):
    with pytest.raises(error, match=match):
        ConfusionMatrix(3).update(pred, label)


def test_chance_levels_by_hand():
    c = chance_levels(torch.tensor([6, 2, 0, 2]))
    # constant "class 0": IoU 6/10 for class 0, 0 for classes 1 and 3 (class 2 never labelled).
    assert c["constant_mIoU"] == pytest.approx(0.6 / 3)
    assert c["constant_aAcc"] == pytest.approx(0.6)
    # uniform over 4 classes: IoU_c = n_c / (N + 3 n_c); class 2 is predicted, never labelled: IoU 0
    assert c["random_mIoU"] == pytest.approx((6 / 28 + 2 / 16 + 0 + 2 / 16) / 4)
    assert c["random_aAcc"] == 0.25
    assert chance_levels(torch.zeros(4)) is None  # nothing labelled: no chance level to speak of


@pytest.mark.parametrize("counts", [[50_000, 30_000, 15_000, 5_000], [60_000, 40_000, 0, 0, 0]])
def test_random_chance_formula_matches_simulation(counts):
    """Also with classes never labelled, which the uniform prediction still predicts."""
    g = torch.Generator().manual_seed(0)
    counts = torch.tensor(counts)
    label = torch.repeat_interleave(torch.arange(len(counts)), counts)
    cm = ConfusionMatrix(len(counts))
    cm.update(torch.randint(0, len(counts), label.shape, generator=g), label)
    simulated = cm.compute()
    c = chance_levels(counts)
    assert simulated["mIoU"] == pytest.approx(c["random_mIoU"], abs=5e-3)
    assert simulated["aAcc"] == pytest.approx(c["random_aAcc"], abs=5e-3)
