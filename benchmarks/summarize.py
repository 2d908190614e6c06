"""Print a short table from pytest-benchmark JSON files.

    python benchmarks/summarize.py OUT/bench_*.json [--device OUT/device.json] [--chart OUT/throughput.png]

One row per benchmark: group, variant, per-call median (ms), achieved GB/s and
TFLOP/s, and speedups over the baselines recorded by ``benchmarks/harness.py``
(recomputed from the group's medians when the baseline ran later; files may
come from separate runs). Model throughput rows also get their shrunk/full time
ratio. With ``--device`` (the JSON ``gpu_check.sh`` writes: measured copy GB/s
and matmul TFLOP/s) it adds the fraction of the card's copy bandwidth;
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
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            print(f"summarize: left out {path}, not readable benchmark JSON: {err}", file=sys.stderr)
            continue
        for bench in data.get("benchmarks", []):
            info = bench.get("extra_info", {})
            median_ms = info.get("median_ms")
            if median_ms is None:  # the harness's per-call median was not recorded: the round's, per call
                median_ms = bench["stats"]["median"] * 1e3 / info.get("calls_per_round", 1)
            rows.append(row(bench.get("group") or "", info.get("variant", bench["name"]), info, median_ms))
    return rows


def row(group: str, name: str, info: dict, median_ms: float) -> dict:
    """One table row from a benchmark's ``extra_info`` (as ``benchmarks/harness.py`` records it)."""
    return {
        "group": group,
        "name": name,
        "median_ms": median_ms,
        "gbps": info.get("gbps"),
        "tflops": info.get("tflops"),
        "baseline": info.get("baseline"),
        "speedup_vs": dict(info.get("speedup_vs", {})),
        "model_variant": info.get("model_variant"),
        "images_per_s": info.get("images_per_s"),
        "title": " ".join(str(info[k]) for k in ("preset", "precision") if k in info)
        + (f" batch {info['batch']} on {info.get('device')}" if "batch" in info else ""),
    }


def fill_shrunk_over_full(rows):
    """Shrunk/full median ratio of each runner measured on both variants of a model."""
    medians = {(r["title"], r["model_variant"], r["name"]): r["median_ms"] for r in rows if r["model_variant"]}
    for r in rows:
        full = medians.get((r["title"], "full", r["name"]))
        if r["model_variant"] == "shrunk" and full:
            r["shrunk_over_full"] = r["median_ms"] / full


def fill_speedups(rows):
    """Add the speedup over ``baseline`` where the run could not record it (baseline measured later)."""
    medians = {(r["group"], r["name"]): r["median_ms"] for r in rows}
    for r in rows:
        base = r["baseline"]
        if base and base not in r["speedup_vs"] and (r["group"], base) in medians:
            r["speedup_vs"][base] = medians[(r["group"], base)] / r["median_ms"]


def fmt(value, spec):
    return "-" if value is None else format(value, spec)


def table(rows, copy_gbps=None):
    header = ["group", "variant", "median ms", "GB/s", "TFLOP/s"]
    if copy_gbps:
        header.append("% copy BW")
    header.append("speedup")
    lines = [header]
    for r in rows:
        line = [r["group"], r["name"], fmt(r["median_ms"], ".4f"), fmt(r["gbps"], ".1f"), fmt(r["tflops"], ".2f")]
        if copy_gbps:
            line.append(fmt(r["gbps"] and 100 * r["gbps"] / copy_gbps, ".0f"))
        notes = [f"{v:.2f}x vs {k}" for k, v in r["speedup_vs"].items()]
        if "shrunk_over_full" in r:
            notes.append(f"shrunk/full {r['shrunk_over_full']:.2f}")
        line.append(", ".join(notes) or "-")
        lines.append(line)
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def throughput_chart(rows, path) -> None:
    """Images/s per runner, one group of bars per model variant, speedups over eager on the bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from segvit_rt.io_utils import atomic_path

    rows = [r for r in rows if r.get("model_variant") and r.get("images_per_s")]
    if not rows:
        return
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
                speedup = r["speedup_vs"].get("eager")
                labels.append(f"{speedup:.2f}x" if speedup else "")
        bars = ax.bar(xs, ys, width, label=runner)
        ax.bar_label(bars, labels=labels, fontsize=7)
    ax.set_xticks(range(len(variants)), variants)
    ax.set_ylabel("images / s")
    ax.set_title(rows[0]["title"], fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="+", help="pytest-benchmark --benchmark-json files")
    parser.add_argument("--device", help="device.json with copy_gbps / matmul_tflops (from gpu_check.sh)")
    parser.add_argument("--chart", help="write the model throughput rows as a PNG bar chart here")
    args = parser.parse_args(argv)
    copy_gbps = None
    if args.device:
        device = json.loads(Path(args.device).read_text())
        copy_gbps = device.get("copy_gbps")
        print(f"device: {device.get('name')}  copy {fmt(copy_gbps, '.0f')} GB/s  "
              f"fp16 matmul {fmt(device.get('matmul_tflops'), '.0f')} TFLOP/s")
    rows = load_rows(args.json)
    if not rows:
        print("summarize: no benchmarks in the given files", file=sys.stderr)
        return 1
    fill_speedups(rows)
    fill_shrunk_over_full(rows)
    print(table(rows, copy_gbps))
    if args.chart:
        throughput_chart(rows, args.chart)
    return 0


if __name__ == "__main__":
    sys.exit(main())
