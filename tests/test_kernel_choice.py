"""--kernels auto: the builder times the engine's graph with our Triton kernels and with the reference
ops, and compiles in the faster (segvit_rt.kernel_choice)."""
import types

import pytest
import torch

import segvit_rt
from engine_helpers import sharp_model
from segvit_rt import build, engines, kernel_choice
from segvit_rt.engines import EngineError, read_engine
from segvit_rt.engines.graph import LogitsGraph, example_input
from segvit_rt.kernels._common import interpreter_active


def _graph(device="cpu", precision="fp32"):
    dtype = torch.float16 if precision == "fp16" else torch.float32
    model = sharp_model("shrunk").eval().to(device, dtype)
    return LogitsGraph(model, precision).eval(), example_input(model.cfg, 2, device)


@pytest.mark.parametrize("triton_ms, choice", [(50.0, "triton"), (97.5, "triton"), (98.5, "reference"),
                                               (100.0, "reference"), (130.0, "reference")])
def test_the_kernels_go_in_only_when_clearly_faster(triton_ms, choice):
    assert kernel_choice.pick({"reference": 100.0, "triton": triton_ms}) == choice


class _Timed(torch.nn.Module):
    """A graph stand-in whose calls take what ``ms`` says for its current ``model.kernels``."""

    def __init__(self, ms):
        super().__init__()
        self.model = types.SimpleNamespace(kernels="reference")
        self.model.set_kernels = lambda k: setattr(self.model, "kernels", k)
        self.ms, self.calls = ms, []

    def forward(self, x):
        self.calls.append((self.model.kernels, torch.is_grad_enabled()))
        return x


def _fake_clock(monkeypatch, graph):
    """perf_counter advancing by the time each call of ``graph`` takes: ms[kernels](call number)."""
    now = [0.0]

    def call(x):
        _Timed.forward(graph, x)
        kernels = graph.model.kernels
        now[0] += graph.ms[kernels](sum(1 for k, _ in graph.calls if k == kernels)) / 1e3
        return x

    monkeypatch.setattr(graph, "forward", call)
    monkeypatch.setattr(kernel_choice, "perf_counter", lambda: now[0])


def test_rounds_interleave_after_the_warm_up_and_the_medians_decide(monkeypatch):
    # The warm-up calls (the first two of each) are slow, as autotuning is; each setting then
    # alternates between two speeds, so the median is the middle of its rounds.
    graph = _Timed({"reference": lambda n: 500.0 if n <= 2 else (10.0 if n % 2 else 12.0),
                    "triton": lambda n: 900.0 if n <= 2 else (8.0 if n % 2 else 11.0)})
    _fake_clock(monkeypatch, graph)
    lines = []
    choice, record = kernel_choice.choose_kernels(graph, torch.zeros(4, 1), lines.append)
    n = kernel_choice.ROUNDS
    assert [k for k, _ in graph.calls[:4]] == ["reference", "reference", "triton", "triton"]
    timed = [k for k, _ in graph.calls[4:]]
    assert len(timed) == 2 * n and all({timed[2 * i], timed[2 * i + 1]} == {"reference", "triton"} for i in range(n))
    assert timed[:4] == ["triton", "reference", "reference", "triton"]  # each round starts with the other
    assert not any(grad for _, grad in graph.calls)  # no autograd graph while timing
    # rounds 3..17 of each: 8 odd and 7 even call numbers -> medians 10 and 8 ms
    assert record == {"times_ms": {"reference": pytest.approx(10.0), "triton": pytest.approx(8.0)}}
    assert choice == "triton" == graph.model.kernels
    assert lines == [f"kernels auto: triton (median of {n} eager forwards at batch 4 on cpu: reference ops 10.00 ms, "
                     "Triton kernels 8.00 ms; the kernels go in when at least 2% faster)"]


def test_choose_kernels_on_the_tiny_model_times_both_and_leaves_the_faster_set(monkeypatch):
    monkeypatch.setattr(kernel_choice, "ROUNDS", 3)  # the interpreter is slow
    graph, example = _graph()
    choice, record = kernel_choice.choose_kernels(graph, example, log=lambda _: None)
    times = record["times_ms"]
    assert set(times) == {"reference", "triton"} and min(times.values()) > 0
    assert choice == kernel_choice.pick(times) == graph.model.kernels
    if interpreter_active():  # the kernels in Triton's CPU interpreter: far slower than aten
        assert choice == "reference" and times["triton"] > 2 * times["reference"]


def test_triton_kernels_that_fail_here_leave_the_reference_ops(device):
    """A real failure (on the GPU, or the CPU's interpreter): our ATM kernel takes head dims of at
    least 16, this model's decoder has 8."""
    model = segvit_rt.create_model("tiny", variant="shrunk", num_heads=8, decoder_heads=8, depth=3,
                                   out_indices=(0, 1, 2), shrink_idx=1).eval().to(device)
    graph = LogitsGraph(model, "fp32").eval()
    lines = []
    choice, record = kernel_choice.choose_kernels(graph, example_input(model.cfg, 2, device), log=lines.append)
    assert choice == "reference" == graph.model.kernels and record["times_ms"] == {}
    assert record["triton_error"].startswith("ValueError: ") and "head_dim" in record["triton_error"]
    assert lines == [f"kernels auto: reference (the Triton kernels failed on {device}: {record['triton_error']})"]


def test_a_long_triton_error_is_recorded_short():
    graph = _Timed({"reference": lambda n: 1.0, "triton": lambda n: 1.0})
    log = "ptxas error: " + "x" * 5000 + "\nsecond line"
    graph.forward = lambda x: (_ for _ in ()).throw(RuntimeError(log)) if graph.model.kernels == "triton" else x
    _, record = kernel_choice.choose_kernels(graph, torch.zeros(1), log=lambda _: None)
    error = record["triton_error"]
    assert error.startswith("RuntimeError: ptxas error: xxx") and error.endswith("…")
    assert len(error) <= kernel_choice.MAX_ERROR_CHARS + 1 and "second line" not in error


def test_a_failing_reference_run_is_an_error_not_a_choice(monkeypatch):
    graph = _Timed({"reference": lambda n: 1.0, "triton": lambda n: 1.0})
    monkeypatch.setattr(graph, "forward", lambda x: 1 / 0 if graph.model.kernels == "reference" else x)
    with pytest.raises(ZeroDivisionError):
        kernel_choice.choose_kernels(graph, torch.zeros(1), log=lambda _: None)


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


def test_an_auto_build_off_cuda_times_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(kernel_choice, "time_call_ms", lambda *a: pytest.fail("timed a graph off CUDA"))
    out = build.build_engine(sharp_model("shrunk"), backend="onnx", kernels="auto", batch=2, out=tmp_path / "e",
                             log=lambda _: None)
    meta = read_engine(out)
    assert meta["kernels"] == "reference" and meta["kernel_choice"] is None


def test_the_builder_records_the_timing_at_the_engines_batch(tmp_path, monkeypatch):
    """The auto branch of build_engine, as on CUDA (here an onnx build, whose graph takes only the
    reference ops): timed at min(8, max_batch) for a dynamic engine, the record kept in engine.json."""
    monkeypatch.setattr(build, "resolve_kernels", lambda *a: "auto")
    monkeypatch.setattr(kernel_choice, "ROUNDS", 3)
    seen, lines = [], []
    real = kernel_choice.choose_kernels

    def spy(graph, example, log):
        seen.append(example.shape[0])
        choice, record = real(graph, example, log)
        # Where the CPU runs no interpreter (a GPU machine), both settings run the same code and
        # either may time faster.
        graph.model.set_kernels("reference")
        return "reference", record

    monkeypatch.setattr(build, "choose_kernels", spy)
    out = build.build_engine(sharp_model("shrunk"), backend="onnx", max_batch=4, out=tmp_path / "e", log=lines.append)
    meta = read_engine(out)
    assert seen == [4]
    assert meta["kernels"] == "reference" and set(meta["kernel_choice"]["times_ms"]) == {"reference", "triton"}
    assert any(line.startswith("kernels auto: ") for line in lines)
    assert any("kernels reference" in line for line in lines if line.startswith("building onnx"))


def test_the_builder_exports_the_setting_the_timing_chose(tmp_path, monkeypatch):
    monkeypatch.setattr(build, "resolve_kernels", lambda *a: "auto")
    monkeypatch.setattr(build, "choose_kernels", lambda graph, example, log: ("triton", {"times_ms": {}}))
    exported = []

    def export(graph, example, path, **kw):
        exported.append(graph.model.kernels)
        raise RuntimeError("stop after the export call")

    monkeypatch.setattr(engines.backend_module("onnx"), "export", export)
    with pytest.raises(RuntimeError, match="stop after the export call"):
        build.build_engine(sharp_model("shrunk"), backend="onnx", batch=2, out=tmp_path / "e", log=lambda _: None)
    assert exported == ["triton"] and not (tmp_path / "e").exists()


def test_cli_takes_auto_and_refuses_other_kernels(capsys):
    parser = build.build_parser()
    assert parser.parse_args(["--variant", "shrunk"]).kernels == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args(["--variant", "shrunk", "--kernels", "fast"])
    assert "invalid choice: 'fast'" in capsys.readouterr().err


@pytest.mark.gpu
def test_choose_kernels_on_cuda_times_both_in_fp16():
    graph, example = _graph("cuda", "fp16")
    choice, record = kernel_choice.choose_kernels(graph, example, log=lambda _: None)  # fp32 in, as built
    assert "triton_error" not in record and set(record["times_ms"]) == {"reference", "triton"}
    assert min(record["times_ms"].values()) > 0 and choice == kernel_choice.pick(record["times_ms"]) == graph.model.kernels


def test_a_gpu_left_unusable_by_the_kernels_is_an_error_naming_the_way_out(monkeypatch):
    def broken(device=None):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(torch.cuda, "synchronize", broken)
    kernel_choice._check_device_usable(torch.device("cpu"), ValueError("x"))  # nothing to check off CUDA
    with pytest.raises(EngineError, match=r"the Triton kernels failed on cuda:0 \(RuntimeError: launch failed\) and "
                                          r"left the GPU unusable .*illegal memory access.*--kernels reference"):
        kernel_choice._check_device_usable(torch.device("cuda:0"), RuntimeError("launch failed"))
