import random

import numpy as np
from PIL import Image, ImageDraw

from clipocr.train_student.augment import OP_NAMES, StudentAugment


def _word() -> Image.Image:
    img = Image.new("RGB", (100, 32), (255, 255, 255))
    ImageDraw.Draw(img).text((4, 8), "hello", fill=(0, 0, 0))
    return img


def test_same_seed_same_pixels_and_seeds_differ() -> None:
    aug = StudentAugment()
    a, b = aug(_word(), 7), aug(_word(), 7)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    outs = {np.asarray(aug(_word(), s).resize((100, 32))).tobytes() for s in range(20)}
    assert len(outs) > 10  # different seeds give different augmentations
    assert all(aug(_word(), s).mode == "RGB" for s in range(5))


def test_global_rng_untouched() -> None:
    random.seed(1)
    np.random.seed(1)
    expected = (random.random(), np.random.rand())
    random.seed(1)
    np.random.seed(1)
    StudentAugment()(_word(), 3)
    assert (random.random(), np.random.rand()) == expected


def test_op_set_is_parseqs() -> None:
    names = [op.name for op in StudentAugment()._augment.ops]
    assert "SharpnessIncreasing" not in names and "Rotate" not in names  # replaced / removed
    assert names[-3:] == ["RotateExpand", "GaussianBlur", "PoissonNoise"]
    assert {"ShearX", "TranslateYRel", "ContrastIncreasing"} <= set(names)
    assert names == OP_NAMES and len(names) == 16  # the list device_augment mirrors
