"""Train SegViT on a segmentation dataset.

``python -m segvit_rt.train --data ROOT --preset tiny --variant shrunk --out runs/x``

On several processes: ``torchrun --nproc_per_node N -m segvit_rt.train ...``
(DDP: NCCL on CUDA, gloo on CPU). ``--batch`` is the global batch, split evenly
over the processes, so a run gives the same batches on any number of processes
(and the same losses up to float rounding with ``--dropout 0``: each replica
draws its own dropout masks). Only rank 0 writes. A run resumes on as many
processes as it was started on.

OUT receives ``log.jsonl`` (one record per logged step and per evaluation),
``checkpoint.pt`` (full state every ``--ckpt-every`` steps; ``--resume``
continues from it exactly), ``weights.safetensors`` (final weights and their
metadata, for ``segvit_rt.weights.load_weights``), ``curves.png`` (loss and
mIoU) and ``summary.json`` (final metrics).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from .cli import UsageError, exit_on, user_message
from .config import PRESETS, VARIANTS, SegViTConfig, get_config, input_multiple
from .data import DatasetError, EvalTransform, PascalContextDataset, TrainTransform, open_dataset
from .evaluate import evaluate_model, use_interpreter_on_cpu
from .inference import MODES
from .io_utils import LockedError, hold_lock
from .models import SegViT
from .training.checkpoint import CheckpointError, load_checkpoint, restore, rng_state, save_checkpoint
from .training.distributed import DistInfo, all_reduce_mean, cleanup, gather_objects, init_distributed, replica_digests
from .training.logs import JsonlLog, plot_curves, write_json
from .training.losses import ATMLoss
from .training.optim import make_optimizer, make_scheduler
from .training.sampler import ResumableSampler
from .weights import (
    WEIGHTS_DTYPES,
    WeightsError,
    import_full_into_shrunk,
    import_official_segvit,
    import_timm_vit,
    read_metadata,
    save_weights,
)


class ReplicaError(RuntimeError):
    """A problem of one training process's own (a sample it read, its disk): every replica reports its own."""


class DivergedError(RuntimeError):
    """The model's parameters went NaN or infinite: nothing more of the run is saved."""


CHECKPOINT = "checkpoint.pt"
WEIGHTS = "weights.safetensors"
SUMMARY = "summary.json"

# The official SegViT recipe (its ADE20K config: 160k iterations, batch 16, AdamW 2e-5 with weight decay
# 0.01, 1500 warm-up steps, poly decay of power 1, gradients clipped at norm 35), the changes of its
# COCO-Stuff 10k and PASCAL-Context configs...
DEFAULTS = dict(preset="tiny", variant="full", kernels="reference", workers=1,
                iters=160_000, batch=16, lr=2e-5, weight_decay=0.01, warmup=1500, poly_power=1.0, clip_grad=35.0,
                eval_every=16_000, ckpt_every=4000, head_lr_mult=10.0, seed=0, amp="auto", init_format="timm",
                log_every=10, mode="slide", weights_dtype="fp32", context_classes=60)
PRESET_DEFAULTS = {
    "vit_l16_cocostuff10k_512": dict(iters=80_000, weight_decay=0.02, poly_power=2.0, eval_every=8000),
    "vit_l16_pcontext_480": dict(iters=80_000, weight_decay=0.03, eval_every=8000),
    # ...and what trains the tiny preset from scratch on the synthetic data in minutes on 2 CPU cores
    # (a backbone rate of 3e-4, i.e. 3e-3 in the head, stays on the class-frequency plateau far longer).
    "tiny": dict(iters=1500, batch=8, lr=1e-4, clip_grad=1.0, warmup=100, eval_every=500, ckpt_every=500),
}
# A Shrunk model warm-started from a full one (--init-format full) needs longer: its QU decoders start untrained.
VARIANT_DEFAULTS = {("tiny", "shrunk"): dict(iters=2500, eval_every=1250)}

SHRUNK_FROM_SCRATCH = (
    "note: training a Shrunk model without --init. Its QU cross-attention tells the 1/16 tokens apart only by "
    "the position information in the backbone's features, which an untrained backbone hardly has, so on small "
    "data the run can sit at the class-frequency plateau for thousands of steps. Like the paper (pretrained "
    "backbones), start from trained weights: --init FULL.safetensors --init-format full (a full model trained "
    "by this trainer) or a timm/official checkpoint."
)
BACKBONE_FROM_SCRATCH = (
    "note: training a {preset} model without --init. The official configs start the backbone from an "
    "ImageNet-pretrained ViT/16 at 384 pixels; from scratch, their schedule falls far short of the paper's "
    "figures. Pass a timm ViT checkpoint of the same size, e.g. --init vit_{size}_patch16_384.safetensors "
    "--init-format timm (the position embedding is resized to the crop)."
)


def from_scratch_note(args: argparse.Namespace) -> str | None:
    """What to tell a user who trains without ``--init`` (None when nothing is worth saying)."""
    if args.init:
        return None
    if args.variant == "shrunk":
        return SHRUNK_FROM_SCRATCH
    if args.preset != "tiny":
        return BACKBONE_FROM_SCRATCH.format(preset=args.preset, size="large" if "vit_l" in args.preset else "base")
    return None

# Arguments a resumed run must share with the run it continues; runs checkpointed before an argument
# existed ran with the value in RUN_DEFINING_BEFORE.
RUN_DEFINING = ("preset", "variant", "iters", "batch", "lr", "weight_decay", "head_lr_mult", "warmup", "poly_power",
                "clip_grad", "crop", "stride", "dropout", "drop_path", "seed", "amp", "init", "init_format",
                "context_classes")
RUN_DEFINING_BEFORE = {"poly_power": 1.0, "drop_path": 0.0, "context_classes": 60}
PATH_ARGS = ("data", "init")  # recorded resolved: a resume may run from another folder
# Arguments a resumed run takes from the checkpoint when its command line leaves them unset, but may change.
RUN_SETTINGS = ("kernels", "threads", "workers", "eval_every", "ckpt_every", "log_every", "mode", "weights_dtype")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m segvit_rt.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True,
                   help="dataset root: ADE20K, COCO-Stuff 10k or 164k, PASCAL-Context, or images/ + masks/ + classes.txt "
                        "with training/ and validation/ split folders in both")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--preset", choices=sorted(PRESETS), help="model preset (default tiny)")
    p.add_argument("--variant", choices=VARIANTS, help="full (default) or shrunk")
    p.add_argument("--iters", type=int, help="optimizer steps (default: per preset and variant; the paper's: ADE20K 160000, "
                        "COCO-Stuff and PASCAL-Context 80000)")
    p.add_argument("--batch", type=int, help="global batch size, split over the processes (default 16, tiny 8)")
    p.add_argument("--lr", type=float,
                   help="backbone learning rate (default 2e-5, tiny 1e-4; the head's is --head-lr-mult times it)")
    p.add_argument("--head-lr-mult", type=float, help="decode-head learning-rate factor (default 10)")
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay (default: per preset, as the official configs)")
    p.add_argument("--warmup", type=int, help="linear warm-up steps (default 1500, tiny 100)")
    p.add_argument("--poly-power", type=float, help="power of the poly learning-rate decay (default: per preset)")
    p.add_argument("--clip-grad", type=float, help="max gradient norm, 0: no clipping (default: 35, tiny 1)")
    p.add_argument("--crop", type=int, help="training crop (default: the preset's)")
    p.add_argument("--stride", type=int, help="sliding-window eval stride (default: the preset's, scaled to --crop)")
    p.add_argument("--dropout", type=float, help="decoder dropout (default: the preset's)")
    p.add_argument("--drop-path", type=float,
                   help="backbone stochastic-depth rate (default: the preset's: ViT-L 0.3, ViT-B 0.1, tiny 0)")
    p.add_argument("--context-classes", type=int, choices=(59, 60),
                   help="PASCAL-Context only: 60 (background a class, as SegViT's released config; default) or 59 "
                        "(background ignored, mmseg's PascalContextDataset59)")
    p.add_argument("--kernels", choices=("reference", "triton"),
                   help="reference (default): PyTorch ops; triton: the fused Triton kernels (the interpreter on CPU)")
    p.add_argument("--amp", choices=("auto", "bf16", "fp16", "none"),
                   help="mixed precision on CUDA (default auto: bf16 where supported, else fp16; none on CPU)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--seed", type=int, help="seed of the initialisation, data order and augmentation (default 0)")
    p.add_argument("--workers", type=int, help="data-loading processes per training process (default 1)")
    p.add_argument("--threads", type=int,
                   help="CPU compute threads per process (default: torch's); on a busy machine, keep threads + "
                        "workers within the free cores: oversubscribed OpenMP threads stall each other. A resumed "
                        "run keeps the thread count it had: CPU sums round differently with another")
    p.add_argument("--mode", choices=MODES, help="evaluation inference mode (default slide)")
    p.add_argument("--eval-every", type=int,
                   help="evaluate every K steps, 0: only at the end (default 16000, COCO-Stuff and PASCAL-Context "
                        "8000, tiny 500, tiny Shrunk 1250)")
    p.add_argument("--ckpt-every", type=int, help="checkpoint every K steps, and at the end (default 4000, tiny 500)")
    p.add_argument("--log-every", type=int, help="log the mean loss every K steps (default 10)")
    p.add_argument("--resume", action="store_true",
                   help=f"continue from OUT/{CHECKPOINT}; arguments left unset take the run's values from it")
    p.add_argument("--init", help="initial weights: a timm ViT, an official SegViT checkpoint or our weights")
    p.add_argument("--init-format", choices=("timm", "official", "full"),
                   help="default timm; official: an official SegViT checkpoint, or our weights of the same "
                        "variant; full: our weights of a trained full model, to warm-start a Shrunk one")
    p.add_argument("--weights-dtype", choices=tuple(WEIGHTS_DTYPES),
                   help="storage dtype of the final weights file (default fp32)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the arguments left unset from the preset's defaults (and check them)."""
    args.preset = args.preset or DEFAULTS["preset"]
    args.variant = args.variant or DEFAULTS["variant"]
    preset = PRESETS[args.preset]
    defaults = {**DEFAULTS, **PRESET_DEFAULTS.get(args.preset, {}),
                **VARIANT_DEFAULTS.get((args.preset, args.variant), {})}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.crop is None:
        args.crop = preset.crop_size
    if args.stride is None:
        args.stride = preset.stride_at(args.crop)  # the preset's, scaled to the crop
    if args.dropout is None:
        args.dropout = preset.decoder_dropout
    if args.drop_path is None:
        args.drop_path = preset.drop_path_rate
    for key in ("dropout", "drop_path"):
        if not 0.0 <= getattr(args, key) < 1.0:
            raise UsageError(f"--{key.replace('_', '-')} must be in [0, 1), got {getattr(args, key)}")
    for key in ("iters", "batch", "crop", "stride", "log_every"):
        if getattr(args, key) < 1:
            raise UsageError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    multiple = input_multiple(preset, args.variant)
    if args.crop % multiple:
        why = f"patch {preset.patch_size}" + (", and an even token grid for QD" if args.variant == "shrunk" else "")
        raise UsageError(f"--crop {args.crop} must be a multiple of {multiple} for a {args.variant} model ({why})")
    for key in ("lr", "head_lr_mult", "weight_decay", "clip_grad", "poly_power", "dropout", "drop_path"):
        if not math.isfinite(getattr(args, key)):
            raise UsageError(f"--{key.replace('_', '-')} must be a finite number, got {getattr(args, key)}")
    for key in ("lr", "head_lr_mult"):
        if not getattr(args, key) > 0:
            raise UsageError(f"--{key.replace('_', '-')} must be > 0, got {getattr(args, key)}")
    if args.stride > args.crop:
        raise UsageError(f"--stride {args.stride} is larger than --crop {args.crop}: pixels between windows "
                         "would go unscored")
    for key in ("eval_every", "ckpt_every", "warmup", "workers", "weight_decay", "clip_grad", "poly_power"):
        if getattr(args, key) < 0:
            raise UsageError(f"--{key.replace('_', '-')} must be >= 0, got {getattr(args, key)}")
    return args


def recorded_args(args: argparse.Namespace) -> dict:
    """The arguments as checkpoints and weights record them: paths resolved."""
    return {**vars(args), **{k: str(Path(getattr(args, k)).resolve()) for k in PATH_ARGS if getattr(args, k)}}


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "none" or (amp == "auto" and device.type != "cuda"):
        return None
    if device.type != "cuda":
        raise UsageError(f"--amp {amp} needs a CUDA device; use --amp none (or auto) on {device.type}")
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def check_same_run(saved: dict, args: argparse.Namespace) -> None:
    def was(key):
        return saved.get(key, RUN_DEFINING_BEFORE.get(key))

    def same(key, saved_value, value):
        if key in PATH_ARGS and saved_value is not None:  # another spelling, or another working folder
            return Path(saved_value).resolve() == Path(value).resolve()
        return saved_value == value

    changed = [f"--{k.replace('_', '-')} {was(k)!r} -> {getattr(args, k)!r}"
               for k in RUN_DEFINING if getattr(args, k) is not None and not same(k, was(k), getattr(args, k))]
    if changed:
        raise UsageError("--resume must continue the same run; these arguments differ from the checkpoint's: "
                         + ", ".join(changed))


def load_init(model: SegViT, path: str, fmt: str, info: DistInfo) -> None:
    check_init_format(model, path, fmt)
    if fmt == "official":  # fine-tuning on the data's classes: a checkpoint of other classes keeps all but its own
        report = import_official_segvit(model, path, other_classes=True)
    else:
        report = {"timm": import_timm_vit, "full": import_full_into_shrunk}[fmt](model, path)
    if not any(k.startswith("backbone.") for k in report.loaded):
        raise UsageError(f"--init {path} ({fmt}): no backbone tensor loaded ({report}): not a checkpoint of "
                         "this --init-format (or of another model)")
    if info.is_main:
        print(f"--init {path} ({fmt}): {report}", file=sys.stderr)


def check_init_format(model: SegViT, path: str, fmt: str) -> None:
    """Refuse a missing ``--init`` file, and an ``--init-format`` that would load it only in part, silently."""
    if not Path(path).exists():
        raise UsageError(f"--init {path}: no such file")
    if fmt == "full" and model.variant != "shrunk":
        raise UsageError("--init-format full warm-starts a Shrunk model from a full one; to start a full model "
                         "from full weights (ours or official), use --init-format official")
    try:
        variant = read_metadata(path).get("variant")
    except WeightsError:  # not one of our files: the importer says what it makes of it
        return
    if fmt == "timm":
        raise UsageError(f"{path} is a segvit_rt weights file ({variant}), not a timm ViT: use --init-format "
                         "official to start from it as it is" + (", or full to warm-start a Shrunk model from it"
                                                                  if variant == "full" else ""))
    if fmt == "full" and variant != "full":
        raise UsageError(f"{path} holds a {variant} model; --init-format full needs a full one "
                         "(--init-format official starts from it as it is)")


def open_datasets(args):
    preset = PRESETS[args.preset]
    augment = TrainTransform(args.crop, preset.mean, preset.std, scale=preset.scales(args.crop)[0])
    train = open_dataset(args.data, "training", seed=args.seed, transform=augment, context_classes=args.context_classes)
    val = open_dataset(args.data, "validation", transform=EvalTransform(preset.mean, preset.std),
                       context_classes=args.context_classes)
    if tuple(train.classes) != tuple(val.classes):
        raise DatasetError(f"{args.data}: the training and validation splits list different classes")
    if len(train) < args.batch:
        raise UsageError(f"the training split has {len(train)} images, fewer than one batch (--batch {args.batch})")
    return train, val


def synth_metadata(dataset) -> dict | None:
    """The synthetic generator's arguments, when the dataset was made by ``segvit_rt.data.synth``."""
    path = Path(getattr(dataset, "root", "")) / "synth.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def run_config(args: dict, class_names) -> SegViTConfig:
    """The model config of a run from its (resolved or checkpointed) arguments and its data's classes;
    also how ``convert`` rebuilds a run's model from its checkpoint."""
    return get_config(args["preset"], num_classes=len(class_names), class_names=tuple(class_names),
                      crop_size=args["crop"], slide_stride=args["stride"], decoder_dropout=args["dropout"],
                      drop_path_rate=args.get("drop_path", RUN_DEFINING_BEFORE["drop_path"]))


def previous_state(args, world_size: int = 1) -> dict | None:
    """The checkpoint to continue from with ``--resume``, whose run's values fill the run-defining
    arguments and the run's settings left unset (so a resume needs only ``--data``, ``--out`` and
    ``--resume``, whatever the defaults have become since); without it, refuse to overwrite a run."""
    path = Path(args.out) / CHECKPOINT
    finished = [name for name in (WEIGHTS, SUMMARY) if os.path.lexists(path.parent / name)]
    if args.resume:
        if not os.path.lexists(path):
            if finished:
                raise UsageError(f"--resume: no {CHECKPOINT} in {args.out}, which holds a finished run's "
                                 f"{' and '.join(finished)}: nothing to continue; start a new run in another --out")
            raise UsageError(f"--resume: no {CHECKPOINT} in {args.out} (a run stopped before its first checkpoint "
                             "has nothing to continue): start it again without --resume")
        state = load_checkpoint(path)
        replicas = len(state.get("rng", [None] * world_size))  # restore() checks again; this is before any build
        if replicas != world_size:
            raise UsageError(f"--resume: the run was checkpointed by {replicas} process(es); resume it with as many "
                             f"(got {world_size}) to continue exactly")
        saved = {**RUN_DEFINING_BEFORE, **state["args"]}
        for key in RUN_DEFINING + RUN_SETTINGS:
            if getattr(args, key) is None and saved.get(key) is not None:
                setattr(args, key, saved[key])
        check_same_run(state["args"], args)  # before the defaults: a changed argument is named, not its effects
        return state
    if path.exists():
        raise UsageError(f"{args.out} already holds a run ({CHECKPOINT}); pass --resume to continue it "
                         "or choose another --out")
    if finished:
        raise UsageError(f"{args.out} holds an earlier run's {' and '.join(finished)} (and no {CHECKPOINT} to "
                         "continue from): choose another --out, or move them away to start over there")
    return None


class Trainer:
    """One process's share of a (possibly data-parallel) training run."""

    def __init__(self, args: argparse.Namespace, info: DistInfo, state: dict | None = None):
        """``args`` with their defaults resolved; ``state``: the checkpoint to resume from."""
        self.args, self.info = args, info
        self.out = Path(args.out)
        self.device = info.device
        if args.batch % info.world_size:
            raise UsageError(f"--batch {args.batch} does not split over {info.world_size} processes")
        if state is not None:
            check_same_run(state["args"], args)
        use_interpreter_on_cpu(args.kernels, self.device)
        if args.threads is not None:
            if args.threads < 1:
                raise UsageError(f"--threads must be >= 1, got {args.threads}")
            torch.set_num_threads(args.threads)
        args.threads = torch.get_num_threads()  # recorded: a resume runs with the same (exact CPU sums)
        self.amp_dtype = autocast_dtype(args.amp, self.device)

        self.train_set, self.val_set = open_datasets(args)
        if (state is None and args.context_classes != DEFAULTS["context_classes"]
                and not isinstance(self.train_set, PascalContextDataset)):  # a resumed run keeps what it had
            raise UsageError(f"--context-classes {args.context_classes} picks a PASCAL-Context protocol, and "
                             f"{args.data} is not PASCAL-Context")
        for dataset in (self.train_set, self.val_set):
            dataset.check_writes_outside(self.out, "--out")
        # Read the (small) validation split now: a bad file there would otherwise stop the run at its
        # first evaluation, hours in.
        self.val_set.verify(progress=info.is_main and not args.quiet, desc="checking the validation split")
        self.cfg = run_config(vars(args), self.train_set.classes)
        torch.manual_seed(args.seed)
        self.model = SegViT(self.cfg, args.variant, kernels=args.kernels)
        if args.init and state is None:
            load_init(self.model, args.init, args.init_format, info)
        elif info.is_main and (note := from_scratch_note(args)) is not None:
            print(note, file=sys.stderr)
        if info.is_main and args.kernels == "triton" and args.dropout > 0:
            print(f"note: the fused ATM kernel has no attention dropout, so with --dropout {args.dropout:g} the "
                  "decoders' cross-attention trains through the reference ops (QD in a Shrunk model, and evaluation, "
                  "still use the kernels); --dropout 0 trains through the kernel", file=sys.stderr)
        self.model.to(self.device)
        self.criterion = ATMLoss(self.cfg.num_classes)
        self.optimizer = make_optimizer(self.model, args.lr, args.weight_decay, args.head_lr_mult)
        self.scheduler = make_scheduler(self.optimizer, args.iters, args.warmup, args.poly_power)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.log = JsonlLog(self.out / "log.jsonl")
        self.step, self.elapsed = self.start(state)
        if info.is_main and state is None and args.warmup >= args.iters:
            print(f"note: --warmup {args.warmup} is at least --iters {args.iters}: the learning rate never reaches "
                  f"--lr {args.lr:g} (a short trial of the preset's recipe? pass a shorter --warmup)", file=sys.stderr)
        if info.is_main and self.step >= args.iters:
            print(f"note: the run had already reached its last step ({self.step}); its outputs are written again "
                  "from the checkpoint", file=sys.stderr)
        self.net = (DistributedDataParallel(self.model, device_ids=[info.local_rank] if self.device.type == "cuda"
                                            else None) if info.distributed else self.model)
        self.sampler = ResumableSampler(self.train_set, info.world_size, info.rank, seed=args.seed)
        self.steps_per_epoch = len(self.train_set) // args.batch

    def start(self, state: dict | None) -> tuple[int, float]:
        """Step to start from and training seconds already spent (by interrupted processes)."""
        self.window: list[torch.Tensor] = []  # this replica's [loss, ce, focal, dice, grad_norm] since the last log
        self.final_metrics: dict | None = None
        self.saved_step = None if state is None else state["step"]  # of the last checkpoint
        if state is None:
            if self.info.is_main:
                self.log.truncate(0)  # a run killed before its first checkpoint starts over
            torch.manual_seed(self.args.seed + self.info.rank)  # replicas draw different dropout masks
            return 0, 0.0
        saved_names = state["extra"].get("class_names")  # checkpoints from before they were kept have none
        if saved_names is not None and list(saved_names) != list(self.cfg.names()):
            raise UsageError(f"the checkpoint's run trained on {len(saved_names)} classes ({', '.join(saved_names[:4])} "
                             f"...) and {self.args.data} has {self.cfg.num_classes} ({', '.join(self.cfg.names()[:4])} "
                             "...): resume on the run's data")
        saved_samples = state["extra"].get("train_samples")  # checkpoints from before it was kept have none
        if self.info.is_main and saved_samples not in (None, len(self.train_set)):
            print(f"note: the training split has {len(self.train_set)} images and had {saved_samples} when the run "
                  "was checkpointed: epochs now split differently, so the images come in another order than an "
                  "unbroken run's", file=sys.stderr)
        started_on = state["args"].get("data")
        if self.info.is_main and (started_on is None or Path(started_on).resolve() != Path(self.args.data).resolve()):
            print(f"note: resuming on --data {self.args.data}; the run started on {started_on}", file=sys.stderr)
        step = restore(state, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                       scaler=self.scaler, rank=self.info.rank, world_size=self.info.world_size)
        if self.info.is_main:
            self.log.truncate(step)  # drop what the interrupted process logged after its checkpoint
        extra = state["extra"]
        windows = extra.get("loss_windows")  # checkpoints from before they were kept have none
        self.window = [torch.tensor(row, device=self.device) for row in windows[self.info.rank]] if windows else []
        self.final_metrics = extra.get("final_metrics")
        if self.info.is_main:
            print(f"resuming {self.out} from step {step} of {self.args.iters}", file=sys.stderr)
        return step, float(extra["elapsed"])

    # ------------------------------------------------------------------ loop

    def batches(self):
        """(images, labels) from the current step on, epoch after epoch. A sample that cannot be read
        is this replica's own problem (each reads its share): a :class:`ReplicaError`."""
        local_batch = self.args.batch // self.info.world_size
        while True:
            epoch, position = divmod(self.step, self.steps_per_epoch)
            self.sampler.set_position(epoch, position * local_batch)
            self.train_set.set_epoch(epoch)
            loader = DataLoader(
                self.train_set, batch_size=local_batch, sampler=self.sampler, drop_last=True,
                num_workers=self.args.workers, pin_memory=self.device.type == "cuda",
                generator=torch.Generator().manual_seed(self.args.seed),  # keeps the global RNG untouched
            )
            try:
                yield from loader
            except (DatasetError, OSError) as e:
                raise ReplicaError(user_message(e)) from e

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One optimizer step; returns the detached [loss, ce, focal, dice, grad_norm] of this replica."""
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        reducer = all_reduce_mean if self.info.distributed else None
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            outputs = self.net(images)
        losses = self.criterion(outputs, labels, count_reducer=reducer)
        self.optimizer.zero_grad(set_to_none=True)
        loss = losses["loss"]
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        max_norm = self.args.clip_grad if self.args.clip_grad > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return torch.stack([loss.detach(), losses["ce"].detach(), losses["focal"].detach(),
                            losses["dice"].detach(), grad_norm.detach().float()])

    def evaluate(self) -> dict:
        metrics = evaluate_model(self.model, self.val_set, self.args.mode, autocast_dtype=self.amp_dtype,
                                 rank=self.info.rank, world_size=self.info.world_size,
                                 progress=self.info.is_main and not self.args.quiet)
        if self.info.is_main:
            self.log.append({"kind": "eval", "step": self.step, "mIoU": metrics["mIoU"], "aAcc": metrics["aAcc"],
                             "mAcc": metrics["mAcc"], "IoU": metrics["IoU"]})
        return metrics

    def check_finite(self) -> None:
        """Stop a diverged run before it saves anything more: weights holding NaN or inf are refused by
        every loader. A non-finite loss alone is not divergence under fp16 AMP (the grad scaler skips
        that step), so the parameters are what is checked. Replicas hold equal parameters: all stop alike."""
        if torch.stack([torch.isfinite(p).all() for p in self.model.parameters()]).all():
            return
        saved = self.saved_step
        raise DivergedError(
            f"training diverged: the model's parameters hold NaN or infinite values at step {self.step}, so "
            "nothing more is saved ("
            + (f"the last checkpoint, from step {saved}, is left as it was" if saved is not None
               else "no checkpoint was written")
            + "); start a new run (another --out) with a lower --lr, a longer --warmup or a lower --clip-grad "
            "(0 turns clipping off)")

    def checkpoint(self, elapsed: float, metrics: dict | None) -> None:
        """Save the training state, with what a resumed run needs to log as this one would have:
        each replica's losses since the last logged step, and the final evaluation once done."""
        gathered = gather_objects((rng_state(), [row.tolist() for row in self.window]))  # one exchange, by rank
        rng, windows = [g[0] for g in gathered], [g[1] for g in gathered]
        self.saved_step = self.step
        if self.info.is_main:
            final = metrics if self.step == self.args.iters else None
            save_checkpoint(self.out / CHECKPOINT, model=self.model, optimizer=self.optimizer,
                            scheduler=self.scheduler, scaler=self.scaler, step=self.step, args=recorded_args(self.args),
                            rng=rng, extra={"elapsed": elapsed, "loss_windows": windows, "final_metrics": final,
                                            "class_names": list(self.cfg.names()),
                                            "train_samples": len(self.train_set)})

    def run(self) -> dict:
        args, main = self.args, self.info.is_main
        start = time.perf_counter()
        metrics, loss = self.final_metrics, float("nan")
        bar = tqdm(total=args.iters, initial=self.step, desc="train", unit="it", disable=not main or args.quiet)
        batches = self.batches()
        while self.step < args.iters:
            lr = self.optimizer.param_groups[0]["lr"]  # this step's rate (the scheduler moves on in train_step)
            self.window.append(self.train_step(*next(batches)))
            bar.update()
            if self.step % args.log_every == 0 or self.step == args.iters:
                loss, ce, focal, dice, grad_norm = all_reduce_mean(torch.stack(self.window).mean(0)).tolist()
                self.window = []
                if not math.isfinite(loss):
                    self.check_finite()
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}")
                if main:
                    self.log.append({"kind": "train", "step": self.step, "epoch": (self.step - 1) // self.steps_per_epoch,
                                     "loss": loss, "ce": ce, "focal": focal, "dice": dice, "grad_norm": grad_norm,
                                     "lr": lr, "time": round(self.elapsed + time.perf_counter() - start, 3)})
            evaluating = args.eval_every and self.step % args.eval_every == 0 or self.step == args.iters
            saving = args.ckpt_every and self.step % args.ckpt_every == 0 or self.step == args.iters
            if evaluating or saving:
                self.check_finite()
            if evaluating:
                metrics = self.evaluate()
                bar.set_postfix(loss=f"{loss:.3f}", mIoU=f"{100 * metrics['mIoU']:.1f}")
            if saving:
                self.checkpoint(self.elapsed + time.perf_counter() - start, metrics)
        bar.close()
        if metrics is None:  # resumed from a final checkpoint written before it kept its evaluation
            metrics = self.evaluate()
        return self.finish(metrics, self.elapsed + time.perf_counter() - start)

    def finish(self, metrics: dict, seconds: float) -> dict:
        digests = replica_digests(self.model)
        if len(set(digests)) != 1:
            raise RuntimeError(f"data-parallel replicas diverged: parameter digests {digests}")
        summary = {"steps": self.step, "train_seconds": round(seconds, 1), "world_size": self.info.world_size,
                   "replica_digests": digests, "metrics": metrics, "weights": str(self.out / WEIGHTS)}
        if self.info.is_main:
            dtype = WEIGHTS_DTYPES[self.args.weights_dtype]
            extra = {"trained_iters": self.step, "dataset": str(Path(self.args.data).resolve()),
                     "miou": metrics["mIoU"], "aacc": metrics["aAcc"],
                     "eval_mode": self.args.mode, "train_args": recorded_args(self.args)}
            synth = synth_metadata(self.train_set)
            if synth is not None:
                extra["synth"] = synth
            save_weights(self.out / WEIGHTS, self.model, extra=extra, dtype=dtype)
            plot_curves(self.log.records(), self.out / "curves.png")
            write_json(self.out / SUMMARY, summary)
            chance = metrics["chance"]
            against = (f"chance: constant mIoU {100 * chance['constant_mIoU']:.2f}, random {100 * chance['random_mIoU']:.2f}"
                       if chance else "the validation split has no labelled pixel")
            print(f"step {self.step}: mIoU {100 * metrics['mIoU']:.2f} aAcc {100 * metrics['aAcc']:.2f} ({against}) "
                  f"after {seconds:.0f} s; weights: {self.out / WEIGHTS}", file=sys.stderr)
        return summary


def train(args: argparse.Namespace) -> dict:
    """Run training as this process's share of the (torchrun) world; returns the summary."""
    try:
        info = init_distributed(args.device)
    except ValueError as e:  # no CUDA device
        raise UsageError(str(e)) from None
    try:
        with run_lock(Path(args.out), info):
            state = previous_state(args, info.world_size)
            trainer = Trainer(resolve_defaults(args), info, state)
            del state  # restored into the trainer: free the checkpoint's copy (GBs for ViT-L with AdamW)
            return trainer.run()
    except BaseException as e:
        traceback.clear_frames(e.__traceback__)  # a failed collective's frames hold the group cleanup() frees
        raise
    finally:
        cleanup()


@contextmanager
def run_lock(out: Path, info: DistInfo):
    """Hold ``OUT/.lock`` (the main process) while this run writes to OUT: a second run there (a
    ``--resume`` while the replicas of a killed ``torchrun`` still run, say) is refused instead of
    interleaving, by every process of the run. What the lock made is removed if the run fails
    before writing anything else (it refused its arguments): the lock file, and the folders made
    for OUT (left only where they hold something)."""
    made = [p for p in (out, *out.parents) if not p.exists()]  # OUT's folders this run makes, deepest first
    lock_made = not os.path.lexists(out / ".lock")
    with ExitStack() as stack:
        problem = None
        if info.is_main:
            try:
                lock_run_folder(out, stack)
            except UsageError as e:
                problem = str(e)
        problem = gather_objects(problem)[0]  # the main process's answer, for every process
        if problem is not None:
            raise UsageError(problem)
        try:
            yield
        except BaseException:
            if info.is_main and lock_made:
                with suppress(OSError):  # unlinked while held: no other run can have locked that file meanwhile
                    (out / ".lock").unlink()
                stack.close()
                with suppress(OSError):
                    for folder in made:
                        folder.rmdir()  # only an empty one: stops at the first that holds something
            raise


def lock_run_folder(out: Path, stack: ExitStack) -> None:
    if out.is_symlink() and not out.exists():
        raise UsageError(f"--out {out} is a broken link (to {os.readlink(out)}): the folder it names does not exist")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; the run folder must be a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        stack.enter_context(hold_lock(out / ".lock"))
    except LockedError as e:
        raise UsageError(f"another training run is writing to {out} ({e}); wait for it to end or stop it "
                         "(after a kill of torchrun, its replicas may still run)") from None
    except OSError as e:
        raise UsageError(f"--out {out} cannot be used as the run folder: {e.strerror}") from None


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    rank, replicas = os.environ.get("RANK", "0"), int(os.environ.get("WORLD_SIZE", "1"))
    try:
        # Under torchrun every replica fails alike on arguments and data sets: rank 0 says it. A system
        # error (a full /dev/shm) or a sample that cannot be read may be one replica's own: each says it.
        with exit_on(OSError, ReplicaError, prefix=f"rank {rank}: " if replicas > 1 else ""), \
                exit_on(UsageError, DatasetError, CheckpointError, WeightsError, FileNotFoundError, DivergedError,
                        say=rank == "0"):
            return train(args)
    except KeyboardInterrupt:  # under torchrun every replica gets it: one says where the run stands
        if rank == "0":
            print(f"\ninterrupted: {interrupted_at(Path(args.out))}", file=sys.stderr)
        raise SystemExit(130) from None


def interrupted_at(out: Path) -> str:
    """What an interrupted run left: where ``--resume`` continues from."""
    path = out / CHECKPOINT
    if not path.is_file():
        return f"no checkpoint in {out} yet; a new run starts over"
    try:
        step = load_checkpoint(path, mmap=True)["step"]  # mapped, not read: a ViT-L checkpoint is GBs
    except CheckpointError as e:
        return f"{path} cannot be read ({type(e.__cause__ or e).__name__}): move it aside to start over"
    return f"the last checkpoint is at step {step}; continue with the same command and --resume"


if __name__ == "__main__":
    main()
