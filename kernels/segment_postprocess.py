"""Segmentation post-process fused into one pass: upsample, sigmoid, class mixing, argmax.

Semantics are those of :func:`segvit_rt.ops.reference.segment_postprocess`: for
every output pixel, each query's mask logit is sampled bilinearly from the
[h, w] grid (``align_corners=False``, PyTorch's source-index rule: clamped at 0
below, the upper neighbour clamped at the border), passed through a sigmoid,
and mixed with the class probabilities ``softmax(class_logits)[..., :-1]``
("no object" dropped): ``score[c] = Σ_q p[q, c]·m_q``. The label is the argmax
over classes (ties → lowest class, like ``torch.argmax``). A NaN or +inf class
logit makes the scores of every pixel NaN (-inf is a probability of 0): such
pixels get class 0, as the reference's argmax gives them, and max score -inf
(the reference's NaN). Infinite *mask* logits are outside what the two agree
on: the kernel weighs all four neighbours, and 0·inf gives NaN where a
neighbour's weight is 0 (at the grid's own size, say), which PyTorch's
interpolation does not always compute.

Design: the class probabilities and the mask logits are first packed in torch
(:func:`pack_inputs`; tiny: Q·C and h·w·Q values per image) into fp32,
zero-padded tensors, the masks channels-last so that the queries of one grid
point are contiguous. Then one program per (image, block of output pixels)
computes the bilinear source offsets and weights once per pixel; for each block
of queries it gathers the four neighbours' query vectors (vectorised, unmasked
loads), builds the sigmoid mask tile [pixels, queries] in registers and
accumulates its product with the probabilities [queries, classes] with
``tl.dot``. Classes are processed in blocks, keeping a running max / argmax.
Neither the upsampled masks [B, Q, H, W] nor the scores [B, C, H, W] ever
exist: the outputs are the int64 labels (and, when asked, the fp32 max score).
The class mixing runs in fp32-accurate arithmetic ("tf32x3" tensor-core
products on a GPU, IEEE fp32 under the interpreter) so labels only differ from
an exact evaluation at near-ties.

Launch configs are autotuned per (Q, C) on a GPU (not per image size, which
varies image to image in whole-image inference); a single config runs under
the Triton interpreter.
"""
import torch
import triton
import triton.language as tl

from segvit_rt.ops import reference

from ._common import (
    FLOAT_DTYPES,
    autotune_configs,
    check_grid_y,
    check_int_pair,
    check_same,
    check_tensor,
    define_op,
    interpreter_active,
    launcher,
    launches_on_input_device,
    runs_triton,
)

OP = "segment_postprocess"


def _configs():
    """Autotuning space: (BLOCK_P, BLOCK_Q, BLOCK_C, num_warps, num_stages), all free of register
    spills on sm_90 (checked with ptxas); BLOCK_C = 256 covers C <= 256 in one pass over the
    queries. (128, 16, 32) under the interpreter."""
    settings = [
        (32, 16, 64, 8, 1), (32, 16, 128, 8, 1), (32, 16, 256, 8, 1), (32, 32, 64, 8, 1), (32, 32, 128, 8, 1),
        (32, 16, 64, 4, 2), (64, 16, 32, 4, 2), (64, 16, 32, 8, 2), (64, 16, 64, 8, 1), (64, 16, 64, 8, 2),
        (64, 16, 128, 8, 1), (64, 32, 64, 8, 1), (64, 32, 128, 8, 1), (128, 16, 32, 8, 2), (128, 16, 64, 8, 1),
        (128, 16, 128, 8, 1),
    ]
    return autotune_configs(("BLOCK_P", "BLOCK_Q", "BLOCK_C"), settings, interpreter=(128, 16, 32))


def _prune_configs(configs, named_args, **kwargs):
    """Keep configs whose class block is no wider than the padded class count needs."""
    classes = {**named_args, **kwargs}["num_classes"]
    widest = max(triton.next_power_of_2(classes), 16)
    fitting = [c for c in configs if c.kwargs["BLOCK_C"] <= widest]
    return fitting or [min(configs, key=lambda c: c.kwargs["BLOCK_C"])]


@triton.jit
def _source_index(dst, in_size, scale):
    """PyTorch's align_corners=False bilinear rule: lower/upper source index and upper weight."""
    src = tl.maximum((dst.to(tl.float32) + 0.5) * scale - 0.5, 0.0)
    lo = src.to(tl.int32)  # src >= 0, so truncation is floor
    hi = tl.where(lo < in_size - 1, lo + 1, lo)
    return lo, hi, src - lo.to(tl.float32)


@triton.autotune(
    configs=_configs(),
    key=["padded_q", "num_classes"],  # not the image size: whole-image inference sees many
    prune_configs_by={"early_config_prune": _prune_configs},
)
@triton.jit
def _postprocess_kernel(
    probs_ptr, masks_ptr, labels_ptr, scores_ptr,
    num_classes, padded_q, padded_c, in_h, in_w, out_h, out_w, scale_h, scale_w,
    WRITE_SCORES: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """``probs`` [B, padded_q, padded_c] and channels-last ``masks`` [B, in_h, in_w, padded_q],
    fp32 and zero-padded (see :func:`pack_inputs`): query loads need no masks and vectorize."""
    # Float scalars arrive as fp64 from AOTInductor's launcher: keep the arithmetic fp32.
    scale_h = tl.cast(scale_h, tl.float32)
    scale_w = tl.cast(scale_w, tl.float32)
    pid_p = tl.program_id(0)
    batch = tl.program_id(1).to(tl.int64)
    num_pixels = out_h * out_w
    pixels = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    pix_ok = pixels < num_pixels
    clamped = tl.minimum(pixels, num_pixels - 1)  # tail pixels recompute the last one, never stored
    y0, y1, wy1 = _source_index(clamped // out_w, in_h, scale_h)
    x0, x1, wx1 = _source_index(clamped % out_w, in_w, scale_w)
    wy0 = (1.0 - wy1)[:, None]
    wx0 = (1.0 - wx1)[:, None]
    wy1 = wy1[:, None]
    wx1 = wx1[:, None]
    masks_base = masks_ptr + batch * in_h * in_w * padded_q
    row00 = ((y0 * in_w + x0) * padded_q)[:, None]  # start of each neighbour's query vector
    row01 = ((y0 * in_w + x1) * padded_q)[:, None]
    row10 = ((y1 * in_w + x0) * padded_q)[:, None]
    row11 = ((y1 * in_w + x1) * padded_q)[:, None]
    probs_base = probs_ptr + batch * padded_q * padded_c
    offs_q = tl.arange(0, BLOCK_Q)
    offs_c = tl.arange(0, BLOCK_C)

    best = tl.full([BLOCK_P], float("-inf"), tl.float32)
    best_class = tl.zeros([BLOCK_P], tl.int32)
    for c_start in range(0, num_classes, BLOCK_C):
        classes = c_start + offs_c
        scores = tl.zeros([BLOCK_P, BLOCK_C], tl.float32)
        for q_start in range(0, padded_q, BLOCK_Q):
            queries = (q_start + offs_q)[None, :]
            v00 = tl.load(masks_base + row00 + queries)
            v01 = tl.load(masks_base + row01 + queries)
            v10 = tl.load(masks_base + row10 + queries)
            v11 = tl.load(masks_base + row11 + queries)
            logit = wy0 * (wx0 * v00 + wx1 * v01) + wy1 * (wx0 * v10 + wx1 * v11)
            masks = 1.0 / (1.0 + tl.exp(-logit))  # [BLOCK_P, BLOCK_Q]
            probs = tl.load(
                probs_base + tl.trans(queries) * padded_c + classes[None, :],
                mask=(classes < padded_c)[None, :], other=0.0,
            )  # [BLOCK_Q, BLOCK_C]; padded queries and classes hold 0
            scores = tl.dot(masks, probs, scores, input_precision=DOT_PRECISION)
        # Padded classes, and NaN scores (from NaN or infinite logits), never win.
        scores = tl.where((classes < num_classes)[None, :] & (scores == scores), scores, float("-inf"))
        block_best = tl.max(scores, 1)
        block_class = tl.argmax(scores, 1, tie_break_left=True) + c_start
        better = block_best > best  # strict: an equal score in a later block keeps the lower class
        best_class = tl.where(better, block_class, best_class)
        best = tl.where(better, block_best, best)

    out = batch * num_pixels + pixels
    tl.store(labels_ptr + out, best_class.to(tl.int64), mask=pix_ok)
    if WRITE_SCORES:
        tl.store(scores_ptr + out, best, mask=pix_ok)


QUERY_ALIGN = 32  # a multiple of every BLOCK_Q: the query loop needs no masks
CLASS_ALIGN = 16  # keeps rows of probs 64-byte aligned


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def pack_inputs(class_logits: torch.Tensor, mask_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's inputs, fp32 and zero-padded (small: per image Q·C and h·w·Q values).

    ``probs`` [B, Qp, Cp]: softmax over C+1 with "no object" dropped; ``masks`` [B, h, w, Qp]:
    the mask logits channels-last, so the queries of one grid point are contiguous. Padded
    queries have probability 0 and so add nothing."""
    b, q, c1 = class_logits.shape
    h, w = mask_logits.shape[-2:]
    padded_q = _round_up(q, QUERY_ALIGN)
    probs = class_logits.new_zeros((b, padded_q, _round_up(c1 - 1, CLASS_ALIGN)), dtype=torch.float32)
    probs[:, :q, : c1 - 1] = class_logits.float().softmax(dim=-1)[..., :-1]
    masks = mask_logits.new_zeros((b, h, w, padded_q), dtype=torch.float32)
    masks[..., :q] = mask_logits.permute(0, 2, 3, 1)
    return probs, masks


@launches_on_input_device(OP)
def launch(probs, masks, num_classes, out_hw, labels, scores=None):
    """Run the kernel on :func:`pack_inputs`' ``probs``/``masks`` into preallocated ``labels``
    [B, H, W] int64 and optionally ``scores`` [B, H, W] fp32 (both contiguous). Exposed so
    tests can hand in poisoned buffers."""
    b, padded_q, padded_c = probs.shape
    in_h, in_w = masks.shape[1:3]
    out_h, out_w = out_hw

    def grid(meta):
        return (triton.cdiv(out_h * out_w, meta["BLOCK_P"]), b)

    launcher(_postprocess_kernel)[grid](
        probs, masks, labels, scores if scores is not None else labels,
        num_classes, padded_q, padded_c, in_h, in_w, out_h, out_w, in_h / out_h, in_w / out_w,
        WRITE_SCORES=scores is not None,
        DOT_PRECISION="ieee" if interpreter_active() else "tf32x3",
    )


# ---------------------------------------------------------------------------- input checks


def _out_size(out_hw) -> tuple[int, int]:
    out_h, out_w = check_int_pair(OP, "out_hw", out_hw, "(H, W)")
    if out_h < 1 or out_w < 1:
        raise ValueError(f"{OP}: out_hw must be positive, got {out_h}x{out_w}")
    return out_h, out_w


def _check_inputs(class_logits, mask_logits):
    check_tensor(OP, "class_logits", class_logits, ndim=3, dtypes=FLOAT_DTYPES + (torch.float64,))
    check_tensor(OP, "mask_logits", mask_logits, ndim=4, dtypes=FLOAT_DTYPES + (torch.float64,))
    check_same(OP, "device", class_logits=class_logits, mask_logits=mask_logits)
    b, q, c1 = class_logits.shape
    if b < 1 or q < 1 or c1 < 2:
        raise ValueError(
            f"{OP}: class_logits must be [B, Q, C+1] with B, Q >= 1 and C >= 1, got {tuple(class_logits.shape)}"
        )
    if tuple(mask_logits.shape[:2]) != (b, q) or min(mask_logits.shape[2:]) < 1:
        raise ValueError(
            f"{OP}: mask_logits must be [B, Q, h, w] = [{b}, {q}, h, w] (B, Q from class_logits) "
            f"with h, w >= 1, got {tuple(mask_logits.shape)}"
        )


# ---------------------------------------------------------------------------- custom op


def _impl(
    class_logits: torch.Tensor, mask_logits: torch.Tensor, out_h: int, out_w: int, with_scores: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    _check_inputs(class_logits, mask_logits)
    b = class_logits.shape[0]
    if not runs_triton(class_logits):
        scores = reference.semantic_logits(class_logits, mask_logits, (out_h, out_w))  # mixed dtypes too
        best, labels = scores.max(dim=1)
        return labels, (best.float() if with_scores else best.new_empty((0,), dtype=torch.float32))
    check_grid_y(OP, b, "images")
    labels = torch.empty((b, out_h, out_w), dtype=torch.int64, device=class_logits.device)
    scores = torch.empty((b, out_h, out_w) if with_scores else (0,), dtype=torch.float32, device=labels.device)
    probs, masks = pack_inputs(class_logits, mask_logits)
    launch(probs, masks, class_logits.shape[-1] - 1, (out_h, out_w), labels, scores if with_scores else None)
    return labels, scores


def _fake(class_logits, mask_logits, out_h, out_w, with_scores):
    _check_inputs(class_logits, mask_logits)
    b = class_logits.shape[0]
    device = class_logits.device
    labels = torch.empty((b, out_h, out_w), dtype=torch.int64, device=device)
    return labels, torch.empty((b, out_h, out_w) if with_scores else (0,), dtype=torch.float32, device=device)


segment_postprocess_op = define_op("segvit_rt::segment_postprocess", _impl, fake=_fake)


def segment_postprocess(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    out_hw: tuple[int, int],
    return_scores: bool = False,
):
    """Label map [B, H, W] int64 (``torch.ops.segvit_rt.segment_postprocess``); see the module doc.

    ``class_logits`` [B, Q, C+1], ``mask_logits`` [B, Q, h, w] (any float dtype,
    any strides), ``out_hw`` = (H, W). With ``return_scores`` also returns the
    winning class score [B, H, W] fp32. Not differentiable (an argmax).
    """
    out_h, out_w = _out_size(out_hw)
    labels, scores = segment_postprocess_op(class_logits, mask_logits, out_h, out_w, bool(return_scores))
    return (labels, scores) if return_scores else labels
