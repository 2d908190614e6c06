"""Print a short table from pytest-benchmark JSON files.

    python benchmarks/summarize.py OUT/bench_*.json [--device OUT/device.json]

One row per benchmark: group, variant, per-call median (ms), achieved GB/s and
TFLOP/s, and speedups over the baselines recorded by ``benchmarks/harness.py``
(recomputed from the group's medians when the baseline ran later). With
``--device`` (the JSON ``gpu_check.sh`` writes: measured copy GB/s and matmul
TFLOP/s) it adds the fraction of the card's copy bandwidth.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def load_rows(paths):
    rows = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise SystemExit(f"summarize: cannot read benchmark JSON {path}: {err}") from err
        for bench in data.get("benchmarks", []):
            info = bench.get("extra_info", {})
            median_ms = info.get("median_ms", bench["stats"]["median"] * 1e3)
            rows.append(
                {
                    "group": bench.get("group") or "",
                    "name": info.get("variant", bench["name"]),
                    "median_ms": median_ms,
                    "gbps": info.get("gbps"),
                    "tflops": info.get("tflops"),
                    "baseline": info.get("baseline"),
                    "speedup_vs": dict(info.get("speedup_vs", {})),
                }
            )
    return rows


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
        line.append(", ".join(f"{v:.2f}x vs {k}" for k, v in r["speedup_vs"].items()) or "-")
        lines.append(line)
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="+", help="pytest-benchmark --benchmark-json files")
    parser.add_argument("--device", help="device.json with copy_gbps / matmul_tflops (from gpu_check.sh)")
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
    print(table(rows, copy_gbps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
