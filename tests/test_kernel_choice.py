"""--kernels auto: the builder times the engine's graph with our Triton kernels and with the reference
ops, and compiles in the faster (segvit_rt.kernel_choice)."""
import pytest
import torch

from engine_helpers import sharp_model
from segvit_rt import build, kernel_choice
from segvit_rt.engines import EngineError, read_engine
from segvit_rt.engines.graph import LogitsGraph, example_input


def _graph(device="cpu", precision="fp32"):
    dtype = torch.float16 if precision == "fp16" else torch.float32
    model = sharp_model("shrunk").eval().to(device, dtype)
    return LogitsGraph(model, precision).eval(), example_input(model.cfg, 2, device)


@pytest.mark.parametrize("triton_ms, choice", [(50.0, "triton"), (98.5, "reference"), (100.0, "reference"),
                                               (130.0, "reference")])
def test_the_kernels_go_in_only_when_clearly_faster(triton_ms, choice):
    assert kernel_choice.pick({"reference": 100.0, "triton": triton_ms}) == choice


def test_time_forward_is_the_median_of_its_rounds_after_the_warm_up(monkeypatch):
    calls, clock = [], iter([0.0, 0.001, 1.0, 1.005, 2.0, 2.003, 3.0, 3.009, 4.0, 4.001])

    class Counting(torch.nn.Module):
        def forward(self, x):
            calls.append(torch.is_grad_enabled())
            return x

    monkeypatch.setattr(kernel_choice, "perf_counter", lambda: next(clock))
    ms = kernel_choice.time_forward_ms(Counting(), torch.zeros(1), rounds=3, warmup=2)
    assert calls == [False] * 5  # no autograd graph while timing
    assert ms == pytest.approx(3.0)  # the rounds took 3, 9 and 1 ms; the warm-up's 1 and 5 ms not counted


def test_choose_kernels_times_both_and_leaves_the_faster_set():
    """On a CPU the Triton kernels run in the interpreter, far slower than aten: the reference wins."""
    graph, example = _graph()
    lines = []
    choice, times = kernel_choice.choose_kernels(graph, example, lines.append)
    assert choice == "reference" and graph.model.kernels == "reference"
    assert set(times) == {"reference", "triton"} and times["triton"] > times["reference"] > 0
    assert lines == [f"kernels auto: reference (one forward at batch 2 on cpu: reference ops {times['reference']:.2f} "
                     f"ms, Triton kernels {times['triton']:.2f} ms; the kernels go in when at least 2% faster)"]


def test_choose_kernels_keeps_the_triton_kernels_when_they_win(monkeypatch):
    graph, example = _graph()
    timed = []

    def fake_time(g, x):
        timed.append(g.model.kernels)
        return {"reference": 10.0, "triton": 5.0}[g.model.kernels]

    monkeypatch.setattr(kernel_choice, "time_forward_ms", fake_time)
    choice, times = kernel_choice.choose_kernels(graph, example, log=lambda _: None)
    assert timed == ["reference", "triton"] and choice == "triton" and graph.model.kernels == "triton"
    assert times == {"reference": 10.0, "triton": 5.0}


def test_triton_kernels_that_fail_here_leave_the_reference_ops(monkeypatch):
    graph, example = _graph()
    lines = []

    def fake_time(g, x):
        if g.model.kernels == "triton":
            raise RuntimeError("out of shared memory: 300000 bytes needed")
        return 7.0

    monkeypatch.setattr(kernel_choice, "time_forward_ms", fake_time)
    choice, times = kernel_choice.choose_kernels(graph, example, log=lines.append)
    assert choice == "reference" == graph.model.kernels and times == {"reference": 7.0}
    assert lines == ["kernels auto: reference (the Triton kernels failed on cpu: RuntimeError: out of shared memory: "
                     "300000 bytes needed)"]
    monkeypatch.setattr(kernel_choice, "time_forward_ms", lambda g, x: 1 / 0)  # the reference's own errors
    with pytest.raises(ZeroDivisionError):
        kernel_choice.choose_kernels(graph, example, log=lines.append)


def test_auto_is_timed_only_for_aoti_on_cuda():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")  # resolve_kernels only reads the device type
    for kernels in (None, "auto"):
        assert build.resolve_kernels(kernels, "aoti", cuda, "fp16") == "auto"
        assert build.resolve_kernels(kernels, "aoti", cpu, "fp32") == "reference"
        assert build.resolve_kernels(kernels, "onnx", cpu, "fp32") == "reference"
        assert build.resolve_kernels(kernels, "tensorrt", cuda, "fp16") == "reference"  # the plugin on request
    assert build.resolve_kernels("triton", "aoti", cuda, "fp16") == "triton"
    with pytest.raises(EngineError, match="kernels must be one of auto, triton, reference, got 'fast'"):
        build.resolve_kernels("fast", "aoti", cuda, "fp16")


def test_an_auto_build_on_cpu_records_no_timing(tmp_path, monkeypatch):
    monkeypatch.setattr(kernel_choice, "time_forward_ms", lambda *a: pytest.fail("timed a graph off CUDA"))
    out = build.build_engine(sharp_model("shrunk"), backend="onnx", kernels="auto", batch=2, out=tmp_path / "e",
                             log=lambda _: None)
    meta = read_engine(out)
    assert meta["kernels"] == "reference" and meta["kernel_times_ms"] is None


def test_cli_takes_auto_and_refuses_other_kernels(capsys):
    parser = build.build_parser()
    assert parser.parse_args(["--variant", "shrunk"]).kernels == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args(["--variant", "shrunk", "--kernels", "fast"])
    assert "invalid choice: 'fast'" in capsys.readouterr().err


@pytest.mark.gpu
def test_choose_kernels_on_cuda_times_both_in_fp16():
    graph, example = _graph("cuda", "fp16")
    choice, times = kernel_choice.choose_kernels(graph, example.half(), log=lambda _: None)
    assert min(times.values()) > 0 and choice == kernel_choice.pick(times) == graph.model.kernels
