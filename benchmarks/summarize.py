"""Print a short table, and the issue's goals met or not, from pytest-benchmark JSON files.

    python benchmarks/summarize.py OUT/bench_*.json [--device OUT/device.json] [--chart OUT/throughput.png]

One row per benchmark: the run (its JSON file), group, variant, per-call median
(ms), achieved GB/s and TFLOP/s, and speedups over the baselines recorded by
``benchmarks/harness.py``. A speedup the run could not record (its baseline ran
later) is recomputed from the medians, from the same run where it has the
baseline, else from another run on the same device, marked "(other run)".
Model throughput rows also get their shrunk/full time ratio. With ``--device``
(the JSON ``gpu_check.sh`` writes: measured copy GB/s and matmul TFLOP/s) kernel
rows get the fraction of the card's copy bandwidth. Then each goal of the
device kind measured (GPU or CPU) is listed as met, NOT met or not measured.
``--chart`` draws the model throughput rows as a bar chart.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def load_rows(paths):
    """Rows of every readable file; an unreadable one (an empty file from a pytest run killed before
    it could write, say) is reported and left out, so the others still make a table."""
    rows = []
    names = run_names(paths)
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
            benches = data["benchmarks"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
            print(f"summarize: left out {path}, not readable benchmark JSON: {err!r}", file=sys.stderr)
            continue
        run = names[path]
        for bench in benches:
            info, stats = bench.get("extra_info", {}), bench.get("stats") or {}
            median_ms = info.get("median_ms")
            if median_ms is None and stats.get("median") is not None:  # the round's median, per call
                median_ms = stats["median"] * 1e3 / info.get("calls_per_round", 1)
            if median_ms is None:
                print(f"summarize: left out {bench.get('name')} of {path}: no timings", file=sys.stderr)
                continue
            r = row(bench.get("group") or "", info.get("variant", bench.get("name", "?")), info, median_ms, run)
            if stats.get("iqr") is not None and stats.get("median"):
                r["spread"] = stats["iqr"] / stats["median"]  # of the rounds: how steady the timing was
            rows.append(r)
    return rows


def run_names(paths) -> dict:
    """Each file's run: its name without ``bench_``, with its folder where two files share a name
    (``gpu_check.sh``'s two calls each write ``OUT/bench_*.json``): they are two runs, not one."""
    stems = {path: Path(path).stem.removeprefix("bench_") for path in paths}
    shared = {stem for stem in stems.values() if list(stems.values()).count(stem) > 1}
    return {path: (str(Path(path).with_suffix("")) if stem in shared else stem) for path, stem in stems.items()}


def row(group: str, name: str, info: dict, median_ms: float, run: str = "") -> dict:
    """One table row from a benchmark's ``extra_info`` (as ``benchmarks/harness.py`` records it)."""
    return {
        "run": run,
        "group": group,
        "name": name,
        "device": info.get("device"),
        "median_ms": median_ms,
        "gbps": info.get("gbps"),
        "tflops": info.get("tflops"),
        "baseline": (info.get("baseline") or [None])[0] if isinstance(info.get("baseline"), list)
        else info.get("baseline"),
        "speedup_vs": dict(info.get("speedup_vs", {})),
        "other_run": set(),  # baselines whose ratio comes from another run
        "model_variant": info.get("model_variant"),
        "images_per_s": info.get("images_per_s"),
        "fraction_of_matmul_peak": info.get("fraction_of_matmul_peak"),
        "peak_memory_vs_reference": info.get("peak_memory_vs_reference"),
        "title": " ".join(str(info[k]) for k in ("preset", "precision") if k in info)
        + (f" batch {info['batch']} on {info.get('device')}" if "batch" in info else ""),
    }


def _match(rows, r, **want):
    """The row for ``want`` measured with ``r``: from ``r``'s run if there is one, else another run's
    (same device); ``(row, from_another_run)``, or ``(None, False)``."""
    found = [c for c in rows if c["device"] == r["device"] and all(c[k] == v for k, v in want.items())]
    same = [c for c in found if c["run"] == r["run"]]
    if same:
        return same[-1], False
    return (found[-1], True) if found else (None, False)


def fill_speedups(rows):
    """Add the speedup over ``baseline`` where the run could not record it (baseline measured later)."""
    for r in rows:
        base = r["baseline"]
        if base and base not in r["speedup_vs"]:
            other, across = _match(rows, r, group=r["group"], name=base)
            if other is not None:
                r["speedup_vs"][base] = other["median_ms"] / r["median_ms"]
                if across:
                    r["other_run"].add(base)


def fill_shrunk_over_full(rows):
    """Shrunk/full median ratio of each runner measured on both variants of a model."""
    for r in rows:
        if r["model_variant"] == "shrunk":
            full, across = _match(rows, r, title=r["title"], model_variant="full", name=r["name"])
            if full is not None:
                r["shrunk_over_full"] = r["median_ms"] / full["median_ms"]
                r["shrunk_over_full_other_run"] = across


def fmt(value, spec):
    return "-" if value is None else format(value, spec)


def is_cpu(device_name) -> bool:
    return device_name is None or str(device_name).startswith("cpu")


def judged_device(rows, device: dict) -> str:
    """The device whose rows the goals are judged on: the probed card (device.json), else the one GPU
    the rows were measured on (the commonest, if several), else the CPU."""
    if device.get("name"):
        return device["name"]
    gpus = [r["device"] for r in rows if not is_cpu(r["device"])]
    return max(set(gpus), key=gpus.count) if gpus else "cpu"


def copy_fraction(r, device: dict):
    """A kernel row's GB/s over the card's measured copy GB/s (only for rows of the probed card; a
    model's GB/s counts only its input image, so it has none)."""
    if r["model_variant"] or not r["gbps"] or not device.get("copy_gbps") or r["device"] != device.get("name"):
        return None
    return r["gbps"] / device["copy_gbps"]


def table(rows, device: dict | None = None):
    device = device or {}
    header = ["run", "group", "variant", "median ms", "spread", "GB/s", "TFLOP/s"]
    if device.get("copy_gbps"):
        header.append("% copy BW")
    header.append("speedup")
    lines = [header]
    for r in rows:
        kernel = not r["model_variant"]
        line = [r["run"] or "-", r["group"], r["name"], fmt(r["median_ms"], ".4f"),
                "-" if r.get("spread") is None else f"{100 * r['spread']:.0f}%",
                fmt(r["gbps"] if kernel else None, ".1f"), fmt(r["tflops"], ".2f")]
        if device.get("copy_gbps"):
            fraction = copy_fraction(r, device)
            line.append(fmt(fraction and 100 * fraction, ".0f"))
        notes = [f"{v:.2f}x vs {k}" + (" (other run)" if k in r["other_run"] else "")
                 for k, v in r["speedup_vs"].items()]
        if "shrunk_over_full" in r:
            notes.append(f"shrunk/full {r['shrunk_over_full']:.2f}"
                         + (" (other run)" if r["shrunk_over_full_other_run"] else ""))
        line.append(", ".join(notes) or "-")
        lines.append(line)
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


# The issues' goals: (device kind, goal, group, variant, figure, at least / at most, threshold); a figure
# is ("speedup", baseline), ("copy_bw",), ("matmul_peak",), ("peak_memory",) or ("shrunk_over_full",).
GOALS = [
    ("cuda", "ATM forward fused >= 2x eager reference (ViT-L)", "atm-fwd-vit-l", "fused",
     ("speedup", "reference"), ">=", 2.0),
    ("cuda", "ATM forward fused >= 1.3x SDPA + matmul (ViT-L)", "atm-fwd-vit-l", "fused",
     ("speedup", "sdpa+matmul"), ">=", 1.3),
    ("cuda", "ATM forward >= 60% of copy bandwidth (ViT-L)", "atm-fwd-vit-l", "fused", ("copy_bw",), ">=", 0.6),
    ("cuda", "ATM backward fused >= 1.5x reference autograd (ViT-L)", "atm-bwd-vit-l", "fused",
     ("speedup", "reference"), ">=", 1.5),
    ("cuda", "QD forward fused >= 1.15x gather + flash SDPA", "qd-attention-fwd", "fused",
     ("speedup", "gather+sdpa"), ">=", 1.15),
    ("cuda", "QD forward >= 50% of measured fp16 matmul throughput", "qd-attention-fwd", "fused",
     ("matmul_peak",), ">=", 0.5),
    ("cuda", "post-process fused >= 5x reference", "segment-postprocess", "fused", ("speedup", "reference"), ">=", 5.0),
    ("cuda", "post-process peak extra memory <= 1/10 of the reference's", "segment-postprocess", "fused",
     ("peak_memory",), "<=", 0.1),
    ("cuda", "Shrunk ViT-L 640 fp16 aoti >= 1.3x eager at batch 8", "throughput-vit_l16_ade20k_640-shrunk", "aoti",
     ("speedup", "eager"), ">=", 1.3),
    ("cuda", "Shrunk/full time <= 0.65 (ViT-L 640 fp16 aoti)", "throughput-vit_l16_ade20k_640-shrunk", "aoti",
     ("shrunk_over_full",), "<=", 0.65),
    ("cuda", "Shrunk ViT-L 640 fp16 aoti, reference ops, >= 1.3x eager at batch 8",
     "throughput-vit_l16_ade20k_640-shrunk", "aoti-reference", ("speedup", "eager"), ">=", 1.3),
    ("cuda", "Shrunk/full time <= 0.65 (ViT-L 640 fp16 aoti, reference ops)", "throughput-vit_l16_ade20k_640-shrunk",
     "aoti-reference", ("shrunk_over_full",), "<=", 0.65),
    ("cpu", "onnx engine >= 1.3x eager fp32 (tiny, full)", "throughput-tiny-full", "onnx",
     ("speedup", "eager"), ">=", 1.3),
    ("cpu", "onnx engine >= 1.3x eager fp32 (tiny, Shrunk)", "throughput-tiny-shrunk", "onnx",
     ("speedup", "eager"), ">=", 1.3),
]


def goal_figure(spec: tuple, r: dict, device: dict) -> tuple[float | None, bool]:
    """A goal's figure of row ``r`` (None: not measured) and whether it comes from two runs."""
    kind = spec[0]
    if kind == "speedup":
        return r["speedup_vs"].get(spec[1]), spec[1] in r["other_run"]
    if kind == "shrunk_over_full":
        return r.get("shrunk_over_full"), r.get("shrunk_over_full_other_run", False)
    if kind == "copy_bw":
        return copy_fraction(r, device), False
    if kind == "matmul_peak":
        if r["fraction_of_matmul_peak"] is not None:
            return r["fraction_of_matmul_peak"], False
        probed = device.get("matmul_tflops") and r["device"] == device.get("name")
        return (r["tflops"] / device["matmul_tflops"] if r["tflops"] and probed else None), False
    return r["peak_memory_vs_reference"], False  # peak_memory


NOISY = 0.25  # a timing whose rounds spread (IQR) this much of its median is flagged in the goals


def compared_rows(spec: tuple, r: dict, rows: list[dict]) -> list[dict]:
    """The timings a goal's figure is made of: row ``r``, and for a ratio its baseline or full-model
    counterpart (from ``r``'s run where there is one, as the figure takes it)."""
    if spec[0] == "speedup":
        group, name = r["group"], spec[1]
    elif spec[0] == "shrunk_over_full":
        group, name = r["group"].replace("-shrunk", "-full"), r["name"]
    else:
        return [r]
    others = [x for x in rows if x["group"] == group and x["name"] == name]
    return [r, *([x for x in others if x["run"] == r["run"]] or others)[-1:]]


def goal_lines(rows, device: dict | None = None) -> list[str]:
    """Each goal of the judged device's kind (:func:`judged_device`), from that device's rows only:
    its figure and met / NOT met, or not measured (no row, or the row lacks the figure). A figure
    from two runs, or from a timing whose rounds spread widely, says so."""
    if not rows:
        return []
    device = device or {}
    judged = judged_device(rows, device)
    kind = "cpu" if is_cpu(judged) else "cuda"
    mine = [r for r in rows if (is_cpu(r["device"]) if kind == "cpu" else r["device"] == judged)]
    lines = []
    for goal_kind, goal, group, name, spec, sense, threshold in GOALS:
        if goal_kind != kind:
            continue
        found = [r for r in mine if r["group"] == group and r["name"] == name]
        value, across = goal_figure(spec, found[-1], device) if found else (None, False)
        if value is None:
            lines.append(f"{'not measured':<12}  {goal}")
            continue
        met = value >= threshold if sense == ">=" else value <= threshold
        notes = ["from two runs"] if across else []
        spreads = [r.get("spread") or 0 for r in compared_rows(spec, found[-1], mine)]
        if max(spreads) > NOISY:
            notes.append(f"noisy: a timing's rounds spread {100 * max(spreads):.0f}% of its median")
        lines.append(f"{'met' if met else 'NOT met':<12}  {goal}: {value:.2f}" + "".join(f" ({n})" for n in notes))
    return lines


def throughput_chart(rows, path) -> None:
    """Images/s per runner, one group of bars per model variant, speedups over eager on the bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from segvit_rt.io_utils import atomic_path

    rows = [r for r in rows if r.get("model_variant") and r.get("images_per_s")]
    if not rows:
        return
    titles = list(dict.fromkeys(r["title"] for r in rows))
    rows = [r for r in rows if r["title"] == titles[-1]]  # one setting (device, preset, precision) per chart
    runners = list(dict.fromkeys(r["name"] for r in rows))
    variants = [v for v in ("full", "shrunk") if any(r["model_variant"] == v for r in rows)]
    by_key = {(r["model_variant"], r["name"]): r for r in rows}
    width = 0.8 / len(runners)
    fig, ax = plt.subplots(figsize=(2.5 + 2 * len(variants), 3.5))
    for i, runner in enumerate(runners):
        xs, ys, labels = [], [], []
        for j, variant in enumerate(variants):
            r = by_key.get((variant, runner))
            if r is not None:
                xs.append(j + (i - (len(runners) - 1) / 2) * width)
                ys.append(r["images_per_s"])
                labels.append(_chart_speedup(r, by_key.get((variant, "eager"))))
        bars = ax.bar(xs, ys, width, label=runner)
        ax.bar_label(bars, labels=labels, fontsize=7)
    ax.set_xticks(range(len(variants)), variants)
    ax.set_ylabel("images / s (labels: speed vs eager)")
    ax.set_title(titles[-1], fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def _chart_speedup(r: dict, eager: dict | None) -> str:
    """A bar's label: its speedup vs eager as the table gives it (eager of its own run, or of another
    where the table took that), else the ratio of the two bars drawn."""
    if eager is None or r is eager:
        return ""
    ratio = r["speedup_vs"].get("eager") or r["images_per_s"] / eager["images_per_s"]
    return f"{ratio:.2f}x"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="+", help="pytest-benchmark --benchmark-json files")
    parser.add_argument("--device", help="device.json with copy_gbps / matmul_tflops (from gpu_check.sh)")
    parser.add_argument("--chart", help="write the model throughput rows as a PNG bar chart here")
    args = parser.parse_args(argv)
    device = {}
    if args.device:
        device = json.loads(Path(args.device).read_text())
        print(f"device: {device.get('name')}  copy {fmt(device.get('copy_gbps'), '.0f')} GB/s  "
              f"fp16 matmul {fmt(device.get('matmul_tflops'), '.0f')} TFLOP/s")
    rows = load_rows(args.json)
    if not rows:
        print("summarize: no benchmarks in the given files", file=sys.stderr)
        return 1
    fill_speedups(rows)
    fill_shrunk_over_full(rows)
    print(table(rows, device))
    print(f"\ngoals ({judged_device(rows, device)}):")
    print("\n".join(f"  {line}" for line in goal_lines(rows, device)))
    if args.chart:
        throughput_chart(rows, args.chart)
    return 0


if __name__ == "__main__":
    sys.exit(main())
