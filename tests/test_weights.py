"""Weights I/O: our safetensors format, bad files, timm and official SegViT importers."""
import json
import os
import pickle
import re
import zipfile

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import segvit_rt
from segvit_rt import convert, weights
from segvit_rt.weights import WeightsError


@pytest.fixture
def tiny_shrunk():
    torch.manual_seed(0)
    return segvit_rt.create_model("tiny", "shrunk").eval()


def _same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_round_trip_rebuilds_model_from_metadata(tmp_path, tiny_shrunk):
    path = weights.save_weights(tmp_path / "w.safetensors", tiny_shrunk, extra={"note": "x"})
    meta = weights.read_metadata(path)
    assert meta["preset"] == "tiny" and meta["variant"] == "shrunk" and meta["note"] == "x"
    assert meta["mean"] == [127.5] * 3 and meta["crop_size"] == 128
    assert len(meta["class_names"]) == 5
    loaded = weights.load_weights(path)
    assert loaded.variant == "shrunk" and loaded.cfg == tiny_shrunk.cfg
    assert _same_state(loaded, tiny_shrunk)
    assert not any(m.training for m in loaded.modules())  # built for inference: no dropout
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(loaded(x)["pred_masks"], tiny_shrunk(x)["pred_masks"])
    # into an existing model of the same architecture, which keeps its mode
    other = segvit_rt.create_model("tiny", "shrunk").train()
    assert _same_state(weights.load_weights(path, other), tiny_shrunk) and other.training
    assert not list(tmp_path.glob(".*tmp"))  # no temp files left behind


def test_custom_classes_survive_round_trip(tmp_path):
    model = segvit_rt.create_model("tiny", "full", num_classes=3, class_names=("sky", "road", "car"))
    path = weights.save_weights(tmp_path / "w.safetensors", model)
    loaded = weights.load_weights(path)
    assert loaded.cfg.num_classes == 3 and loaded.cfg.names() == ("sky", "road", "car")


def test_fp16_storage_loads_into_fp32_model(tmp_path, tiny_shrunk):
    path = weights.save_weights(tmp_path / "w.safetensors", tiny_shrunk, dtype=torch.float16)
    loaded = weights.load_weights(path)
    w = loaded.state_dict()["backbone.blocks.0.attn.qkv.weight"]
    assert w.dtype == torch.float32
    torch.testing.assert_close(w, tiny_shrunk.state_dict()["backbone.blocks.0.attn.qkv.weight"], atol=1e-3, rtol=1e-3)


def test_mismatched_model_is_refused(tmp_path, tiny_shrunk):
    path = weights.save_weights(tmp_path / "w.safetensors", tiny_shrunk)
    with pytest.raises(WeightsError, match="variant 'shrunk' != model's 'full'"):
        weights.load_weights(path, segvit_rt.create_model("tiny", "full"))
    with pytest.raises(WeightsError, match="num_classes=5 != model's 7"):
        weights.load_weights(path, segvit_rt.create_model("tiny", "shrunk", num_classes=7))


@pytest.mark.parametrize("variant, other", [("full", {"shrink_idx": 2}), ("shrunk", {"out_indices": (0, 2, 5)})])
def test_the_block_field_a_variant_ignores_may_differ(tmp_path, variant, other):
    """shrink_idx moves no full-model tensor and out_indices no Shrunk one: a model differing there loads,
    while the field the variant reads must match."""
    saved = segvit_rt.create_model("tiny", variant)
    path = weights.save_weights(tmp_path / "w.safetensors", saved)
    loaded = weights.load_weights(path, segvit_rt.create_model("tiny", variant, **other))
    key = "backbone.blocks.2.attn.qkv.weight"
    assert torch.equal(loaded.state_dict()[key], saved.state_dict()[key])
    used = {"full": {"out_indices": (0, 3, 5)}, "shrunk": {"shrink_idx": 2}}[variant]
    with pytest.raises(WeightsError, match=f"{next(iter(used))}=.* != model's"):
        weights.load_weights(path, segvit_rt.create_model("tiny", variant, **used))


def test_corrupt_truncated_and_foreign_files_are_refused(tmp_path, tiny_shrunk):
    path = weights.save_weights(tmp_path / "w.safetensors", tiny_shrunk)
    data = path.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="corrupt or truncated"):
        weights.load_weights(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(WeightsError, match="not a readable safetensors"):
        weights.read_metadata(garbage)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(WeightsError, match="no segvit_rt metadata.*python -m segvit_rt.convert FILE --preset P"):
        weights.load_weights(foreign)
    with pytest.raises(WeightsError, match="not found"):
        weights.load_weights(tmp_path / "missing.safetensors")


def test_tampered_tensor_shape_is_named(tmp_path, tiny_shrunk):
    state = {k: v.contiguous() for k, v in tiny_shrunk.state_dict().items()}
    state["decode_head.q.weight"] = torch.zeros(9, 64)
    meta = weights.model_metadata(tiny_shrunk)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path), metadata={"segvit_rt": json.dumps(meta)})
    with pytest.raises(WeightsError, match=r"decode_head.q.weight has shape \(9, 64\)"):
        weights.load_weights(path)


def test_weights_of_a_diverged_run_or_an_unknown_model_are_named(tmp_path, tiny_shrunk):
    state = {k: v.contiguous() for k, v in tiny_shrunk.state_dict().items()}
    meta = weights.model_metadata(tiny_shrunk)
    path = tmp_path / "w.safetensors"
    save_file(state, str(path), metadata={"segvit_rt": json.dumps({**meta, "variant": "medium"})})
    with pytest.raises(WeightsError, match="its metadata does not describe a model this version builds: .*variant"):
        weights.load_weights(path)
    state["decode_head.q.weight"][0, 0] = float("nan")
    save_file(state, str(path), metadata={"segvit_rt": json.dumps(meta)})
    with pytest.raises(WeightsError, match="decode_head.q.weight holds NaN or infinite values"):
        weights.load_weights(path)


def _timm_state(model, grid):
    """A synthetic checkpoint with timm's real key names for the model's backbone width/depth."""
    c = model.cfg.embed_dim
    state = {k: torch.randn_like(v) for k, v in model.backbone.state_dict().items() if k != "pos_embed"}
    state["pos_embed"] = torch.randn(1, 1 + grid * grid, c)
    state["cls_token"] = torch.randn(1, 1, c)
    state["norm.weight"], state["norm.bias"] = torch.ones(c), torch.zeros(c)
    state["head.weight"], state["head.bias"] = torch.randn(1000, c), torch.randn(1000)
    return state


def test_import_timm_vit_resizes_pos_embed_and_reports(tmp_path, tiny_shrunk):
    state = _timm_state(tiny_shrunk, grid=14)
    path = tmp_path / "vit.pth"
    torch.save({"model": state}, path)
    report = weights.import_timm_vit(tiny_shrunk, path)
    assert report.resized == ["backbone.pos_embed"]
    assert sorted(report.unexpected) == sorted(
        ["backbone.cls_token", "backbone.norm.weight", "backbone.norm.bias", "backbone.head.weight", "backbone.head.bias"]
    )
    assert report.missing == []
    sd = tiny_shrunk.backbone.state_dict()
    assert torch.equal(sd["blocks.3.attn.qkv.weight"], state["blocks.3.attn.qkv.weight"])
    assert torch.equal(sd["pos_embed"][:, 0], state["pos_embed"][:, 0])
    assert sd["pos_embed"].shape == (1, 65, 128)
    assert "resized" in str(report) and "unexpected (5)" in str(report)


def official_state(src) -> dict:
    """``src``'s parameters as an official SegViT checkpoint holds them: the backbone in mmseg ViT
    names, the head in the official ATM names (identical to ours)."""
    state = {}
    for k, v in src.backbone.state_dict().items():
        k = (k.replace("patch_embed.proj", "patch_embed.projection").replace("blocks.", "layers.")
             .replace("norm1", "ln1").replace("norm2", "ln2").replace("attn.qkv.weight", "attn.attn.in_proj_weight")
             .replace("attn.qkv.bias", "attn.attn.in_proj_bias").replace("attn.proj", "attn.attn.out_proj")
             .replace("mlp.fc1", "ffn.layers.0.0").replace("mlp.fc2", "ffn.layers.1"))
        state["backbone." + k] = v
    state.update({"decode_head." + k: v for k, v in src.decode_head.state_dict().items()})
    return state


@pytest.mark.parametrize("variant", ["full", "shrunk"])
def test_import_official_segvit_mmseg_layout(tmp_path, variant):
    torch.manual_seed(0)
    model = segvit_rt.create_model("tiny", variant)
    src = segvit_rt.create_model("tiny", variant)
    state = official_state(src)
    if variant == "shrunk":  # the official Shrunk head's own names (TPNATMHead + ATMSingleHead)
        for k in ("decode_head.q.weight", "decode_head.decoder_2.layers.2.multihead_attn.in_proj_weight",
                  "decode_head.atm.decoder_1.layers.0.multihead_attn.k.bias", "decode_head.atm.class_embed.weight"):
            assert k in state
    state["backbone.cls_token"] = torch.zeros(1, 1, 128)
    path = tmp_path / "segvit_official.pth"
    torch.save({"meta": {"epoch": 1}, "state_dict": state}, path)
    report = weights.import_official_segvit(model, path)
    assert report.missing == [] and report.unexpected == ["backbone.cls_token"]
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(model.eval()(x)["pred_masks"], src.eval()(x)["pred_masks"])


def test_import_reports_missing_head_keys(tiny_shrunk):
    state = {"backbone." + k: v for k, v in tiny_shrunk.backbone.state_dict().items()}
    report = weights.import_official_segvit(tiny_shrunk, state)
    assert "decode_head.q.weight" in report.missing and report.unexpected == []
    with pytest.raises(WeightsError, match="no backbone"):
        weights.import_official_segvit(tiny_shrunk, {"foo": torch.zeros(1)})


RAN = []  # what a malicious pickle managed to run


class _Evil:
    def __reduce__(self):
        return (RAN.append, ("pwned",))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_pth_is_loaded_with_weights_only(tmp_path, tiny_shrunk, writer):
    path = tmp_path / "evil.pth"
    state = {"state_dict": tiny_shrunk.backbone.state_dict(), "meta": _Evil()}
    if writer == "pickle":
        with open(path, "wb") as f:
            pickle.dump(state, f)
    else:
        torch.save(state, path)
    message = {"torch.save": "holds Python objects besides tensors .*Unsupported global.*which is not done",
               "pickle": "is not a readable PyTorch checkpoint .*UnpicklingError"}[writer]
    with pytest.raises(WeightsError, match=f"evil.pth {message}") as err:
        weights.import_timm_vit(tiny_shrunk, path)
    assert RAN == [], "the checkpoint's code ran"
    assert "weights_only=False" not in str(err.value)  # no advice to load it unsafely


def test_a_pickle_calling_a_blocked_module_is_named_as_python_objects(tmp_path, tiny_shrunk):
    """torch words a call into a blocked module (``os.system``) differently from an unknown global."""
    marker = tmp_path / "ran"

    class Shell:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": tiny_shrunk.backbone.state_dict(), "meta": Shell()}, path)
    with pytest.raises(WeightsError, match="holds Python objects besides tensors .*GLOBAL posix.system"):
        weights.import_timm_vit(tiny_shrunk, path)
    assert not marker.exists(), "the checkpoint's code ran"


def test_a_run_folder_given_as_a_checkpoint_points_to_its_weights(tmp_path, tiny_shrunk):
    weights.save_weights(tmp_path / "weights.safetensors", tiny_shrunk)
    with pytest.raises(WeightsError, match=r"is a folder: give the checkpoint file in it \(weights.safetensors there\?\)"):
        weights.read_checkpoint(tmp_path)


def test_files_that_are_not_checkpoints_are_named_so(tmp_path, recwarn):
    good = tmp_path / "good.pth"
    torch.save({"a": torch.zeros(1000)}, good)
    cases = {"text.pth": b"hello world\n", "random.pth": bytes(range(256)) * 2,
             "truncated.pth": good.read_bytes()[: good.stat().st_size // 2]}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(WeightsError, match=f"{name} is not a readable PyTorch checkpoint"):
            weights.read_checkpoint(tmp_path / name)
    assert not [w for w in recwarn if "torch" in str(w.filename)]


@pytest.mark.parametrize("numpy_names", ["installed", "numpy 1"])
def test_mmcv_checkpoint_meta_with_numpy_scalars_loads(tmp_path, tiny_shrunk, numpy_names):
    """mmcv keeps e.g. the best score as a numpy float in ``meta``: plain values, not code. Official
    checkpoints were pickled under numpy 1, which names the scalar maker ``numpy.core.multiarray``."""
    path = tmp_path / "iter_160000.pth"
    state = {k: v.clone() for k, v in tiny_shrunk.backbone.state_dict().items()}
    torch.save({"meta": {"hook_msgs": {"best_score": np.float64(0.51), "best_iter": np.int64(8000)}},
                "state_dict": state}, path)
    if numpy_names == "numpy 1":
        with zipfile.ZipFile(path) as zin:
            entries = [(info, zin.read(info.filename)) for info in zin.infolist()]
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zout:
            for info, data in entries:
                if info.filename.endswith("data.pkl"):
                    data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
                    assert b"numpy.core.multiarray" in data
                zout.writestr(info, data)
    loaded = weights.read_checkpoint(path)
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)


def test_full_weights_warm_start_a_shrunk_model(tmp_path):
    torch.manual_seed(0)
    full = segvit_rt.create_model("tiny", "full")
    path = weights.save_weights(tmp_path / "full.safetensors", full)
    shrunk = segvit_rt.create_model("tiny", "shrunk")
    report = weights.import_full_into_shrunk(shrunk, path)
    fs, ss = full.state_dict(), shrunk.state_dict()
    assert torch.equal(ss["backbone.blocks.5.mlp.fc2.weight"], fs["backbone.blocks.5.mlp.fc2.weight"])
    assert torch.equal(ss["decode_head.input_proj_2.weight"], fs["decode_head.input_proj_1.weight"])  # last block
    assert torch.equal(ss["decode_head.input_proj_1.weight"], fs["decode_head.input_proj_3.weight"])  # before QD
    assert torch.equal(ss["decode_head.atm.decoder_1.layers.2.multihead_attn.k.weight"],
                      fs["decode_head.decoder_3.layers.2.multihead_attn.k.weight"])
    assert torch.equal(ss["decode_head.atm.q.weight"], fs["decode_head.q.weight"])
    fresh = {k.split(".layers")[0] for k in report.missing}
    assert fresh == {"decode_head.decoder_1", "decode_head.decoder_2", "decode_head.q.weight"}
    assert {".".join(k.split(".")[:2]) for k in report.unexpected} == {
        "decode_head.decoder_1", "decode_head.decoder_2", "decode_head.input_proj_2", "decode_head.proj_norm_2"}
    with pytest.raises(WeightsError, match="needs a Shrunk model"):
        weights.import_full_into_shrunk(full, path)


def test_a_warm_start_at_another_crop_resizes_the_position_embedding_and_names_its_file(tmp_path):
    full = segvit_rt.create_model("tiny", "full")  # crop 128: 8x8 tokens
    path = weights.save_weights(tmp_path / "full.safetensors", full)
    shrunk = segvit_rt.create_model("tiny", "shrunk", crop_size=64)
    report = weights.import_full_into_shrunk(shrunk, path)
    assert report.resized == ["backbone.pos_embed"] and "backbone.pos_embed" in report.loaded
    assert shrunk.backbone.pos_embed.shape == (1, 17, 128)
    other = segvit_rt.create_model("tiny", "shrunk", num_classes=7)
    with pytest.raises(WeightsError, match=rf"{path}: decode_head.atm.class_embed.bias: checkpoint shape \(6,\)"):
        weights.import_full_into_shrunk(other, path)


@pytest.mark.parametrize("variant, classes, message", [
    ("full", 7, r"decode_head.q.weight: checkpoint shape \(5, 64\) != model shape \(7, 64\)"),
    ("shrunk", 5, r"decode_head.q.weight: checkpoint shape \(5, 64\) != model shape \(64, 64\)"),
])
def test_a_checkpoint_that_does_not_fit_leaves_the_model_unchanged(variant, classes, message):
    """Every shape is checked before anything is copied: a refused import changes no parameter
    (the backbone, which would fit, included)."""
    state = official_state(segvit_rt.create_model("tiny", "full"))
    model = segvit_rt.create_model("tiny", variant, num_classes=classes)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightsError, match=message + r" \(a checkpoint of another preset, variant or class count"):
        weights.import_official_segvit(model, state)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_an_mmseg_checkpoint_loaded_in_memory_imports_as_its_file_does(tmp_path):
    src = segvit_rt.create_model("tiny", "full")
    model = segvit_rt.create_model("tiny", "full")
    report = weights.import_official_segvit(model, {"meta": {"iter": 160000}, "state_dict": official_state(src)})
    assert report.missing == [] and report.unexpected == [] and _same_state(model, src)
    with pytest.raises(WeightsError, match="the checkpoint: expected a state dict of tensors"):
        weights.import_timm_vit(model, {"meta": {"iter": 1}, "blocks.0.norm1.weight": torch.ones(128)})


def test_files_from_before_presets_carried_scales_get_the_presets():
    """Metadata written before ``image_scale``/``test_min_size`` existed: the preset's values (scaled
    to the file's crop), not the generic (4 crops, crop)."""
    from segvit_rt.weights import config_from_metadata

    for crop, expected in ((640, ((2048, 640), None)), (320, ((1024, 320), None))):
        old = segvit_rt.get_config("vit_l16_ade20k_640", crop_size=crop).to_dict()
        for key in ("image_scale", "test_min_size", "drop_path_rate"):
            del old[key]
        assert config_from_metadata({"config": old}).scales() == expected
    old = segvit_rt.get_config("vit_l16_pcontext_480").to_dict()
    del old["image_scale"], old["test_min_size"]
    assert config_from_metadata({"config": old}).scales() == ((520, 520), 480)


def test_convert_cli_writes_weights_the_builder_takes(tmp_path, capsys):
    torch.manual_seed(1)
    src = segvit_rt.create_model("tiny", "shrunk")
    state = {**official_state(src), "auxiliary_head.conv.weight": torch.zeros(1)}
    torch.save({"state_dict": state}, tmp_path / "official.pth")
    out = convert.main([str(tmp_path / "official.pth"), "--preset", "tiny", "--variant", "shrunk",
                        "--out", str(tmp_path / "w.safetensors")])
    printed = capsys.readouterr().out
    assert "unexpected (1): auxiliary_head.conv.weight" in printed and "(shrunk); build an engine with: python -m segvit_rt.build --weights" in printed
    model = weights.load_weights(out)
    assert all(torch.equal(v, src.state_dict()[k]) for k, v in model.state_dict().items())
    assert weights.read_metadata(out)["converted_from"] == "official.pth"
    with pytest.raises(WeightsError, match="PyTorch checkpoint.*segvit_rt.convert"):
        weights.load_weights(tmp_path / "official.pth")  # the builder's and runtime's loader
    (tmp_path / "renamed.safetensors").write_bytes((tmp_path / "official.pth").read_bytes())  # told by content
    with pytest.raises(WeightsError, match="PyTorch checkpoint"):
        weights.load_weights(tmp_path / "renamed.safetensors")
    assert weights.load_weights(weights.save_weights(tmp_path / "ours.pt", src)).cfg.name == "tiny"

    with pytest.raises(SystemExit):
        convert.main([str(tmp_path / "official.pth"), "--out", str(tmp_path / "x.safetensors")])
    assert "--preset and --variant needed: " in capsys.readouterr().err

    del state["decode_head.atm.class_embed.weight"]
    torch.save({"state_dict": state}, tmp_path / "partial.pth")
    with pytest.raises(SystemExit) as exc:
        convert.main([str(tmp_path / "partial.pth"), "--preset", "tiny", "--variant", "shrunk",
                      "--out", str(tmp_path / "partial.safetensors")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "decode_head.atm.class_embed.weight" in err and "a shrunk SegViT checkpoint" in err
    assert not (tmp_path / "partial.safetensors").exists()
    small = segvit_rt.create_model("tiny", "full", crop_size=64)  # trained at another crop size
    torch.save({"state_dict": official_state(small)}, tmp_path / "crop64.pth")
    with pytest.raises(SystemExit):
        convert.main([str(tmp_path / "crop64.pth"), "--preset", "tiny", "--variant", "full",
                      "--out", str(tmp_path / "crop64.safetensors")])
    assert "backbone.pos_embed is for another input size than the preset's crop (128)" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a full checkpoint is not a Shrunk one
        convert.main([str(tmp_path / "official.pth"), "--preset", "tiny", "--variant", "full",
                      "--out", str(tmp_path / "full.safetensors")])
    err = capsys.readouterr().err
    assert re.search(r"decode_head.q.weight: checkpoint shape \(64, 64\) != model shape \(5, 64\); is official.pth "
                     r"a full SegViT checkpoint of preset tiny\?$", err.strip()), err  # one question, the CLI's own
    for out, message in ((tmp_path / "w.pth", "name the file \\*.safetensors"),
                         (tmp_path / "official.pth", "name the file")):
        with pytest.raises(SystemExit):
            convert.main([str(tmp_path / "official.pth"), "--preset", "tiny", "--variant", "shrunk", "--out", str(out)])
        assert re.search(message, capsys.readouterr().err)
    same = tmp_path / "official.safetensors"
    weights.save_weights(same, segvit_rt.create_model("tiny", "shrunk"))
    with pytest.raises(SystemExit):
        convert.main([str(same), "--preset", "tiny", "--variant", "shrunk", "--out", str(same)])
    assert "is the checkpoint being converted" in capsys.readouterr().err


def test_save_weights_writes_no_weights_its_loader_would_refuse(tmp_path, tiny_shrunk):
    """NaN, or a value out of range for the dtype asked for: refused before anything is written."""
    with torch.no_grad():
        tiny_shrunk.decode_head.q.weight[1, 2] = 1e6  # fine in fp32 and bf16, inf in fp16
    weights.save_weights(tmp_path / "bf16.safetensors", tiny_shrunk, dtype=torch.bfloat16)
    with pytest.raises(WeightsError, match=r"fp16\.safetensors not written: decode_head\.q\.weight holds NaN or "
                                           r"infinite values \(from a diverged run, or out of range for the dtype\?\)"):
        weights.save_weights(tmp_path / "fp16.safetensors", tiny_shrunk, dtype=torch.float16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bf16.safetensors"]


def test_metadata_without_what_builds_the_model_is_named(tmp_path, tiny_shrunk):
    state = {k: v.contiguous() for k, v in tiny_shrunk.state_dict().items()}
    meta = weights.model_metadata(tiny_shrunk)
    path = tmp_path / "w.safetensors"
    for record, message in (({k: v for k, v in meta.items() if k != "config"}, "lacks a valid 'config'"),
                            ({**meta, "variant": None, "config": [1]}, "lacks a valid 'variant' and 'config'"),
                            ([meta], "its segvit_rt metadata is a JSON list, not an object")):
        save_file(state, str(path), metadata={"segvit_rt": json.dumps(record)})
        with pytest.raises(WeightsError, match=re.escape(message)):
            weights.load_weights(path)


def test_checkpoints_are_read_by_content_whatever_their_suffix(tmp_path, tiny_shrunk):
    state = official_state(tiny_shrunk)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "official.pth"))  # safetensors as .pth
    torch.save({"state_dict": state}, tmp_path / "official.safetensors")  # torch.save as .safetensors
    for name in ("official.pth", "official.safetensors"):
        read = weights.read_checkpoint(tmp_path / name)
        assert read.keys() == state.keys() and all(torch.equal(read[k], state[k]) for k in state)


def test_state_dicts_saved_from_data_parallel_or_holding_odd_values_are_handled(tmp_path, tiny_shrunk):
    state = official_state(tiny_shrunk)
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, tmp_path / "ddp.pth")
    model = segvit_rt.create_model("tiny", "shrunk")
    assert weights.import_official_segvit(model, tmp_path / "ddp.pth").missing == []
    assert _same_state(model, tiny_shrunk)
    torch.save({"state_dict": {**state, "decode_head.step": 3}}, tmp_path / "odd.pth")
    with pytest.raises(WeightsError, match="expected a state dict of tensors; 'decode_head.step' holds a int"):
        weights.read_checkpoint(tmp_path / "odd.pth")
    twice = {**state, "backbone.blocks.0.norm1.weight": torch.zeros(128)}  # also under its mmseg name, layers.0.ln1
    with pytest.raises(WeightsError, match=r"holds backbone\.blocks\.0\.norm1\.weight twice, as "
                                           r"backbone\.layers\.0\.ln1\.weight and backbone\.blocks\.0\.norm1\.weight"):
        weights.import_official_segvit(segvit_rt.create_model("tiny", "shrunk"), twice)
    with pytest.raises(WeightsError, match=r"the checkpoint has no backbone\.\* or decode_head\.\* keys \(it has "
                                           r"e\.g\. conv\.weight\)"):
        weights.import_official_segvit(model, {"conv.weight": torch.zeros(1)})


def test_a_timm_position_embedding_without_a_class_slot_loads(tiny_shrunk):
    """timm's ``no_embed_class`` ViTs keep no cls slot in pos_embed: [1, g*g, C]; ours drops that slot."""
    state = _timm_state(tiny_shrunk, grid=8)  # the tiny preset's own grid: no resize
    state["pos_embed"] = state["pos_embed"][:, 1:]
    report = weights.import_timm_vit(tiny_shrunk, state)
    assert report.resized == [] and report.missing == []
    assert torch.equal(tiny_shrunk.backbone.pos_embed[:, 1:], state["pos_embed"])
    state["pos_embed"] = torch.randn(1, 51, 128)  # neither 1 + g*g nor g*g
    with pytest.raises(WeightsError, match=r"backbone\.pos_embed of shape \(1, 51, 128\) is neither a square grid"):
        weights.import_timm_vit(tiny_shrunk, state)


def test_a_byte_changed_in_the_tensor_data_is_told_as_corruption(tmp_path, tiny_shrunk):
    """safetensors has no checksum: save_weights records a digest of the tensors, load_weights checks it.
    Without it a flipped byte deep in the data loads silently (files of older versions, which have none)."""
    path = weights.save_weights(tmp_path / "w.safetensors", tiny_shrunk)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x10  # inside the last tensor's bytes: the header (and its record) stay intact
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=r"w\.safetensors is corrupt: its tensors differ from the digest recorded"):
        weights.load_weights(path)
    meta = {k: v for k, v in weights.read_metadata(path).items() if k != weights.DIGEST_KEY}
    from safetensors.torch import load_file

    save_file(load_file(str(path)), str(tmp_path / "old.safetensors"), metadata={"segvit_rt": json.dumps(meta)})
    assert not _same_state(weights.load_weights(tmp_path / "old.safetensors"), tiny_shrunk)  # loads, changed


@pytest.mark.parametrize("variant", ["full", "shrunk"])
def test_the_bundled_demo_weights_carry_their_digest(variant, tmp_path):
    """The default build's weights get the corruption check too: a flipped byte is refused."""
    from segvit_rt.build import default_weights

    bundled = default_weights(variant)
    assert weights.DIGEST_KEY in weights.read_metadata(bundled)
    data = bytearray(bundled.read_bytes())
    data[-5000] ^= 0x01
    flipped = tmp_path / "flipped.safetensors"
    flipped.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="is corrupt"):
        weights.load_weights(flipped)


def test_an_engine_given_as_weights_is_named_with_its_source(tmp_path):
    engine = tmp_path / "engine"
    engine.mkdir()
    (engine / "engine.json").write_text(json.dumps({"weights": {"path": "/runs/a/weights.safetensors"}}))
    (engine / "model.pt2").write_bytes(b"PK\x03\x04 a zip")
    for path in (engine, engine / "model.pt2", engine / "engine.json"):
        with pytest.raises(WeightsError, match=f"{path} is an engine .*not a weights file; it was built from "
                                               "/runs/a/weights.safetensors"):
            weights.load_weights(path)
