"""What the command-line tools share: bad output paths and wrapped worker errors reported as
one line, exit status 2, before any work."""
import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from segvit_rt import build, cli, convert, create_model, demo, evaluate, io_utils, segment
from segvit_rt import train as train_cli
from segvit_rt.cli import OutputPathError, check_output, exit_on
from segvit_rt.data import DatasetError, synth
from segvit_rt.engines import EngineError
from segvit_rt.weights import WeightsError, read_metadata, save_weights


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("mine")
    return path


def test_output_paths_are_checked_for_what_they_must_be(tmp_path, a_file):
    check_output(tmp_path / "new" / "deeper" / "x.json", "--json", folder=False)  # parents made later
    check_output(tmp_path / "new", "--out", folder=True)
    check_output(tmp_path, "--out", folder=True)
    with pytest.raises(OutputPathError, match="--json .* is a folder; a file path is needed"):
        check_output(tmp_path, "--json", folder=False)
    with pytest.raises(OutputPathError, match="--out .*notes.txt is a file, not a folder"):
        check_output(a_file, "--out", folder=True)
    for folder in (True, False):
        with pytest.raises(OutputPathError, match="notes.txt is a file, not a folder"):
            check_output(a_file / "sub" / "x", "--out", folder=folder)
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    for special in (fifo, Path("/dev/null")):  # an atomic write would put a plain file in its place
        with pytest.raises(OutputPathError, match=f"--json {special} is not a regular file"):
            check_output(special, "--json", folder=False)
    (tmp_path / "link.json").symlink_to(a_file)
    check_output(tmp_path / "link.json", "--json", folder=False)  # a link to a file: written through


def test_warnings_under_a_cli_print_as_one_line():
    """(In a subprocess: pytest records warnings instead of printing them.)"""
    script = ("import warnings\nfrom segvit_rt.cli import exit_on\nwith exit_on(ValueError):\n"
              "    warnings.warn('a classes.txt beside the data set is not read')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr == "warning: a classes.txt beside the data set is not read\n"


def test_replicas_other_than_rank_0_exit_without_repeating_the_error(capsys):
    for say, printed in ((True, "error: bad\n"), (False, "")):
        with pytest.raises(SystemExit) as exc, exit_on(ValueError, say=say):
            raise ValueError("bad")
        assert exc.value.code == 2 and capsys.readouterr().err == printed


def test_an_output_in_a_folder_that_cannot_be_written_is_refused(tmp_path, monkeypatch, capsys):
    """A read-only folder (here as the kernel's access(2) would answer for a read-only mount: the
    tests may run as root, whom permission bits do not stop)."""
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = cli.os.access
    monkeypatch.setattr(cli.os, "access", lambda p, mode: Path(p) != locked and real_access(p, mode))
    for path, folder in ((locked, True), (locked / "new" / "deeper", True), (locked / "m.json", False)):
        with pytest.raises(OutputPathError, match=f"cannot write in {locked} .*read-only"):
            check_output(path, "--out", folder=folder)
    check_output(tmp_path / "elsewhere", "--out", folder=True)
    image = tmp_path / "a.png"
    image.write_bytes(b"checked before it is read")
    with pytest.raises(SystemExit) as exit_:
        segment.main([str(image), "--engine", "missing", "--out", str(locked)])
    assert exit_.value.code == 2 and "cannot write in" in capsys.readouterr().err
    (locked / "engine").mkdir()  # writable itself, but a build swaps the new engine in from its parent
    with pytest.raises(SystemExit) as exit_:
        build.main(["--variant", "shrunk", "--out", str(locked / "engine")])
    assert exit_.value.code == 2 and f"cannot write in {locked}" in capsys.readouterr().err


@pytest.mark.parametrize("command, args", [
    (convert.main, ["missing.pth", "--preset", "tiny", "--variant", "full", "--out", "{dir}"]),
    (evaluate.main, ["--weights", "missing.safetensors", "--data", "missing", "--json", "{dir}"]),
    (evaluate.main, ["--weights", "missing.safetensors", "--data", "missing", "--chart", "{dir}"]),
    (demo.main, ["--out", "{file}"]),
    (segment.main, ["{file}", "--engine", "missing", "--out", "{file}/sub"]),
    (build.main, ["--variant", "shrunk", "--out", "{file}/sub"]),
    (synth.main, ["{file}/sub", "--classes", "3", "--train", "1", "--val", "1"]),
], ids=["convert", "evaluate-json", "evaluate-chart", "demo", "segment", "build", "synth"])
def test_clis_refuse_an_unwritable_output_before_any_work(command, args, tmp_path, a_file, capsys):
    with pytest.raises(SystemExit) as exit_:
        command([a.format(dir=tmp_path, file=a_file) for a in args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "is a folder; a file path is needed" in err or "notes.txt is a file, not a folder" in err, err
    assert a_file.read_text() == "mine"


def test_an_output_that_is_a_broken_link_is_named(tmp_path):
    (tmp_path / "out").symlink_to(tmp_path / "gone")
    with pytest.raises(OutputPathError, match=r"--out .*out is a broken link \(to .*gone\)"):
        check_output(tmp_path / "out", "--out", folder=True)


def test_system_errors_read_as_the_file_and_the_reason():
    assert cli.user_message(OSError(errno.ENOSPC, "No space left on device", "/data/w.safetensors")) == (
        "/data/w.safetensors: No space left on device")
    assert cli.user_message(OSError(errno.EXDEV, "Invalid cross-device link", "a", None, "b")) == (
        "a -> b: Invalid cross-device link")
    assert cli.user_message(FileNotFoundError("image(s) not found: x.png")) == "image(s) not found: x.png"


def fill_disk(monkeypatch):
    """Make every atomic write fail as on a full disk, when it makes its temporary."""
    def no_space(*args, dir=None, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(dir))

    monkeypatch.setattr(io_utils.tempfile, "mkstemp", no_space)
    monkeypatch.setattr(io_utils.tempfile, "mkdtemp", no_space)


@pytest.mark.parametrize("command", ["build", "synth", "train"])
def test_a_full_disk_is_one_line_naming_the_folder(command, tmp_path, capsys, monkeypatch):
    data = synth.generate(tmp_path / "data", classes=3, train=4, val=1, size=64, progress=False).parent
    run = {"build": lambda: build.main(["--variant", "shrunk", "--out", str(tmp_path / "disk" / "eng")]),
           "synth": lambda: synth.main([str(tmp_path / "disk"), "--classes", "3", "--train", "1", "--val", "1",
                                        "--quiet"]),
           "train": lambda: train_cli.main(["--data", str(data), "--out", str(tmp_path / "disk"), "--iters", "1",
                                            "--crop", "64", "--batch", "2", "--eval-every", "0", "--quiet"])}
    (tmp_path / "disk").mkdir()
    fill_disk(monkeypatch)
    with pytest.raises(SystemExit) as exit_:
        run[command]()
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"error: {tmp_path / 'disk'}: No space left on device"


class Unreadable(Dataset):
    def __len__(self):
        return 1

    def __getitem__(self, index):
        raise DatasetError("cannot read image x.jpg: truncated")


def test_an_error_from_a_dataloader_worker_is_one_line(capsys):
    with pytest.raises(SystemExit):
        with exit_on(DatasetError):
            next(iter(DataLoader(Unreadable(), num_workers=1)))
    assert capsys.readouterr().err == "error: cannot read image x.jpg: truncated\n"


def test_train_without_cuda_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_:
        train_cli.main(["--data", str(tmp_path), "--out", str(tmp_path / "run"), "--device", "cuda"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "error: --device cuda was asked for, but torch sees no CUDA device\n"


def test_segment_names_a_device_that_is_not_one(tmp_path, capsys):
    for device in ("gpu", "meta"):
        with pytest.raises(SystemExit) as exit_:
            segment.main([str(tmp_path), "--engine", "missing", "--out", str(tmp_path / "out"), "--device", device])
        assert exit_.value.code == 2 and f"--device {device!r}: use cpu, cuda or cuda:N" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # auto, as the other commands take it: past the device check
        segment.main([str(tmp_path), "--engine", "missing", "--out", str(tmp_path / "out"), "--device", "auto"])
    assert exit_.value.code == 2 and "no image files" in capsys.readouterr().err


def test_a_weights_folder_points_to_its_weights_file(tmp_path):
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(WeightsError, match=r"is a folder, not a weights file; did you mean .*weights.safetensors\?"):
        read_metadata(tmp_path)


def test_build_takes_the_variant_from_the_weights_file(tmp_path):
    full = save_weights(tmp_path / "full.safetensors", create_model("tiny", "full"))
    model, path = build.load_build_model(None, None, str(full))
    assert model.variant == "full" and path == full
    with pytest.raises(EngineError, match="holds a full model, but --variant shrunk"):
        build.load_build_model("shrunk", None, str(full))
    with pytest.raises(EngineError, match="--variant full or shrunk is needed"):
        build.load_build_model(None, None, None)
    assert build.build_parser().parse_args(["--weights", str(full)]).variant is None
    assert demo.build_parser().parse_args([]).variant is None


def test_python_m_segvit_rt_lists_commands_that_exist(capsys):
    import importlib.metadata
    import importlib.util

    import segvit_rt
    from segvit_rt import __main__ as entry

    assert entry.main([]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"segvit_rt {segvit_rt.__version__}: run a command as python -m segvit_rt.COMMAND")
    for name, _ in entry.COMMANDS:
        assert f"  {name} " in printed and importlib.util.find_spec(f"segvit_rt.{name}") is not None, name
    assert importlib.metadata.version("segvit_rt") == segvit_rt.__version__  # setup.py reads it from the package
    assert entry.main(["build", "--variant", "shrunk"]) == 2
    assert "error: run it as python -m segvit_rt.build" in capsys.readouterr().err
