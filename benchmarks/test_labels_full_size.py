"""Labels at the original size from sliding-window scores: ``ops.full_size.upsample_argmax`` (a few
classes at a time, running maximum) against upsampling every class then the argmax.

Shape (CPU and GPU alike): ADE20K's 150 classes scored at the test size 640×853, labels for a
1200×1600 photo. Recorded besides the harness's figures: ``peak_extra_bytes`` (memory one call
needs beyond its input, output included; see ``harness.peak_extra_bytes``) and, for the chunked
variant, ``peak_memory_vs_full``. Bytes: the scores read and the int64 labels written; FLOPs: the
bilinear interpolation's 4 multiply-adds per class and output pixel.
"""
import pytest
import torch
import torch.nn.functional as F

from benchmarks.harness import DEVICE, measure, peak_extra_bytes, tensor_bytes
from segvit_rt.ops.full_size import upsample_argmax

CLASSES, SCORES_HW, OUT_HW = 150, (640, 853), (1200, 1600)


def full_size_argmax(scores, out_hw):
    return F.interpolate(scores, size=out_hw, mode="bilinear", align_corners=False).argmax(dim=1)


VARIANTS = {"full": full_size_argmax, "class-chunks": upsample_argmax}  # baseline first
_PEAK: dict[str, int] = {}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_upsample_argmax(benchmark, variant):
    scores = torch.rand(1, CLASSES, *SCORES_HW, generator=torch.Generator().manual_seed(0)).to(DEVICE)

    def call():
        return VARIANTS[variant](scores, OUT_HW)

    labels = call()
    if variant != "full":  # checked before timing: a wrong result must not reach the JSON as a speedup
        assert torch.equal(labels, full_size_argmax(scores, OUT_HW))
    peak, method = peak_extra_bytes(call)
    _PEAK[variant] = peak
    measure(benchmark, call, group="upsample-argmax", name=variant, baseline=None if variant == "full" else "full",
            bytes_moved=tensor_bytes(scores, labels), flops=2.0 * 4 * CLASSES * OUT_HW[0] * OUT_HW[1],
            rounds=5, warmup_rounds=0, calls_per_round=1)  # two calls above were the warm-up
    benchmark.extra_info.update(peak_extra_bytes=peak, peak_memory_method=method)
    if variant != "full" and _PEAK.get("full"):  # absent when the baseline was not run (-k)
        benchmark.extra_info["peak_memory_vs_full"] = peak / _PEAK["full"]
