"""Class names for the supported semantic-segmentation datasets, plus helpers to
build a deterministic colour palette and colourise label maps for visualisation.

Index ``i`` of each tuple is the name of training label ``i``.
"""
import colorsys

import numpy as np

__all__ = [
    "ADE20K_CLASSES",
    "COCO_STUFF_CLASSES",
    "PASCAL_CONTEXT_CLASSES",
    "DATASET_CLASSES",
    "palette",
    "colorize",
]

# ADE20K SceneParsing (ADEChallengeData2016), 150 classes.
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree",
    "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door",
    "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf",
    "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock",
    "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers",
    "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway",
    "case", "pool table", "pillow", "screen door", "stairway",
    "river", "bridge", "bookcase", "blind", "coffee table",
    "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer",
    "swivel chair", "boat", "bar", "arcade machine", "hovel",
    "bus", "towel", "light", "truck", "tower",
    "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land",
    "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain",
    "conveyer belt", "canopy", "washer", "plaything", "swimming pool",
    "stool", "barrel", "basket", "waterfall", "tent",
    "bag", "minibike", "cradle", "oven", "ball",
    "food", "step", "tank", "trade name", "microwave",
    "pot", "animal", "bicycle", "lake", "dishwasher",
    "screen", "blanket", "sculpture", "hood", "sconce",
    "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board",
    "shower", "radiator", "glass", "clock", "flag",
)

# COCO-Stuff (10k / 164k), 171 classes: 80 things followed by 91 stuff.
COCO_STUFF_CLASSES = (
    # things
    "person", "bicycle", "car", "motorcycle", "airplane",
    "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird",
    "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack",
    "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat",
    "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon",
    "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut",
    "cake", "chair", "couch", "potted plant", "bed",
    "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven",
    "toaster", "sink", "refrigerator", "book", "clock",
    "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
    # stuff
    "banner", "blanket", "branch", "bridge", "building-other",
    "bush", "cabinet", "cage", "cardboard", "carpet",
    "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds",
    "counter", "cupboard", "curtain", "desk-stuff", "dirt",
    "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone",
    "floor-tile", "floor-wood", "flower", "fog", "food-other",
    "fruit", "furniture-other", "grass", "gravel", "ground-other",
    "hill", "house", "leaves", "light", "mat",
    "metal", "mirror-stuff", "moss", "mountain", "mud",
    "napkin", "net", "paper", "pavement", "pillow",
    "plant-other", "plastic", "platform", "playingfield", "railing",
    "railroad", "river", "road", "rock", "roof",
    "rug", "salad", "sand", "sea", "shelf",
    "sky-other", "skyscraper", "snow", "solid-other", "stairs",
    "stone", "straw", "structural-other", "table", "tent",
    "textile-other", "towel", "tree", "vegetable", "wall-brick",
    "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "waterdrops", "window-blind", "window-other",
    "wood",
)

# PASCAL-Context, 60 classes (background + 59).
PASCAL_CONTEXT_CLASSES = (
    "background", "aeroplane", "bag", "bed", "bedclothes",
    "bench", "bicycle", "bird", "boat", "book",
    "bottle", "building", "bus", "cabinet", "car",
    "cat", "ceiling", "chair", "cloth", "computer",
    "cow", "cup", "curtain", "dog", "door",
    "fence", "floor", "flower", "food", "grass",
    "ground", "horse", "keyboard", "light", "motorbike",
    "mountain", "mouse", "person", "plate", "platform",
    "pottedplant", "road", "rock", "sheep", "shelves",
    "sidewalk", "sign", "sky", "snow", "sofa",
    "table", "track", "train", "tree", "truck",
    "tvmonitor", "wall", "water", "window", "wood",
)

DATASET_CLASSES = {
    "ade20k": ADE20K_CLASSES,
    "cocostuff10k": COCO_STUFF_CLASSES,
    "pcontext": PASCAL_CONTEXT_CLASSES,
}

_GOLDEN = 0.6180339887498949  # fractional part of the golden ratio


def palette(num_classes: int, seed: int = 0) -> np.ndarray:
    """Deterministic ``[num_classes, 3]`` uint8 colour table.

    Hues step by the golden ratio (so neighbouring indices differ strongly);
    saturation and value cycle through a few levels so that colours with
    similar hues remain distinguishable. ``seed`` offsets the starting hue.
    """
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")
    sats = (0.85, 0.55, 0.95, 0.70)
    vals = (0.95, 0.75, 0.60, 0.85, 0.45)
    start = (seed * _GOLDEN * 7.0 + 0.1) % 1.0
    out = np.empty((num_classes, 3), dtype=np.uint8)
    for i in range(num_classes):
        h = (start + i * _GOLDEN) % 1.0
        s = sats[i % len(sats)]
        v = vals[(i // len(sats)) % len(vals)]
        r, g, b = colorsys.hsv_to_rgb(h, s, v)
        out[i] = (round(r * 255), round(g * 255), round(b * 255))
    return out


def colorize(labels: np.ndarray, palette) -> np.ndarray:
    """Map an ``HxW`` integer label map to an ``HxWx3`` uint8 image.

    Labels outside ``[0, len(palette))`` (e.g. the 255 ignore index) are black.
    """
    pal = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be an integer array, got {labels.dtype}")
    idx = labels.astype(np.int64)
    valid = (idx >= 0) & (idx < len(pal))
    out = np.zeros(idx.shape + (3,), dtype=np.uint8)
    out[valid] = pal[idx[valid]]
    return out
