"""Where one model forward spends its time, per kernel, with and without our Triton kernels.

    python benchmarks/profile_model.py [--variant shrunk] [--preset P] [--batch 8] [--iters 5] [--top 12]

On a GPU: ViT-L ADE20K 640, fp16, batch 8 (what the throughput benchmark times); on a CPU the tiny
preset in fp32, the Triton kernels in the interpreter. For each ``kernels`` setting it prints the
time of one forward and the entries with the most self time (GPU kernels by name on a GPU, PyTorch ops
on a CPU), then the entries whose time changes most between the two settings. Beside the summed self
time it prints each setting's wall time per forward, timed without the profiler: on a GPU, wall time
well above the kernels' time means the GPU waits (on Python and launches, or a host sync), which no
kernel's time shows. This is the diagnosis behind a throughput ratio, not a timing: the profiler's
own overhead is in the per-kernel figures (the benchmarks time without it).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections import defaultdict

import torch

ON_CUDA = torch.cuda.is_available()
if not ON_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton

from torch.profiler import ProfilerActivity, profile  # noqa: E402

import segvit_rt  # noqa: E402
from segvit_rt.kernel_choice import SETTINGS, time_call_ms  # noqa: E402  (--kernels auto's settings and timer)


def self_times_us(model, x: torch.Tensor, iters: int) -> dict[str, tuple[float, float]]:
    """entry name (a GPU kernel, or an op on a CPU) -> (self time in µs, calls), each per forward.
    On a GPU only device activity is recorded: with CPU activity too, each op's self device time
    would count its kernels a second time."""
    activity = ProfilerActivity.CUDA if ON_CUDA else ProfilerActivity.CPU
    with torch.no_grad():
        for _ in range(2):  # autotuning and caches outside the profile
            model(x)
        if ON_CUDA:
            torch.cuda.synchronize()
        with profile(activities=[activity]) as prof:
            for _ in range(iters):
                model(x)
            if ON_CUDA:
                torch.cuda.synchronize()
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for event in prof.key_averages():
        if ON_CUDA:  # self_cuda_time_total was renamed self_device_time_total
            us = getattr(event, "self_device_time_total", None)
            us = event.self_cuda_time_total if us is None else us
        else:
            us = event.self_cpu_time_total
        if us > 0:
            totals[event.key][0] += us / iters
            totals[event.key][1] += event.count / iters
    return {name: (us, calls) for name, (us, calls) in totals.items()}


def wall_ms(model, x: torch.Tensor, iters: int) -> float:
    """Median wall time of one forward in ms, each synchronized, without the profiler (after
    ``self_times_us`` has warmed the model up)."""
    with torch.no_grad():
        return statistics.median(time_call_ms(model, x) for _ in range(iters))


def short(name: str, width: int = 100) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def report(setting: str, times: dict[str, tuple[float, float]], wall: float, top: int) -> list[str]:
    total = sum(us for us, _ in times.values())
    lines = [f"kernels={setting}: {wall:.3f} ms wall per forward; {total / 1e3:.3f} ms of "
             f"{'device' if ON_CUDA else 'CPU'} self time ({100 * total / 1e3 / wall:.0f} % of wall)",
             f"  {'self ms':>8}  {'%':>5}  {'calls':>6}  {'kernel' if ON_CUDA else 'op'}"]
    for name, (us, calls) in sorted(times.items(), key=lambda kv: -kv[1][0])[:top]:
        lines.append(f"  {us / 1e3:8.3f}  {100 * us / total:5.1f}  {calls:6.1f}  {short(name)}")
    return lines


def differences(a: dict, b: dict, top: int) -> list[str]:
    """The entries whose per-forward self time differs most from setting a to setting b."""
    names = set(a) | set(b)
    delta = {n: b.get(n, (0.0, 0))[0] - a.get(n, (0.0, 0))[0] for n in names}
    lines = [f"largest changes, {SETTINGS[1]} minus {SETTINGS[0]} (ms per forward):"]
    for name in sorted(names, key=lambda n: -abs(delta[n]))[:top]:
        lines.append(f"  {delta[name] / 1e3:+8.3f}  {short(name)}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--variant", choices=("full", "shrunk"), default="shrunk", help="model variant")
    parser.add_argument("--preset", default="vit_l16_ade20k_640" if ON_CUDA else "tiny", help="model preset")
    parser.add_argument("--batch", type=int, default=8 if ON_CUDA else 2, help="images per forward")
    parser.add_argument("--iters", type=int, default=5 if ON_CUDA else 2, help="profiled forwards per setting")
    parser.add_argument("--top", type=int, default=12, help="entries listed per setting")
    args = parser.parse_args(argv)
    for name in ("batch", "iters", "top"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.preset not in segvit_rt.PRESETS:
        parser.error(f"unknown preset {args.preset!r}; one of {', '.join(segvit_rt.PRESETS)}")

    device = torch.device("cuda" if ON_CUDA else "cpu")
    dtype = torch.float16 if ON_CUDA else torch.float32
    torch.manual_seed(0)
    model = segvit_rt.create_model(args.preset, variant=args.variant).eval().to(device, dtype)
    size = model.cfg.crop_size
    x = torch.randn(args.batch, 3, size, size, device=device, dtype=dtype)
    print(f"{args.preset} {args.variant}, batch {args.batch}, {str(dtype).removeprefix('torch.')}, "
          f"on {torch.cuda.get_device_name() if ON_CUDA else 'CPU (Triton interpreter)'}; "
          f"mean of {args.iters} forwards")
    times = {}
    for setting in SETTINGS:
        times[setting] = self_times_us(model.set_kernels(setting), x, args.iters)
        wall = wall_ms(model, x, args.iters)
        print("\n".join(report(setting, times[setting], wall, args.top)))
    print("\n".join(differences(times[SETTINGS[0]], times[SETTINGS[1]], args.top)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
