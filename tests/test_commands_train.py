"""`clipocr train` as a user runs it: faults in its input end in one red line (exit 2) or are
survived, never a hang or a traceback."""

import signal
from pathlib import Path

import pytest
from conftest import WORDS, fake_store, make_shards, run_console, text_image, write_lmdb

from clipocr.commands.app import main


def run(capsys: pytest.CaptureFixture[str], monkeypatch, *args: object) -> tuple[int, str, str]:
    return run_console(main, "clipocr", capsys, monkeypatch, *args)


@pytest.fixture
def deadline():
    """A hang fails the test instead of stalling the suite."""

    def expired(signum, frame):
        raise TimeoutError("clipocr train did not finish in time (hang?)")

    before = signal.signal(signal.SIGALRM, expired)
    signal.alarm(180)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, before)


def _train_args(shards: Path, store: Path, out: Path, *more: object) -> list[object]:
    return ["train", "--shards", shards, "--teacher-store", store, "--out", out, "--preset",
            "test", "--batch-size", 8, "--threads", 1, "--ckpt-every", 1000, *more]  # fmt: skip


def test_a_truncated_jpeg_does_not_hang_training(capsys, monkeypatch, tmp_path, deadline):
    """The issue's case: 17 JPEGs, one cut to 100 bytes → prepare → cache (listed missing) →
    `train --max-steps 3` with two workers finishes."""
    from clipocr.pipeline.charset import Charset
    from clipocr.pipeline.shards import prepare_shards

    words = [*WORDS, "extra"]
    images = [text_image(w, "JPEG") for w in words]
    images[9] = images[9][:100]
    db = write_lmdb(tmp_path / "db", list(zip(images, words)))
    shards = tmp_path / "shards"
    prepare_shards([db], shards, Charset.from_name("36"), 16, progress=False)
    store = fake_store(shards, tmp_path / "store")
    args = _train_args(shards, store, tmp_path / "run", "--max-steps", 3, "--workers", 2)
    code, out, err = run(capsys, monkeypatch, *args)
    assert code == 0, err
    assert "student exported" in out


def test_input_error_in_a_worker_is_its_own_line(capsys, monkeypatch, tmp_path, deadline):
    """With --workers 2 the user reads the InputError's message, not torch's "Caught InputError
    in DataLoader worker process 0" and the worker's traceback."""
    shards = make_shards(tmp_path / "a", WORDS, shard_size=8)
    other = make_shards(tmp_path / "b", list(reversed(WORDS)), shard_size=8)
    store = fake_store(other, tmp_path / "store")
    args = _train_args(shards, store, tmp_path / "run", "--max-steps", 2, "--workers", 2)
    code, _, err = run(capsys, monkeypatch, *args)
    assert code == 2, err
    last = err.rstrip("\n").split("\n")[-1]
    assert last.startswith(f"error: {store}/shard-00000") and "text rows" in last, err
    assert "Caught" not in err and "Traceback" not in err, err


def test_augment_on_device_from_the_cli(capsys, monkeypatch, tmp_path, deadline):
    """`--augment --augment-on device` reaches the run's config (and so its resume check) and
    trains (asked for: a 1-view store's run does not augment by default)."""
    import json

    shards = make_shards(tmp_path / "a", WORDS, shard_size=8)
    store = fake_store(shards, tmp_path / "store")
    run_dir = tmp_path / "run"
    args = _train_args(shards, store, run_dir, "--max-steps", 2, "--workers", 0, "--augment",
                       "--augment-on", "device")  # fmt: skip
    code, out, err = run(capsys, monkeypatch, *args)
    assert code == 0, err
    config = json.loads((run_dir / "config.json").read_text())
    assert config["augment_on"] == "device" and config["augment"] is True
    code, _, err = run(capsys, monkeypatch, *_train_args(shards, store, tmp_path / "r2",
                       "--max-steps", 1, "--augment-on", "gpu"))  # fmt: skip
    assert code == 2 and "augment_on must be host or device" in err, err


def test_tensorboard_keep_best_and_export_best(capsys, monkeypatch, tmp_path, deadline):
    """Issue 21: `--log tensorboard` logs losses, lr, samples/s and validation accuracy;
    `--keep-best 2` keeps the two best validated students, and `--export best` makes
    student.safetensors the best one, which best.json names."""
    import json

    pytest.importorskip("tensorboard")
    from test_tb_log import scalars

    shards = make_shards(tmp_path / "a", WORDS, shard_size=8)
    val = write_lmdb(tmp_path / "val", [(text_image(w), w) for w in WORDS[:4]])
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"log_every": 1}))
    run_dir = tmp_path / "run"
    args = ["train", "--shards", shards, "--no-distill", "--out", run_dir, "--preset", "test",
            "--batch-size", 8, "--threads", 1, "--workers", 0, "--max-steps", 4, "--config",
            config, "--val", val, "--val-every", 1, "--keep-best", 2, "--export", "best",
            "--log", "tensorboard"]  # fmt: skip
    code, out, err = run(capsys, monkeypatch, *args)
    assert code == 0, err
    best = json.loads((run_dir / "best.json").read_text())
    assert len(best["kept"]) == 2 and best["student.safetensors"]["from"] == "best"
    top = best["kept"][0]
    assert best["student.safetensors"]["step"] == top["step"]
    assert (run_dir / "student.safetensors").read_bytes() == (run_dir / top["path"]).read_bytes()
    got = scalars(run_dir)
    for tag in ("loss/ce", "loss/loss", "train/lr", "train/samples_per_s", "val_acc/val"):
        assert [step for step, _ in got[tag]] == [1, 2, 3, 4], tag
    code, _, err = run(capsys, monkeypatch, *args[:-6], "--export", "best", "--out", tmp_path / "b")
    assert code == 2 and "--export best needs --keep-best" in err, err
