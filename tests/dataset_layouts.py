"""Small dataset trees on disk in each layout the trainer reads (random images, given masks)."""
import numpy as np
from PIL import Image


def random_image(rng, h, w):
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def make_ade(root, annotations, split="training", classes=None):
    """ADEChallengeData2016 under ``root`` with one jpg per annotation (uint8 arrays, 0 = ignore)."""
    base = root / "ADEChallengeData2016"
    rng = np.random.default_rng(0)
    for sub in ("images", "annotations"):
        for s in ("training", "validation"):
            (base / sub / s).mkdir(parents=True, exist_ok=True)
    for i, ann in enumerate(annotations):
        Image.fromarray(random_image(rng, *ann.shape)).save(base / "images" / split / f"img_{i}.jpg", quality=95)
        Image.fromarray(ann.astype(np.uint8)).save(base / "annotations" / split / f"img_{i}.png")
    if classes is not None:
        (base / "classes.txt").write_text("\n".join(classes) + "\n")
    return base


def make_generic(root, masks, classes, split=None, image_ext=".png"):
    img_dir, mask_dir = root / "images", root / "masks"
    if split is not None:
        img_dir, mask_dir = img_dir / split, mask_dir / split
    img_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    images = []
    for i, mask in enumerate(masks):
        image = random_image(rng, *mask.shape)
        images.append(image)
        Image.fromarray(image).save(img_dir / f"s{i}{image_ext}")
        Image.fromarray(mask.astype(np.uint8)).save(mask_dir / f"s{i}.png")
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return images


def make_coco_stuff(root, masks_by_split, folder="coco_stuff10k"):
    """coco_stuff10k (splits train2014 / test2014) or coco_stuff164k (train2017 / val2017) as mmseg's
    converters write them."""
    base = root / folder
    rng = np.random.default_rng(2)
    for split, masks in masks_by_split.items():
        (base / "images" / split).mkdir(parents=True)
        (base / "annotations" / split).mkdir(parents=True)
        for i, mask in enumerate(masks):
            stem = f"COCO_{split}_{i:012d}"
            Image.fromarray(random_image(rng, *mask.shape)).save(base / "images" / split / f"{stem}.jpg")
            Image.fromarray(mask.astype(np.uint8)).save(base / "annotations" / split / f"{stem}_labelTrainIds.png")
    return base


def make_context(root, masks_by_split, unlisted=1):
    """VOCdevkit/VOC2010 with mmseg's PASCAL-Context conversion; JPEGImages also holds images of no split."""
    base = root / "VOCdevkit" / "VOC2010"
    lists = base / "ImageSets" / "SegmentationContext"
    for sub in ("JPEGImages", "SegmentationClassContext"):
        (base / sub).mkdir(parents=True)
    lists.mkdir(parents=True)
    rng = np.random.default_rng(3)
    for split, masks in masks_by_split.items():
        stems = [f"2008_{split}{i:04d}" for i in range(len(masks))]
        for stem, mask in zip(stems, masks):
            Image.fromarray(random_image(rng, *mask.shape)).save(base / "JPEGImages" / f"{stem}.jpg")
            Image.fromarray(mask.astype(np.uint8)).save(base / "SegmentationClassContext" / f"{stem}.png")
        (lists / f"{split}.txt").write_text("".join(f"{s}\n" for s in stems))
    for i in range(unlisted):
        Image.fromarray(random_image(rng, 8, 8)).save(base / "JPEGImages" / f"2010_other{i}.jpg")
    return base
