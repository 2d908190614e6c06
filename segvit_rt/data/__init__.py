"""Datasets, training/eval transforms and a synthetic dataset generator.

Labels in memory are int64 maps with classes ``0..K-1`` and ``IGNORE_INDEX``
(255) for pixels that carry no supervision.

Datasets (``torch.utils.data.Dataset``; each sample is ``(image, label)``)
    ``ADE20KDataset(root, split="training", transform=None, seed=0)``
        ``ADEChallengeData2016/images/{training,validation}/*.jpg`` with
        ``annotations/{training,validation}/*.png``; annotation 0 is ignore and
        ``1..K`` become ``0..K-1``. ``root`` is the ``ADEChallengeData2016``
        folder or its parent. Class names are the 150 ADE20K ones unless a
        ``classes.txt`` (one name a line) sits in that folder, as the synthetic
        generator writes; then K is its line count (one in the parent folder
        is not read: it may belong to another data set).
    ``COCOStuff10kDataset(root, split="training", transform=None, seed=0)``
        ``coco_stuff10k`` as mmseg's converter writes it:
        ``images/{train2014,test2014}/*.jpg`` with
        ``annotations/<split>/<stem>_labelTrainIds.png``; 0 is ignore and
        ``1..171`` become ``0..170`` (the official config's
        ``reduce_zero_label``). ``"training"`` is train2014, ``"validation"``
        test2014 (the paper's evaluation split).
    ``COCOStuff164kDataset(root, split="training", transform=None, seed=0)``
        ``coco_stuff164k`` as mmseg's converter writes it:
        ``images/{train2017,val2017}/*.jpg`` with
        ``annotations/<split>/<stem>_labelTrainIds.png`` holding ``0..170``
        and 255 = ignore (already shifted by the converter).
    ``PascalContextDataset(root, split="training", transform=None, seed=0, classes=60)``
        ``VOCdevkit/VOC2010`` after mmseg's PASCAL-Context conversion:
        ``JPEGImages/*.jpg``, ``SegmentationClassContext/*.png`` holding the 60
        classes ``0..59`` (0 = background, a class, as in the official
        60-class config) and 255 = ignore; the split's stems are read from
        ``ImageSets/SegmentationContext/{train,val}.txt``. ``root`` is
        ``VOC2010``, ``VOCdevkit`` or their parent.
    ``GenericSegDataset(root, split=None, ignore_index=255, transform=None, seed=0)``
        ``images/`` and ``masks/`` (``images/<split>/`` and ``masks/<split>/``
        when ``split`` is given) with matching stems, plus ``root/classes.txt``.
        Masks hold ``0..K-1`` directly; ``ignore_index`` is mapped to 255.
    ``open_dataset(root, split, transform=None, context_classes=60, **kwargs)``
        Picks the layout from what is on disk. ``"train"``/``"val"`` and
        ``"training"``/``"validation"`` stand for each other in every layout;
        ``split=None`` means no split folders (generic layout only; the CLIs'
        ``--split none``).

    Attributes: ``classes`` (names), ``num_classes``, ``samples`` (list of
    ``(image_path, mask_path)``), ``seed``, ``epoch``; ``set_epoch(epoch)``;
    ``load(index)`` returns the raw sample; ``verify()`` reads every sample.
    Without a transform a sample is an ``HxWx3`` uint8 RGB array (grayscale,
    palette and RGBA images are converted; pixels as stored, unless the image's
    EXIF orientation tag turns it to its mask's size) and an ``HxW`` int64 array. With
    one, ``__getitem__(i)`` returns ``transform(image, label, rng)`` where
    ``rng = sample_rng(seed, epoch, i)``: a sample's augmentation depends only
    on (seed, epoch, index), so it is the same in any DataLoader worker, under
    any rank, and after a resume. Call ``set_epoch`` before building each
    epoch's iterator (workers copy the dataset then; do not use
    ``persistent_workers``).

    Problems raise ``DatasetError`` (a ``ValueError``) naming the file:
    unpaired images/masks (a few stems listed), an unreadable image or mask, a
    mask label out of range, an image/mask size mismatch, an empty split.
    Pairing is checked on construction, file contents when a sample is loaded.
    A missing folder raises ``FileNotFoundError``.

Transforms (callables ``(image, label, rng=None) -> (image, label)``)
    ``TrainTransform(crop_size, mean, std, scale=None, ratio_range=(0.5, 2.0),
    cat_max_ratio=0.75, flip_prob=0.5, photometric=True, ignore_index=255, seed=None)``
        The paper's (mmseg's) pipeline: random resize keeping the aspect ratio
        to fit ``ratio * scale`` (``scale = (long, short)``, default
        ``(4 * crop, crop)``), random crop (up to 10 tries so that no class
        covers 75% or more of the labelled pixels), horizontal flip,
        photometric distortion, normalisation, padding to the crop (image 0
        after normalisation, label ``ignore_index``). Returns a float32
        ``3xHxW`` tensor and an int64 ``HxW`` tensor of the crop size.
    ``EvalTransform(mean, std)``: normalisation only, full size.
    ``normalize(image_uint8, mean, std)``: ``HxWx3`` uint8 → float32 ``3xHxW``
    tensor; ``mean``/``std`` in 0–255 units, RGB order.

Synthetic data
    ``generate(out, classes, train, val, size=160, seed=0, overwrite=False, progress=True)``
    (CLI: ``python -m segvit_rt.data.synth OUT --classes K --train N --val M
    [--size 160] [--seed 0] [--overwrite] [--quiet]``) writes
    ``OUT/ADEChallengeData2016`` with ``classes.txt`` and ``synth.json`` in it,
    atomically, and returns that folder. Regions are textured so that only
    texture identifies a class, never colour; the first five classes (the
    ``tiny`` preset's) are horizontal stripes, vertical stripes, checkerboard,
    dots and grain.
"""
from .datasets import (
    ADE20K_CLASSES,
    IGNORE_INDEX,
    ADE20KDataset,
    COCOStuff10kDataset,
    COCOStuff164kDataset,
    DatasetError,
    GenericSegDataset,
    PascalContextDataset,
    SegDataset,
    open_dataset,
    sample_rng,
)
from .transforms import EvalTransform, TrainTransform, normalize

__all__ = [
    "ADE20K_CLASSES",
    "IGNORE_INDEX",
    "ADE20KDataset",
    "COCOStuff10kDataset",
    "COCOStuff164kDataset",
    "DatasetError",
    "EvalTransform",
    "GenericSegDataset",
    "PascalContextDataset",
    "SegDataset",
    "TrainTransform",
    "generate",
    "normalize",
    "open_dataset",
    "sample_rng",
]


def __getattr__(name):
    # Lazy, so that ``python -m segvit_rt.data.synth`` does not import the module twice.
    if name == "generate":
        from .synth import generate

        return generate
    raise AttributeError(f"module 'segvit_rt.data' has no attribute {name!r}")
