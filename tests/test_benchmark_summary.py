"""benchmarks/summarize.py: the table and chart gpu_check.sh prints from pytest-benchmark JSON."""
import json
import re
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from benchmarks import summarize


def _bench(group, runner, median_ms, variant=None, baseline=None, speedups=None, device="GPU", **extra):
    info = {"variant": runner, "median_ms": median_ms, "gbps": 100.0, "tflops": 2.0, "device": device, **extra}
    if variant:
        info.update(preset="vit_l16_ade20k_640", precision="fp16", batch=8, model_variant=variant,
                    images_per_s=8 / (median_ms / 1e3))
    if baseline:
        info["baseline"] = baseline
    if speedups:
        info["speedup_vs"] = speedups
    return {"group": group, "name": f"test[{runner}]", "stats": {"median": median_ms / 1e3}, "extra_info": info}


def _write(tmp_path, runs: dict) -> list[str]:
    paths = []
    for name, benches in runs.items():
        paths.append(str(tmp_path / f"bench_{name}.json"))
        Path(paths[-1]).write_text(json.dumps({"benchmarks": benches}))
    return paths


def _goals(printed: str) -> list[str]:
    """The goal lines, spaces collapsed."""
    return [" ".join(line.split()) for line in printed.split("\ngoals (")[1].strip().splitlines()[1:]]


SHRUNK, FULL = "throughput-vit_l16_ade20k_640-shrunk", "throughput-vit_l16_ade20k_640-full"


def test_speedups_and_shrunk_over_full_prefer_the_same_run_and_say_when_they_cross_runs(tmp_path, capsys):
    runs = {
        "aoti_full": [_bench(FULL, "eager", 40.0, "full"),
                      _bench(FULL, "aoti", 20.0, "full", "eager", {"eager": 2.0})],
        "aoti_shrunk": [_bench(SHRUNK, "aoti", 12.0, "shrunk", "eager"),  # its baseline ran later in its run
                        _bench(SHRUNK, "eager", 30.0, "shrunk")],
        # the aoti engine with the reference ops: its own step, no eager beside it; its full model elsewhere
        "aoti_shrunk_reference": [_bench(SHRUNK, "aoti-reference", 25.0, "shrunk", "eager")],
        "aoti_full_reference": [_bench(FULL, "aoti-reference", 32.0, "full", "eager")],
        "eager": [_bench(SHRUNK, "eager", 24.0, "shrunk"),  # the same runner in another run: not used for aoti
                  _bench(SHRUNK, "eager+triton", 20.0, "shrunk", "eager", {"eager": 1.2})],
        "kernels": [_bench("atm-fwd-vit-l", "fused", 1.0, baseline="reference"),
                    _bench("qd-attention-fwd", "fused", 1.0, baseline="gather+sdpa")],
        "other_card": [_bench("qd-attention-fwd", "gather+sdpa", 3.0, device="another GPU")],
    }
    chart = tmp_path / "throughput.png"
    assert summarize.main([*_write(tmp_path, runs), "--chart", str(chart)]) == 0
    out = capsys.readouterr().out
    rows = {tuple(line.split()[:3]): line for line in out.splitlines()}
    # gpu_check.sh times the variants in separate steps: shrunk/full always crosses runs, and says so
    assert rows["aoti_shrunk", SHRUNK, "aoti"].endswith("2.50x vs eager, shrunk/full 0.60 (other run)")
    assert rows["aoti_shrunk", SHRUNK, "eager"].endswith("shrunk/full 0.75 (other run)")
    assert rows["eager", SHRUNK, "eager"].endswith("shrunk/full 0.60 (other run)")
    assert rows["aoti_full", FULL, "aoti"].endswith("2.00x vs eager")
    assert rows["kernels", "atm-fwd-vit-l", "fused"].endswith("-")  # its baseline was not measured
    assert rows["kernels", "qd-attention-fwd", "fused"].endswith("-")  # measured only on another card
    goals = _goals(out)
    assert "met Shrunk ViT-L 640 fp16 aoti >= 1.3x eager at batch 8: 2.50" in goals
    assert "met Shrunk/full time <= 0.65 (ViT-L 640 fp16 aoti): 0.60 (from two runs)" in goals
    assert rows["aoti_shrunk_reference", SHRUNK, "aoti-reference"].endswith(
        "0.96x vs eager (other run), shrunk/full 0.78 (other run)")
    assert "NOT met Shrunk ViT-L 640 fp16 aoti, reference ops, >= 1.3x eager at batch 8: 0.96 (from two runs)" in goals
    assert "NOT met Shrunk/full time <= 0.65 (ViT-L 640 fp16 aoti, reference ops): 0.78 (from two runs)" in goals
    assert "not measured ATM forward fused >= 2x eager reference (ViT-L)" in goals
    assert not any("onnx" in goal for goal in goals)  # the CPU goals, on a GPU run
    with Image.open(chart) as img:
        assert img.format == "PNG" and img.width > 200


def test_goals_not_met_and_figures_from_the_device_probe(tmp_path, capsys):
    runs = {"kernels": [
        _bench("atm-fwd-vit-l", "reference", 3.0), _bench("atm-fwd-vit-l", "sdpa+matmul", 1.2),
        _bench("atm-fwd-vit-l", "fused", 1.0, baseline="reference",
               speedups={"reference": 3.0, "sdpa+matmul": 1.2}),
        _bench("segment-postprocess", "fused", 1.0, baseline="reference", speedups={"reference": 6.0},
               peak_memory_vs_reference=0.25),
    ]}
    device = tmp_path / "device.json"
    device.write_text(json.dumps({"name": "GPU", "copy_gbps": 200.0, "matmul_tflops": 10.0}))
    assert summarize.main([*_write(tmp_path, runs), "--device", str(device)]) == 0
    goals = _goals(capsys.readouterr().out)
    assert "met ATM forward fused >= 2x eager reference (ViT-L): 3.00" in goals
    assert "NOT met ATM forward fused >= 1.3x SDPA + matmul (ViT-L): 1.20" in goals
    assert "NOT met ATM forward >= 60% of copy bandwidth (ViT-L): 0.50" in goals
    assert "met post-process fused >= 5x reference: 6.00" in goals
    assert "NOT met post-process peak extra memory <= 1/10 of the reference's: 0.25" in goals
    assert "not measured QD forward fused >= 1.15x gather + flash SDPA" in goals


def test_a_cpu_run_is_held_to_the_cpu_goal(tmp_path, capsys):
    runs = {"cpu": [_bench("throughput-tiny-full", "eager", 10.0, device="cpu"),
                    _bench("throughput-tiny-full", "onnx", 8.0, device="cpu", baseline="eager",
                           speedups={"eager": 1.25})]}
    assert summarize.main(_write(tmp_path, runs)) == 0
    assert _goals(capsys.readouterr().out) == ["NOT met onnx engine >= 1.3x eager fp32 (tiny, full): 1.25",
                     "not measured onnx engine >= 1.3x eager fp32 (tiny, Shrunk)"]


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


def test_goals_are_judged_on_one_device_only(tmp_path, capsys):
    """CPU rows (the interpreter's, same group names) and another card's rows never decide a GPU goal,
    and a card's copy bandwidth divides only its own rows."""
    runs = {"cpu": [_bench("segment-postprocess", "fused", 9.0, device="cpu", baseline="reference",
                           speedups={"reference": 9.0}, peak_memory_vs_reference=0.05)],
            "h200": [_bench("atm-fwd-vit-l", "fused", 1.0, device="H200", gbps=3000.0)],
            "h100": [_bench("segment-postprocess", "fused", 1.0, device="H100", baseline="reference",
                            speedups={"reference": 4.0}, peak_memory_vs_reference=0.5)]}
    device = tmp_path / "device.json"
    device.write_text(json.dumps({"name": "H100", "copy_gbps": 2000.0}))
    assert summarize.main([*_write(tmp_path, runs), "--device", str(device)]) == 0
    out = capsys.readouterr().out
    assert "goals (H100):" in out
    goals = _goals(out)
    assert "NOT met post-process fused >= 5x reference: 4.00" in goals
    assert "NOT met post-process peak extra memory <= 1/10 of the reference's: 0.50" in goals
    assert "not measured ATM forward >= 60% of copy bandwidth (ViT-L)" in goals  # its row is the H200's


def test_a_timing_whose_rounds_spread_widely_is_flagged(tmp_path, capsys):
    eager = _bench("throughput-tiny-full", "eager", 10.0, device="cpu")
    eager["stats"]["iqr"] = 0.004  # 40 % of its 10 ms median
    runs = {"cpu": [eager, _bench("throughput-tiny-full", "onnx", 5.0, device="cpu", baseline="eager",
                                  speedups={"eager": 2.0})]}
    assert summarize.main(_write(tmp_path, runs)) == 0
    assert _goals(capsys.readouterr().out)[0] == (
        "met onnx engine >= 1.3x eager fp32 (tiny, full): 2.00 (noisy: a timing's rounds spread 40% of its median)")
    # only the timings a figure is made of count: not another runner's of the same group
    steady = {"cpu": [_bench("throughput-tiny-full", "eager", 10.0, device="cpu"), eager | {"name": "test[x]"},
                      _bench("throughput-tiny-full", "onnx", 5.0, device="cpu", baseline="eager",
                             speedups={"eager": 2.0})]}
    steady["cpu"][1]["extra_info"] = {**eager["extra_info"], "variant": "onnx-cuda"}
    assert summarize.main(_write(tmp_path, steady)) == 0
    assert _goals(capsys.readouterr().out)[0] == "met onnx engine >= 1.3x eager fp32 (tiny, full): 2.00"


def test_odd_json_is_left_out_not_a_crash(tmp_path, capsys):
    no_median = _bench("atm-fwd", "fused", 1.0)
    del no_median["extra_info"]["median_ms"], no_median["stats"]["median"]
    listed = _bench("atm-fwd", "sdpa+matmul", 2.0)
    listed["extra_info"]["baseline"] = ["fused", "reference"]
    (tmp_path / "bench_list.json").write_text("[]")
    paths = [*_write(tmp_path, {"odd": [no_median, listed, _bench("atm-fwd", "fused", 1.0)]}),
             str(tmp_path / "bench_list.json")]
    assert summarize.main(paths) == 0
    printed = capsys.readouterr()
    assert "left out test[fused]" in printed.err and "bench_list.json" in printed.err
    assert "0.50x vs fused" in printed.out


def test_profile_names_the_ops_each_kernels_setting_runs(capsys):
    """benchmarks/profile_model.py (gpu_check's profile step) on the tiny Shrunk model: our ops on a
    CPU (the interpreter runs inside them), our kernels by name on a GPU; only with kernels="triton"."""
    import segvit_rt
    from benchmarks import profile_model

    ours = ("_qd_fwd_kernel", "_atm_fwd") if profile_model.ON_CUDA else ("segvit_rt::qd_attention",
                                                                           "segvit_rt::atm_attention")
    device = "cuda" if profile_model.ON_CUDA else "cpu"
    model = segvit_rt.create_model("tiny", variant="shrunk").eval().to(device)
    x = torch.randn(1, 3, model.cfg.crop_size, model.cfg.crop_size, device=device)
    for setting in profile_model.SETTINGS:
        times = profile_model.self_times_us(model.set_kernels(setting), x, iters=1)
        assert all(us > 0 and calls > 0 for us, calls in times.values())
        for name in ours:
            assert any(key.startswith(name) for key in times) == (setting == "triton"), (setting, name)
    assert 20 <= profile_model.wall_ms(lambda _: time.sleep(0.02), x, iters=3) < 1000  # a 20 ms forward

    assert profile_model.main(["--preset", "tiny", "--variant", "shrunk", "--iters", "1", "--top", "3"]) == 0
    out = capsys.readouterr().out
    for heading in ("kernels=reference: ", "kernels=triton: ", "largest changes, triton minus reference"):
        assert out.count(heading) == 1
    assert re.search(r"kernels=triton: \d+\.\d{3} ms wall per forward; \d+\.\d{3} ms of (CPU|device) self "
                     r"time \(\d+ % of wall\)", out), out
    assert len(out.split("largest changes")[1].strip().splitlines()) == 1 + 3  # --top rows


def test_profile_refuses_bad_arguments(capsys):
    from benchmarks import profile_model

    for argv, message in ((["--batch", "0"], "--batch must be at least 1"),
                          (["--preset", "nope"], "unknown preset 'nope'")):
        with pytest.raises(SystemExit) as exit_info:
            profile_model.main(argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_files_of_one_name_in_two_folders_are_two_runs(tmp_path, capsys):
    """gpu_check.sh's two calls each write OUT/bench_*.json: a second call's file of the same name is
    another run, so a ratio across them says so."""
    first, second = tmp_path / "OUT", tmp_path / "OUT2"
    first.mkdir(), second.mkdir()
    paths = _write(first, {"throughput_aoti": [_bench(FULL, "eager", 40.0, "full"),
                                               _bench(FULL, "aoti", 25.0, "full", "eager", {"eager": 1.6})]})
    paths += _write(second, {"throughput_aoti": [_bench(SHRUNK, "eager", 30.0, "shrunk"),
                                                 _bench(SHRUNK, "aoti", 14.0, "shrunk", "eager", {"eager": 2.14})]})
    assert summarize.run_names(paths) == {paths[0]: str(first / "bench_throughput_aoti"),
                                          paths[1]: str(second / "bench_throughput_aoti")}
    assert summarize.main(paths) == 0
    goals = _goals(capsys.readouterr().out)
    assert "met Shrunk/full time <= 0.65 (ViT-L 640 fp16 aoti): 0.56 (from two runs)" in goals


def test_gpu_check_without_a_gpu_stops_before_writing_anything(tmp_path):
    """With no GPU visible (CUDA_VISIBLE_DEVICES empty: also on a GPU machine) it exits 2, naming why,
    and leaves no OUT folder behind; usage without OUT is 2 as well."""
    import os
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(script), str(tmp_path / "OUT")], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "no CUDA GPU visible to torch" in done.stderr
    assert not (tmp_path / "OUT").exists()
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.startswith("usage: bash benchmarks/gpu_check.sh OUTDIR")
    done = subprocess.run(["bash", str(script), str(tmp_path / "OUT"), "probe", "porfile"], env=env,
                          capture_output=True, text=True, timeout=60)  # a misspelt step, named before any work
    assert done.returncode == 2 and done.stderr.startswith("gpu_check: unknown step porfile (steps: probe ")
    assert not (tmp_path / "OUT").exists()
