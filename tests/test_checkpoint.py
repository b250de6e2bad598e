"""Student checkpoint: export/load round trip, and refusal of anything that is not one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from clipocr import __version__
from clipocr.pipeline.errors import InputError
from clipocr.train_student.checkpoint import FORMAT, load_student, save_student
from clipocr.train_student.model import Student, student_config


@pytest.fixture(scope="module")
def model() -> Student:
    torch.manual_seed(0)
    return Student(student_config("test", charset="62", max_len=12))


def test_round_trip(model: Student, tmp_path: Path) -> None:
    path = tmp_path / "runs" / "student.safetensors"
    save_student(path, model)
    assert [p.name for p in path.parent.iterdir()] == ["student.safetensors"]  # no temp left
    loaded = load_student(path)
    assert loaded.cfg == model.cfg and loaded.charset.name == "62"
    assert not loaded.training
    for (name, a), (_, b) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    images = torch.randn(2, 3, 32, 128)
    model.eval()
    assert torch.equal(loaded.generate(images)[0], model.generate(images)[0])
    with torch.no_grad():
        tgt_in, _ = model.charset.batch_targets(["Ab", "c9"])
        torch.testing.assert_close(loaded(images, tgt_in).logits, model(images, tgt_in).logits)


def test_metadata_and_contents(model: Student, tmp_path: Path) -> None:
    from safetensors import safe_open

    path = tmp_path / "s.safetensors"
    save_student(path, model)
    with safe_open(path, framework="pt") as fh:
        meta = fh.metadata()
        keys = set(fh.keys())
    assert meta["format"] == FORMAT and meta["clipocr_version"] == __version__
    assert '"charset": "62"' in meta["config"]
    assert keys == set(model.state_dict())  # the student alone: no heads, no teacher


def bad_files(tmp_path: Path, model: Student) -> dict[str, Path]:
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, other, metadata={"format": "something-else"})
    pickle = tmp_path / "student.pt"
    torch.save(model.state_dict(), pickle)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01not a checkpoint" * 10)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    return {
        "missing": tmp_path / "missing.safetensors",
        "other": other,
        "pickle": pickle,
        "garbage": garbage,
        "empty": empty,
        "directory": tmp_path,
    }


@pytest.mark.parametrize("kind", ["missing", "other", "pickle", "garbage", "empty", "directory"])
def test_refuses_non_checkpoints(kind: str, model: Student, tmp_path: Path) -> None:
    path = bad_files(tmp_path, model)[kind]
    with pytest.raises(InputError, match="not a clipocr student checkpoint") as info:
        load_student(path)
    message = str(info.value)
    assert message.startswith(f"{path}:") and "\n" not in message


def test_refuses_mismatched_weights_and_bad_config(model: Student, tmp_path: Path) -> None:
    """A marked file whose tensors or config do not fit is refused too, naming the reason."""
    path = tmp_path / "s.safetensors"
    save_student(path, model)
    from safetensors import safe_open

    with safe_open(path, framework="pt") as fh:
        meta = fh.metadata()
        state = {k: fh.get_tensor(k) for k in fh.keys()}
    del state["head.weight"]
    broken = tmp_path / "broken.safetensors"
    save_file(state, broken, metadata=meta)
    with pytest.raises(InputError, match="do not match"):
        load_student(broken)
    bad_config = tmp_path / "bad_config.safetensors"
    save_file(state, bad_config, metadata=dict(meta, config='{"enc_depth": 7}'))
    with pytest.raises(InputError, match="bad config"):
        load_student(bad_config)
    future = tmp_path / "future.safetensors"
    save_file(state, future, metadata=dict(meta, format_version="99"))
    with pytest.raises(InputError, match="version"):
        load_student(future)


def test_a_full_disk_is_an_os_error_and_leaves_no_file(
    model: Student, tmp_path: Path, monkeypatch
) -> None:
    """The write fails part-way as on a full disk: an OSError (ENOSPC) the trainer can report
    in one line, and neither a half file under the final name nor a temporary one left."""
    import builtins
    import errno

    class FullDisk:
        def __init__(self, path, mode):
            self.fh = builtins.open(path, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):
            self.fh.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("clipocr.train_student.checkpoint.open", FullDisk, raising=False)
    with pytest.raises(OSError) as err:
        save_student(tmp_path / "student.safetensors", model)
    assert err.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


def test_the_file_is_the_same_bytes_every_time(model: Student, tmp_path: Path) -> None:
    """Issue 23: safetensors writes its metadata in hash order, so two saves of the same student
    differed in sha256; the header is now sorted, and the file still loads."""
    import hashlib
    import json
    import struct

    digests = set()
    for i in range(6):
        path = tmp_path / f"s{i}.safetensors"
        save_student(path, model)
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(digests) == 1
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    assert size % 8 == 0
    meta = json.loads(data[8 : 8 + size])["__metadata__"]
    assert list(meta) == sorted(meta)
    assert load_student(path).cfg == model.cfg


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_refuses_non_finite_weights(bad: float, model: Student, tmp_path: Path) -> None:
    """Issue 23: a checkpoint with NaN weights read every image as empty text, confidence nan,
    exit 0; it is refused at load, in one line naming the file and the tensor."""
    from safetensors import safe_open

    path = tmp_path / "s.safetensors"
    save_student(path, model)
    with safe_open(path, framework="pt") as fh:
        meta = fh.metadata()
        state = {k: fh.get_tensor(k) for k in fh.keys()}
    state["dec_norm.weight"][3] = bad
    broken = tmp_path / "nan.safetensors"
    save_file(state, broken, metadata=meta)
    with pytest.raises(InputError) as info:
        load_student(broken)
    message = str(info.value)
    assert message.startswith(f"{broken}: tensor dec_norm.weight holds non-finite values")
    assert "\n" not in message
