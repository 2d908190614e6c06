"""Data-parallel training: two gloo processes under torchrun against one process, same global batch."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from segvit_rt.data.synth import generate
from segvit_rt.io_utils import hold_lock
from segvit_rt.models import SegViT
from segvit_rt.training.checkpoint import load_checkpoint
from segvit_rt.training.distributed import parameter_digest
from segvit_rt.weights import load_weights

REPO = Path(__file__).resolve().parents[1]


ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def torchrun(nproc: int, args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "segvit_rt.train", *args]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (torchrun starts each replica in a session of its own, so
    killing torchrun's process group misses them)."""
    try:
        children = [int(c) for t in os.listdir(f"/proc/{pid}/task")
                    for c in Path(f"/proc/{pid}/task/{t}/children").read_text().split()]
    except FileNotFoundError:  # it exited meanwhile
        return []
    return [d for c in children for d in (c, *descendants(c))]


def kill_tree(pid: int) -> list[int]:
    """SIGKILL ``pid`` and everything below it, at once; returns the pids."""
    victims = [pid, *descendants(pid)]
    for victim in victims:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return victims


def launch(nproc: int, args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    return run_tree(torchrun(nproc, args), timeout)


def run_tree(command: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run ``command`` (torchrun); on timeout its replicas are killed too, not left to hold the
    CI's cores."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def train_losses(out: Path) -> list[float]:
    records = map(json.loads, (out / "log.jsonl").read_text().splitlines())
    return [r["loss"] for r in records if r["kind"] == "train"]


def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    data = tmp_path / "data"
    generate(data, classes=3, train=12, val=3, size=64, seed=0, progress=False)
    # Dropout off: the replicas' dropout masks cannot match one process's; augmentation depends on
    # (seed, epoch, sample index) only, so the data are the same.
    common = ["--data", str(data), "--crop", "64", "--batch", "4", "--iters", "6", "--lr", "5e-4",
              "--dropout", "0", "--log-every", "1", "--eval-every", "0", "--workers", "0", "--quiet"]
    one = launch(1, [*common, "--out", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr[-3000:]
    two = launch(2, [*common, "--out", str(tmp_path / "two")])
    assert two.returncode == 0, two.stderr[-3000:]

    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["world_size"] == 2
    digests = summary["replica_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]  # replicas identical, bit for bit
    assert digests[0] == parameter_digest(load_weights(tmp_path / "two" / "weights.safetensors"))

    # Each replica scores every other validation image; the summed confusion gives both the whole split.
    metrics = [json.loads((tmp_path / run / "summary.json").read_text())["metrics"] for run in ("one", "two")]
    for key in ("mIoU", "aAcc", "mAcc"):
        assert metrics[1][key] == pytest.approx(metrics[0][key], abs=1e-3), key
    # 6 steps over 12 images: two epochs, so the per-epoch reshuffle is covered too.
    assert train_losses(tmp_path / "two") == pytest.approx(train_losses(tmp_path / "one"), rel=1e-4)
    w1, w2 = (load_file(str(tmp_path / run / "weights.safetensors")) for run in ("one", "two"))
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) < 1e-4
    torch.manual_seed(0)  # the trainer's initialisation (--seed 0)
    init = SegViT(load_weights(tmp_path / "one" / "weights.safetensors").cfg).state_dict()
    assert max((w1[k] - init[k]).abs().max().item() for k in w1) > 1e-3  # the runs did move the weights


TEARDOWN = """
import json, os, time, torch
from segvit_rt.training.distributed import cleanup, gather_objects, init_distributed

def threads():
    return len(os.listdir("/proc/self/task"))

def train():
    net = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 4))
    net(torch.randn(2, 4)).sum().backward()
    gather_objects(info.rank)  # gloo work holding tensors made in Python: the kind that aborted exits
    raise RuntimeError("replicas diverged")  # the traceback keeps the wrapper, and so DDP's group, alive

info = init_distributed("cpu")
joined = threads()
try:
    train()
except RuntimeError as err:
    cleanup()
    deadline = time.monotonic() + 5  # a joined thread can linger in /proc for a moment
    while threads() >= joined and time.monotonic() < deadline:
        time.sleep(0.01)
    if info.is_main:
        print(json.dumps({"joined": joined, "after": threads()}))
"""


def test_cleanup_joins_the_collectives_threads_while_ddp_pins_its_group(tmp_path):
    """A gloo worker still holding a Python-made tensor when the interpreter finalises aborts the
    process (it did in CI, 1 run in 7). DDP never frees its group, so our collectives run on a
    group of their own, which cleanup() must really tear down, worker threads joined, even on
    an error path that keeps the DDP wrapper alive."""
    script = tmp_path / "teardown.py"
    script.write_text(TEARDOWN)
    run = run_tree([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    str(script)], timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    counts = json.loads(run.stdout.strip().splitlines()[-1])
    assert counts["after"] < counts["joined"]


def test_a_run_folder_in_use_is_refused_by_every_replica_and_said_once(tmp_path):
    data = tmp_path / "data"
    generate(data, classes=3, train=4, val=2, size=64, seed=0, progress=False)
    out = tmp_path / "run"
    out.mkdir()
    with hold_lock(out / ".lock"):  # a run already writing there
        run = launch(2, ["--data", str(data), "--out", str(out), "--crop", "64", "--batch", "2", "--iters", "1",
                         "--workers", "0", "--quiet"], timeout=120)
    assert run.returncode != 0
    assert run.stderr.count(f"error: another training run is writing to {out}") == 1, run.stderr[-3000:]  # rank 0
    assert os.listdir(out) == [".lock"]


def test_two_processes_resume_after_sigkill_as_if_never_stopped(tmp_path):
    """torchrun and both replicas killed after a checkpoint that falls mid-epoch (2 steps per epoch,
    checkpoints every 3) and between logged steps; the resumed pair ends with the weights and the
    log of an uninterrupted pair."""
    data = tmp_path / "data"
    generate(data, classes=3, train=10, val=2, size=64, seed=0, progress=False)
    common = ["--data", str(data), "--crop", "64", "--batch", "4", "--iters", "12", "--lr", "5e-4",
              "--dropout", "0.1", "--log-every", "2", "--ckpt-every", "3", "--eval-every", "0", "--workers", "0",
              "--quiet"]
    ref = launch(2, [*common, "--out", str(tmp_path / "ref")])
    assert ref.returncode == 0, ref.stderr[-3000:]

    out = tmp_path / "killed"
    proc = subprocess.Popen(torchrun(2, [*common, "--out", str(out)]), env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    still_running = proc.poll() is None
    killed = kill_tree(proc.pid)  # torchrun and both replicas at once
    proc.wait()
    assert still_running, "the run ended before it could be killed"
    assert len(killed) >= 3, killed
    time.sleep(1)  # a replica left running would write on: the step below would move
    assert load_checkpoint(out / "checkpoint.pt")["step"] < 12 and not (out / "weights.safetensors").exists()
    resumed = launch(2, [*common, "--out", str(out), "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    a, b = (load_file(str(tmp_path / run / "weights.safetensors")) for run in ("ref", "killed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def log(run):
        return [{k: v for k, v in r.items() if k != "time"}
                for r in map(json.loads, (tmp_path / run / "log.jsonl").read_text().splitlines())]

    assert log("killed") == log("ref")
