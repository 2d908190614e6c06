"""Segmentation datasets on disk: the layouts of the paper's three data sets as mmseg
prepares them (ADE20K, COCO-Stuff 10k and 164k, PASCAL-Context) and a generic images/masks layout.

Pairing (which image goes with which mask) is checked when a dataset is built;
file contents are checked when a sample is read, so opening a large dataset
stays cheap.
"""
from __future__ import annotations

import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from ..class_names import ADE20K_CLASSES, COCO_STUFF_CLASSES, PASCAL_CONTEXT_CLASSES
from ..images import load_image

IGNORE_INDEX = 255

ADE_FOLDER = "ADEChallengeData2016"
COCO_STUFF_FOLDER = "coco_stuff10k"
COCO_STUFF164K_FOLDER = "coco_stuff164k"
CONTEXT_FOLDER = Path("VOCdevkit", "VOC2010")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff")
SPLIT_ALIASES = {"train": "training", "val": "validation"}
_SHOWN = 5  # stems listed in a pairing error

__all__ = [
    "ADE20K_CLASSES",
    "IGNORE_INDEX",
    "ADE20KDataset",
    "COCOStuff10kDataset",
    "COCOStuff164kDataset",
    "DatasetError",
    "GenericSegDataset",
    "PascalContextDataset",
    "SegDataset",
    "open_dataset",
    "sample_rng",
]


class DatasetError(ValueError):
    """Bad dataset contents: unpaired files, unreadable image, label out of range..."""


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The augmentation RNG of one sample: a function of (seed, epoch, index) only."""
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, index]))


def read_image(path: str | os.PathLike, exif_turn: bool = False) -> np.ndarray:
    """An image file as an ``HxWx3`` uint8 RGB array (``images.load_image``: grayscale, palette and
    RGBA converted, 16-bit scaled to 8 bits), its pixels as stored unless ``exif_turn``."""
    try:
        return load_image(Path(path), exif_turn)
    except FileNotFoundError as exc:
        raise DatasetError(f"cannot read image {path}: file not found") from exc
    except ValueError as exc:  # load_image's message names the file
        raise DatasetError(str(exc)) from exc


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """A single-channel mask file as an ``HxW`` int64 array of its stored values (no EXIF turn)."""
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise DatasetError(f"cannot read mask {path}: the file is empty (0 bytes)")
    try:
        with Image.open(path) as img:
            img.load()
            mode, values = img.mode, np.asarray(img)
    except (OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"cannot read mask {path}: {exc}") from exc
    if mode not in ("1", "L", "P", "I", "I;16", "I;16B", "I;16L"):
        raise DatasetError(f"mask {path} has {mode} pixels; masks must be single-channel "
                           "(grayscale or palette indices)")
    return values.astype(np.int64)


def read_classes(path: Path) -> tuple[str, ...]:
    names = tuple(line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines())  # -sig: a BOM
    names = tuple(n for n in names if n)
    if not names:
        raise DatasetError(f"{path} lists no class names")
    return names


def _files_by_stem(folder: Path, suffixes: tuple[str, ...], name_end: str = "") -> dict[str, Path]:
    """Files of ``folder`` with one of ``suffixes``, by stem; ``name_end`` (e.g. ``_labelTrainIds``)
    must end the stem and is not part of it."""
    if not folder.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {folder}")
    found: dict[str, Path] = {}
    for path in folder.iterdir():
        if path.name.startswith(".") or path.suffix.lower() not in suffixes or not path.stem.endswith(name_end):
            continue  # hidden files too: macOS copies leave "._name.jpg" beside each image
        if not path.is_file():
            if path.is_symlink() and not path.exists():  # a sample gone missing, not a stray name
                raise DatasetError(f"{path} is a broken link (to {os.readlink(path)}): restore its target or remove it")
            continue
        stem = path.stem[: len(path.stem) - len(name_end)]
        if stem in found:
            raise DatasetError(f"two files share the stem {stem!r} in {folder}: "
                               f"{found[stem].name} and {path.name}")
        found[stem] = path
    return found


def _listed(names: list[str]) -> str:
    """The first :data:`_SHOWN` of ``names``, and how many more."""
    more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more


def _unread_note(folder: Path, stems: list[str], suffixes: tuple[str, ...], name_end: str) -> str:
    """Files of ``folder`` that would pair with ``stems`` but for their suffix, which is not read there,
    or (with a ``name_end``) for lacking that end: the raw maps mmseg's COCO-Stuff converters turn into
    ``*_labelTrainIds.png``."""
    wanted = {stem + name_end for stem in stems}
    visible = [p for p in folder.iterdir() if not p.name.startswith(".")]
    unread = sorted(p.name for p in visible if p.stem in wanted and p.suffix.lower() not in suffixes)
    note = f"; not read, for their suffix: {_listed(unread)}, where {'/'.join(suffixes)} are read" if unread else ""
    raw = sorted(p.name for p in visible if name_end and p.stem in stems)
    if raw:
        note += (f"; not read, for lacking {name_end}: {_listed(raw)}, which look like raw maps: mmseg's converter "
                 f"(tools/dataset_converters/coco_stuff164k.py or coco_stuff10k.py) writes the *{name_end}.png "
                 "masks read here")
    return note


def pair_files(
    image_dir: Path,
    mask_dir: Path,
    image_suffixes: tuple[str, ...],
    mask_suffixes: tuple[str, ...],
    mask_name_end: str = "",
) -> list[tuple[Path, Path]]:
    """``(image, mask)`` pairs sorted by stem; every image needs a mask and vice versa."""
    images = _files_by_stem(image_dir, image_suffixes)
    masks = _files_by_stem(mask_dir, mask_suffixes, mask_name_end)
    no_mask = sorted(images.keys() - masks.keys())
    no_image = sorted(masks.keys() - images.keys())
    if no_mask or no_image:
        parts = []
        for stems, what, where, read, end in ((no_mask, "images without a mask", mask_dir, mask_suffixes,
                                               mask_name_end),
                                              (no_image, "masks without an image", image_dir, image_suffixes, "")):
            if stems:
                parts.append(f"{len(stems)} {what} (none in {where} for "
                             f"{_listed(stems)}{_unread_note(where, stems, read, end)})")
        raise DatasetError(f"unpaired files between {image_dir} and {mask_dir}: " + "; ".join(parts))
    if not images:
        raise DatasetError(f"empty split: no images with suffix {'/'.join(image_suffixes)} in {image_dir}")
    return [(images[s], masks[s]) for s in sorted(images)]


def split_folder(split: str, folders: dict[str, str], what: str) -> str:
    """A data set's own name for ``split``: ``folders`` maps ours (``training``, ``validation``;
    ``train``, ``val`` stand for them) to its own, which are accepted as they are too."""
    name = folders.get(SPLIT_ALIASES.get(split, split), split)
    if name not in folders.values():
        choices = ", ".join(repr(k) if k == v else f"{k!r} ({v})" for k, v in folders.items())
        raise DatasetError(f"{what} split must be one of {choices}, got {split!r}")
    return name


class SegDataset(Dataset):
    """Paired image/mask files; subclasses say how stored mask values become labels (and set ``root``,
    the data set's folder, and ``list_file`` where a file lists the split's samples)."""

    root: Path
    list_file: Path | None = None

    def __init__(
        self,
        samples: list[tuple[Path, Path]],
        classes: tuple[str, ...],
        transform: Callable | None = None,
        seed: int = 0,
    ):
        self.samples = samples
        self.classes = tuple(classes)
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentations ``__getitem__`` draws (see ``sample_rng``)."""
        self.epoch = epoch

    def labels_from_mask(self, mask: np.ndarray, path: Path) -> np.ndarray:
        raise NotImplementedError

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``index`` before any transform: ``HxWx3`` uint8 RGB, ``HxW`` int64 labels.

        Images are read as stored, as the benchmark data sets' annotations were drawn (their tools
        showed stored pixels); only an image whose EXIF orientation tag turns it to its mask's size
        is turned, since that mask was drawn on the image as displayed."""
        image_path, mask_path = self.samples[index]
        image = read_image(image_path)
        label = self.labels_from_mask(read_mask(mask_path), mask_path)
        if image.shape[:2] != label.shape and image.shape[:2] == label.shape[::-1]:
            image = read_image(image_path, exif_turn=True)  # annotated as displayed (a turning EXIF tag)
        if image.shape[:2] != label.shape:
            raise DatasetError(
                f"size mismatch: image {image_path} is {image.shape[1]}x{image.shape[0]} but "
                f"mask {mask_path} is {label.shape[1]}x{label.shape[0]} (width x height)"
            )
        return image, label

    def __getitem__(self, index: int):
        image, label = self.load(index)
        if self.transform is None:
            return image, label
        return self.transform(image, label, rng=sample_rng(self.seed, self.epoch, index))

    def check_writes_outside(self, path, flag: str) -> None:
        """Refuse ``path`` (an output) inside a folder this split reads samples from (what a run writes
        there would be read as data next time, or replace a sample), or an existing file of the data
        set (its class list, split lists)."""
        target = Path(path).resolve()
        for folder in sorted({p.parent for sample in self.samples for p in sample}):
            folder = folder.resolve()
            if target == folder or folder in target.parents:
                raise DatasetError(f"{flag} {path} is inside {folder}, a folder of the data set's samples: what "
                                   "is written there would be read as data (or replace a sample); choose a path "
                                   "outside it")
        if any(target == own.resolve() for own in self.own_files() if own.is_file()):
            raise DatasetError(f"{flag} {path} is a file the data set reads: it would be replaced; "
                               "choose another path")

    def own_files(self) -> list[Path]:
        """The data set's files besides its samples: its class list, the synthetic generator's record,
        a split list."""
        return [self.root / "classes.txt", self.root / "synth.json", *([self.list_file] if self.list_file else [])]

    def verify(self, progress: bool = False, desc: str = "checking") -> None:
        """Read every sample, raising the first problem found."""
        for index in tqdm(range(len(self)), desc=desc, unit="img", disable=not progress, leave=False):
            self.load(index)

    def _out_of_range(self, values: np.ndarray, path: Path, allowed: str) -> DatasetError:
        bad = np.unique(values)
        shown = ", ".join(str(v) for v in bad[:_SHOWN]) + (" ..." if len(bad) > _SHOWN else "")
        return DatasetError(f"mask {path} has labels out of range ({shown}); "
                            f"expected {allowed} for {self.num_classes} classes")


class ZeroIsIgnoreDataset(SegDataset):
    """Masks store 0 = unlabelled (ignored) and 1..K = the classes (mmseg's ``reduce_zero_label``)."""

    def labels_from_mask(self, mask, path):
        if mask.min() < 0 or mask.max() > self.num_classes:
            raise self._out_of_range(mask[(mask < 0) | (mask > self.num_classes)], path,
                                     f"0 (ignore) or 1..{self.num_classes}")
        return np.where(mask == 0, IGNORE_INDEX, mask - 1)


class ADE20KDataset(ZeroIsIgnoreDataset):
    """``ADEChallengeData2016``: jpg images, png annotations with 0 = ignore and 1..K = classes."""

    def __init__(self, root, split: str = "training", transform: Callable | None = None, seed: int = 0):
        base = find_ade_folder(Path(root))
        split = split_folder(split, {"training": "training", "validation": "validation"}, "ADE20K")
        # Only the folder's own list: a classes.txt beside it may belong to another data set.
        if (base / "classes.txt").is_file():
            classes = read_classes(base / "classes.txt")
        else:
            classes = ADE20K_CLASSES
            if (base.parent / "classes.txt").is_file():
                warnings.warn(f"{base.parent / 'classes.txt'} is not read for {base}, which gets the 150 ADE20K "
                              f"classes; an ADE-layout data set of other classes keeps its list in {base}",
                              stacklevel=2)
        if len(classes) > 254:
            raise DatasetError(f"ADE20K annotations are 8-bit: at most 254 classes, got {len(classes)}")
        samples = pair_files(base / "images" / split, base / "annotations" / split,
                             (".jpg", ".jpeg"), (".png",))
        super().__init__(samples, classes, transform, seed)
        self.root = base
        self.split = split


def _coco_stuff_split(base: Path, split: str, splits: dict, size: str) -> tuple[str, list]:
    """(split folder, image/mask pairs) of a COCO-Stuff tree as mmseg's converters write them."""
    split = split_folder(split, splits, f"COCO-Stuff {size}")
    samples = pair_files(base / "images" / split, base / "annotations" / split,
                         (".jpg", ".jpeg"), (".png",), mask_name_end="_labelTrainIds")
    return split, samples


class COCOStuff10kDataset(ZeroIsIgnoreDataset):
    """``coco_stuff10k`` as mmseg's converter writes it: ``images/{train2014,test2014}/*.jpg`` and
    ``annotations/<split>/<stem>_labelTrainIds.png`` holding 0 = unlabelled and 1..171 (the official
    config reads them with ``reduce_zero_label``). The test split serves as validation, as in the paper."""

    SPLITS = {"training": "train2014", "validation": "test2014", "test": "test2014"}

    def __init__(self, root, split: str = "training", transform: Callable | None = None, seed: int = 0):
        self.root = find_coco_stuff_folder(Path(root))
        self.split, samples = _coco_stuff_split(self.root, split, self.SPLITS, "10k")
        super().__init__(samples, COCO_STUFF_CLASSES, transform, seed)


class IgnoreIndexDataset(SegDataset):
    """Masks store the class indices 0..K-1 and ``ignore_index`` for unlabelled pixels."""

    ignore_index = IGNORE_INDEX

    def labels_from_mask(self, mask, path):
        ignored = mask == self.ignore_index
        bad = ~ignored & ((mask < 0) | (mask >= self.num_classes))
        if bad.any():
            raise self._out_of_range(mask[bad], path,
                                     f"0..{self.num_classes - 1} or {self.ignore_index} (ignore)")
        return np.where(ignored, IGNORE_INDEX, mask)


class COCOStuff164kDataset(IgnoreIndexDataset):
    """``coco_stuff164k`` as mmseg's converter writes it: ``images/{train2017,val2017}/*.jpg`` and
    ``annotations/<split>/<stem>_labelTrainIds.png`` holding the 171 classes 0..170 and 255 = ignore
    (the converter has already shifted them: no ``reduce_zero_label``, unlike the 10k set)."""

    SPLITS = {"training": "train2017", "validation": "val2017"}

    def __init__(self, root, split: str = "training", transform: Callable | None = None, seed: int = 0):
        self.root = find_coco_stuff164k_folder(Path(root))
        self.split, samples = _coco_stuff_split(self.root, split, self.SPLITS, "164k")
        super().__init__(samples, COCO_STUFF_CLASSES, transform, seed)


class PascalContextDataset(IgnoreIndexDataset):
    """``VOCdevkit/VOC2010`` with mmseg's PASCAL-Context conversion: ``JPEGImages/*.jpg``,
    ``SegmentationClassContext/*.png`` holding 0..59 (0 = background) and 255 = ignore;
    ``ImageSets/SegmentationContext/{train,val}.txt`` list each split's stems (JPEGImages holds
    all of VOC2010).

    ``classes``: 60 (background a class, as SegViT's released config) or 59 (background ignored,
    1..59 -> 0..58: mmseg's ``PascalContextDataset59``, the "59 classes" protocol of many papers)."""

    SPLITS = {"training": "train", "validation": "val"}

    def __init__(self, root, split: str = "training", transform: Callable | None = None, seed: int = 0,
                 classes: int = 60):
        if classes not in (59, 60):
            raise ValueError(f"PASCAL-Context has the 59- and 60-class protocols, not {classes}")
        base = find_context_folder(Path(root))
        split = split_folder(split, self.SPLITS, "PASCAL-Context")
        list_file = base / "ImageSets" / "SegmentationContext" / f"{split}.txt"
        if not list_file.is_file():
            raise FileNotFoundError(f"PASCAL-Context split list not found: {list_file}")
        stems = [line.strip() for line in list_file.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
        if not stems:
            raise DatasetError(f"empty split: {list_file} lists no images")
        repeated = sorted(s for s, n in Counter(stems).items() if n > 1)
        if repeated:  # counted twice in training, and in a metric
            raise DatasetError(f"{list_file} lists {_listed(repeated)} more than once")
        samples = [(base / "JPEGImages" / f"{s}.jpg", base / "SegmentationClassContext" / f"{s}.png") for s in stems]
        missing = [path for pair in samples for path in pair if not path.is_file()]
        if missing:
            notes = "".join(_unread_note(folder, [m.stem for m in missing if m.parent == folder], (suffix,), "")
                            for folder, suffix in ((base / "JPEGImages", ".jpg"),
                                                   (base / "SegmentationClassContext", ".png")) if folder.is_dir())
            raise DatasetError(f"{list_file} lists files that are missing: {_listed(list(map(str, missing)))}{notes}")
        super().__init__(samples, PASCAL_CONTEXT_CLASSES[60 - classes:], transform, seed)
        self.root = base
        self.split = split
        self.list_file = list_file

    def labels_from_mask(self, mask, path):
        if self.num_classes == 60:
            return super().labels_from_mask(mask, path)
        ignored = (mask == 0) | (mask == IGNORE_INDEX)
        bad = ~ignored & ((mask < 0) | (mask > 59))
        if bad.any():
            raise self._out_of_range(mask[bad], path, "0 (background, ignored), 1..59 or 255 (ignore)")
        return np.where(ignored, IGNORE_INDEX, mask - 1)


class GenericSegDataset(IgnoreIndexDataset):
    """``images/`` + ``masks/`` with matching stems, ``classes.txt``; masks store 0..K-1."""

    def __init__(
        self,
        root,
        split: str | None = None,
        ignore_index: int = IGNORE_INDEX,
        transform: Callable | None = None,
        seed: int = 0,
    ):
        root = Path(root)
        classes_file = root / "classes.txt"
        if not classes_file.is_file():
            raise FileNotFoundError(f"class list not found: {classes_file} (one class name a line)")
        classes = read_classes(classes_file)
        if len(classes) > IGNORE_INDEX:
            raise DatasetError(f"at most {IGNORE_INDEX} classes are supported, {classes_file} lists {len(classes)}")
        if 0 <= ignore_index < len(classes):
            raise ValueError(f"ignore_index {ignore_index} is a class index (0..{len(classes) - 1})")
        image_dir, mask_dir = root / "images", root / "masks"
        if split is not None:
            image_dir, mask_dir = _split_dirs(image_dir, mask_dir, split)
        try:
            samples = pair_files(image_dir, mask_dir, IMAGE_SUFFIXES, MASK_SUFFIXES)
        except DatasetError as e:
            folders = sorted(p.name for p in image_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
            if split is None and folders and str(e).startswith("empty split"):
                raise DatasetError(f"{e}; it holds folders ({_listed(folders)}): name one as the split "
                                   "(evaluate --split NAME)") from e
            raise
        super().__init__(samples, classes, transform, seed)
        self.root = root
        self.split = split
        self.ignore_index = ignore_index


def _split_dirs(image_dir: Path, mask_dir: Path, split: str) -> tuple[Path, Path]:
    """``images/<split>``, ``masks/<split>``, where ``train``/``training`` and ``val``/``validation`` stand for each other."""
    aliases = {**SPLIT_ALIASES, **{full: short for short, full in SPLIT_ALIASES.items()}}
    for name in (split, aliases.get(split)):
        if name is not None and (image_dir / name).is_dir():
            return image_dir / name, mask_dir / name
    raise FileNotFoundError(f"split {split!r} not found: no folder {image_dir / split} (python -m "
                            "segvit_rt.evaluate takes a folder without split folders with --split none; training "
                            "needs the split folders)")


def _find_split_folder(root: Path, folder: str, splits: tuple[str, str], name: str) -> Path:
    """``root`` or ``root/folder`` holding ``images/<split>`` and ``annotations/<split>`` for one of
    ``splits`` at least."""
    for base in (root, root / folder):
        if any((base / "images" / s).is_dir() and (base / "annotations" / s).is_dir() for s in splits):
            return base
    raise FileNotFoundError(
        f"no {name} layout at {root}: expected {folder}/images/<split> and {folder}/annotations/<split> "
        f"for split {splits[0]} or {splits[1]} (root may be that folder or its parent)"
    )


def find_ade_folder(root: Path) -> Path:
    """``root`` itself when it is the ADE20K folder, else ``root/ADEChallengeData2016``."""
    return _find_split_folder(root, ADE_FOLDER, ("training", "validation"), "ADE20K")


def find_coco_stuff_folder(root: Path) -> Path:
    """``root`` itself when it is the COCO-Stuff 10k folder, else ``root/coco_stuff10k``."""
    return _find_split_folder(root, COCO_STUFF_FOLDER, ("train2014", "test2014"), "COCO-Stuff 10k")


def find_coco_stuff164k_folder(root: Path) -> Path:
    """``root`` itself when it is the COCO-Stuff 164k folder, else ``root/coco_stuff164k``."""
    return _find_split_folder(root, COCO_STUFF164K_FOLDER, ("train2017", "val2017"), "COCO-Stuff 164k")


def find_context_folder(root: Path) -> Path:
    for base in (root, root / "VOC2010", root / CONTEXT_FOLDER):
        if (base / "JPEGImages").is_dir() and (base / "SegmentationClassContext").is_dir():
            return base
    raise FileNotFoundError(
        f"no PASCAL-Context layout at {root}: expected {CONTEXT_FOLDER}/JPEGImages and "
        f"{CONTEXT_FOLDER}/SegmentationClassContext (root may be VOC2010, VOCdevkit or their parent)"
    )


LAYOUTS = (
    ("COCO-Stuff 10k", find_coco_stuff_folder, COCOStuff10kDataset),
    ("COCO-Stuff 164k", find_coco_stuff164k_folder, COCOStuff164kDataset),
    ("PASCAL-Context", find_context_folder, PascalContextDataset),
    ("ADE20K", find_ade_folder, ADE20KDataset),
)


def open_dataset(root, split: str | None, transform: Callable | None = None, context_classes: int = 60,
                 **kwargs) -> SegDataset:
    """The dataset at ``root`` in whichever layout is on disk: ADE20K, COCO-Stuff 10k or 164k,
    PASCAL-Context (mmseg's prepared forms; ``context_classes`` picks its 59- or 60-class protocol)
    or the generic one. A folder holding several of them is refused (which one was meant is not for
    us to guess)."""
    root = Path(root)
    found = []
    for name, find, dataset in LAYOUTS:
        try:
            found.append((name, find(root), dataset))
        except FileNotFoundError:
            continue
    generic = (root / "images").is_dir() and (root / "masks").is_dir()
    if generic and found:
        found.append(("the generic layout", root, GenericSegDataset))
    if len(found) > 1:
        raise DatasetError(f"{root} holds several data sets ({', '.join(f'{n} in {b}' for n, b, _ in found)}): "
                           "pass the folder of the one to use")
    if found:
        name, _, dataset = found[0]
        if split is None:
            raise DatasetError(f"{root} holds the {name} layout: choose split 'training' or 'validation'")
        if dataset is PascalContextDataset:
            kwargs["classes"] = context_classes
        return dataset(root, split, transform=transform, **kwargs)
    if generic:
        return GenericSegDataset(root, split, transform=transform, **kwargs)
    raise FileNotFoundError(
        f"no dataset at {root}: expected the ADE20K layout ({ADE_FOLDER}/images/<split>, "
        f"{ADE_FOLDER}/annotations/<split>), COCO-Stuff 10k ({COCO_STUFF_FOLDER}/images/train2014, "
        f"{COCO_STUFF_FOLDER}/annotations/train2014), COCO-Stuff 164k ({COCO_STUFF164K_FOLDER}/images/train2017, "
        f"{COCO_STUFF164K_FOLDER}/annotations/train2017), PASCAL-Context ({CONTEXT_FOLDER}/JPEGImages, "
        f"{CONTEXT_FOLDER}/SegmentationClassContext) or the generic one (images/, masks/, classes.txt)"
    )
