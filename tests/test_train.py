"""Trainer: parameter groups, schedule, checkpoints, sampler, the CLI end to end, and resume after SIGKILL."""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import segvit_rt
from dataset_layouts import make_coco_stuff, make_context
from segvit_rt import evaluate as evaluate_cli
from segvit_rt import train as train_cli
from segvit_rt import weights
from segvit_rt.class_names import COCO_STUFF_CLASSES, PASCAL_CONTEXT_CLASSES
from segvit_rt.data.synth import generate
from segvit_rt.io_utils import hold_lock
from segvit_rt.training.checkpoint import FORMAT as CHECKPOINT_FORMAT
from segvit_rt.training.checkpoint import (
    CheckpointError,
    load_checkpoint,
    restore,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from segvit_rt.training.optim import WarmupPoly, make_optimizer, make_scheduler, param_groups
from segvit_rt.training.sampler import ResumableSampler
from segvit_rt.weights import WeightsError, load_weights, read_metadata, save_weights

REPO = Path(__file__).resolve().parents[1]
# Small and quick: 64-pixel crops of 64-pixel synthetic images.
FAST = ["--crop", "64", "--batch", "4", "--workers", "0", "--quiet", "--log-every", "1"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    generate(out, classes=3, train=8, val=2, size=64, seed=0, progress=False)
    return out


def kill_at_step(monkeypatch, step):
    """Make training stop with an error instead of taking step ``step`` + 1; returns the real step."""
    real_step = train_cli.Trainer.train_step

    def killed(self, *batch):
        if self.step == step:
            raise RuntimeError("killed")
        return real_step(self, *batch)

    monkeypatch.setattr(train_cli.Trainer, "train_step", killed)
    return real_step


def run_cli(args, timeout=120):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "segvit_rt.train", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


# ---------------------------------------------------------------- optimizer and schedule


def test_param_groups_head_lr_and_no_decay_sets():
    model = segvit_rt.create_model("tiny", variant="shrunk")
    groups = {g["name"]: g for g in param_groups(model, lr=1e-4, weight_decay=0.05)}
    names = {n: g for g in groups.values() for n in g["param_names"]}
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())  # each parameter exactly once
    assert sum(len(g["param_names"]) for g in groups.values()) == len(names)
    for name, group in names.items():
        head = name.startswith("decode_head.")
        assert group["lr"] == pytest.approx(1e-3 if head else 1e-4), name
        no_decay = (name.endswith("bias") or "norm" in name or name in (
            "backbone.pos_embed", "decode_head.q.weight", "decode_head.atm.q.weight"))
        assert group["weight_decay"] == (0.0 if no_decay else 0.05), name
    assert names["decode_head.atm.decoder_1.layers.0.multihead_attn.q.weight"]["weight_decay"] == 0.05  # a Linear
    assert names["backbone.blocks.0.attn.qkv.weight"]["weight_decay"] == 0.05


def test_warmup_poly_values():
    f = WarmupPoly(max_iters=100, warmup_iters=10, power=1.0, warmup_ratio=0.1)
    # warm-up multiplies the poly factor by 1 - (1 - step/10) * 0.9
    assert f(0) == pytest.approx(0.1)
    assert f(5) == pytest.approx(0.95 * 0.55)
    assert f(10) == pytest.approx(0.9)
    assert f(60) == pytest.approx(0.4)
    assert f(100) == 0.0
    assert WarmupPoly(100, 0, power=2.0)(50) == pytest.approx(0.25)


def test_scheduler_drives_every_group():
    model = segvit_rt.create_model("tiny")
    opt = make_optimizer(model, lr=1e-3, head_lr_mult=10)
    sched = make_scheduler(opt, max_iters=20, warmup_iters=0)
    for _ in range(5):
        opt.step()
        sched.step()
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["backbone"] == pytest.approx(1e-3 * 15 / 20)
    assert lrs["head"] == pytest.approx(1e-2 * 15 / 20)


# ---------------------------------------------------------------- checkpoints and sampler


def _draws():
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


def test_checkpoint_round_trip_restores_rng(tmp_path):
    model = segvit_rt.create_model("tiny", crop_size=64)
    opt = make_optimizer(model, lr=1e-3)
    sched = make_scheduler(opt, 10, 2)
    model(torch.randn(1, 3, 64, 64))["pred_masks"].sum().backward()
    opt.step()
    sched.step()
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    path = save_checkpoint(tmp_path / "c.pt", model=model, optimizer=opt, scheduler=sched, step=1,
                           args={"lr": 1e-3}, rng=[rng_state()], extra={"elapsed": 2.5})
    expected = _draws()
    state = load_checkpoint(path)  # weights_only=True inside
    set_rng_state(state["rng"][0])
    assert _draws() == expected
    assert state["step"] == 1 and state["args"] == {"lr": 1e-3} and state["extra"] == {"elapsed": 2.5}
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state["model"].items())
    opt2 = make_optimizer(segvit_rt.create_model("tiny", crop_size=64), lr=1e-3)
    opt2.load_state_dict(state["optimizer"])
    assert opt2.state_dict()["state"][0]["exp_avg"].equal(opt.state_dict()["state"][0]["exp_avg"])


def test_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"some": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a segvit_rt training checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    save_weights(tmp_path / "weights.pt", segvit_rt.create_model("tiny"))  # weights renamed as a checkpoint
    with pytest.raises(CheckpointError, match="weights.pt is a safetensors file \\(weights\\), not a training"):
        load_checkpoint(tmp_path / "weights.pt")
    three = segvit_rt.create_model("tiny", num_classes=3, crop_size=64)
    opt = make_optimizer(three, lr=1e-3)
    save_checkpoint(tmp_path / "c.pt", model=three, optimizer=opt, scheduler=make_scheduler(opt, 10, 2), step=1,
                    args={}, rng=[rng_state()])
    five = segvit_rt.create_model("tiny", num_classes=5, crop_size=64)
    opt = make_optimizer(five, lr=1e-3)
    with pytest.raises(CheckpointError, match="the checkpoint's model does not fit this run's .*size mismatch"):
        restore(load_checkpoint(tmp_path / "c.pt"), model=five, optimizer=opt, scheduler=make_scheduler(opt, 10, 2))


def test_sampler_global_batches_do_not_depend_on_world_size():
    data = list(range(23))
    one = list(ResumableSampler(data, 1, 0, seed=5))
    ranks = [list(ResumableSampler(data, 2, r, seed=5)) for r in range(2)]
    global_batch = 4
    for k in range(len(data) // global_batch):
        from_two = ranks[0][2 * k : 2 * k + 2] + ranks[1][2 * k : 2 * k + 2]
        assert sorted(from_two) == sorted(one[k * global_batch : (k + 1) * global_batch])
    resumed = ResumableSampler(data, 1, 0, seed=5)
    resumed.set_position(epoch=0, skip=8)
    assert list(resumed) == one[8:] and len(resumed) == len(one) - 8
    resumed.set_position(epoch=1, skip=0)
    assert list(resumed) != one  # a new epoch, a new order


# ---------------------------------------------------------------- the CLI


def test_training_run_writes_everything_and_learns(synth, tmp_path, capsys):
    out = tmp_path / "run"
    summary = train_cli.main(["--data", str(synth), "--out", str(out), "--variant", "shrunk", "--iters", "24",
                              "--lr", "5e-4", "--eval-every", "12", "--ckpt-every", "8", *FAST])
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in train] == list(range(1, 25))
    assert [r["step"] for r in evals] == [12, 24]
    first, last = np.mean([r["loss"] for r in train[:5]]), np.mean([r["loss"] for r in train[-5:]])
    assert last < 0.8 * first, (first, last)
    assert train[0]["lr"] < train[5]["lr"]  # warm-up
    meta = read_metadata(out / "weights.safetensors")
    assert meta["variant"] == "shrunk" and meta["trained_iters"] == 24 and meta["dataset"] == str(synth.resolve())
    assert meta["synth"] == {"generator": "segvit_rt.data.synth", "classes": 3, "train": 8, "val": 2, "size": 64,
                             "seed": 0}
    assert meta["class_names"] == (synth / "ADEChallengeData2016" / "classes.txt").read_text().split()
    assert meta["miou"] == pytest.approx(summary["metrics"]["mIoU"]) == pytest.approx(evals[-1]["mIoU"])
    metrics = summary["metrics"]  # fractions in files, percentages on screen as in evaluate's table
    assert f"step 24: mIoU {100 * metrics['mIoU']:.2f} aAcc {100 * metrics['aAcc']:.2f}" in capsys.readouterr().err
    model = load_weights(out / "weights.safetensors")
    assert model.cfg.num_classes == 3 and model.cfg.crop_size == 64
    with Image.open(out / "curves.png") as png:
        assert png.format == "PNG" and png.size[0] > 100
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 24


def test_a_second_run_on_a_folder_in_use_is_refused(synth, tmp_path):
    """E.g. a --resume while the replicas of a killed torchrun still write there."""
    common = ["--data", str(synth), "--iters", "400", "--ckpt-every", "1", "--eval-every", "0", *FAST]
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen([sys.executable, "-m", "segvit_rt.train", *common, "--out", str(out)],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (out / "checkpoint.pt").exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert first.poll() is None, "the first run ended before the second could start"
        second = run_cli([*common, "--out", str(out), "--resume"], timeout=60)
        assert first.poll() is None, "the first run ended before the second was refused"
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 2, second.stderr
    assert f"another training run is writing to {out}" in second.stderr and f"pid {first.pid}" in second.stderr
    with hold_lock(out / ".lock"):  # the lock died with its run
        pass


def test_out_that_is_a_file_is_refused(synth, tmp_path, capsys):
    (tmp_path / "run").write_text("mine")
    with pytest.raises(SystemExit) as exit_:
        train_cli.main(["--data", str(synth), "--out", str(tmp_path / "run"), "--iters", "1", *FAST])
    assert exit_.value.code == 2 and (tmp_path / "run").read_text() == "mine"
    assert "is a file; the run folder must be a folder" in capsys.readouterr().err


def test_a_finished_run_without_its_checkpoint_is_not_overwritten(synth, tmp_path, capsys):
    """Deleting checkpoint.pt (to save space) must not let a new run replace the weights."""
    out = tmp_path / "run"
    train_cli.main(["--data", str(synth), "--out", str(out), "--iters", "1", "--eval-every", "0", *FAST])
    (out / "checkpoint.pt").unlink()
    before = (out / "weights.safetensors").read_bytes()
    with pytest.raises(SystemExit) as exit_:
        train_cli.main(["--data", str(synth), "--out", str(out), "--iters", "1", "--eval-every", "0", *FAST])
    assert exit_.value.code == 2 and (out / "weights.safetensors").read_bytes() == before
    assert (f"{out} holds an earlier run's weights.safetensors and summary.json (and no checkpoint.pt to continue "
            "from)") in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_cli.main(["--data", str(synth), "--out", str(out), "--resume", *FAST])
    assert (f"--resume: no checkpoint.pt in {out}, which holds a finished run's weights.safetensors and "
            "summary.json: nothing to continue") in capsys.readouterr().err


def test_a_short_trial_and_a_resume_of_a_finished_run_are_told_what_they_do(synth, tmp_path, capsys):
    out = tmp_path / "run"
    train_cli.main(["--data", str(synth), "--out", str(out), "--iters", "2", "--eval-every", "0", *FAST])
    assert ("note: --warmup 100 is at least --iters 2: the learning rate never reaches --lr 0.0001"
            in capsys.readouterr().err)
    train_cli.main(["--data", str(synth), "--out", str(out), "--resume", *FAST])
    err = capsys.readouterr().err
    assert "the run had already reached its last step (2); its outputs are written again" in err
    assert "--warmup" not in err


def test_replicas_report_their_own_system_errors_and_rank_0_the_shared_ones(monkeypatch, capsys):
    """Under torchrun a bad argument is every replica's (rank 0 says it), a system error may be one
    replica's own (each says it, naming its rank)."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    for error, printed in ((train_cli.UsageError("--iters must be >= 1"), ""),
                           (OSError(28, "No space left on device", "/dev/shm/x"),
                            "error: rank 1: /dev/shm/x: No space left on device\n"),
                           (train_cli.ReplicaError("cannot read image a.jpg: truncated"),  # a sample of its share
                            "error: rank 1: cannot read image a.jpg: truncated\n")):
        def fail(args, error=error):
            raise error

        monkeypatch.setattr(train_cli, "train", fail)
        with pytest.raises(SystemExit) as exit_:
            train_cli.main(["--data", "d", "--out", "o"])
        assert exit_.value.code == 2 and capsys.readouterr().err == printed


def test_a_run_folder_inside_the_data_sets_sample_folders_is_refused(synth, tmp_path, capsys):
    """Refused before anything is left there: no lock file, no folder made for OUT."""
    ade = synth / "ADEChallengeData2016"
    before = sorted(str(p.relative_to(ade)) for p in ade.rglob("*"))
    for out in (ade / "annotations" / "training", ade / "annotations" / "validation" / "runs" / "a",
                ade / "images" / "training" / "run"):
        with pytest.raises(SystemExit) as exit_:
            train_cli.main(["--data", str(synth), "--out", str(out), "--iters", "1", "--eval-every", "0", *FAST])
        split = out.relative_to(ade).parts[1]
        assert exit_.value.code == 2 and f"/{split}, a folder of the data set's samples" in capsys.readouterr().err
    assert sorted(str(p.relative_to(ade)) for p in ade.rglob("*")) == before


def test_a_refused_run_leaves_no_run_folder_behind(tmp_path, capsys):
    with pytest.raises(SystemExit):
        train_cli.main(["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "run"), "--iters", "1", *FAST])
    assert "missing" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_resume_after_sigkill_continues_exactly(synth, tmp_path):
    common = ["--data", str(synth), "--iters", "24", "--ckpt-every", "4", "--eval-every", "12", "--lr", "5e-4",
              "--dropout", "0.1", *FAST]  # dropout on: the RNG state has to be restored too
    ref = run_cli([*common, "--out", str(tmp_path / "ref")])
    assert ref.returncode == 0, ref.stderr

    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "segvit_rt.train", *common, "--out", str(out)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (out / "checkpoint.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    still_running = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert still_running, "the run ended before it could be killed"
    killed_at = load_checkpoint(out / "checkpoint.pt")["step"]
    assert 4 <= killed_at < 24 and not (out / "weights.safetensors").exists()

    again = run_cli([*common, "--out", str(out)])
    assert again.returncode == 2 and "--resume" in again.stderr  # refuses to overwrite a run
    resumed = run_cli([*common, "--out", str(out), "--resume"])
    assert resumed.returncode == 0, resumed.stderr

    a, b = load_file(str(tmp_path / "ref" / "weights.safetensors")), load_file(str(out / "weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def losses(run):
        return [(r["kind"], r["step"], r.get("loss"), r.get("mIoU"))
                for r in map(json.loads, (tmp_path / run / "log.jsonl").read_text().splitlines())]

    assert losses("killed") == losses("ref")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_resume_mid_epoch_between_log_steps_logs_as_if_never_stopped(synth, tmp_path, monkeypatch, device):
    """Checkpoints at steps 3 and 6 fall between the logged steps 4 and 6 and inside an epoch (2 steps):
    the resumed run picks up the losses not yet logged, the data where it stood, and resuming the
    finished run adds no second final evaluation. (On CUDA, whose kernels need not be bitwise
    reproducible, the log's steps are compared, not its values.)"""
    def run(out, *extra):
        return train_cli.main(["--data", str(synth), "--out", str(out), "--iters", "6", "--ckpt-every", "3",
                               "--eval-every", "0", "--lr", "5e-4", "--dropout", "0.1", *FAST, "--log-every", "4",
                               "--device", device, *extra])

    def records(out):
        return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]

    run(tmp_path / "ref")
    real_step = kill_at_step(monkeypatch, 4)
    with pytest.raises(RuntimeError, match="killed"):
        run(tmp_path / "cut")
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["step"] == 3
    assert [r["step"] for r in records(tmp_path / "cut")] == [4]  # logged after the checkpoint: dropped on resume
    monkeypatch.setattr(train_cli.Trainer, "train_step", real_step)
    run(tmp_path / "cut", "--resume")

    def comparable(out):
        if device == "cuda":
            return [(r["kind"], r["step"]) for r in records(out)]
        return [{k: v for k, v in r.items() if k != "time"} for r in records(out)]

    assert [(r["kind"], r["step"]) for r in records(tmp_path / "ref")] == [("train", 4), ("train", 6), ("eval", 6)]
    assert comparable(tmp_path / "cut") == comparable(tmp_path / "ref")
    summary = run(tmp_path / "cut", "--resume")  # already finished: its final evaluation is kept, not redone
    assert comparable(tmp_path / "cut") == comparable(tmp_path / "ref")
    assert summary["metrics"]["mIoU"] == records(tmp_path / "cut")[-1]["mIoU"]


def test_a_bad_validation_file_stops_the_run_before_it_trains(synth, tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    shutil.copytree(synth, data)
    masks = sorted((data / "ADEChallengeData2016" / "annotations" / "validation").glob("*.png"))
    Image.fromarray(np.full((64, 64), 9, np.uint8)).save(masks[-1])  # 3 classes: 9 is out of range
    steps = []
    monkeypatch.setattr(train_cli.Trainer, "train_step", lambda self, *batch: steps.append(1))
    with pytest.raises(SystemExit) as exc:
        train_cli.main(["--data", str(data), "--out", str(tmp_path / "run"), "--iters", "20", *FAST])
    assert exc.value.code == 2 and f"mask {masks[-1]} has labels out of range (9)" in capsys.readouterr().err
    assert steps == []


def test_ctrl_c_says_where_a_resume_continues_without_a_traceback(synth, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "segvit_rt.train", "--data", str(synth), "--out", str(out),
                             "--iters", "400", "--ckpt-every", "2", "--eval-every", "0", *FAST],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (out / "checkpoint.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    step = load_checkpoint(out / "checkpoint.pt")["step"]
    assert err.strip().splitlines()[-1] == (f"interrupted: the last checkpoint is at step {step}; continue with "
                                            "the same command and --resume")


def test_a_diverged_run_stops_and_saves_nothing_more(synth, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    real_step = train_cli.Trainer.train_step

    def poisoned(self, *batch):  # as a too-high learning rate ends: parameters gone NaN, after step 4's loss
        row = real_step(self, *batch)
        if self.step == 4:
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("nan"))
        return row

    monkeypatch.setattr(train_cli.Trainer, "train_step", poisoned)
    with pytest.raises(SystemExit) as exc:
        train_cli.main(["--data", str(synth), "--out", str(out), "--iters", "8", "--eval-every", "2",
                        "--ckpt-every", "2", *FAST])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == ("error: training diverged: the model's parameters hold NaN or infinite values at step 4, so "
                   "nothing more is saved (the last checkpoint, from step 2, is left as it was); start a new run "
                   "(another --out) with a lower --lr, a longer --warmup or a lower --clip-grad (0 turns clipping off)")
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 2 and not (out / "weights.safetensors").exists()
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [2]  # no evaluation of the NaN model


def test_a_real_divergence_is_caught(synth, tmp_path, capsys):
    """No monkeypatching: a learning rate of 1e4 turns the parameters NaN within a few steps."""
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        train_cli.main(["--data", str(synth), "--out", str(out), "--iters", "6", "--eval-every", "0", "--lr", "1e4",
                        "--warmup", "0", "--clip-grad", "0", *FAST])
    assert exc.value.code == 2 and "training diverged" in capsys.readouterr().err
    assert not (out / "weights.safetensors").exists()


def test_resume_on_a_training_split_of_another_size_is_noted(synth, tmp_path, capsys):
    out = tmp_path / "run"
    data = shutil.copytree(synth, tmp_path / "data")
    args = ["--data", str(data), "--out", str(out), "--eval-every", "0", "--ckpt-every", "2", *FAST]
    with pytest.MonkeyPatch.context() as patch:
        kill_at_step(patch, 2)
        with pytest.raises(RuntimeError, match="killed"):
            train_cli.main([*args, "--iters", "4"])
    train_cli.main([*args, "--iters", "4", "--resume"])  # the same split: nothing to say
    err = capsys.readouterr().err
    assert "note: the training split" not in err and f"resuming {out} from step 2 of 4\n" in err
    out2 = tmp_path / "run2"
    args2 = [a if a != str(out) else str(out2) for a in args]
    with pytest.MonkeyPatch.context() as patch:
        kill_at_step(patch, 2)
        with pytest.raises(RuntimeError, match="killed"):
            train_cli.main([*args2, "--iters", "4"])
    removed = sorted((data / "ADEChallengeData2016" / "images" / "training").iterdir())[-1]
    removed.unlink()
    (data / "ADEChallengeData2016" / "annotations" / "training" / (removed.stem + ".png")).unlink()
    train_cli.main([*args2, "--iters", "4", "--resume"])
    assert "note: the training split has 7 images and had 8 when the run was checkpointed" in capsys.readouterr().err


def test_a_validation_split_without_labelled_pixels_gives_null_metrics_in_the_weights(synth, tmp_path):
    data = shutil.copytree(synth, tmp_path / "data")
    for mask in (data / "ADEChallengeData2016" / "annotations" / "validation").iterdir():
        Image.fromarray(np.zeros((64, 64), np.uint8)).save(mask)  # ADE20K's 0: not labelled
    train_cli.main(["--data", str(data), "--out", str(tmp_path / "run"), "--iters", "1", "--eval-every", "0", *FAST])
    meta = read_metadata(tmp_path / "run" / "weights.safetensors")
    assert meta["miou"] is None and meta["aacc"] is None  # JSON null, not the NaN strict parsers refuse


def test_resume_names_a_changed_argument_before_its_effects(synth, tmp_path, capsys):
    out = tmp_path / "run"
    train_cli.main(["--data", str(synth), "--out", str(out), "--iters", "2", "--eval-every", "0", *FAST])
    with pytest.raises(SystemExit):  # --crop 32 with the run's --stride 48 would be blamed on --stride
        train_cli.main(["--data", str(synth), "--out", str(out), "--resume", *FAST, "--crop", "32"])
    err = capsys.readouterr().err
    assert "these arguments differ from the checkpoint's: --crop 64 -> 32" in err and "--stride" not in err


def test_resume_on_other_data_is_refused_or_noted(synth, tmp_path, capsys):
    out = tmp_path / "run"
    train_cli.main(["--data", str(synth), "--out", str(out), "--iters", "2", "--eval-every", "0", *FAST])
    five = generate(tmp_path / "five", classes=5, train=8, val=2, size=64, seed=1, progress=False)
    with pytest.raises(SystemExit) as exc:
        train_cli.main(["--data", str(five), "--out", str(out), "--resume", *FAST])
    assert exc.value.code == 2
    assert "the checkpoint's run trained on 3 classes" in capsys.readouterr().err
    train_cli.main(["--data", os.path.relpath(synth) + "/", "--out", str(out), "--resume", *FAST])
    assert "note: resuming" not in capsys.readouterr().err  # the same folder, spelled otherwise
    moved = shutil.copytree(synth, tmp_path / "moved")
    train_cli.main(["--data", str(moved), "--out", str(out), "--resume", *FAST])
    assert f"note: resuming on --data {moved}; the run started on {synth}" in capsys.readouterr().err


def test_a_run_started_with_relative_paths_resumes_from_another_folder(synth, tmp_path, monkeypatch, capsys):
    init = save_weights(tmp_path / "init.safetensors", segvit_rt.create_model("tiny", num_classes=3, crop_size=64))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    train_cli.main(["--data", os.path.relpath(synth), "--out", str(out), "--iters", "2", "--eval-every", "0",
                    "--init", "init.safetensors", "--init-format", "official", *FAST])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    train_cli.main(["--data", str(synth), "--out", str(out), "--resume", "--init", "../init.safetensors", *FAST])
    err = capsys.readouterr().err
    assert "note: resuming on --data" not in err and "differ from the checkpoint's" not in err
    record = read_metadata(out / "weights.safetensors")["train_args"]
    assert record["data"] == str(synth.resolve()) and record["init"] == str(init.resolve())
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log if r["kind"] == "train"] == [0, 0]  # 8 images in batches of 4: steps 1-2, epoch 0


def test_a_bare_resume_keeps_the_runs_settings(synth, tmp_path, monkeypatch):
    """``--resume`` with only --data and --out: the run's checkpoint/eval/log cadence, evaluation mode and
    weights dtype come from its checkpoint, not from the defaults."""
    out = tmp_path / "run"
    real_step = kill_at_step(monkeypatch, 4)
    with pytest.raises(RuntimeError, match="killed"):
        train_cli.main(["--data", str(synth), "--out", str(out), "--iters", "8", "--ckpt-every", "2",
                        "--eval-every", "6", "--log-every", "3", "--mode", "whole", "--weights-dtype", "fp16",
                        "--crop", "64", "--batch", "4", "--workers", "0", "--quiet"])
    monkeypatch.setattr(train_cli.Trainer, "train_step", real_step)
    train_cli.main(["--data", str(synth), "--out", str(out), "--resume", "--workers", "0", "--quiet"])
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["step"]) for r in records] == [("train", 3), ("train", 6), ("eval", 6), ("train", 8),
                                                          ("eval", 8)]
    assert read_metadata(out / "weights.safetensors")["eval_mode"] == "whole"
    assert {t.dtype for t in load_file(str(out / "weights.safetensors")).values()} == {torch.float16}


@pytest.mark.parametrize("layout", ["coco_stuff10k", "pascal_context", "pascal_context59"])
def test_trains_on_the_other_papers_datasets_layouts(tmp_path, layout):
    """A short run on a COCO-Stuff 10k / PASCAL-Context tree (60 classes, or 59 without background):
    their class lists reach the weights, and evaluate takes the weights' PASCAL-Context protocol."""
    extra = []
    rng = np.random.default_rng(0)
    if layout == "coco_stuff10k":
        masks = {split: [rng.integers(0, 172, size=(64, 64)) for _ in range(n)]
                 for split, n in (("train2014", 4), ("test2014", 1))}
        make_coco_stuff(tmp_path, masks)
        classes = COCO_STUFF_CLASSES
    else:
        masks = {split: [rng.integers(0, 60, size=(64, 64)) for _ in range(n)] for split, n in (("train", 4), ("val", 1))}
        make_context(tmp_path, masks)
        classes = PASCAL_CONTEXT_CLASSES
        if layout == "pascal_context59":
            extra, classes = ["--context-classes", "59"], PASCAL_CONTEXT_CLASSES[1:]
    summary = train_cli.main(["--data", str(tmp_path), "--out", str(tmp_path / "run"), "--iters", "2", *FAST, *extra])
    meta = read_metadata(tmp_path / "run" / "weights.safetensors")
    assert meta["class_names"] == list(classes)
    assert load_weights(tmp_path / "run" / "weights.safetensors").cfg.num_classes == len(classes)
    assert 0.0 <= summary["metrics"]["mIoU"] <= 1.0
    if layout.startswith("pascal_context"):
        metrics = evaluate_cli.main(["--weights", str(tmp_path / "run" / "weights.safetensors"), "--data",
                                     str(tmp_path), "--quiet"])
        assert metrics["class_names"] == list(classes) and len(metrics["IoU"]) == len(classes)


def test_training_resize_follows_the_presets_image_scale(tmp_path):
    """PASCAL-Context's official training resize fits 520x520 (times 0.5-2.0), not (4 crops, crop)."""
    make_context(tmp_path, {"train": [np.zeros((8, 8))], "val": [np.zeros((8, 8))]})

    def train_scale(*extra):
        args = train_cli.build_parser().parse_args(["--data", str(tmp_path), "--out", str(tmp_path / "x"),
                                                    "--batch", "1", *extra])
        return train_cli.open_datasets(train_cli.resolve_defaults(args))[0].transform.scale

    assert train_scale("--preset", "vit_l16_pcontext_480") == (520, 520)
    assert train_scale("--preset", "vit_l16_pcontext_480", "--crop", "240") == (260, 260)
    assert train_scale("--preset", "vit_l16_ade20k_640") == (2048, 640)


def test_resume_refuses_changed_arguments_and_missing_checkpoint(synth, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        train_cli.main(["--data", str(synth), "--out", str(tmp_path / "none"), "--resume", *FAST])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "no checkpoint.pt in" in err and "start it again without --resume" in err
    out = tmp_path / "run"
    train_cli.main(["--data", str(synth), "--out", str(out), "--iters", "2", "--eval-every", "0", *FAST])
    result = run_cli(["--data", str(synth), "--out", str(out), "--iters", "2", "--eval-every", "0", "--resume",
                      "--lr", "0.5", *FAST])
    assert result.returncode == 2 and "--lr" in result.stderr and "differ" in result.stderr
    args = train_cli.build_parser().parse_args(["--data", str(synth), "--out", str(out), "--resume"])
    with pytest.raises(train_cli.UsageError, match=r"checkpointed by 1 process\(es\); resume it with as many \(got 2\)"):
        train_cli.previous_state(args, world_size=2)


def test_usage_and_data_errors_are_reported(synth, tmp_path, capsys):
    def fails(args, *needles, data=synth):
        with pytest.raises(SystemExit) as exc:
            train_cli.main(["--data", str(data), "--out", str(tmp_path / "x"), "--iters", "2", *FAST, *args])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and all(n in err for n in needles), err
        return exc.value.__cause__

    fails(["--batch", "64"], "fewer than one batch")
    fails(["--amp", "bf16", "--device", "cpu"], "needs a CUDA device")
    fails([], "no dataset at", data=tmp_path)
    fails(["--context-classes", "59"], "--context-classes 59 picks a PASCAL-Context protocol", "is not PASCAL-Context")
    old = tmp_path / "old"  # a run that an earlier version let store --context-classes 59 on other data
    with pytest.MonkeyPatch.context() as patch:
        kill_at_step(patch, 2)
        with pytest.raises(RuntimeError, match="killed"):
            train_cli.main(["--data", str(synth), "--out", str(old), "--iters", "4", "--ckpt-every", "2",
                            "--eval-every", "0", *FAST])
    state = load_checkpoint(old / "checkpoint.pt")
    state["args"]["context_classes"] = 59
    torch.save(state, old / "checkpoint.pt")
    train_cli.main(["--data", str(synth), "--out", str(old), "--resume", *FAST])  # resumes: the run keeps its own
    assert load_checkpoint(old / "checkpoint.pt")["step"] == 4

    broken = tmp_path / "broken"
    ade = generate(broken, classes=3, train=4, val=1, size=64, seed=1, progress=False)
    (ade / "images" / "training" / "synth_training_000002.jpg").write_bytes(b"not a jpeg")
    cause = fails(["--eval-every", "0"], "cannot read image", "synth_training_000002.jpg", data=broken)
    assert isinstance(cause, train_cli.ReplicaError)  # read mid-run by one replica: each reports its own
    (ade / "annotations" / "training" / "synth_training_000003.png").unlink()
    fails([], "unpaired", "synth_training_000003", data=broken)


def test_defaults_follow_preset_and_variant():
    def resolved(*argv):
        return train_cli.resolve_defaults(train_cli.build_parser().parse_args(["--data", "d", "--out", "o", *argv]))

    assert (resolved("--variant", "full").iters, resolved("--variant", "full").lr) == (1500, 1e-4)
    assert (resolved("--variant", "shrunk").iters, resolved("--variant", "shrunk").eval_every) == (2500, 1250)
    assert resolved("--variant", "shrunk", "--iters", "7").iters == 7
    paper = resolved("--preset", "vit_b16_ade20k_512", "--variant", "shrunk")
    assert (paper.iters, paper.batch, paper.lr) == (160_000, 16, 2e-5)
    # the official configs' recipes (ADE20K, COCO-Stuff 10k, PASCAL-Context)
    recipe = ("iters", "weight_decay", "poly_power", "clip_grad", "drop_path", "warmup")
    assert [getattr(paper, k) for k in recipe] == [160_000, 0.01, 1.0, 35.0, 0.1, 1500]
    ade = resolved("--preset", "vit_l16_ade20k_640")
    assert [getattr(ade, k) for k in recipe] == [160_000, 0.01, 1.0, 35.0, 0.3, 1500]
    coco = resolved("--preset", "vit_l16_cocostuff10k_512")
    assert [getattr(coco, k) for k in recipe] == [80_000, 0.02, 2.0, 35.0, 0.3, 1500]
    context = resolved("--preset", "vit_l16_pcontext_480", "--drop-path", "0")
    assert [getattr(context, k) for k in recipe] == [80_000, 0.03, 1.0, 35.0, 0.0, 1500]
    tiny = resolved()
    assert [getattr(tiny, k) for k in recipe] == [1500, 0.01, 1.0, 1.0, 0.0, 100]
    for bad in (["--drop-path", "1"], ["--dropout", "1"], ["--dropout", "-0.1"], ["--weight-decay", "-0.1"],
                ["--clip-grad", "-1"], ["--stride", "200"], ["--crop", "72"], ["--lr", "0"], ["--head-lr-mult", "-1"]):
        with pytest.raises(train_cli.UsageError, match=bad[0]):
            resolved(*bad)
    with pytest.raises(train_cli.UsageError, match="--crop 48 must be a multiple of 32 .* even token grid"):
        resolved("--variant", "shrunk", "--crop", "48")
    for flag in ("--weight-decay", "--clip-grad", "--poly-power", "--lr", "--head-lr-mult"):
        for value in ("nan", "inf"):
            with pytest.raises(train_cli.UsageError, match=f"{flag} must be a finite number, got {value}"):
                resolved(flag, value)


def test_resume_takes_unset_arguments_from_the_checkpoint(synth, tmp_path):
    """A run made under other defaults (an older release's) resumes without repeating its arguments."""
    out = tmp_path / "run"
    train_cli.main(["--data", str(synth), "--out", str(out), "--iters", "2", "--eval-every", "0", *FAST])
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["args"]["threads"] == torch.get_num_threads()  # recorded though not given
    state["args"].update(clip_grad=5.0, seed=3, head_lr_mult=4.0, amp="none", init_format="official", variant="shrunk",
                         kernels="triton", preset="vit_b16_ade20k_512", threads=1)
    del state["args"]["poly_power"], state["args"]["drop_path"]
    torch.save(state, out / "checkpoint.pt")

    def resumed(*extra):
        args = train_cli.build_parser().parse_args(["--data", str(synth), "--out", str(out), "--resume", *extra])
        saved = train_cli.previous_state(args)["args"]
        args = train_cli.resolve_defaults(args)
        train_cli.check_same_run(saved, args)
        return args

    args = resumed()
    assert (args.clip_grad, args.iters, args.crop, args.batch) == (5.0, 2, 64, 4)
    assert (args.seed, args.head_lr_mult, args.amp, args.init_format) == (3, 4.0, "none", "official")
    assert (args.preset, args.variant, args.kernels) == ("vit_b16_ade20k_512", "shrunk", "triton")
    assert resumed("--kernels", "reference").kernels == "reference"  # a setting: may change on resume
    assert (args.threads, args.workers) == (1, 0)  # the run's CPU threads (exact sums) and data workers
    with pytest.raises(train_cli.UsageError, match="--clip-grad 5.0 -> 1.0"):
        resumed("--clip-grad", "1")
    with pytest.raises(train_cli.UsageError, match="--variant 'shrunk' -> 'full'"):
        resumed("--variant", "full")


def test_resume_of_a_run_from_before_poly_power_and_drop_path(tmp_path):
    """Such a run had poly power 1 and no stochastic depth, whatever the preset's defaults are now
    (COCO-Stuff's: power 2, drop path 0.3)."""
    now = train_cli.resolve_defaults(train_cli.build_parser().parse_args(
        ["--data", "d", "--out", str(tmp_path), "--preset", "vit_l16_cocostuff10k_512"]))
    saved = {k: getattr(now, k) for k in train_cli.RUN_DEFINING if k not in ("poly_power", "drop_path")}
    torch.save({"format": CHECKPOINT_FORMAT, "args": saved}, tmp_path / "checkpoint.pt")
    args = train_cli.build_parser().parse_args(
        ["--data", "d", "--out", str(tmp_path), "--preset", "vit_l16_cocostuff10k_512", "--resume"])
    state = train_cli.previous_state(args)
    args = train_cli.resolve_defaults(args)
    assert (args.poly_power, args.drop_path, args.iters, args.weight_decay) == (1.0, 0.0, 80_000, 0.02)
    train_cli.check_same_run(state["args"], args)


def test_resume_accepts_checkpoints_from_before_poly_power_and_drop_path():
    args = train_cli.resolve_defaults(train_cli.build_parser().parse_args(["--data", "d", "--out", "o"]))
    saved = {k: getattr(args, k) for k in train_cli.RUN_DEFINING if k not in ("poly_power", "drop_path")}
    train_cli.check_same_run(saved, args)  # they ran with power 1 and no stochastic depth, as these args say
    args.drop_path = 0.1
    with pytest.raises(train_cli.UsageError, match="--drop-path 0.0 -> 0.1"):
        train_cli.check_same_run(saved, args)


def test_what_training_from_scratch_is_told():
    def note(*argv):
        args = train_cli.build_parser().parse_args(["--data", "d", "--out", "o", *argv])
        return train_cli.from_scratch_note(train_cli.resolve_defaults(args))

    assert note() is None  # the tiny full model trains from scratch in minutes
    assert note("--variant", "shrunk") == train_cli.SHRUNK_FROM_SCRATCH
    assert "--init vit_large_patch16_384" in note("--preset", "vit_l16_pcontext_480")
    assert "--init vit_base_patch16_384" in note("--preset", "vit_b16_ade20k_512")
    assert note("--preset", "vit_l16_ade20k_640", "--init", "vit.safetensors") is None


def test_shrunk_without_init_is_told_to_warm_start(synth, tmp_path, capsys):
    train_cli.main(["--data", str(synth), "--out", str(tmp_path / "scratch"), "--variant", "shrunk", "--iters", "1",
                    "--eval-every", "0", *FAST])
    assert "--init-format full" in capsys.readouterr().err
    full = save_weights(tmp_path / "full.safetensors", segvit_rt.create_model("tiny", num_classes=3, crop_size=64))
    train_cli.main(["--data", str(synth), "--out", str(tmp_path / "warm"), "--variant", "shrunk", "--iters", "1",
                    "--eval-every", "0", "--init", str(full), "--init-format", "full", *FAST])
    err = capsys.readouterr().err
    assert "(full): loaded" in err and "without --init" not in err


@pytest.mark.parametrize("fmt", ["timm", "official"])
def test_init_loads_checkpoints_through_the_importers(synth, tmp_path, fmt, capsys):
    torch.manual_seed(123)
    source = segvit_rt.create_model("tiny", num_classes=3, crop_size=64)
    if fmt == "timm":  # a timm ViT: backbone keys only, plus a cls token the backbone does not use
        state = {**source.backbone.state_dict(), "cls_token": torch.zeros(1, 1, 128)}
    else:  # an mmseg SegViT checkpoint: backbone.* and decode_head.*
        state = source.state_dict()
    torch.save({"state_dict": state}, tmp_path / "init.pth")
    out = tmp_path / "run"
    # A learning rate of 1e-12 leaves the weights where --init put them.
    train_cli.main(["--data", str(synth), "--out", str(out), "--iters", "1", "--lr", "1e-12", "--eval-every", "0",
                    "--init", str(tmp_path / "init.pth"), "--init-format", fmt, *FAST])
    assert f"--init {tmp_path / 'init.pth'} ({fmt}): loaded" in capsys.readouterr().err
    trained = load_weights(out / "weights.safetensors").state_dict()
    loaded = [k for k in trained if k.startswith("backbone.") or fmt == "official"]
    assert all(torch.allclose(trained[k], source.state_dict()[k], atol=1e-8) for k in loaded)


def test_a_whole_segvit_checkpoint_under_the_timm_format_is_refused(synth, tmp_path, capsys):
    """The default --init-format (timm) would keep the backbone and silently drop the trained head."""
    torch.save({"state_dict": segvit_rt.create_model("tiny", num_classes=3, crop_size=64).state_dict()},
               tmp_path / "segvit.pth")
    with pytest.raises(SystemExit) as exc:
        train_cli.main(["--data", str(synth), "--out", str(tmp_path / "run"), "--iters", "1",
                        "--init", str(tmp_path / "segvit.pth"), *FAST])
    assert exc.value.code == 2
    assert "holds a whole SegViT model (decode_head.* weights)" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a typo in the path
        train_cli.main(["--data", str(synth), "--out", str(tmp_path / "run"), "--iters", "1",
                        "--init", str(tmp_path / "segvit.ph"), *FAST])
    assert f"error: --init {tmp_path / 'segvit.ph'}: no such file" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_training_on_cuda(synth, tmp_path, amp):
    out = tmp_path / amp
    summary = train_cli.main(["--data", str(synth), "--out", str(out), "--iters", "20", "--lr", "5e-4",
                              "--eval-every", "10", "--amp", amp, "--device", "cuda", *FAST])
    losses = [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "train"]
    assert len(losses) == 20 and all(np.isfinite(losses)) and np.mean(losses[-5:]) < np.mean(losses[:5])
    assert 0.0 <= summary["metrics"]["mIoU"] <= 1.0


def test_an_init_that_loads_no_backbone_tensor_is_refused(tmp_path):
    """A file of other names (a torchvision or HuggingFace ViT, the wrong file) would train from scratch."""
    from safetensors.torch import save_file

    save_file({"foo.weight": torch.zeros(3, 3)}, tmp_path / "foo.safetensors")
    one = train_cli.DistInfo(0, 1, 0, torch.device("cpu"))
    for variant, fmt in (("full", "timm"), ("shrunk", "timm"), ("shrunk", "full")):
        with pytest.raises(train_cli.UsageError, match=rf"--init .*foo.safetensors \({fmt}\): no backbone tensor "
                                                       r"loaded \(loaded 0 tensors; missing"):
            train_cli.load_init(segvit_rt.create_model("tiny", variant), str(tmp_path / "foo.safetensors"), fmt, one)


@pytest.mark.parametrize("variant", ["full", "shrunk"])
def test_an_official_init_of_other_classes_fine_tunes_all_but_the_class_tensors(tmp_path, variant, capsys):
    source = segvit_rt.create_model("tiny", variant)  # 5 classes
    path = tmp_path / "ade.pth"
    torch.save({"state_dict": source.state_dict()}, path)
    model = segvit_rt.create_model("tiny", variant, num_classes=7)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    train_cli.load_init(model, str(path), "official", train_cli.DistInfo(0, 1, 0, torch.device("cpu")))
    assert "left to start fresh, sized for another class count: decode_head." in capsys.readouterr().err
    class_keys = {f"decode_head.{'atm.' if variant == 'shrunk' else ''}{n}"
                  for n in ("q.weight", "class_embed.weight", "class_embed.bias")}
    for k, v in model.state_dict().items():
        assert torch.equal(v, fresh[k] if k in class_keys else source.state_dict()[k]), k
    with pytest.raises(WeightsError, match=r"q.weight: checkpoint shape \(5, 64\) != model shape \(7, 64\)"):
        weights.import_official_segvit(segvit_rt.create_model("tiny", variant, num_classes=7), str(path))


def test_init_formats_that_would_load_a_file_only_in_part_are_refused(tmp_path):
    full, shrunk = (segvit_rt.create_model("tiny", v) for v in ("full", "shrunk"))
    full_w, shrunk_w = save_weights(tmp_path / "full.safetensors", full), save_weights(tmp_path / "s.safetensors", shrunk)
    one = train_cli.DistInfo(0, 1, 0, torch.device("cpu"))
    for model, path, fmt, message in [
        (full, full_w, "timm", "segvit_rt weights file .* not a timm ViT: use --init-format official"),
        (shrunk, full_w, "timm", "or full to warm-start a Shrunk model"),
        (full, full_w, "full", "--init-format full warm-starts a Shrunk model"),
        (shrunk, shrunk_w, "full", "holds a shrunk model; --init-format full needs a full one"),
    ]:
        with pytest.raises(train_cli.UsageError, match=message):
            train_cli.load_init(model, str(path), fmt, one)
    fresh = segvit_rt.create_model("tiny", "full")
    train_cli.load_init(fresh, str(full_w), "official", one)  # our full weights, as they are
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), full.state_dict().values()))


def test_clip_grad_bounds_the_gradient_norm_and_zero_turns_it_off(synth, tmp_path, monkeypatch):
    """The step reports the norm before clipping; the optimizer sees gradients of norm --clip-grad at most."""
    seen = []
    real_step = train_cli.Trainer.train_step

    def step(self, *batch):
        stats = real_step(self, *batch)
        grads = [p.grad.norm() for p in self.model.parameters() if p.grad is not None]
        seen.append((stats[-1].item(), torch.stack(grads).norm().item()))
        return stats

    monkeypatch.setattr(train_cli.Trainer, "train_step", step)
    for clip in ("0.001", "0"):
        train_cli.main(["--data", str(synth), "--out", str(tmp_path / clip), "--iters", "1", "--eval-every", "0",
                        "--clip-grad", clip, *FAST])
    (clipped_before, clipped_after), (free_before, free_after) = seen
    assert clipped_before > 0.01 and clipped_after == pytest.approx(0.001, rel=1e-4)
    assert free_after == pytest.approx(free_before, rel=1e-5) and free_after > 0.01


def test_train_and_evaluate_with_the_triton_kernels(synth, tmp_path, monkeypatch, capsys):
    """``--kernels triton`` on the command line: the fused ops' forward and backward kernels really run
    (through the interpreter on a CPU, which ``use_interpreter_on_cpu`` switches on before Triton is
    imported), in training and in evaluation; with decoder dropout (the default) the ATM cross-attention
    trains through the reference, and the run says so."""
    import importlib

    launched = {}
    for name in ("atm_attention", "qd_attention"):
        module = importlib.import_module(f"segvit_rt.kernels.{name}")
        for which in ("launch_forward", "launch_backward"):
            real = getattr(module, which)
            monkeypatch.setattr(module, which, lambda *a, _real=real, _key=(name, which), **k: (
                launched.__setitem__(_key, launched.get(_key, 0) + 1), _real(*a, **k))[1])
    train_cli.main(["--data", str(synth), "--out", str(tmp_path / "dropout"), "--variant", "shrunk", "--iters", "1",
                    "--eval-every", "0", "--kernels", "triton", *FAST])
    assert "the fused ATM kernel has no attention dropout" in capsys.readouterr().err
    assert ("atm_attention", "launch_backward") not in launched and ("qd_attention", "launch_backward") in launched
    launched.clear()
    out = tmp_path / "run"
    train_cli.main(["--data", str(synth), "--out", str(out), "--variant", "shrunk", "--iters", "1",
                    "--eval-every", "0", "--kernels", "triton", "--dropout", "0", *FAST])
    assert "no attention dropout" not in capsys.readouterr().err
    assert set(launched) == {(op, which) for op in ("atm_attention", "qd_attention")
                             for which in ("launch_forward", "launch_backward")}
    launched.clear()
    metrics = evaluate_cli.main(["--weights", str(out / "weights.safetensors"), "--data", str(synth),
                                 "--kernels", "triton", "--quiet"])
    assert launched and set(launched) <= {("atm_attention", "launch_forward"), ("qd_attention", "launch_forward")}
    assert 0.0 <= metrics["mIoU"] <= 1.0


def test_cpu_runs_of_the_triton_kernels_switch_the_interpreter_on(monkeypatch):
    from segvit_rt.evaluate import use_interpreter_on_cpu

    monkeypatch.setenv("TRITON_INTERPRET", "0")  # recorded, so teardown restores the session's value
    monkeypatch.delenv("TRITON_INTERPRET")
    use_interpreter_on_cpu("reference", torch.device("cpu"))
    use_interpreter_on_cpu("triton", torch.device("cuda"))
    assert "TRITON_INTERPRET" not in os.environ
    use_interpreter_on_cpu("triton", torch.device("cpu"))
    assert os.environ["TRITON_INTERPRET"] == "1"


def test_a_training_checkpoint_converts_to_the_runs_weights(synth, tmp_path, capsys):
    """``convert`` on a run's checkpoint.pt (a run stopped early, say): the model, class names and
    variant come from the checkpoint; at the run's end they are its weights.safetensors exactly."""
    from safetensors.torch import load_file

    from segvit_rt import convert

    out = tmp_path / "run"
    train_cli.main(["--data", str(synth), "--out", str(out), "--variant", "shrunk", "--iters", "2",
                    "--eval-every", "0", *FAST])
    capsys.readouterr()
    converted = convert.main([str(out / "checkpoint.pt"), "--out", str(tmp_path / "w.safetensors")])
    assert "(shrunk); build an engine with: python -m segvit_rt.build --weights" in capsys.readouterr().out
    got, want = load_file(str(converted)), load_file(str(out / "weights.safetensors"))
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    meta = read_metadata(converted)
    assert meta["class_names"] == read_metadata(out / "weights.safetensors")["class_names"]
    assert meta["trained_iters"] == 2 and meta["variant"] == "shrunk"
    refused = [(out / "checkpoint.pt", ["--variant", "full"],
                "a training checkpoint of a tiny shrunk run; --variant full"),
               (out / "weights.safetensors", [], "weights.safetensors is already segvit_rt weights (tiny shrunk): "
                                                 "build from it as it is"),
               (out / "gone.pt", ["--variant", "full"], "checkpoint not found")]
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    state["args"]["dropout"] = 1.0  # a run this version would refuse to start
    torch.save(state, tmp_path / "odd.pt")
    refused.append((tmp_path / "odd.pt", [], "odd.pt: its run's arguments do not make a model this version builds: "
                                             "config 'tiny': decoder_dropout must be in [0, 1), got 1.0"))
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    del state["model"]["decode_head.q.weight"]  # edited, or another version's
    torch.save(state, tmp_path / "edited.pt")
    refused.append((tmp_path / "edited.pt", [], "edited.pt: its model state does not fit the model its arguments "
                                                "describe (Error(s) in loading state_dict"))
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    state["model"]["decode_head.q.weight"][0, 0] = float("nan")  # a diverged run's last checkpoint
    torch.save(state, tmp_path / "nan.pt")
    refused.append((tmp_path / "nan.pt", [], "x.safetensors not written: decode_head.q.weight holds NaN or infinite"))
    (tmp_path / "cut.pt").write_bytes((out / "checkpoint.pt").read_bytes()[:50_000])  # a copy cut short
    refused.append((tmp_path / "cut.pt", [], "cut.pt is not a readable PyTorch checkpoint (corrupt, truncated"))
    for source, args, message in refused:
        with pytest.raises(SystemExit):
            convert.main([str(source), "--out", str(tmp_path / "x.safetensors"), *args])
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    state["args"]["weights_dtype"] = "bf16"  # the run's own choice of what it writes at its end
    torch.save(state, tmp_path / "bf16.pt")
    converted = convert.main([str(tmp_path / "bf16.pt"), "--out", str(converted)])
    assert load_file(str(converted))["decode_head.q.weight"].dtype == torch.bfloat16
    assert f"note: {converted} existed and was replaced" in capsys.readouterr().out
