"""Device-side augmentation (issue 14): the host variant's op distribution, drawn per image, and
each op's pixels against its PIL counterpart on the same image and argument."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from timm.data import auto_augment

from clipocr.pipeline import augment as host
from clipocr.pipeline.preprocess import resize, to_uint8_tensor
from clipocr.train_student.device_augment import DeviceAugment, device_ops

SIZE = (32, 128)
OPS = device_ops(5, SIZE)
# random resample: timm's four and the expanding rotation (timm's `rotate`, as PARSeq calls it)
GEOMETRIC = {"ShearX", "ShearY", "TranslateXRel", "TranslateYRel", "RotateExpand"}


def _images() -> list[Image.Image]:
    """Words on plain backgrounds, framed (edges, fill), and two noise images."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(5):
        img = Image.new("RGB", SIZE[::-1], tuple(int(v) for v in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(img)
        draw.text((4 + 6 * i, 8), "hello", fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        draw.rectangle((80, 4, 120, 24), outline=(255, 0, 0))
        out.append(img)
    out.append(Image.fromarray(rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)))
    out.append(Image.fromarray(rng.integers(60, 180, (*SIZE, 3), dtype=np.uint8)))
    return out


def _host_op(name: str, img: Image.Image, value: float | None, bicubic: bool) -> Image.Image:
    """The host op as `StudentAugment` applies it, then the pipeline's resize (a no-op unless
    the rotation expanded the canvas)."""
    if name in auto_augment.NAME_TO_OP:
        resample = Image.BICUBIC if bicubic else Image.BILINEAR
        args = () if value is None else (value,)
        return auto_augment.NAME_TO_OP[name](img, *args, fillcolor=host.FILL, resample=resample)
    if name == "RotateExpand":
        return resize(host._rotate_expand(img, value, bicubic))
    return host._gaussian_blur(img, value)


# Grey levels a device op may differ from PIL by. On x86-64 every op but the rotation is
# exact (integer LUTs, PIL's float32 blends and float64 transforms replayed in the same order);
# the rotation's resize back to 32×128 is float32 in torch, fixed point in Pillow. Blends are
# allowed 1 for builds whose compiler fuses Pillow's multiply-add (e.g. aarch64).
TOLERANCE = {"RotateExpand": 1, "ColorIncreasing": 1, "ContrastIncreasing": 1,
             "BrightnessIncreasing": 1}  # fmt: skip


@pytest.mark.parametrize(
    "op", [op for op in OPS if op.name != "PoissonNoise"], ids=lambda op: op.name
)
def test_each_op_matches_its_pil_counterpart(op) -> None:
    images = _images()
    batch = torch.stack([to_uint8_tensor(img) for img in images])
    n = len(images)
    for negated in (0, 1):
        value = op.values[negated] if op.values else None
        for bicubic in (False, True):
            want = torch.stack([to_uint8_tensor(_host_op(op.name, i, value, bicubic))
                                for i in images]).int()  # fmt: skip
            arg = torch.full((n,), float(value or 0), dtype=torch.float64)
            got = op.fn(batch, arg, torch.full((n,), bicubic), torch.Generator()).int()
            diff = (got - want).abs()
            where = f"{op.name} value {value} bicubic {bicubic}"
            assert diff.max() <= TOLERANCE.get(op.name, 0), where
            assert diff.float().mean() < 1e-3, where  # the ±1 are rare


def test_poisson_noise_has_the_host_distribution() -> None:
    """Random by nature: the noise on a mid-grey image, host (numpy) vs device (torch): PARSeq's
    imgaug `AdditivePoissonNoise(21)` — ±Poisson(λ), one value for the three channels."""
    grey = Image.new("RGB", SIZE[::-1], (128, 128, 128))
    noise = next(op for op in OPS if op.name == "PoissonNoise")
    np.random.seed(0)
    host_rgb = np.stack([np.asarray(host._poisson_noise(grey, 20.0)) for _ in range(8)])
    batch = to_uint8_tensor(grey)[None].repeat(8, 1, 1, 1)
    dev = noise.fn(batch, torch.zeros(8), torch.zeros(8, dtype=torch.bool), torch.Generator())
    dev_rgb = dev.permute(0, 2, 3, 1).numpy()
    for rgb in (host_rgb, dev_rgb):
        assert (rgb == rgb[..., :1]).all()  # one draw per pixel, not per channel
    host_noise, dev_noise = (rgb[..., 0].astype(int).ravel() - 128 for rgb in (host_rgb, dev_rgb))
    lam = 21  # the bound at 128 px (20), binned to odd as PARSeq does
    for sample in (host_noise, dev_noise):  # mean 0, variance λ² + λ
        assert abs(sample.mean()) < 0.6 and abs(sample.var() - (lam * lam + lam)) < 25
        assert abs(np.abs(sample).mean() - lam) < 0.2
    bins = np.arange(-48, 50, 6)
    stat, dof = _chi2(Counter(np.digitize(host_noise, bins)), Counter(np.digitize(dev_noise, bins)))
    assert stat < _critical(dof), (stat, dof)


# -- the op distribution -----------------------------------------------------------------------
def _host_trace(monkeypatch, n: int) -> list[list[tuple]]:
    """Per seed, the ops `StudentAugment` applies as (name, argument, resample): its op
    callables and timm's resample choice are wrapped to record what they receive."""
    aug = host.StudentAugment()
    trace: list[list[tuple]] = []

    def recorder(name, fn):
        def call(img, *args, **kwargs):
            trace[-1].append([name, tuple(round(a, 6) for a in args), None])
            return fn(img, *args, **kwargs)

        return call

    for op in aug._augment.ops:
        if isinstance(op, auto_augment.AugmentOp):
            op.aug_fn = recorder(op.name, op.aug_fn)
        else:
            op.fn = recorder(op.name, op.fn)
    choose = auto_augment._interpolation

    def interpolation(kwargs):
        chosen = choose(kwargs)
        trace[-1][-1][2] = "bicubic" if chosen == Image.BICUBIC else "bilinear"
        return chosen

    monkeypatch.setattr(auto_augment, "_interpolation", interpolation)
    img = Image.new("RGB", (8, 4), (200, 100, 50))  # small and fast: arguments are recorded
    for seed in range(n):  # before the blur/noise bounds by size
        trace.append([])
        aug(img, seed)
    return [[tuple(r) for r in rec] for rec in trace]


def _device_trace(plan) -> list[list[tuple]]:
    out = []
    for row in range(len(plan.ops)):
        rec = []
        for layer in range(plan.ops.shape[1]):
            if plan.applied[row, layer]:
                op = OPS[int(plan.ops[row, layer])]
                args = (round(op.values[int(plan.negated[row, layer])], 6),) if op.values else ()
                resample = None
                if op.name in GEOMETRIC:
                    resample = "bicubic" if plan.bicubic[row, layer] else "bilinear"
                rec.append((op.name, args, resample))
        out.append(rec)
    return out


def _chi2(a: Counter, b: Counter) -> tuple[float, int]:
    """Two-sample chi-square homogeneity statistic over the union of categories, and its dof."""
    total_a, total_b = sum(a.values()), sum(b.values())
    stat = 0.0
    for key in set(a) | set(b):
        both = a[key] + b[key]
        for count, total in ((a[key], total_a), (b[key], total_b)):
            expected = both * total / (total_a + total_b)
            stat += (count - expected) ** 2 / expected
    return stat, len(set(a) | set(b)) - 1


def _critical(dof: int, z: float = 3.09) -> float:
    """Chi-square quantile at p = 0.001 (Wilson–Hilferty; no scipy here)."""
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


N = 2000


@pytest.fixture(scope="module")
def traces():
    monkeypatch = pytest.MonkeyPatch()
    try:
        host_trace = _host_trace(monkeypatch, N)
    finally:
        monkeypatch.undo()
    plan = DeviceAugment().plan(N, torch.Generator().manual_seed(0))
    return host_trace, _device_trace(plan), plan


def test_same_ops_arguments_and_probabilities_as_the_host(traces) -> None:
    """Fixed seeds, p = 0.001 chi-square tests of host vs device draws: how many ops apply per
    image, and which op with which argument and resample (34 categories: each signed argument
    and each resample its own)."""
    host_trace, dev_trace, _ = traces
    count = Counter(len(r) for r in host_trace), Counter(len(r) for r in dev_trace)
    ops = Counter(x for r in host_trace for x in r), Counter(x for r in dev_trace for x in r)
    assert set(ops[0]) == set(ops[1])  # the same op list and argument values
    assert len(ops[0]) == 34
    for host_counts, dev_counts in (count, ops):
        stat, dof = _chi2(host_counts, dev_counts)
        assert stat < _critical(dof), (stat, dof, host_counts, dev_counts)
    # each op at most once per image (drawn without replacement), in both
    assert all(len({x[0] for x in r}) == len(r) for trace in (host_trace, dev_trace) for r in trace)


def test_draws_are_per_image_not_per_batch(traces) -> None:
    """One batch of 2000: a per-batch draw (torchvision's RandAugment) would apply one op set to
    all; the per-image plan's op frequencies *within the batch* already match the host's, and
    the same statistic rejects a per-batch draw."""
    host_trace, dev_trace, plan = traces
    host_ops = Counter(x[0] for r in host_trace for x in r)
    stat, dof = _chi2(host_ops, Counter(x[0] for r in dev_trace for x in r))
    assert stat < _critical(dof)
    assert len({tuple(row) for row in plan.ops.tolist()}) > 1000
    one = torch.Generator().manual_seed(1)
    shared = DeviceAugment().plan(1, one)
    per_batch = Counter(x[0] for x in _device_trace(shared)[0] for _ in range(N))
    if per_batch:  # an empty draw (no op applied) would be rejected even more clearly
        stat, dof = _chi2(host_ops, per_batch)
        assert stat > _critical(dof)


def test_blur_and_noise_bounds_follow_the_image_size() -> None:
    """PARSeq's bounds by the longer side: the device uses the batch's size, as the host the
    image's (radius 2 and λ 21 at 128 px; 1 and 9 at 40 px: λ binned to odd values)."""
    for size, radius, lam in ((SIZE, 2, 21), ((16, 40), 1, 9)):
        fns = {op.name: op.fn for op in device_ops(5, size)}
        assert fns["GaussianBlur"].keywords["radius"] == radius
        assert fns["PoissonNoise"].keywords["lam"] == lam
        assert host.blur_radius(2.0, max(size)) == radius
        assert host.noise_lambda(20.0, max(size)) == lam


def test_seeded_pure_and_leaves_the_global_rng_alone() -> None:
    images = torch.stack([to_uint8_tensor(i) for i in _images()]).repeat(4, 1, 1, 1)
    aug = DeviceAugment()
    state = torch.get_rng_state()
    a, b, c = aug(images, 7), aug(images, 7), aug(images, 8)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.dtype == torch.uint8 and a.shape == images.shape
    changed = (a != images).flatten(1).any(1).float().mean()
    assert 0.7 < changed < 1.0  # P(no op applies) = 1/8


def test_a_planned_batch_is_the_host_ops_replayed_in_order() -> None:
    """`DeviceAugment.apply` end to end: each image's drawn ops, replayed one after another
    with the host's PIL ops, give the same pixels (images that drew the random noise aside)."""
    images = _images() * 6
    batch = torch.stack([to_uint8_tensor(img) for img in images])
    aug = DeviceAugment()
    plan = aug.plan(len(images), torch.Generator().manual_seed(3))
    got = aug.apply(batch, plan, torch.Generator())
    compared = exact = 0
    for row, img in enumerate(images):
        steps = _device_trace(plan)[row]
        if any(name == "PoissonNoise" for name, _, _ in steps):
            continue
        for name, args, resample in steps:
            img = _host_op(name, img, args[0] if args else None, resample == "bicubic")
        diff = (got[row].int() - to_uint8_tensor(img).int()).abs()
        compared += 1
        exact += int(diff.max() == 0)
        assert diff.float().mean() < 0.01, (row, steps)
    assert compared >= 30 and exact >= 0.9 * compared


def test_drawn_shear_and_translate_ranges_are_parseqs() -> None:
    """The device ops' two arguments (PARSeq's magnitudes, issue 22), measured from a dot's
    displacement on the device's own pixels, bilinear and bicubic."""
    from test_augment import PARSEQ_GEOMETRY, dot_centre, dot_image, measured_magnitude

    ops = {op.name: op for op in OPS}
    dot = to_uint8_tensor(dot_image())[None].repeat(2, 1, 1, 1)
    for name, want in PARSEQ_GEOMETRY.items():
        assert ops[name].values == (want, -want), name
        for bicubic in (False, True):
            arg = torch.tensor(ops[name].values, dtype=torch.float64)
            out = ops[name].fn(dot, arg, torch.full((2,), bicubic), torch.Generator())
            drawn = [measured_magnitude(name, dot_centre(img[0].numpy())) for img in out]
            assert drawn == pytest.approx([want, -want], rel=0.05), (name, bicubic, drawn)
