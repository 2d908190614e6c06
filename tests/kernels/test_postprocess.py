"""Fused segmentation post-process (``segvit_rt::segment_postprocess``) against the float64 reference.

Labels must equal the reference's argmax except at near-ties: every mismatch
must sit where the reference's top-two class scores differ by less than 1e-4
relative. Without CUDA the kernel runs through the Triton interpreter (small
shapes; Q, C and pixel counts that are not multiples of the 16/32-wide
interpreter blocks exercise the masked tails). The real 640×640 shape runs
under ``@pytest.mark.gpu``.
"""
import importlib

import pytest
import torch
import triton

from segvit_rt.kernels.segment_postprocess import launch, pack_inputs, segment_postprocess, segment_postprocess_op
from segvit_rt.ops import reference

pp_module = importlib.import_module("segvit_rt.kernels.segment_postprocess")
NEAR_TIE = 1e-4


def _random_inputs(b, q, c, h, w, device, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    class_logits = (2 * torch.randn(b, q, c + 1, generator=g)).to(device=device, dtype=dtype)
    mask_logits = (3 * torch.randn(b, q, h, w, generator=g)).to(device=device, dtype=dtype)
    return class_logits, mask_logits


def _reference64(class_logits, mask_logits, out_hw):
    """Reference scores [B, C, H, W] in float64 from the (possibly low-precision) inputs."""
    return reference.semantic_logits(class_logits.double(), mask_logits.double(), out_hw)


def assert_labels_match(labels, scores64, max_score=None):
    """Labels equal the float64 argmax except where its top-two scores are within 1e-4 relative."""
    assert labels.dtype == torch.int64 and labels.shape == scores64[:, 0].shape
    top2 = scores64.topk(2, dim=1).values
    gap = (top2[:, 0] - top2[:, 1]) / top2[:, 0].abs().clamp_min(1e-30)
    wrong = labels != scores64.argmax(dim=1)
    assert bool((gap[wrong] < NEAR_TIE).all()), (
        f"{int(wrong.sum())} labels differ from the reference, smallest relative top-2 gap among them "
        f"{gap[wrong].max().item():.3g} (allowed < {NEAR_TIE})"
    )
    if max_score is not None:
        assert max_score.dtype == torch.float32
        torch.testing.assert_close(max_score.double(), top2[:, 0], atol=1e-5, rtol=1e-5)


# (B, Q, C, h, w, H, W): odd Q/C, out sizes that are odd or non-multiples of the grid, upscaling,
# the identity size and a downscale.
SHAPES = [
    (2, 7, 5, 3, 5, 13, 21),
    (1, 20, 19, 8, 8, 8, 8),
    (2, 33, 17, 5, 4, 37, 31),
    (1, 12, 3, 9, 7, 5, 4),
    (1, 9, 70, 4, 5, 11, 9),  # 70 classes: three 32-wide interpreter class blocks, the last one partial
]


@pytest.mark.parametrize("b, q, c, h, w, out_h, out_w", SHAPES)
def test_random_inputs_match_reference_up_to_near_ties(device, b, q, c, h, w, out_h, out_w):
    class_logits, mask_logits = _random_inputs(b, q, c, h, w, device)
    labels, max_score = segment_postprocess(class_logits, mask_logits, (out_h, out_w), return_scores=True)
    assert_labels_match(labels, _reference64(class_logits, mask_logits, (out_h, out_w)), max_score)
    # Without scores the op returns the same labels alone.
    assert torch.equal(segment_postprocess(class_logits, mask_logits, (out_h, out_w)), labels)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_input_dtypes_and_strided_masks(device, dtype):
    """Low-precision and float64 inputs, masks stored channels-last (non-contiguous [B, Q, h, w] view)."""
    b, q, c, h, w = 2, 11, 6, 5, 6
    class_logits, mask_logits = _random_inputs(b, q, c, h, w, device, dtype=dtype, seed=4)
    mask_logits = mask_logits.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    assert not mask_logits.is_contiguous()
    labels, max_score = segment_postprocess(class_logits, mask_logits, (23, 17), return_scores=True)
    assert_labels_match(labels, _reference64(class_logits, mask_logits, (23, 17)), max_score)


def _blobs(b, q, c, h, w, device, seed=0):
    """Query 0 covers the image at logit 0 and votes for one class; each other query owns one disc
    (+8 inside, -8 outside; discs on a lattice, never overlapping) and votes for its own class."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    cols = max(1, round(((q - 1) * w / h) ** 0.5))
    rows = -(-(q - 1) // cols)
    cell_h, cell_w = h / rows, w / cols
    radius = 0.35 * min(cell_h, cell_w)
    mask_logits = torch.full((b, q, h, w), -8.0)
    mask_logits[:, 0] = 0.0
    class_logits = torch.full((b, q, c + 1), -6.0)
    for i in range(b):
        classes = torch.randperm(c, generator=g)[:q]
        class_logits[i, torch.arange(q), classes] = 6.0
        for j in range(1, q):
            cy, cx = ((j - 1) // cols + 0.5) * cell_h, ((j - 1) % cols + 0.5) * cell_w
            mask_logits[i, j][(ys - cy) ** 2 + (xs - cx) ** 2 < radius**2] = 8.0
    return class_logits.to(device), mask_logits.to(device)


def test_well_separated_blobs_match_exactly(device):
    """Structured input with unambiguous answers: the labels must equal the reference everywhere."""
    b, q, c, h, w, out_hw = 2, 7, 9, 14, 20, (61, 87)
    class_logits, mask_logits = _blobs(b, q, c, h, w, device)
    scores64 = _reference64(class_logits, mask_logits, out_hw)
    top2 = scores64.topk(2, dim=1).values
    ref_labels = scores64.argmax(dim=1)
    # Pixels whose top two classes are close are few (blob borders); away from them the answer is clear.
    clear = (top2[:, 0] - top2[:, 1]) / top2[:, 0] > 1e-2
    assert clear.float().mean() > 0.9 and len(ref_labels.unique()) > 2
    labels = segment_postprocess(class_logits, mask_logits, out_hw)
    assert torch.equal(labels[clear], ref_labels[clear])
    assert_labels_match(labels, scores64)


@pytest.mark.parametrize("tied", [[37, 3, 20], [65, 50, 33]], ids=["lowest-in-block-0", "lowest-in-block-1"])
def test_exact_ties_pick_the_lowest_class(device, tied):
    """Exactly tied classes resolve to the lowest index like torch.argmax, within and across class blocks
    (32 wide under the interpreter; the second case's winner is class 33, in the second block).

    Only query 0 votes for the tied classes (the others give them probability 0), so each tied
    score is the same single product: equal in any summation order."""
    b, q, c, h, w = 1, 5, 70, 4, 4
    class_logits, mask_logits = _random_inputs(b, q, c, h, w, device, seed=7)
    class_logits = class_logits * 0.25
    class_logits[:, 1:, tied] = float("-inf")
    class_logits[:, 0, tied] = 8.0
    mask_logits[:, 0] = 10.0
    lowest = min(tied)
    assert bool((_reference64(class_logits, mask_logits, (9, 7)).argmax(dim=1) == lowest).all())
    assert bool((segment_postprocess(class_logits, mask_logits, (9, 7)) == lowest).all())


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter computes 0 x inf
def test_pixels_whose_scores_are_nan_get_class_0(device):
    """An infinite mask logit makes NaN scores where the bilinear mix weighs it by 0 (0 x inf), at
    every class of those pixels: they get class 0 and max score -inf, without an error; the other
    pixels are unaffected."""
    class_logits, mask_logits = _random_inputs(1, 6, 40, 4, 4, device, seed=11)
    mask_logits[0, 2, 1, 1] = float("-inf")
    labels, max_score = segment_postprocess(class_logits, mask_logits, (8, 8), return_scores=True)
    scores64 = _reference64(class_logits, mask_logits, (8, 8))
    nan = scores64.isnan().any(dim=1)
    assert bool(nan.any()) and bool((~nan).any()) and bool(scores64.isnan().all(dim=1)[nan].all())
    assert bool((labels[nan] == 0).all()) and bool((max_score[nan] == float("-inf")).all())
    top2 = scores64.topk(2, dim=1).values
    clear = ~nan & ((top2[:, 0] - top2[:, 1]) >= NEAR_TIE * top2[:, 0].abs())
    assert torch.equal(labels[clear], scores64.argmax(dim=1)[clear])


def test_poisoned_outputs_are_fully_written(device):
    b, q, c, h, w, out_hw = 2, 9, 7, 3, 4, (11, 13)
    class_logits, mask_logits = _random_inputs(b, q, c, h, w, device, seed=2)
    labels = torch.full((b, *out_hw), -1, dtype=torch.int64, device=device)
    scores = torch.full((b, *out_hw), float("nan"), device=device)
    launch(*pack_inputs(class_logits, mask_logits), c, out_hw, labels, scores)
    assert bool(((labels >= 0) & (labels < c)).all())
    assert_labels_match(labels, _reference64(class_logits, mask_logits, out_hw), scores)


def test_config_pruning_keeps_class_blocks_the_class_count_needs():
    """Configs wider than the padded class count are dropped (they would only compute zeros); when
    none is narrow enough, the narrowest one runs."""
    configs = [triton.Config({"BLOCK_P": 64, "BLOCK_Q": 16, "BLOCK_C": bc}) for bc in (32, 64, 128, 256)]

    def kept(num_classes):
        return [c.kwargs["BLOCK_C"] for c in pp_module._prune_configs(configs, {"num_classes": num_classes})]

    assert kept(150) == [32, 64, 128, 256]
    assert kept(60) == [32, 64]
    assert kept(33) == [32, 64]
    assert kept(32) == [32]
    assert kept(5) == [32]  # 16 would do; none is that narrow


def test_reference_fallback(monkeypatch):
    """The CPU path without the interpreter returns the reference labels and max scores."""
    monkeypatch.setattr(pp_module, "runs_triton", lambda t: False)
    class_logits, mask_logits = _random_inputs(2, 6, 4, 3, 3, "cpu")
    labels, max_score = segment_postprocess(class_logits, mask_logits, (7, 5), return_scores=True)
    scores = reference.semantic_logits(class_logits, mask_logits, (7, 5))
    assert torch.equal(labels, reference.segment_postprocess(class_logits, mask_logits, (7, 5)))
    torch.testing.assert_close(max_score, scores.amax(dim=1))


def test_dispatcher_routes_to_the_fused_op(device, monkeypatch):
    """``segvit_rt.ops.segment_postprocess(impl="triton")`` is what the model's inference calls: it
    runs the kernel."""
    from segvit_rt import ops

    launches = []
    monkeypatch.setattr(pp_module, "launch", lambda *a, **kw: launches.append(1) or launch(*a, **kw))
    class_logits, mask_logits = _random_inputs(1, 6, 5, 4, 4, device, seed=9)
    labels = ops.segment_postprocess(class_logits, mask_logits, torch.Size([10, 9]), impl="triton")
    assert launches == [1]
    assert_labels_match(labels, _reference64(class_logits, mask_logits, (10, 9)))


def test_opcheck_and_export(device):
    class_logits, mask_logits = _random_inputs(1, 5, 4, 3, 3, device, seed=5)
    torch.library.opcheck(segment_postprocess_op, (class_logits, mask_logits, 6, 5, True))

    class PostProcess(torch.nn.Module):
        def forward(self, class_logits, mask_logits):
            return segment_postprocess(class_logits, mask_logits, (6, 5))

    exported = torch.export.export(PostProcess(), (class_logits, mask_logits))
    targets = [str(n.target) for n in exported.graph.nodes if n.op == "call_function"]
    assert "segvit_rt.segment_postprocess.default" in targets
    assert torch.equal(exported.module()(class_logits, mask_logits), PostProcess()(class_logits, mask_logits))


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(class_shape=(2, 3)), ValueError, "class_logits must be 3-D"),
        (dict(class_shape=(2, 3, 1)), ValueError, r"\[B, Q, C\+1\]"),
        (dict(mask_shape=(2, 4, 5, 5)), ValueError, r"mask_logits must be \[B, Q, h, w\]"),
        (dict(mask_shape=(2, 3, 5)), ValueError, "mask_logits must be 4-D"),
        (dict(mask_dtype=torch.int64), TypeError, "mask_logits must have dtype"),
        (dict(out_hw=(0, 8)), ValueError, "out_hw must be positive"),
        (dict(out_hw=(8,)), ValueError, "out_hw must be two ints"),
        (dict(out_hw=(7.9, 5)), ValueError, r"out_hw must be two ints \(H, W\), got \(7.9, 5\)"),
        (dict(mask_device="meta"), ValueError, "share one device"),
    ],
)
def test_bad_inputs_raise_clear_errors(device, change, error, match):
    class_logits = torch.zeros(change.get("class_shape", (2, 3, 5)), device=device)
    mask_logits = torch.zeros(
        change.get("mask_shape", (2, 3, 5, 5)), device=change.get("mask_device", device),
        dtype=change.get("mask_dtype", torch.float32),
    )
    with pytest.raises(error, match=match):
        segment_postprocess(class_logits, mask_logits, change.get("out_hw", (8, 8)))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_ade20k_640_shape_on_gpu(dtype):
    """Q = C = 150 at 640×640 from the 40×40 grid, on random and on blob inputs."""
    out_hw = (640, 640)
    for class_logits, mask_logits in (
        _random_inputs(2, 150, 150, 40, 40, "cuda", dtype=dtype),
        tuple(t.to(dtype) for t in _blobs(2, 150, 150, 40, 40, "cuda")),
    ):
        labels, max_score = segment_postprocess(class_logits, mask_logits, out_hw, return_scores=True)
        assert_labels_match(labels, _reference64(class_logits, mask_logits, out_hw), max_score)


def test_more_images_than_a_launch_grid_takes_is_a_clear_error(device):
    class_logits = torch.zeros(1, 1, 2, device=device).expand(65536, 1, 2)
    mask_logits = torch.zeros(1, 1, 1, 1, device=device).expand(65536, 1, 1, 1)
    with pytest.raises(ValueError, match="at most 65535 images per call, got 65536; split the batch"):
        segment_postprocess(class_logits, mask_logits, (2, 2))
