"""The record of a K-view store (issue 19, `pipeline/view_record.py`): the augmentation spec and
its drift check, the probe batch, the manifest's views record and the trainer's replay gate."""

from __future__ import annotations

import json
import logging
from collections import Counter

import numpy as np
import pytest

from clipocr.pipeline import view_record as R
from clipocr.pipeline.augment import OP_NAMES
from clipocr.pipeline.errors import InputError
from clipocr.pipeline.views import augmenter


def test_spec_round_trips_and_replays_here() -> None:
    spec = R.current_spec()
    again = R.AugSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec and R.replay_drift(again) == []
    names = [op["name"] for op in spec.ops]
    assert len(names) == 16 and names[-3:] == ["RotateExpand", "GaussianBlur", "PoissonNoise"]
    shear = next(op for op in spec.ops if op["name"] == "ShearX")
    assert shear["args"] == [[-0.45], [0.45]] and shear["prob"] == 0.5
    assert set(R.CHECKED_LIBRARIES) <= set(spec.versions)


def test_drift_names_what_would_not_replay() -> None:
    data = R.current_spec().to_dict()
    data["versions"]["Pillow"] = "9.0.0"
    data["ops"][9]["args"] = [[-0.3], [0.3]]  # ShearX at timm's own magnitude
    data["seed_function"] = "hash(key)"
    reasons = R.replay_drift(R.AugSpec.from_dict(data))
    assert len(reasons) == 3, reasons
    assert any(r.startswith("Pillow 9.0.0") for r in reasons)
    assert any(r.startswith("op ShearX") for r in reasons)
    assert any(r.startswith("seed_function 'hash(key)'") for r in reasons)
    other = R.current_spec(7)  # replayable here too, with other arguments and pixels
    assert R.replay_drift(R.AugSpec.from_dict(other.to_dict())) == []
    assert other.ops[9]["args"] == [[-0.63], [0.63]]
    stale = other.to_dict() | {"ops": R.current_spec(5).to_dict()["ops"]}
    assert any(r.startswith("op ShearX") for r in R.replay_drift(R.AugSpec.from_dict(stale)))
    assert not np.array_equal(R.probe_views(7), R.probe_views(5))
    with pytest.raises(InputError, match="augmentation spec"):
        R.AugSpec.from_dict({"magnitude": 5})


def test_probe_counts_differing_pixels_and_covers_every_op() -> None:
    seen: Counter = Counter()

    def counted(fn, name):
        return lambda img, *args, **kw: (seen.update([name]), fn(img, *args, **kw))[1]

    saved = []
    for op in augmenter(5, 3)._augment.ops:  # count the ops the probe draws
        attr = "aug_fn" if hasattr(op, "aug_fn") else "fn"
        saved.append((op, attr, getattr(op, attr)))
        setattr(op, attr, counted(getattr(op, attr), op.name))
    try:
        here = R.probe_views()
    finally:
        for op, attr, fn in saved:
            setattr(op, attr, fn)
    assert set(seen) == set(OP_NAMES)
    assert R.probe_diff(here.copy(), here) == 0
    drifted = here.copy()
    drifted[3, :, 5, 7] ^= 1  # one pixel, all channels
    drifted[4, 1, 0, 0] ^= 1  # one pixel, one channel
    assert R.probe_diff(drifted, here) == 2
    assert R.probe_diff(here[:4], here) == len(here) * 32 * 128
    assert R.pixels_digest(drifted) != R.pixels_digest(here)


def test_views_record_round_trips_and_replays_here() -> None:
    record = R.views_record(4, store_seed=9)
    data = json.loads(json.dumps(record.to_dict()))
    again = R.ViewsRecord.from_dict(data)
    assert again.count == 4 and again.store_seed == 9 and again.augment == record.augment
    assert np.array_equal(again.probe_pixels(), R.probe_views())
    assert len(json.dumps(data)) < 120_000  # the manifest stays small
    replay = R.check_replay(again)
    assert replay.exact and replay.probe_differing == 0 and replay.probe_total == 32 * 32 * 128
    assert "probe" not in again.identity()
    with pytest.raises(ValueError, match="2 or more"):
        R.views_record(1)
    with pytest.raises(InputError, match="unreadable views record"):
        R.ViewsRecord.from_dict({"count": 2})


def test_check_replay_counts_the_pixels_another_machine_made_differently() -> None:
    """A record whose probe pixels were made elsewhere (here: 5 pixels changed, as another
    Pillow's arithmetic might) and under another timm version: both reasons, and the count."""
    record = R.views_record(2)
    pixels = record.probe_pixels().copy()
    pixels[0, :, 0, :5] ^= 7
    data = record.to_dict()
    data["probe"]["pixels"] = R._pack(pixels)
    data["augment"]["versions"]["timm"] = "0.9.16"
    replay = R.check_replay(R.ViewsRecord.from_dict(data))
    assert not replay.exact and replay.probe_differing == 5
    assert [r.split()[0] for r in replay.reasons] == ["timm", "probe:"], replay.reasons


def test_replay_or_refuse_refuses_in_one_line_unless_drift_is_allowed(caplog) -> None:
    record = R.views_record(3, store_seed=1)
    assert R.replay_or_refuse(record, "STORE").exact
    data = record.to_dict()
    data["augment"]["versions"]["Pillow"] = "10.0.0"
    drifted = R.ViewsRecord.from_dict(data)
    with pytest.raises(InputError) as err:
        R.replay_or_refuse(drifted, "STORE")
    message = str(err.value)
    assert "\n" not in message and message.startswith("STORE: its 3 cached views")
    assert "Pillow 10.0.0" in message and "--allow-view-drift" in message
    with caplog.at_level(logging.WARNING):
        replay = R.replay_or_refuse(drifted, "STORE", allow_drift=True)
    assert not replay.exact and "0 of 131072 probe pixels differ" in caplog.text
