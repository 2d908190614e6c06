"""ATM loss against values computed by hand (closed forms with ``math``), not by the code under test."""
import math

import pytest
import torch

from segvit_rt.training.losses import ATMLoss, present_classes, sigmoid_focal_loss

IGN = 255


def sig(x):
    return 1 / (1 + math.exp(-x))


def nll(logits, target):
    """-log softmax(logits)[target]."""
    return -logits[target] + math.log(sum(math.exp(v) for v in logits))


def focal(x, t, alpha=0.25, gamma=2.0):
    p = sig(x)
    if t == 1:
        return alpha * (1 - p) ** gamma * -math.log(p)
    return (1 - alpha) * p**gamma * -math.log(1 - p)


def dice(xs, ts):
    ps = [sig(x) for x in xs]
    return 1 - (2 * sum(p * t for p, t in zip(ps, ts)) + 1) / (sum(ps) + sum(ts) + 1)


def outputs(logits, masks):
    return {"pred_logits": torch.tensor(logits, dtype=torch.float64), "pred_masks": torch.tensor(masks, dtype=torch.float64)}


def test_focal_matches_closed_form():
    x = torch.tensor([-2.0, 0.3, 1.5, 0.0], dtype=torch.float64)
    t = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    got = sigmoid_focal_loss(x, t)
    want = [focal(xi, int(ti)) for xi, ti in zip(x.tolist(), t.tolist())]
    assert got.tolist() == pytest.approx(want, rel=1e-12)


def test_one_present_class_one_absent():
    # 2 classes; the 1x2 label map holds class 0 only, so query 1's target is "no object" (index 2, weight 0.1).
    a, b = [1.0, -0.5, 0.2], [0.3, 0.1, -0.4]
    m0, m1 = 0.7, -1.2  # 1x1 mask logits: bilinear upsampling keeps them constant
    loss = ATMLoss(num_classes=2)(outputs([[a, b]], [[[[m0]], [[m1]]]]), torch.tensor([[[0, 0]]]))
    ce = (1.0 * nll(a, 0) + 0.1 * nll(b, 2)) / 1.1
    focal_0 = focal(m0, 1)  # the mean over two identical pixels
    dice_0 = dice([m0, m0], [1, 1])
    assert loss["ce"].item() == pytest.approx(ce, rel=1e-12)
    assert loss["focal"].item() == pytest.approx(focal_0, rel=1e-12)
    assert loss["dice"].item() == pytest.approx(dice_0, rel=1e-12)
    assert loss["loss"].item() == pytest.approx(ce + 20 * focal_0 + dice_0, rel=1e-12)


def test_upsampled_masks_ignore_pixels_and_two_present_classes():
    # Labels 1x4: [0, ignore, 1, 1]. Mask logits on a 1x2 grid are upsampled bilinearly
    # (align_corners=False) to 1x4: [x0, (3x0 + x1)/4, (x0 + 3x1)/4, x1].
    la, lb = [2.0, -1.0, 0.5], [-0.3, 0.8, 0.0]
    grid = {0: (1.5, -2.0), 1: (-0.5, 1.0)}

    def upsampled(c):
        x0, x1 = grid[c]
        return [x0, (3 * x0 + x1) / 4, (x0 + 3 * x1) / 4, x1]

    masks = [[[list(grid[0])], [list(grid[1])]]]
    loss = ATMLoss(num_classes=2)(outputs([[la, lb]], masks), torch.tensor([[[0, IGN, 1, 1]]]))
    kept = (0, 2, 3)  # pixel 1 is ignored
    targets = {0: (1, 0, 0), 1: (0, 1, 1)}
    focal_c, dice_c = [], []
    for c in (0, 1):
        xs = [upsampled(c)[i] for i in kept]
        focal_c.append(sum(focal(x, t) for x, t in zip(xs, targets[c])) / 3)
        dice_c.append(dice(xs, targets[c]))
    assert loss["ce"].item() == pytest.approx((nll(la, 0) + nll(lb, 1)) / 2, rel=1e-12)
    assert loss["focal"].item() == pytest.approx(sum(focal_c) / 2, rel=1e-12)
    assert loss["dice"].item() == pytest.approx(sum(dice_c) / 2, rel=1e-12)


def test_no_present_class_gives_zero_mask_losses_and_keeps_gradients():
    la, lb = [0.2, 0.4, 1.0], [-1.0, 0.0, 0.5]
    out = outputs([[la, lb]], [[[[0.3]], [[-0.3]]]])
    out["pred_masks"].requires_grad_(True)
    loss = ATMLoss(num_classes=2)(out, torch.tensor([[[IGN, IGN]]]))
    assert loss["ce"].item() == pytest.approx((nll(la, 2) + nll(lb, 2)) / 2, rel=1e-12)  # weights cancel
    assert loss["focal"].item() == 0.0 and loss["dice"].item() == 0.0
    loss["loss"].backward()
    assert out["pred_masks"].grad is not None and not out["pred_masks"].grad.any()


def test_aux_outputs_add_their_own_terms():
    torch.manual_seed(0)
    labels = torch.tensor([[[0, 1], [1, IGN]], [[2, 2], [0, 2]]])
    final, aux = (outputs(torch.randn(2, 3, 4).tolist(), torch.randn(2, 3, 1, 1).tolist()) for _ in range(2))
    crit = ATMLoss(num_classes=3)
    alone = crit(final, labels)
    together = crit({**final, "aux_outputs": [aux]}, labels)
    assert together["loss"].item() == pytest.approx(alone["loss"].item() + crit(aux, labels)["loss"].item(), rel=1e-12)
    assert together["ce"].item() == pytest.approx(alone["ce"].item(), rel=1e-12)  # terms are the final output's


def test_count_reducer_makes_replica_mean_equal_whole_batch_loss():
    """Two replicas with the counts averaged between them: the mean of their losses is the loss of one
    process on the whole batch (and so are the averaged gradients)."""
    torch.manual_seed(1)
    labels = torch.randint(0, 4, (4, 8, 8))
    labels[0] = 3  # replicas see different numbers of present classes
    labels[1, :4] = IGN
    out = outputs(torch.randn(4, 4, 5).tolist(), torch.randn(4, 4, 2, 2).tolist())
    crit = ATMLoss(num_classes=4)
    halves = [{k: v[i : i + 2] for k, v in out.items()} for i in (0, 2)]
    local = []
    for half, lab in zip(halves, (labels[:2], labels[2:])):
        crit(half, lab, count_reducer=lambda c: local.append(c) or c)
    mean_counts = (local[0] + local[1]) / 2
    replica = [crit(h, lab, count_reducer=lambda c: mean_counts)["loss"] for h, lab in zip(halves, (labels[:2], labels[2:]))]
    whole = crit(out, labels)["loss"]
    assert ((replica[0] + replica[1]) / 2).item() == pytest.approx(whole.item(), rel=1e-12)


def test_present_classes_ignores_ignore_pixels():
    labels = torch.tensor([[[0, IGN], [2, 2]], [[IGN, IGN], [IGN, IGN]]])
    assert present_classes(labels, 3).tolist() == [[True, False, True], [False, False, False]]


@pytest.mark.parametrize(
    "labels, match",
    [
        (torch.tensor([[[0, 5]]]), r"outside 0\.\.2"),
        (torch.tensor([[[0.0, 1.0]]]), "int64"),
        (torch.tensor([[0, 1]]), r"\[B, H, W\]"),
    ],
)
def test_bad_labels_raise(labels, match):
    out = outputs(torch.zeros(1, 3, 4).tolist(), torch.zeros(1, 3, 1, 1).tolist())
    with pytest.raises(ValueError, match=match):
        ATMLoss(num_classes=3)(out, labels)


def test_outputs_for_another_class_count_raise():
    out = outputs(torch.zeros(1, 4, 5).tolist(), torch.zeros(1, 4, 1, 1).tolist())
    with pytest.raises(ValueError, match="for 3 classes"):
        ATMLoss(num_classes=3)(out, torch.zeros(1, 2, 2, dtype=torch.int64))
