"""``python -m segvit_rt.build``: weights in, a checked engine out, clear errors otherwise."""
from pathlib import Path

import pytest

from engine_helpers import save_test_weights, sharp_model
from segvit_rt import build
from segvit_rt.engines import load_engine, read_engine
from segvit_rt.io_utils import sha256_file


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return save_test_weights(tmp_path_factory.mktemp("w") / "shrunk.safetensors", sharp_model("shrunk"))


def test_cli_builds_a_checked_engine(weights, tmp_path, capsys):
    out = build.main(["--variant", "shrunk", "--weights", str(weights), "--out", str(tmp_path / "e"), "--device", "cpu"])
    printed = capsys.readouterr().out
    assert "backend: onnx (a CPU engine was asked for" in printed  # auto, and why
    assert "parity vs PyTorch fp32: labels agree on" in printed
    meta = read_engine(out)
    assert meta["backend"] == "onnx" and meta["precision"] == "fp32" and meta["variant"] == "shrunk"
    assert meta["weights"] == {"path": str(weights.resolve()), "sha256": sha256_file(weights)}
    assert meta["parity"]["label_agreement"] >= 0.995
    assert load_engine(out).meta["class_names"] == list(sharp_model("shrunk").cfg.names())
    (out / "notes.txt").write_text("mine")  # beside an engine: a rebuild there would delete it
    artifact = (out / "model.onnx").read_bytes()
    with pytest.raises(SystemExit) as exc:
        build.main(["--variant", "shrunk", "--weights", str(weights), "--out", str(out), "--device", "cpu"])
    assert exc.value.code == 2
    assert f"--out {out} holds an engine and other files (notes.txt)" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine" and (out / "model.onnx").read_bytes() == artifact


def test_ctrl_c_in_build_and_evaluate_is_one_line(weights, tmp_path, monkeypatch, capsys):
    from segvit_rt import evaluate

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(build, "build_engine", stopped)
    with pytest.raises(SystemExit) as exc:
        build.main(["--variant", "shrunk", "--weights", str(weights), "--out", str(tmp_path / "e")])
    assert exc.value.code == 130
    assert capsys.readouterr().err.strip() == ("interrupted: no engine was written (an engine already at --out is "
                                               "left as it was)")
    monkeypatch.setattr(evaluate, "load_weights", stopped)
    with pytest.raises(SystemExit) as exc:
        evaluate.main(["--weights", str(weights), "--data", str(tmp_path), "--quiet"])
    assert exc.value.code == 130 and capsys.readouterr().err.strip() == "interrupted: no metrics were written"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--variant", "full"], "holds a shrunk model, but --variant full"),
        (["--variant", "shrunk", "--preset", "vit_b16_ade20k_512"], "holds preset 'tiny'"),
        (["--variant", "shrunk", "--backend", "aoti", "--precision", "fp16", "--device", "cpu"],
         "fp16 aoti engines need CUDA"),
        (["--variant", "shrunk", "--batch", "4", "--max-batch", "8"],
         "--max-batch is for dynamic engines; --batch 4 builds a static one"),
        (["--variant", "shrunk", "--max-batch", "100000"], "a dynamic batch needs max_batch between 2 and 1024"),
        (["--variant", "shrunk", "--max-batch", "1"], "a dynamic batch needs max_batch between 2 and 1024"),
    ],
)
def test_cli_refuses_mismatches_before_building(weights, tmp_path, capsys, args, message):
    out = tmp_path / "e"
    with pytest.raises(SystemExit) as exc:
        build.main([*args, "--weights", str(weights), "--out", str(out)])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_missing_bundled_weights_say_how_to_train_them(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(build, "default_weights", lambda variant: tmp_path / f"tiny_{variant}.safetensors")
    with pytest.raises(SystemExit):
        build.main(["--variant", "shrunk", "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert "tiny_shrunk.safetensors are missing" in err and "python -m segvit_rt.train" in err
    with pytest.raises(SystemExit):
        build.main(["--variant", "shrunk", "--preset", "vit_l16_ade20k_640"])
    assert "no weights are bundled for preset 'vit_l16_ade20k_640'" in capsys.readouterr().err


def test_unreadable_weights_are_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 40)
    with pytest.raises(SystemExit):
        build.main(["--variant", "shrunk", "--weights", str(bad), "--out", str(tmp_path / "e")])
    assert "bad.safetensors" in capsys.readouterr().err


def test_batch_argument(capsys):
    parser = build.build_parser()
    assert parser.parse_args(["--variant", "full"]).batch is None
    assert parser.parse_args(["--variant", "full", "--batch", "dynamic"]).batch is None
    assert parser.parse_args(["--variant", "full", "--batch", "8"]).batch == 8
    with pytest.raises(SystemExit):
        parser.parse_args(["--variant", "full", "--batch", "eight"])
    assert "number or 'dynamic'" in capsys.readouterr().err


def test_default_out_is_the_checkouts_engines_folder_or_the_current_one(tmp_path, monkeypatch):
    repo = Path(build.__file__).resolve().parent.parent
    assert build.default_out("tiny", "shrunk", "onnx", "fp32") == repo / "engines" / "built" / "tiny_shrunk_onnx_fp32"
    # Installed: segvit_rt/ and segvit_rt/engines/ in site-packages, beside an unrelated top-level
    # "engines" package (there is one on PyPI). Engines go under the current folder, not in there.
    site = tmp_path / "site-packages"
    for folder in ("segvit_rt/engines", "engines"):
        (site / folder).mkdir(parents=True)
        (site / folder / "__init__.py").touch()
    monkeypatch.setattr(build, "__file__", str(site / "segvit_rt" / "build.py"))
    monkeypatch.setattr(build.engines, "__file__", str(site / "segvit_rt" / "engines" / "__init__.py"))
    monkeypatch.chdir(tmp_path)
    assert build.default_out("tiny", "full", "onnx", "fp32") == tmp_path / "engines" / "built" / "tiny_full_onnx_fp32"
