"""Engine backends, the engine directory format and its checks, and the builder's parity gate."""
import json
import os
import shutil
import subprocess
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import segvit_rt
from engine_helpers import SMALL, sharp_model
from segvit_rt import engines, kernel_choice
from segvit_rt.build import TOLERANCES, BuildError, Parity, build_engine, check_parity
from segvit_rt.data import normalize
from segvit_rt.engines import Engine, EngineError, load_engine, onnx_backend, read_engine
from segvit_rt.engines import cuda_graph
from segvit_rt.engines.cuda_graph import GraphedRunner, check_replay
from segvit_rt.engines.graph import LogitsGraph, example_input
from segvit_rt.io_utils import sha256_file
from segvit_rt.ops.reference import segment_postprocess

CROP = 128


def quiet(_msg):
    pass


def model_outputs(model, x):
    with torch.no_grad():
        out = model(x)
    return out["pred_logits"], out["pred_masks"]


def randn(batch, seed=0):
    return torch.randn(batch, 3, CROP, CROP, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def engine_copy(onnx_engine, tmp_path):
    """A private copy of the engine for tests that damage it."""
    return shutil.copytree(onnx_engine, tmp_path / "engine")


def test_onnx_engine_matches_pytorch_for_any_batch(onnx_engine, shrunk):
    engine = load_engine(onnx_engine)
    assert engine.static_batch is None and engine.max_batch == 4 and engine.device.type == "cpu"
    for batch in (1, 3, 6):  # 6 > max_batch: runs as 4 + 2
        x = randn(batch, seed=batch)
        cls, masks = engine(x)
        ref_cls, ref_masks = model_outputs(shrunk, x)
        assert cls.shape == ref_cls.shape and masks.shape == ref_masks.shape
        torch.testing.assert_close(cls, ref_cls, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(masks, ref_masks, atol=1e-4, rtol=1e-4)


def test_engine_json_describes_the_engine(onnx_engine, shrunk):
    meta = json.loads((onnx_engine / "engine.json").read_text())
    artifact = onnx_engine / "model.onnx"
    assert meta["format"] == engines.FORMAT and meta["backend"] == "onnx" and meta["artifact"] == "model.onnx"
    assert meta["sha256"] == sha256_file(artifact) and meta["artifact_bytes"] == artifact.stat().st_size
    assert meta["precision"] == "fp32" and meta["batch"] is None and meta["max_batch"] == 4
    assert meta["preset"] == "tiny" and meta["variant"] == "shrunk"
    assert meta["class_names"] == list(shrunk.cfg.names())
    assert np.asarray(meta["palette"]).shape == (5, 3)
    assert meta["input_size"] == [CROP, CROP] and meta["mean"] == list(shrunk.cfg.mean)
    assert meta["config"]["depth"] == SMALL["depth"]
    assert meta["versions"]["torch"] == torch.__version__ and meta["versions"]["onnxruntime"]
    assert meta["opset"] >= 17
    parity = meta["parity"]
    assert parity["label_agreement"] >= parity["min_label_agreement"] == 0.995
    assert parity["class_logits_err"] <= parity["class_logits_tol"]
    graph = onnx.load(str(artifact))
    onnx.checker.check_model(graph, full_check=True)
    assert [i.name for i in graph.graph.input] == ["image"]
    assert [o.name for o in graph.graph.output] == ["class_logits", "mask_logits"]
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a symbolic (dynamic) batch


def test_static_batch_engine_pads_the_last_chunk(tmp_path):
    model = sharp_model("full", seed=1)
    out = build_engine(model, backend="onnx", precision="fp32", batch=2, out=tmp_path / "static", log=quiet)
    dims = onnx.load(str(out / "model.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [2, 3, CROP, CROP]
    engine = load_engine(out)
    assert engine.static_batch == 2
    x = randn(3, seed=5)  # one full chunk and one padded chunk
    cls, masks = engine(x)
    ref_cls, ref_masks = model_outputs(model, x)
    torch.testing.assert_close(cls, ref_cls, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(masks, ref_masks, atol=1e-4, rtol=1e-4)


def test_engine_runs_every_chunk_within_its_batch_range(tmp_path):
    """Chunks above max_batch are split, chunks below min_batch are zero-padded and the padding's
    outputs dropped; the backend never sees a batch outside [min_batch, max_batch]."""
    seen = []

    def runner(image):  # per-image outputs that identify the image
        seen.append(image.shape[0])
        return image.mean(dim=(1, 2, 3))[:, None, None].expand(-1, 5, 6), image[:, :1, ::16, ::16]

    meta = {"batch": None, "max_batch": 4, "min_batch": 2, "input_size": [CROP, CROP],
            "outputs": {"class_logits": [None, 5, 6], "mask_logits": [None, 1, 8, 8]}}
    engine = Engine(tmp_path, meta, runner, torch.device("cpu"))
    x = randn(5, seed=3)  # chunks of 4 and 1: the 1 runs as 2
    cls, masks = engine(x)
    assert seen == [4, 2]
    assert cls.shape[0] == masks.shape[0] == 5
    torch.testing.assert_close(cls[:, 0, 0], x.mean(dim=(1, 2, 3)))
    torch.testing.assert_close(masks, x[:, :1, ::16, ::16])
    seen.clear()
    engine(x[:1])
    assert seen == [2]


def test_fp16_onnx_engine_is_half_inside_and_close_to_fp32(tmp_path, shrunk, capfd):
    out = build_engine(shrunk, backend="onnx", precision="fp16", out=tmp_path / "fp16", batch=2, log=quiet)
    graph = onnx.load(str(out / "model.onnx")).graph
    weight_types = {init.data_type for init in graph.initializer if len(init.dims) >= 2}
    assert weight_types == {onnx.TensorProto.FLOAT16}
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # fp32 I/O, cast at the edges
    capfd.readouterr()
    engine = load_engine(out)
    x = randn(2, seed=9)
    cls, masks = engine(x)
    assert "onnxruntime" not in capfd.readouterr().err  # its notes on fp16 ops without a CPU kernel are not shown
    assert cls.dtype == masks.dtype == torch.float32
    ref_cls, ref_masks = model_outputs(shrunk, x)
    tol = TOLERANCES["fp16"]
    assert (masks - ref_masks).abs().max() <= tol.bound(ref_masks)
    assert (cls - ref_cls).abs().max() <= tol.bound(ref_cls)
    agree = (segment_postprocess(cls, masks, (CROP, CROP)) == segment_postprocess(ref_cls, ref_masks, (CROP, CROP)))
    assert agree.float().mean() >= 0.995
    assert (masks - ref_masks).abs().max() > 0, "an fp16 graph cannot reproduce fp32 bit for bit"


def test_failed_parity_writes_nothing(tmp_path, shrunk, monkeypatch):
    """An exporter that gets the weights wrong must not produce an engine."""
    real_export = onnx_backend.export

    def wrong_weights_export(graph, example, path, **kw):
        with torch.no_grad():
            graph.model.decode_head.atm.class_embed.bias.add_(3.0 * torch.arange(6.0))
        return real_export(graph, example, path, **kw)

    monkeypatch.setattr(onnx_backend, "export", wrong_weights_export)
    out = tmp_path / "engine"
    with pytest.raises(BuildError, match="does not match the PyTorch model"):
        build_engine(shrunk, backend="onnx", precision="fp32", out=out, log=quiet)
    assert list(tmp_path.iterdir()) == [], "neither the engine nor a temporary directory may remain"


def test_a_crashed_build_keeps_the_previous_engine(tmp_path, shrunk, onnx_engine, monkeypatch):
    def crash_midway(graph, example, path, **kw):
        path.write_bytes(b"half an artifact")
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(onnx_backend, "export", crash_midway)
    old = shutil.copytree(onnx_engine, tmp_path / "engine")
    before = sha256_file(old / "model.onnx")
    with pytest.raises(RuntimeError, match="exporter crashed"):
        build_engine(shrunk, backend="onnx", precision="fp32", out=old, log=quiet)
    assert sha256_file(old / "model.onnx") == before
    read_engine(old)  # still whole and valid
    assert [p.name for p in tmp_path.iterdir()] == ["engine"], "no temporary directories left behind"


def test_a_build_says_which_engine_it_replaced(tmp_path, shrunk, onnx_engine):
    out = shutil.copytree(onnx_engine, tmp_path / "engine")
    built_at = json.loads((out / "engine.json").read_text())["built_at"]
    said = []
    build_engine(shrunk, backend="onnx", precision="fp32", out=out, weights=None, log=said.append)
    assert said[-1] == f"engine written to {out} (replacing the engine built there on {built_at} from unrecorded weights)"
    said.clear()
    build_engine(shrunk, backend="onnx", precision="fp32", out=tmp_path / "new", log=said.append)
    assert said[-1] == f"engine written to {tmp_path / 'new'}"


def test_check_parity_measures_both_logits_and_labels(shrunk):
    class Echo:
        """A stand-in engine: the model itself, with chosen offsets added to its outputs."""

        device = torch.device("cpu")

        def __init__(self, cls_offset=0.0, mask_offset=0.0):
            self.cls_offset, self.mask_offset = cls_offset, mask_offset

        def __call__(self, x):
            cls, masks = model_outputs(shrunk, x)
            return cls + self.cls_offset, masks + self.mask_offset

    exact = check_parity(Echo(), shrunk, "fp32", batch=2)
    assert exact.ok and exact.label_agreement == 1.0 and exact.mask_logits_err == 0.0
    assert "labels agree" in str(exact) and isinstance(exact, Parity)
    shifted = check_parity(Echo(mask_offset=torch.linspace(-8, 8, 8).view(1, 1, 1, 8)), shrunk, "fp32", batch=2)
    assert not shifted.ok and shifted.label_agreement < 0.995 and shifted.mask_logits_err > 1
    # A constant added to every class logit leaves the softmax, so the labels, unchanged:
    # only the logit tolerance can catch it, and fp16's is wider than fp32's.
    ref_cls, _ = model_outputs(shrunk, example_input(shrunk.cfg, 1, "cpu", seed=1))
    offset = TOLERANCES["fp16"].bound(ref_cls) / 2
    assert offset > 10 * TOLERANCES["fp32"].bound(ref_cls)
    fp16 = check_parity(Echo(cls_offset=offset), shrunk, "fp16", batch=1)
    assert fp16.ok and fp16.label_agreement == 1.0
    fp32 = check_parity(Echo(cls_offset=offset), shrunk, "fp32", batch=1)
    assert not fp32.ok and fp32.label_agreement == 1.0 and fp32.class_logits_err > fp32.class_logits_tol


# ------------------------------------------------------------------ engine checks


def test_refuses_a_directory_without_engine_json(engine_copy):
    (engine_copy / "engine.json").unlink()
    with pytest.raises(EngineError, match="engine.json is missing"):
        load_engine(engine_copy)
    with pytest.raises(EngineError, match="not a directory"):
        load_engine(engine_copy / "nowhere")


def test_refuses_corrupt_and_truncated_artifacts(engine_copy):
    artifact = engine_copy / "model.onnx"
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artifact.write_bytes(bytes(data))
    with pytest.raises(EngineError, match="sha256"):
        load_engine(engine_copy)
    artifact.write_bytes(bytes(data[: len(data) // 3]))
    with pytest.raises(EngineError, match="truncated"):
        load_engine(engine_copy)
    artifact.unlink()
    with pytest.raises(EngineError, match="model.onnx is missing"):
        load_engine(engine_copy)


def edit_meta(engine_dir, **changes):
    path = engine_dir / "engine.json"
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))
    return meta


def test_a_record_whose_versions_or_config_class_names_do_not_fit_is_refused(engine_copy):
    meta = json.loads((engine_copy / "engine.json").read_text())
    edit_meta(engine_copy, versions=["torch 2.13.0"])
    with pytest.raises(EngineError, match=r"versions must be an object of library versions, got \['torch 2.13.0'\]"):
        load_engine(engine_copy)
    edit_meta(engine_copy, versions=meta["versions"], config={**meta["config"], "class_names": ["x"] * 5})
    with pytest.raises(EngineError, match="class_names differ from the config's class_names"):
        segvit_rt.Runtime(engine_copy)
    edit_meta(engine_copy, config={**meta["config"], "class_names": meta["class_names"]})
    assert segvit_rt.Runtime(engine_copy).class_names == meta["class_names"]


def test_refuses_unknown_format_backend_and_bad_json(engine_copy):
    edit_meta(engine_copy, format="segvit_rt.engine/99")
    with pytest.raises(EngineError, match="unknown engine format"):
        load_engine(engine_copy)
    edit_meta(engine_copy, format=engines.FORMAT, backend="openvino")
    with pytest.raises(EngineError, match="unknown backend 'openvino'"):
        load_engine(engine_copy)
    edit_meta(engine_copy, backend="onnx", artifact="../model.onnx")
    with pytest.raises(EngineError, match="inside the engine"):
        load_engine(engine_copy)
    (engine_copy / "engine.json").write_text("{ not json")
    with pytest.raises(EngineError, match="not readable JSON"):
        load_engine(engine_copy)


@pytest.mark.parametrize("field, value, message", [
    ("batch", "eight", "batch must be a batch size, or null"),
    ("input", {"name": "image", "shape": [None, 3, 96, 96], "dtype": "float32"},
     r'input must be \{"name": "image", "shape": \[null, 3, 128, 128\], "dtype": "float32"\}'),
    ("input", {"name": "image", "shape": [None, 3, 128, 128], "dtype": "float16"}, "input must be"),
    ("input_size", [64, 64], r"input_size must be \[128, 128\] \(the config's crop size\)"),
    ("mean", [0.5, 0.5], "mean must be 3 numbers"),
    ("std", [1.0, 0.0, 1.0], "std must be 3 positive numbers"),
    ("class_names", ["a", "b"], "class_names must be 5 names"),
    ("palette", [[0, 0, 0]] * 4 + [[0, 0, 300]], "palette must be 5 RGB colours"),
    ("slide_stride", 0, "slide_stride must be a stride of 1-128 pixels"),
    ("max_batch", 0, "max_batch must be a batch size"),
    ("device", "tpu", "device must be 'cpu' or 'cuda'"),
    ("slide_stride", 64, "slide_stride 64 differs from the config's 96"),
    ("mean", [0.0, 0.0, 0.0], r"mean \[0.0, 0.0, 0.0\] differs from the config's"),
])
def test_refuses_a_record_with_a_field_that_does_not_fit(engine_copy, field, value, message):
    edit_meta(engine_copy, **{field: value})
    with pytest.raises(EngineError, match=f"engine.json: {message}"):
        load_engine(engine_copy)


def test_runtime_refuses_a_record_whose_model_config_does_not_load(engine_copy):
    meta = json.loads((engine_copy / "engine.json").read_text())
    edit_meta(engine_copy, config={**meta["config"], "depth_of_field": 3})
    with pytest.raises(EngineError, match="engine.json: its model config does not load: .*depth_of_field"):
        segvit_rt.Runtime(engine_copy)


def test_refuses_a_record_without_a_field_the_runtime_uses(engine_copy):
    meta = json.loads((engine_copy / "engine.json").read_text())
    del meta["input_size"]
    (engine_copy / "engine.json").write_text(json.dumps(meta))
    with pytest.raises(EngineError, match=r"lacks the fields \['input_size'\]"):
        load_engine(engine_copy)


def test_refuses_a_record_whose_batch_the_artifact_does_not_take(engine_copy):
    """A dynamic-batch artifact under a record that says batch 4 throughout: the artifact's own input tells."""
    record = read_engine(engine_copy)["input"]
    edit_meta(engine_copy, batch=4, max_batch=4, input={**record, "shape": [4, 3, 128, 128]})
    with pytest.raises(EngineError, match=r"takes input \[dynamic, 3, 128, 128\], .* records \[4, 3, 128, 128\]"):
        load_engine(engine_copy)


def test_artifacts_for_another_gpu_architecture_are_refused(monkeypatch):
    from segvit_rt.engines.format import check_compute_capability

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    check_compute_capability({"compute_capability": [9, 0]}, "model.pt2", torch.device("cuda", 0))
    with pytest.raises(EngineError, match=r"model.plan was built for a GPU of compute capability \[8, 0\] "
                                          r"\(NVIDIA A100\), this GPU has \[9, 0\]: rebuild"):
        check_compute_capability({"compute_capability": [8, 0], "gpu": "NVIDIA A100"}, "model.plan", "cuda:0")


def test_library_versions_come_from_the_modules_whatever_their_distribution_names(monkeypatch):
    """onnxruntime-gpu and tensorrt-cu12 wheels have other distribution names; the backends compare
    the record with the module's __version__, so that is what is recorded."""
    from segvit_rt.engines import format as engine_format

    real_version = engine_format.importlib_metadata.version

    def version(name):
        if name in ("onnxruntime", "tensorrt"):
            raise engine_format.importlib_metadata.PackageNotFoundError(name)
        return real_version(name)

    monkeypatch.setattr(engine_format.importlib_metadata, "version", version)
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.9.0.34"))
    import onnxruntime

    versions = engine_format.library_versions()
    assert versions["onnxruntime"] == onnxruntime.__version__ and versions["tensorrt"] == "10.9.0.34"
    assert versions["torch"] == torch.__version__
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert engine_format.library_versions()["tensorrt"] is None


def test_an_unloadable_artifact_is_reported_by_name(engine_copy):
    artifact = engine_copy / "model.onnx"
    artifact.write_bytes(b"\x08\x07garbage that is not a protobuf graph")
    edit_meta(engine_copy, sha256=sha256_file(artifact), artifact_bytes=artifact.stat().st_size)
    with pytest.raises(EngineError, match="cannot load .*model.onnx"):
        load_engine(engine_copy)


def test_engine_rejects_wrong_input(onnx_engine):
    engine = load_engine(onnx_engine)
    with pytest.raises(ValueError, match=r"\[B, 3, 128, 128\]"):
        engine(torch.zeros(1, 3, 64, 64))
    with pytest.raises(TypeError, match="float32"):
        engine(torch.zeros(1, 3, CROP, CROP, dtype=torch.float64))


# ------------------------------------------------------------------ backend choice


def test_auto_backend_choices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert engines.auto_backend()[0] == "onnx"
    with pytest.raises(EngineError, match="a cuda:1 engine was asked for, and torch sees no CUDA GPU"):
        engines.auto_backend("cuda:1")  # not "onnx: no CUDA GPU", then an error about onnx
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # "import tensorrt" raises ImportError
    name, why = engines.auto_backend()
    assert name == "aoti" and "tensorrt does not import" in why
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    assert engines.auto_backend()[0] == "tensorrt"


def test_auto_backend_for_a_cpu_engine_is_onnx_even_beside_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    name, why = engines.auto_backend("cpu")
    assert name == "onnx" and "CPU engine" in why
    assert engines.auto_backend("cuda")[0] == "tensorrt"


def test_build_refuses_to_replace_what_is_not_an_engine(shrunk, tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(EngineError, match="holding other things than an engine"):
        build_engine(shrunk, backend="onnx", out=folder, log=quiet)
    assert (folder / "notes.txt").read_text() == "mine" and os.listdir(folder) == ["notes.txt"]
    with pytest.raises(EngineError, match="is a file"):
        build_engine(shrunk, backend="onnx", out=folder / "notes.txt", log=quiet)
    assert os.listdir(tmp_path) == ["models"]


def test_what_appears_in_out_during_a_build_is_checked_again_before_the_swap(shrunk, tmp_path, onnx_engine,
                                                                            monkeypatch):
    """A file of the user's put in --out while the engine was built is not deleted with the old engine,
    and an engine another build wrote there meanwhile is named as replaced."""
    out = tmp_path / "engine"
    real_export = onnx_backend.export

    def export_while(arrival):
        def export(*args, **kwargs):
            arrival()
            return real_export(*args, **kwargs)
        return export

    def user_file():
        out.mkdir()
        (out / "mywork.txt").write_text("precious")

    monkeypatch.setattr(onnx_backend, "export", export_while(user_file))
    with pytest.raises(EngineError, match=r"holding other things than an engine .*\(changed while the engine was "
                                          "built: it was not written\)"):
        build_engine(shrunk, backend="onnx", precision="fp32", out=out, log=quiet)
    assert os.listdir(out) == ["mywork.txt"] and not [p for p in os.listdir(tmp_path) if p.startswith(".")]
    monkeypatch.setattr(onnx_backend, "export", export_while(lambda: shutil.copytree(onnx_engine, tmp_path / "other")))
    said = []
    other = tmp_path / "other"
    build_engine(shrunk, backend="onnx", precision="fp32", out=other, log=said.append)
    built_at = json.loads((onnx_engine / "engine.json").read_text())["built_at"]
    assert said[-1] == f"engine written to {other} (replacing the engine built there on {built_at} from unrecorded weights)"


def test_a_mount_point_as_out_is_refused_before_the_build(shrunk, tmp_path, monkeypatch):
    out = tmp_path / "volume"
    out.mkdir()
    monkeypatch.setattr(os.path, "ismount", lambda path: Path(path) == out)
    with pytest.raises(EngineError, match="--out .*volume is a mount point, .* give a folder inside it"):
        build_engine(shrunk, backend="onnx", out=out, log=quiet)


def test_aoti_dynamic_batch_range_of_one_size_exports_a_fixed_batch():
    """``Dim(min=2, max=2)`` is refused by torch.export; max_batch 2 is then a fixed batch of 2."""
    from segvit_rt.engines import aoti_backend

    assert aoti_backend.batch_dims(True, 2) is None and aoti_backend.batch_dims(False, 8) is None
    (dims,) = aoti_backend.batch_dims(True, 8)
    assert dims[0].min == aoti_backend.MIN_BATCH == 2 and dims[0].max == 8


@pytest.mark.parametrize("device, kernels, warms_up", [("cuda", "triton", True), ("cuda", "reference", False),
                                                    ("cpu", "reference", False)])
def test_aoti_build_tunes_the_kernels_first_only_when_it_compiles_them(monkeypatch, device, kernels, warms_up):
    """On CUDA with our kernels the graph runs once, then AOTInductor compiles only the chosen configs
    (``kernels.tuned_configs_only``); a graph of plain ops has nothing to tune (stand-ins here: no GPU)."""
    import contextlib
    import types

    import segvit_rt.kernels
    from segvit_rt.engines import aoti_backend

    calls = []
    graph = lambda example: calls.append(example)  # noqa: E731
    graph.model = types.SimpleNamespace(kernels=kernels)
    example = types.SimpleNamespace(device=torch.device(device))
    pinned = contextlib.nullcontext("pinned")
    monkeypatch.setattr(segvit_rt.kernels, "tuned_configs_only", lambda: pinned)
    with aoti_backend._tuned_kernels(graph, example) as ctx:
        assert (calls == [example], ctx == "pinned") == (warms_up, warms_up)


def test_tensorrt_without_tensorrt_is_a_clear_error(monkeypatch, shrunk, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(EngineError, match="needs the tensorrt package"):
        build_engine(shrunk, backend="tensorrt", device="cuda", out=tmp_path / "trt", log=quiet)
    assert not (tmp_path / "trt").exists()


@pytest.mark.parametrize("missing", ["onnx", "onnxscript", "onnxruntime"])
def test_building_an_onnx_engine_without_an_onnx_package_names_it(monkeypatch, shrunk, tmp_path, missing):
    monkeypatch.setitem(sys.modules, missing, None)  # import raises ImportError
    for device in (None, "cpu"):  # None: the backend's default device, which asks onnxruntime
        with pytest.raises(EngineError, match=f"the onnx backend needs {missing}: pip install onnx onnxscript"):
            build_engine(shrunk, backend="onnx", device=device, out=tmp_path / "e", log=quiet)
    assert not (tmp_path / "e").exists()


def test_a_package_whose_own_dependency_is_missing_is_named_with_it(tmp_path, monkeypatch):
    (tmp_path / "fake_onnx_pkg").mkdir()
    (tmp_path / "fake_onnx_pkg" / "__init__.py").write_text("import not_installed_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(EngineError, match="needs fake_onnx_pkg \\(its dependency not_installed_dependency_xyz does "
                                          "not import\\)"):
        onnx_backend._import(("fake_onnx_pkg",))


def test_running_an_onnx_engine_needs_only_onnxruntime(monkeypatch, onnx_engine, shrunk):
    """onnx and onnxscript export and check the graph; a deployment that only runs engines has neither."""
    monkeypatch.setitem(sys.modules, "onnx", None)
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    cls, masks = load_engine(onnx_engine)(randn(1))
    ref_cls, ref_masks = model_outputs(shrunk, randn(1))
    torch.testing.assert_close(masks, ref_masks, atol=1e-4, rtol=1e-4)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(EngineError, match="the onnx backend needs onnxruntime: pip install onnxruntime "):
        load_engine(onnx_engine)


def test_bad_build_arguments(shrunk, tmp_path):
    with pytest.raises(EngineError, match="unknown backend"):
        build_engine(shrunk, backend="tvm", out=tmp_path / "x", log=quiet)
    with pytest.raises(EngineError, match="fp16 aoti engines need CUDA"):
        build_engine(shrunk, backend="aoti", precision="fp16", device="cpu", out=tmp_path / "x", log=quiet)
    with pytest.raises(EngineError, match="precision"):
        build_engine(shrunk, backend="onnx", precision="int8", out=tmp_path / "x", log=quiet)
    with pytest.raises(EngineError, match="batch"):
        build_engine(shrunk, backend="onnx", batch=0, out=tmp_path / "x", log=quiet)
    with pytest.raises(EngineError, match="Triton kernels go into aoti engines on CUDA and tensorrt engines"):
        build_engine(shrunk, backend="onnx", kernels="triton", out=tmp_path / "x", log=quiet)
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------ aoti


@pytest.mark.slow
def test_aoti_cpu_engine_matches_and_checks_its_torch_version(tmp_path, shrunk, recwarn):
    out = build_engine(shrunk, backend="aoti", precision="fp32", device="cpu", max_batch=4,
                       out=tmp_path / "aoti", log=quiet)
    assert [str(w.message) for w in recwarn if issubclass(w.category, FutureWarning)] == []  # export's chatter
    meta = read_engine(out)
    assert meta["artifact"] == "model.pt2" and meta["device"] == "cpu" and meta["kernels"] == "reference"
    assert meta["kernel_choice"] is None  # --kernels auto times the graph only on CUDA
    assert meta["min_batch"] == 2  # batch 1 below is padded to 2
    engine = load_engine(out)
    for batch in (1, 5):
        x = randn(batch, seed=20 + batch)
        cls, masks = engine(x)
        ref_cls, ref_masks = model_outputs(shrunk, x)
        torch.testing.assert_close(cls, ref_cls, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(masks, ref_masks, atol=1e-4, rtol=1e-4)
    edit_meta(out, versions={**meta["versions"], "torch": "2.0.1"})
    with pytest.raises(EngineError, match="torch 2.0.1 .* only in the torch release that built them"):
        load_engine(out)
    edit_meta(out, versions=meta["versions"], device="cuda")
    with pytest.raises(EngineError, match="compiled for cuda"):
        load_engine(out, device="cpu")


@pytest.mark.gpu
def test_aoti_cuda_fp16_engine_keeps_the_triton_ops(tmp_path):
    model = sharp_model("shrunk").cuda()
    graph = LogitsGraph(sharp_model("shrunk").cuda().half().set_kernels("triton"), "fp16").eval()
    program = torch.export.export(graph, (example_input(model.cfg, 2, "cuda"),))
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert any("segvit_rt" in t for t in targets), f"no segvit_rt custom op survived export: {sorted(targets)[:20]}"
    out = build_engine(model, backend="aoti", precision="fp16", batch=2, kernels="triton", out=tmp_path / "aoti16",
                       log=quiet)
    meta = read_engine(out)
    assert meta["kernels"] == "triton" and meta["kernel_choice"] is None and meta["device"] == "cuda"
    assert meta["parity"]["label_agreement"] >= 0.995
    engine = load_engine(out)
    x = randn(3, seed=3).cuda()
    cls, masks = engine(x)  # batch 2 then 1 padded: the first chunk captured the CUDA graph, the second replays it
    ref_cls, ref_masks = model_outputs(model, x)
    assert (masks - ref_masks).abs().max() <= TOLERANCES["fp16"].bound(ref_masks)
    # The graph replays each call's own input into outputs of its own, as the package run plainly does.
    plain = load_engine(out, cuda_graph=False)
    assert engine.cuda_graph and engine._runner.graph is not None and not plain.cuda_graph
    first, second = randn(2, seed=4).cuda(), randn(2, seed=5).cuda()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):  # calls from two streams: the second waits for the first's copies
        got_first = engine(first)
    got_second = engine(second)
    torch.cuda.synchronize()
    for got, x in ((got_first, first), (got_second, second)):
        for a, b in zip(got, plain(x)):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)
    assert engine.cuda_graph
    captured_in_inference_mode = load_engine(out)
    with torch.inference_mode():
        captured_in_inference_mode(first)
    for a, b in zip(captured_in_inference_mode(second), got_second):  # outside it: its buffers still take input
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)
    assert captured_in_inference_mode.cuda_graph
    # The runtime's whole mode post-processes with the fused kernel on CUDA.
    runtime = segvit_rt.Runtime(out, mode="whole")
    assert runtime._post_impl == "triton"
    img = np.random.default_rng(0).integers(0, 256, size=(100, 150, 3), dtype=np.uint8)
    x = torch.nn.functional.interpolate(normalize(img, model.cfg.mean, model.cfg.std)[None].cuda(), size=(CROP, CROP),
                                        mode="bilinear", align_corners=False)
    ref_cls, ref_masks = model_outputs(model, x)
    expected = segment_postprocess(ref_cls, ref_masks, (100, 150))[0].cpu().numpy()
    assert (runtime.segment(img) == expected).mean() >= 0.99


_DYNAMIC_AOTI_SCRIPT = """
import sys
import torch
sys.path.insert(0, {tests!r})
from engine_helpers import sharp_model
from segvit_rt.build import build_engine
from segvit_rt.engines import load_engine
model = sharp_model("shrunk").cuda()
out = build_engine(model, backend="aoti", precision="fp16", kernels={kernels!r}, max_batch=8, out={out!r})
print("built", flush=True)
engine = load_engine(out)
print("loaded", flush=True)
for batch in (2, 3, 1, 11):
    cls, masks = engine(torch.randn(batch, 3, 128, 128, device="cuda"))
    torch.cuda.synchronize()
    assert cls.shape[0] == masks.shape[0] == batch
    print("batch", batch, "ok", flush=True)
print("dynamic aoti ok")
"""


@pytest.mark.gpu
def test_aoti_cuda_auto_build_compiles_in_the_ops_that_timed_faster(tmp_path):
    model = sharp_model("shrunk").cuda()
    lines = []
    out = build_engine(model, backend="aoti", precision="fp16", batch=2, out=tmp_path / "auto", log=lines.append)
    meta = read_engine(out)
    record = meta["kernel_choice"]
    assert "triton_error" not in record, record  # our kernels run on this GPU
    assert meta["kernels"] == kernel_choice.pick(record["times_ms"]) and min(record["times_ms"].values()) > 0
    assert any(line.startswith(f"kernels auto: {meta['kernels']} (median of") for line in lines)
    assert meta["parity"]["label_agreement"] >= 0.995


@pytest.mark.gpu
@pytest.mark.parametrize("kernels", ["triton", "reference"])  # what --kernels auto chooses between
def test_aoti_cuda_dynamic_batch_engine_in_a_subprocess(tmp_path, kernels):
    """A dynamic-batch CUDA package (then exported with min batch 1, reference ops) once crashed with
    SIGSEGV around aoti_load_package on torch 2.11: run it in a child process so a crash fails this
    test instead of killing the session, with progress markers and AOTInductor's runtime input checks."""
    tests = str(Path(__file__).resolve().parent)
    script = _DYNAMIC_AOTI_SCRIPT.format(tests=tests, out=str(tmp_path / "aoti_dyn"), kernels=kernels)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(tests).parent), os.environ.get("PYTHONPATH", "")]),
           "AOTI_RUNTIME_CHECK_INPUTS": "1", "TORCH_SHOW_CPP_STACKTRACES": "1"}
    run = subprocess.run([sys.executable, "-X", "faulthandler", "-c", script], capture_output=True, text=True,
                         env=env, timeout=600)
    assert run.returncode == 0 and "dynamic aoti ok" in run.stdout, (
        f"exit status {run.returncode}\n{run.stdout[-2000:]}\n{run.stderr[-4000:]}"
    )


def test_onnx_export_says_nothing_about_itself(shrunk, tmp_path, recwarn, capfd):
    """The exporter's own chatter (onnxscript's unfolded ``Split`` notes, torch's pytree deprecation)
    is kept out of the build's output."""
    graph = LogitsGraph(shrunk, "fp32").eval()
    onnx_backend.export(graph, example_input(shrunk.cfg, 2, "cpu"), tmp_path / "g.onnx", dynamic_batch=True,
                        max_batch=4)
    printed = capfd.readouterr()
    assert "Skipping constant folding" not in printed.err + printed.out
    assert [str(w.message) for w in recwarn if issubclass(w.category, FutureWarning)] == []


def test_cuda_graphs_are_for_aoti_engines_on_cuda(onnx_engine):
    assert not load_engine(onnx_engine).cuda_graph and not load_engine(onnx_engine, cuda_graph=None).cuda_graph
    with pytest.raises(EngineError, match="CUDA graphs replay aoti engines on CUDA only; this is a onnx engine on cpu"):
        load_engine(onnx_engine, cuda_graph=True)
    with pytest.raises(EngineError, match="CUDA graphs replay aoti engines on CUDA only"):
        segvit_rt.Runtime(onnx_engine, cuda_graph=True)


def test_a_graphed_runner_that_cannot_capture_runs_plainly_and_says_why(monkeypatch):
    """Capture failing (here: CPU tensors, no CUDA stream) warns once and leaves every later call, of
    every runner of the process, to the plain runner; shapes other than the graph's never try."""
    monkeypatch.setattr(cuda_graph, "_process_failure", None)  # restored after the test
    calls = []

    def runner(image):
        calls.append(tuple(image.shape))
        return image.sum(dim=(1, 2, 3)), image * 2

    graphed = GraphedRunner(runner, (2, 3, 4, 4))
    other = torch.ones(1, 3, 4, 4)
    assert torch.equal(graphed(other)[1], other * 2) and graphed.failed is None and graphed.graph is None
    image = torch.arange(96.0).reshape(2, 3, 4, 4)
    with pytest.warns(UserWarning, match="CUDA graph capture failed, engines in this process run without graphs: "):
        cls, masks = graphed(image)
    assert torch.equal(masks, image * 2) and graphed.failed and graphed.graph is None
    calls.clear()
    assert torch.equal(graphed(image)[1], image * 2) and calls == [(2, 3, 4, 4)]  # plain, no second try
    another = GraphedRunner(runner, (2, 3, 4, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(another(image)[1], image * 2)
    assert another.failed == graphed.failed and another.graph is None


def test_a_replay_that_differs_from_the_plain_run_is_refused():
    plain = (torch.tensor([[1.0, 2.0]]), torch.tensor([[10.0, -20.0]]))
    check_replay((plain[0] + 1e-6, plain[1] - 1e-5), plain)  # rounding
    with pytest.raises(RuntimeError, match="replayed graph's mask_logits differ from the plain run's by 0.5"):
        check_replay((plain[0], plain[1] + 0.5), plain)
    with pytest.raises(RuntimeError, match="class_logits differ .* by nan"):
        check_replay((torch.full_like(plain[0], float("nan")), plain[1]), plain)


def test_an_engine_runs_on_cpu_or_cuda_only(onnx_engine):
    with pytest.raises(EngineError, match="engines run on cpu or cuda, not meta"):
        load_engine(onnx_engine, device="meta")
    with pytest.raises(EngineError, match="not meta"):
        segvit_rt.Runtime(onnx_engine, device="meta")


def test_a_record_edited_to_other_classes_or_scales_is_refused(engine_copy):
    """Hand edits the loader would otherwise take: a class count the artifact does not output, a
    test scale that would resize every image to nothing."""
    meta = json.loads((engine_copy / "engine.json").read_text())
    for scale in ([2048, 0], "big", [-2048, -512]):
        edit_meta(engine_copy, config={**meta["config"], "image_scale": scale})
        with pytest.raises(EngineError, match="config.image_scale must be null or 2 positive pixel sizes"):
            load_engine(engine_copy)
    four = {"class_names": meta["class_names"][:4], "palette": meta["palette"][:4],
            "config": {**meta["config"], "num_classes": 4, "class_names": meta["class_names"][:4]}}
    edit_meta(engine_copy, **four)
    with pytest.raises(EngineError, match=r"outputs must be per image .*'class_logits': \[4, 5\]"):
        load_engine(engine_copy)
    outputs = {"class_logits": [None, 4, 5], "mask_logits": [None, 4, 8, 8]}
    edit_meta(engine_copy, outputs=outputs)  # the record agrees with itself now; the artifact does not
    with pytest.raises(EngineError, match=r"outputs class_logits of \[5, 6\] per image, its record says \[4, 5\]"):
        load_engine(engine_copy)


def test_outputs_that_differ_from_the_record_are_refused_at_the_call(tmp_path):
    """Backends whose artifacts state no output shapes (aoti) are checked on their first call."""
    meta = {"batch": None, "max_batch": 2, "input_size": [CROP, CROP],
            "outputs": {"class_logits": [None, 4, 5], "mask_logits": [None, 4, 8, 8]}}
    engine = Engine(tmp_path, meta, lambda x: (x.new_zeros(len(x), 5, 6), x.new_zeros(len(x), 5, 8, 8)),
                    torch.device("cpu"))
    with pytest.raises(EngineError, match=r"artifact's class_logits are \[5, 6\] per image, its record says \[4, 5\]"):
        engine(randn(1))
    one_only = Engine(tmp_path, meta, lambda x: (x.new_zeros(1, 4, 5), x.new_zeros(1, 4, 8, 8)), torch.device("cpu"))
    one_only(randn(1))  # sent alone: one answer is right
    with pytest.raises(EngineError, match=r"gave class_logits for 1 images when sent 2: its record's batch does not"):
        one_only(randn(2))  # a package compiled for batch 1 under a record of a dynamic batch


def test_a_cuda_onnx_engine_without_a_gpu_says_there_is_none(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(EngineError, match="a CUDA onnx engine needs a CUDA GPU, and torch sees none"):
        onnx_backend.check_available(torch.device("cuda"))
