"""benchmarks/summarize.py: the table and chart gpu_check.sh prints from pytest-benchmark JSON."""
import json

import pytest
from PIL import Image

from benchmarks import summarize


def _bench(group, runner, median_ms, variant=None, baseline=None, speedups=None):
    info = {"variant": runner, "median_ms": median_ms, "gbps": 1.0, "tflops": 2.0}
    if variant:
        info.update(preset="vit_l16_ade20k_640", precision="fp16", batch=8, device="GPU", model_variant=variant,
                    images_per_s=8 / (median_ms / 1e3))
    if baseline:
        info["baseline"] = baseline
    if speedups:
        info["speedup_vs"] = speedups
    return {"group": group, "name": f"test[{runner}]", "stats": {"median": median_ms / 1e3}, "extra_info": info}


def test_separate_runs_give_speedups_shrunk_over_full_and_a_chart(tmp_path, capsys):
    full = [_bench("throughput-vit-full", "eager", 40.0, "full"),
            _bench("throughput-vit-full", "aoti", 20.0, "full", "eager", {"eager": 2.0})]
    shrunk = [_bench("throughput-vit-shrunk", "aoti", 12.0, "shrunk", "eager"),  # its baseline ran later
              _bench("throughput-vit-shrunk", "eager", 30.0, "shrunk")]
    kernels = [_bench("atm-fwd", "fused", 1.0, baseline="reference")]
    paths = []
    for name, benches in (("full", full), ("shrunk", shrunk), ("kernels", kernels)):
        paths.append(tmp_path / f"bench_{name}.json")
        paths[-1].write_text(json.dumps({"benchmarks": benches}))
    chart = tmp_path / "throughput.png"
    assert summarize.main([*map(str, paths), "--chart", str(chart)]) == 0
    rows = {tuple(line.split()[:2]): line for line in capsys.readouterr().out.splitlines()}
    assert "2.50x vs eager, shrunk/full 0.60" in rows["throughput-vit-shrunk", "aoti"]
    assert rows["throughput-vit-shrunk", "eager"].endswith("shrunk/full 0.75")
    assert rows["throughput-vit-full", "aoti"].endswith("2.00x vs eager")
    assert rows["atm-fwd", "fused"].endswith("-")  # its baseline was not measured
    with Image.open(chart) as img:
        assert img.format == "PNG" and img.width > 200


def test_unreadable_json_is_named_and_left_out(tmp_path, capsys):
    """A step killed before pytest wrote its JSON leaves an empty file: the other files still count."""
    empty, bad, good = tmp_path / "bench_empty.json", tmp_path / "bench_x.json", tmp_path / "bench_ok.json"
    empty.write_text("")
    bad.write_text("{not json")
    good.write_text(json.dumps({"benchmarks": [_bench("atm-fwd", "fused", 2.0)]}))
    assert summarize.main([str(empty), str(bad), str(good)]) == 0
    printed = capsys.readouterr()
    assert "left out" in printed.err and "bench_empty.json" in printed.err and "bench_x.json" in printed.err
    assert "atm-fwd" in printed.out and "2.0000" in printed.out
    assert summarize.main([str(empty)]) == 1


def test_a_median_not_recorded_by_the_harness_is_per_call(tmp_path):
    bench = _bench("atm-fwd", "fused", 5.0)
    del bench["extra_info"]["median_ms"]
    bench["extra_info"]["calls_per_round"] = 10
    bench["stats"]["median"] = 0.05  # one round: 10 calls of 5 ms
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"benchmarks": [bench]}))
    (row,) = summarize.load_rows([path])
    assert row["median_ms"] == pytest.approx(5.0)


class _Stopped(BaseException):
    """What a per-test timeout (pytest's Failed) or an interrupt is to the harness: not an Exception."""


def test_a_benchmark_stopped_mid_warmup_is_marked_failed(benchmark):
    """Else pytest-benchmark keeps a result without timings and cannot write the run's JSON at all."""
    from benchmarks.harness import measure

    def stop():
        raise _Stopped

    with pytest.raises(_Stopped):
        measure(benchmark, stop, group="harness", name="stopped", bytes_moved=0, flops=0)
    assert benchmark.has_error
