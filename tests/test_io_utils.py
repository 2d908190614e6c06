"""Atomic writes: all or nothing, and the usual permissions; killed writers' leftovers cleared."""
import errno
import fcntl
import os
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

import segvit_rt.training.checkpoint as checkpoint_module
import segvit_rt.weights as weights_module
from segvit_rt import create_model
from segvit_rt.io_utils import (
    LockedError,
    atomic_dir,
    atomic_path,
    hold_lock,
    sha256_file,
    sweep_folder,
    sweep_leftovers,
)
from segvit_rt.training.checkpoint import save_checkpoint
from segvit_rt.weights import save_weights

REPO = str(Path(__file__).resolve().parents[1])


def test_atomic_path_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "w.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["w.bin"]
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["w.bin"]


def test_atomic_path_writes_through_a_link_and_refuses_what_is_not_a_file(tmp_path):
    target = tmp_path / "real" / "w.json"
    target.parent.mkdir()
    target.write_text("old")
    (tmp_path / "link.json").symlink_to(target)
    with atomic_path(tmp_path / "link.json") as tmp:
        tmp.write_text("new")
    assert (tmp_path / "link.json").is_symlink() and target.read_text() == "new"
    os.mkfifo(tmp_path / "fifo")
    for special in (tmp_path / "fifo", tmp_path / "real"):
        with pytest.raises(OSError, match="is not a regular file .*: it is not replaced"):
            with atomic_path(special) as tmp:
                tmp.write_text("x")
    assert stat.S_ISFIFO(os.stat(tmp_path / "fifo").st_mode) and target.read_text() == "new"


def test_atomic_dir_keeps_old_directory_on_failure(tmp_path):
    target = tmp_path / "engine"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "a").write_text("2")
            raise RuntimeError("parity failed")
    assert (target / "a").read_text() == "1" and os.listdir(tmp_path) == ["engine"]


def test_atomic_dir_replaces_an_existing_directory_whole(tmp_path):
    target = tmp_path / "engine"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
        (tmp / "b").write_text("1")
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("2")
    assert sorted(os.listdir(target)) == ["a"] and (target / "a").read_text() == "2"
    assert os.listdir(tmp_path) == ["engine"]


def test_atomic_dir_puts_the_old_directory_back_if_the_swap_fails(tmp_path, monkeypatch):
    target = tmp_path / "engine"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append(src)
        if len(calls) == 3:  # (.new named .tmp, old aside), the new directory moving in: interrupted
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(target) as tmp:
            (tmp / "a").write_text("2")
    assert len(calls) == 4  # .new to .tmp, aside, (interrupted) in, back
    assert (target / "a").read_text() == "1" and os.listdir(tmp_path) == ["engine"]


def test_atomic_dir_through_a_symlink_replaces_the_directory_it_points_to(tmp_path):
    real = tmp_path / "real"
    with atomic_dir(real) as tmp:
        (tmp / "a").write_text("1")
    (tmp_path / "link").symlink_to(real)
    with atomic_dir(tmp_path / "link") as tmp:
        (tmp / "a").write_text("2")
    assert (tmp_path / "link").is_symlink() and (tmp_path / "link" / "a").read_text() == "2"
    assert sorted(os.listdir(tmp_path)) == ["link", "real"]


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_get_umask_permissions_not_owner_only(tmp_path, umask):
    old = os.umask(umask)
    try:
        with atomic_path(tmp_path / "f") as tmp:
            tmp.write_bytes(b"x")
        with atomic_dir(tmp_path / "d"):
            pass
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "f").st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(os.stat(tmp_path / "d").st_mode) == 0o777 & ~umask


def test_sha256_matches_known_digest(tmp_path):
    (tmp_path / "abc").write_bytes(b"abc")
    assert sha256_file(tmp_path / "abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


KILLED_WRITER = """
import os, signal, sys
from segvit_rt import create_model
from segvit_rt.io_utils import atomic_dir, atomic_path

target, where = sys.argv[1], sys.argv[2]
if where == "file":
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        os.kill(os.getpid(), signal.SIGKILL)
real_replace = os.replace

def replace(src, dst):
    real_replace(src, dst)
    if where == "between renames" and str(dst).endswith(".old"):  # the old one aside, the new not yet in
        os.kill(os.getpid(), signal.SIGKILL)

os.replace = replace
with atomic_dir(target) as tmp:
    (tmp / "a").write_text("new")
    if where == "while writing":
        os.kill(os.getpid(), signal.SIGKILL)
"""


def kill_a_writer(tmp_path, target, where):
    script = tmp_path / "writer.py"
    script.write_text(KILLED_WRITER)
    run = subprocess.run([sys.executable, str(script), str(target), where], env={**os.environ, "PYTHONPATH": REPO},
                         timeout=120)
    assert run.returncode == -signal.SIGKILL


def leftovers(folder: Path) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name.startswith("."))


def test_a_killed_build_leaves_a_temporary_that_the_next_one_clears(tmp_path):
    target = tmp_path / "out" / "engine"
    kill_a_writer(tmp_path, target, "while writing")
    (leftover,) = leftovers(tmp_path / "out")
    assert leftover.startswith(".engine.") and leftover.endswith(".tmp")
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    assert os.listdir(tmp_path / "out") == ["engine"]


def test_a_build_killed_between_its_renames_gets_the_old_directory_back(tmp_path):
    target = tmp_path / "out" / "engine"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("old")
    kill_a_writer(tmp_path, target, "between renames")
    old, tmp = leftovers(tmp_path / "out")  # the old one aside, and the new one: paired by name
    assert not target.exists() and old == tmp.replace(".tmp", ".old")
    with pytest.warns(UserWarning, match="put back"):
        swept = sweep_leftovers(target)
    assert len(swept) == 2 and os.listdir(tmp_path / "out") == ["engine"]
    assert (target / "a").read_text() == "old"


def test_a_directory_moved_aside_without_its_temporary_is_only_deleted_beside_the_target(tmp_path):
    target = tmp_path / "engine"
    old = tmp_path / ".engine.abcd1234.old"  # e.g. a kill while it was being deleted
    old.mkdir()
    (old / "a").write_text("half")
    assert sweep_leftovers(target) == [] and old.exists() and not target.exists()  # not put back
    target.mkdir()
    assert sweep_leftovers(target) == [old] and not old.exists()


def save_a_checkpoint(path):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    save_checkpoint(path, model=model, optimizer=optimizer, scheduler=torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 1.0), step=1, args={}, rng=[])


@pytest.mark.parametrize("save", [lambda p: save_weights(p, create_model("tiny", "full")), save_a_checkpoint],
                         ids=["weights", "checkpoint"])
def test_a_killed_file_write_is_cleared_by_the_next_save(tmp_path, save):
    target = tmp_path / "out" / "artifact"
    kill_a_writer(tmp_path, target, "file")
    assert len(leftovers(tmp_path / "out")) == 1
    save(target)
    assert os.listdir(tmp_path / "out") == ["artifact"]


def test_a_full_disk_under_torch_and_safetensors_writers_is_an_oserror_naming_the_file(tmp_path, monkeypatch):
    """Their writers report a failed write as RuntimeError / SafetensorError; the CLIs report OSErrors
    as one line, so these are turned into OSErrors naming the file (and the target keeps its old bytes)."""
    target = tmp_path / "checkpoint.pt"
    save_a_checkpoint(target)
    before = target.read_bytes()

    def torch_full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(checkpoint_module.torch, "save", torch_full)
    with pytest.raises(OSError, match=rf"{target} could not be written \(is the disk full\?\): \[enforce fail"):
        save_a_checkpoint(target)
    assert target.read_bytes() == before and os.listdir(tmp_path) == ["checkpoint.pt"]

    def safetensors_full(*args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")

    monkeypatch.setattr(weights_module, "save_file", safetensors_full)
    with pytest.raises(OSError, match=r"w.safetensors could not be written: Error while serializing.*StorageFull"):
        save_weights(tmp_path / "w.safetensors", create_model("tiny", "full"))
    assert os.listdir(tmp_path) == ["checkpoint.pt"]


FILE_SIZE_LIMITED = """
import resource, signal, sys
import torch
from segvit_rt import create_model
from segvit_rt.training.checkpoint import save_checkpoint
from segvit_rt.weights import save_weights

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
model = create_model("tiny", "full")
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
saves = {
    "checkpoint": lambda: save_checkpoint(sys.argv[1] + "/checkpoint.pt", model=model, optimizer=optimizer,
                                          scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
                                          step=1, args={}, rng=[]),
    "weights": lambda: save_weights(sys.argv[1] + "/w.safetensors", model),
}
for name, save in saves.items():
    try:
        save()
        print(name, "written")
    except OSError as e:
        print(name, "OSError:", e)
"""


def test_torch_and_safetensors_writes_that_really_fail_are_oserrors(tmp_path):
    """A real failed write (the file-size limit standing in for a full disk) through this torch and
    safetensors: each writer's own error type is recognised and turned into an OSError naming the file."""
    script = tmp_path / "limited.py"
    script.write_text(FILE_SIZE_LIMITED)
    run = subprocess.run([sys.executable, str(script), str(tmp_path)], env={**os.environ, "PYTHONPATH": REPO},
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith(f"checkpoint OSError: {tmp_path}/checkpoint.pt could not be written"), lines
    assert lines[1].startswith(f"weights OSError: {tmp_path}/w.safetensors could not be written"), lines
    assert sorted(os.listdir(tmp_path)) == ["limited.py"]  # no half-written file or temporary left


def test_a_folder_of_small_outputs_is_swept_at_once(tmp_path):
    """Small outputs (label PNGs) do not sweep at each write; their writer sweeps the folder once,
    clearing only dead temporaries of the outputs it names: the folder may hold the user's files."""
    out = tmp_path / "out"
    for name in ("a_labels.png", "b.c_overlay.png"):
        kill_a_writer(tmp_path, out / name, "file")
    live = out / ".d_labels.png.abcd1234.tmp"
    live.write_bytes(b"")
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # still being written
    others = [".report.csv.q1w2e3r4.tmp", ".notes.txt.backup01.old", ".hidden_but_not_ours", ".abcdefgh.tmp"]
    for name in others:  # another program's temporaries and backups, named as mkstemp names
        (out / name).write_text("theirs")
    (out / "notes.txt").write_text("the user's")
    try:
        assert len(leftovers(out)) == 3 + len(others)
        assert len(sweep_folder(out, ("_labels.png", "_overlay.png"))) == 2
        assert leftovers(out) == sorted([".d_labels.png.abcd1234.tmp", *others])
        assert (out / "notes.txt").read_text() == "the user's"
    finally:
        os.close(fd)


def test_names_near_the_file_name_limit_are_written_and_their_leftovers_swept(tmp_path):
    """A legal 250-byte name leaves no room for ``.NAME.XXXXXXXX.tmp``: its temporaries carry a
    shortened NAME (still ending as NAME does), and sweepers find them by it."""
    label = "ü" * 120 + "_labels.png"  # 251 bytes
    latin1 = os.fsdecode(b"\xe9" * 235 + b"_labels.png")  # 246 bytes, not UTF-8
    engine = "e" * 250
    for name in (label, latin1, engine):
        assert len(os.fsencode(name)) > 255 - 14
    out = tmp_path / "out"
    for name in (label, latin1):
        kill_a_writer(tmp_path, out / name, "file")
    kill_a_writer(tmp_path, out / engine, "while writing")
    dead = leftovers(out)
    assert len(dead) == 3 and all(len(os.fsencode(n)) <= 255 for n in dead)
    assert sum(n.endswith("_labels.png." + n.split(".")[-2] + ".tmp") for n in dead) == 2
    assert len(sweep_folder(out, ("_labels.png",))) == 2
    with atomic_dir(out / engine) as tmp:
        (tmp / "a").write_text("1")
    for name in (label, latin1):
        with atomic_path(out / name) as tmp:
            tmp.write_text("2")
    assert sorted(os.listdir(out)) == sorted([label, latin1, engine]) and (out / latin1).read_text() == "2"


def test_leftovers_of_live_writers_are_kept(tmp_path):
    target = tmp_path / "engine"
    live = tmp_path / ".engine.abcd1234.tmp"
    live.mkdir()
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a running writer's lock (another open file: same as another process)
    try:
        assert sweep_leftovers(target) == [] and live.exists()
        with atomic_dir(target) as tmp:  # and a build goes on beside it
            (tmp / "a").write_text("1")
        assert live.exists()
    finally:
        os.close(fd)
    assert sweep_leftovers(target) == [live] and not live.exists()


def test_a_held_lock_names_its_holder(tmp_path):
    with hold_lock(tmp_path / "lock"):
        with pytest.raises(LockedError, match=f"pid {os.getpid()}"):
            with hold_lock(tmp_path / "lock"):
                pass
    with hold_lock(tmp_path / "lock"):  # released with the block
        pass


def test_a_writer_in_progress_is_not_swept(tmp_path):
    """As another process writing the same target at the same time would see it."""
    with atomic_dir(tmp_path / "engine") as tmp:
        (tmp / "a").write_text("1")
        assert sweep_leftovers(tmp_path / "engine") == [] and tmp.exists()
    with atomic_path(tmp_path / "w.bin", sweep=True) as tmp:
        tmp.write_bytes(b"1")
        assert sweep_leftovers(tmp_path / "w.bin") == [] and tmp.exists()
    assert sorted(os.listdir(tmp_path)) == ["engine", "w.bin"]


def test_writes_nest_inside_a_directory_being_written(tmp_path):
    """A build writes its files with atomic_path inside atomic_dir's (locked) temporary."""
    def build():
        with atomic_dir(tmp_path / "engine") as tmp:
            with atomic_path(tmp / "w.bin", sweep=True) as inner:
                inner.write_bytes(b"1")
            with atomic_dir(tmp / "sub") as sub:
                (sub / "a").write_text("2")

    worker = threading.Thread(target=build, daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive(), "nested atomic writes deadlocked"
    assert (tmp_path / "engine" / "w.bin").read_bytes() == b"1" and (tmp_path / "engine" / "sub" / "a").exists()
    assert sorted(os.listdir(tmp_path / "engine")) == ["sub", "w.bin"]


def test_a_failed_start_leaves_nothing_behind(tmp_path, monkeypatch):
    fds = len(os.listdir("/proc/self/fd"))
    real_replace = os.replace

    def replace(src, dst):
        if str(src).endswith(".new"):
            raise OSError("rename refused")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    for write in (atomic_path, atomic_dir):
        with pytest.raises(OSError, match="rename refused"):
            with write(tmp_path / "x"):
                pass
    assert os.listdir(tmp_path) == [] and len(os.listdir("/proc/self/fd")) == fds


def test_without_flock_writes_go_on_and_nothing_is_swept(tmp_path, monkeypatch):
    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    (tmp_path / ".w.bin.abcd1234.tmp").write_bytes(b"whose?")  # no telling whether its writer lives
    monkeypatch.setattr(fcntl, "flock", no_locks)
    with atomic_path(tmp_path / "w.bin", sweep=True) as tmp:
        tmp.write_bytes(b"1")
    with pytest.warns(UserWarning, match="cannot lock .* a second writer would not be noticed"):
        with hold_lock(tmp_path / "lock"):
            pass
    assert sorted(os.listdir(tmp_path)) == [".w.bin.abcd1234.tmp", "lock", "w.bin"]


HOLDER_WITH_A_CHILD = """
import os, signal, sys, time
from segvit_rt.io_utils import hold_lock

with hold_lock(sys.argv[1]):
    if os.fork() == 0:  # a child that outlives its parent, as DataLoader workers briefly do
        quiet = os.open(os.devnull, os.O_WRONLY)
        os.dup2(quiet, 1)  # not holding the test's pipes open
        os.dup2(quiet, 2)
        time.sleep(30)
        os._exit(0)
    print("held", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_lock_dies_with_its_holder_not_with_its_forked_children(tmp_path):
    script = tmp_path / "holder.py"
    script.write_text(HOLDER_WITH_A_CHILD)
    run = subprocess.run([sys.executable, str(script), str(tmp_path / "lock")], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": REPO}, timeout=120)
    assert run.returncode == -signal.SIGKILL and run.stdout == "held\n", run.stderr
    with hold_lock(tmp_path / "lock"):  # the child still runs
        pass
