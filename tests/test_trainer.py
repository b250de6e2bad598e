import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
from conftest import WORDS, fake_store, make_shards, text_image, write_lmdb
from safetensors.torch import load_file

from clipocr.pipeline.errors import InputError
from clipocr.pipeline.preprocess import normalize
from clipocr.pipeline.shards import ShardReader
from clipocr.train_student.checkpoint import load_student
from clipocr.train_student.config import TrainConfig
from clipocr.train_student.run_dir import checkpoint_dirs
from clipocr.train_student.trainer import Trainer


@pytest.fixture(autouse=True)
def no_curves_png(monkeypatch) -> None:
    """Every `Trainer.run` ends by drawing curves.png with matplotlib, ≈ a third of a short
    run's time; the runs here skip it (`test_cli_trains_without_open_clip` draws it for real)."""
    from clipocr.train_student import curves

    monkeypatch.setattr(curves, "plot_curves", lambda history, out: out)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("train")
    shards = make_shards(root, WORDS, shard_size=16)
    return shards, fake_store(shards, root / "store")


def _cfg(data, out: Path, **kw) -> TrainConfig:
    shards, store = data
    base = dict(
        shards=str(shards), teacher_store=str(store), out=str(out), preset="test",
        batch_size=8, workers=0, threads=1, progress=False, ckpt_every=1000, log_every=1,
    )  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def _history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


def test_overfits_sixteen_words(overfit_run) -> None:
    """The model, the loss terms and the optimiser together can learn: 16 words to 100 %
    (the session's shared run: conftest's `overfit_run`, 150 distilled steps at lr 0.1)."""
    items = list(ShardReader(overfit_run.shards))
    student = load_student(overfit_run.student)
    preds = [t for t, _ in student.read(normalize(torch.stack([i for _, i, _ in items])))]
    assert preds == [label for _, _, label in items]
    history = _history(overfit_run.run)
    assert {"ce", "aam_img1", "aam_txt3", "gam", "loss"} <= history[0].keys()
    assert history[-1]["ce"] < 0.2 * history[0]["ce"]


def test_resume_continues_exactly(data, tmp_path: Path) -> None:
    full = tmp_path / "full"
    Trainer(_cfg(data, full, max_steps=6, ckpt_every=3)).run()
    # An interrupted twin: same run, but its step-6 checkpoint never happened.
    cut = tmp_path / "cut"
    Trainer(_cfg(data, cut, max_steps=6, ckpt_every=3)).run()
    import shutil

    shutil.rmtree(checkpoint_dirs(cut)[-1])
    (cut / "student.safetensors").unlink()
    lines = (cut / "history.jsonl").read_text().splitlines()[:3]
    (cut / "history.jsonl").write_text("\n".join(lines) + "\n")

    resumed = Trainer(_cfg(data, cut, max_steps=6, ckpt_every=3), resume=True)
    assert resumed.pos.step == 3
    resumed.run()
    a, b = _history(full), _history(cut)
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    for ra, rb in zip(a, b):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-5, abs=1e-6)
    wa, wb = load_file(full / "student.safetensors"), load_file(cut / "student.safetensors")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_run_dir_guards(data, tmp_path: Path) -> None:
    Trainer(_cfg(data, tmp_path / "r", max_steps=1)).run()
    with pytest.raises(InputError, match="already holds a run"):
        Trainer(_cfg(data, tmp_path / "r", max_steps=1))
    with pytest.raises(InputError, match="different settings: lr"):
        Trainer(_cfg(data, tmp_path / "r", max_steps=2, lr=1.0), resume=True)
    with pytest.raises(InputError, match="nothing to resume"):
        Trainer(_cfg(data, tmp_path / "fresh", max_steps=1), resume=True)


def test_store_manifest_mismatch_is_refused(data, tmp_path: Path) -> None:
    shards, store = data
    manifest = json.loads((store / "manifest.json").read_text())
    other = tmp_path / "store"
    import shutil

    shutil.copytree(store, other)
    manifest["charset"] = "94"
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="charset"):
        Trainer(_cfg(data, tmp_path / "r", teacher_store=str(other), max_steps=1))


def test_distill_needs_a_store() -> None:
    with pytest.raises(InputError, match="--teacher-store is required"):
        TrainConfig(shards="x", teacher_store=None)


def test_cli_trains_without_open_clip(data, tmp_path: Path) -> None:
    """A distilled training run through the real CLI, with open_clip made unimportable."""
    shards, store = data
    val = write_lmdb(tmp_path / "val", [(text_image(w), w) for w in WORDS[:4]])
    run = tmp_path / "run"
    code = (
        "import sys; sys.modules['open_clip'] = None\n"
        "from clipocr.commands.app import main\n"
        "main()\n"
        "assert 'open_clip' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
    )
    args = [
        "train", "--shards", str(shards), "--teacher-store", str(store), "--out", str(run),
        "--preset", "test", "--batch-size", "8", "--max-steps", "4", "--workers", "1",
        "--val", str(val), "--val-every", "2", "--ckpt-every", "2",
    ]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "student exported" in proc.stdout
    config = json.loads((run / "config.json").read_text())
    assert config["max_steps"] == 4 and config["teacher_store"] == str(store)
    vals = [r for r in _history(run) if any(k.startswith("val_acc/") for k in r)]
    assert [r["step"] for r in vals] == [2, 4]
    assert (run / "curves.png").stat().st_size > 1000
    assert len(checkpoint_dirs(run)) == 2
    student = load_student(run / "student.safetensors")
    assert student.cfg.enc_dim == 32
    assert not any("heads" in k for k in load_file(run / "student.safetensors"))


def test_no_distill_baseline_needs_no_store(data, tmp_path: Path) -> None:
    shards, _ = data
    cfg = TrainConfig(
        shards=str(shards), distill=False, out=str(tmp_path / "b"), preset="test",
        batch_size=8, workers=0, threads=1, max_steps=2, progress=False, log_every=1,
    )  # fmt: skip
    Trainer(cfg).run()
    assert set(_history(tmp_path / "b")[0]) == {"step", "ce", "loss", "grad_norm", "lr",
                                                "samples_per_s"}  # fmt: skip


def test_config_file_and_flags_merge_into_heads(tmp_path: Path) -> None:
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"preset": "tiny", "heads": {"lambda1": 2.0, "use_gam": False}}))
    cfg = TrainConfig.from_sources(
        path, {"shards": "s", "teacher_store": "t", "heads": {"loss_type": "l1"}, "lr": None}
    )
    assert cfg.preset == "tiny" and cfg.lr == 1.4e-3  # None flags keep file/default values
    assert (cfg.heads.lambda1, cfg.heads.use_gam, cfg.heads.loss_type) == (2.0, False, "l1")
    assert cfg.to_dict()["heads"]["lambda1"] == 2.0
    with pytest.raises(InputError, match="unknown heads settings"):
        TrainConfig.from_sources(None, {"shards": "s", "teacher_store": "t", "heads": {"x": 1}})
    with pytest.raises(InputError, match="loss_type"):
        TrainConfig(shards="s", teacher_store="t", heads={"loss_type": "l2"})


def test_validation_is_the_callers_callable(data, tmp_path: Path) -> None:
    """The trainer runs the validation it is handed (it imports no evaluator) every val_every
    steps and at the end, and writes what it returns into the history."""
    calls = []

    def validate(student, device) -> dict[str, float]:
        calls.append((student, device))
        return {"val_acc/fake": 0.25 * len(calls)}

    cfg = _cfg(data, tmp_path / "v", max_steps=5, val=["x"], val_every=2)
    trainer = Trainer(cfg, validate=validate)
    trainer.run()
    vals = [r for r in _history(tmp_path / "v") if "val_acc/fake" in r]
    assert [(r["step"], r["val_acc/fake"]) for r in vals] == [(2, 0.25), (4, 0.5), (5, 0.75)]
    assert calls == [(trainer.student, torch.device("cpu"))] * 3


def test_validation_sets_without_a_callable_are_skipped(data, tmp_path: Path, caplog) -> None:
    trainer = Trainer(_cfg(data, tmp_path / "n", max_steps=2, val=["x"], val_every=1))
    assert "no validation" in caplog.text
    trainer.run()
    assert not [r for r in _history(tmp_path / "n") if any(k.startswith("val_") for k in r)]
    # and a callable without validation sets is not run either
    never = Trainer(_cfg(data, tmp_path / "m", max_steps=1), validate=lambda s, d: 1 / 0)
    never.run()


def _store_with_form(data, tmp_path: Path, form: str) -> Path:
    """A copy of the test store whose manifest records `form` (the values are random anyway)."""
    store = tmp_path / f"store-{form}"
    shutil.copytree(data[1], store)
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["form"] = form
    (store / "manifest.json").write_text(json.dumps(manifest))
    return store


def test_l1_on_a_normalised_store_is_refused(data, tmp_path: Path) -> None:
    """Plain L1 would compare GAM with a unit-length text embedding: refused when the store is
    opened, with the fix in one line; fine with a raw store, or with GAM off."""
    normalised = _store_with_form(data, tmp_path, "normalised")
    with pytest.raises(InputError, match="re-cache with `clipocr cache-teacher --form raw`") as e:
        Trainer(_cfg(data, tmp_path / "a", teacher_store=str(normalised), max_steps=1,
                     heads={"loss_type": "l1"}))  # fmt: skip
    assert "\n" not in str(e.value) and str(e.value).startswith(str(normalised))
    raw = _store_with_form(data, tmp_path, "raw")
    Trainer(_cfg(data, tmp_path / "b", teacher_store=str(raw), max_steps=1,
                 heads={"loss_type": "l1"})).run()  # fmt: skip
    Trainer(_cfg(data, tmp_path / "c", teacher_store=str(normalised), max_steps=1,
                 heads={"loss_type": "l1", "use_gam": False})).run()  # fmt: skip
    Trainer(_cfg(data, tmp_path / "d", teacher_store=str(normalised), max_steps=1)).run()


@pytest.mark.parametrize("precision", ["fp32", "bf16", "auto"])
def test_no_loss_scaling_outside_fp16(data, tmp_path: Path, precision: str) -> None:
    trainer = Trainer(_cfg(data, tmp_path / "p", max_steps=1, precision=precision))
    assert not trainer.scaler.is_enabled()


def test_fp16_scales_the_loss_and_resumes_exactly(data, tmp_path: Path) -> None:
    """fp16 (autocast on CPU) trains through a GradScaler whose state is in the checkpoint: the
    first steps overflow at the initial scale 2^16 and back it off, so a resume that restarted
    the scaler would skip steps the uninterrupted run took."""
    full = tmp_path / "full"
    run = Trainer(_cfg(data, full, max_steps=6, ckpt_every=3, precision="fp16"))
    assert run.scaler.is_enabled()
    run.run()
    saved = torch.load(checkpoint_dirs(full)[0] / "state.pt", weights_only=True)["scaler"]
    assert saved["scale"] < 2.0**16  # backed off: the scaler really acted

    cut = tmp_path / "cut"
    Trainer(_cfg(data, cut, max_steps=6, ckpt_every=3, precision="fp16")).run()
    shutil.rmtree(checkpoint_dirs(cut)[-1])
    lines = (cut / "history.jsonl").read_text().splitlines()[:3]
    (cut / "history.jsonl").write_text("\n".join(lines) + "\n")
    resumed = Trainer(_cfg(data, cut, max_steps=6, ckpt_every=3, precision="fp16"), resume=True)
    assert resumed.scaler.get_scale() == saved["scale"]
    resumed.run()
    assert resumed.scaler.state_dict() == run.scaler.state_dict()
    for ra, rb in zip(_history(full), _history(cut), strict=True):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-5, abs=1e-6)
    wa, wb = load_file(full / "student.safetensors"), load_file(cut / "student.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture
def torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_cpu_threads_leave_a_core_per_worker(data, tmp_path: Path, monkeypatch, torch_threads):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    Trainer(_cfg(data, tmp_path / "a", max_steps=1, threads=None, workers=1))
    assert torch.get_num_threads() == 2
    Trainer(_cfg(data, tmp_path / "b", max_steps=1, threads=None, workers=0))
    assert torch.get_num_threads() == 3
    Trainer(_cfg(data, tmp_path / "c", max_steps=1, threads=1, workers=0))
    assert torch.get_num_threads() == 1
    with pytest.raises(InputError, match="threads must be >= 1"):
        _cfg(data, tmp_path / "d", threads=0)
    assert "threads" in TrainConfig.RESUMABLE_CHANGES


# -- faults and bad input (issue 15) ----------------------------------------------------------
@pytest.fixture
def deadline():
    """Fail a test that hangs instead of waiting forever (the loop runs Python code, so the
    alarm's exception lands in it)."""

    def expired(signum, frame):
        raise TimeoutError("the run did not finish in time (hang?)")

    before = signal.signal(signal.SIGALRM, expired)
    yield lambda seconds: signal.alarm(seconds)
    signal.alarm(0)
    signal.signal(signal.SIGALRM, before)


def _shards_with_a_truncated_jpeg(root: Path) -> Path:
    """17 JPEG words, the 10th cut to 100 bytes (`head -c 100`): prepare keeps it (its header
    is a JPEG's), the teacher cache lists it missing."""
    from clipocr.pipeline.charset import Charset
    from clipocr.pipeline.shards import prepare_shards

    words = [*WORDS, "extra"]
    images = [text_image(w, "JPEG") for w in words]
    images[9] = images[9][:100]
    db = write_lmdb(root / "jpeg_lmdb", list(zip(images, words)))
    prepare_shards([db], root / "shards", Charset.from_name("36"), 16, progress=False)
    return root / "shards"


def test_epoch_ends_with_the_stream_when_the_store_lists_missing_samples(tmp_path, deadline):
    """shards.json counts 17 samples (3 batches of 8), the store holds 16 (2 batches): the run
    must count 2 batches an epoch and go on to the next epoch, not re-read a finished one."""
    shards = _shards_with_a_truncated_jpeg(tmp_path)
    store = fake_store(shards, tmp_path / "store")
    deadline(120)
    trainer = Trainer(_cfg((shards, store), tmp_path / "run", max_steps=3))
    trainer.run()
    assert vars(trainer.pos) == {"step": 3, "epoch": 1, "batch_in_epoch": 1}
    assert trainer.steps_per_epoch == 2


def test_epoch_ends_with_a_stream_shorter_than_counted(tmp_path, deadline, caplog):
    """Without a store an undecodable image is dropped as it is read; with batches of one it
    takes its batch along, so the stream ends a batch early: the epoch ends with it (before, the
    loop re-read the epoch and trained on its last sample twice)."""
    shards = _shards_with_a_truncated_jpeg(tmp_path)
    cfg = TrainConfig(
        shards=str(shards), distill=False, out=str(tmp_path / "b"), preset="test", batch_size=1,
        workers=0, threads=1, max_steps=20, progress=False, log_every=1, ckpt_every=1000,
    )  # fmt: skip
    deadline(120)
    trainer = Trainer(cfg)
    trainer.run()
    assert vars(trainer.pos) == {"step": 20, "epoch": 1, "batch_in_epoch": 4}
    assert "ended after 16 of the 17 batches" in caplog.text


def test_resume_with_a_larger_step_budget_follows_the_longer_schedule(data, tmp_path) -> None:
    """`--resume --max-steps 8` after a 4-step run: the one-cycle schedule is rebuilt for 8
    steps and continued from step 4, so steps 5-8 run at the 8-step run's learning rates."""
    Trainer(_cfg(data, tmp_path / "r", max_steps=4, ckpt_every=2)).run()
    longer = Trainer(_cfg(data, tmp_path / "r", max_steps=8, ckpt_every=2), resume=True)
    assert longer.pos.step == 4
    longer.run()
    Trainer(_cfg(data, tmp_path / "eight", max_steps=8)).run()
    lrs = [r["lr"] for r in _history(tmp_path / "r")]
    assert [r["step"] for r in _history(tmp_path / "r")] == list(range(1, 9))
    assert lrs[4:] == pytest.approx([r["lr"] for r in _history(tmp_path / "eight")][4:])
    with pytest.raises(InputError, match="at step 8, past the step budget 6"):
        Trainer(_cfg(data, tmp_path / "r", max_steps=6, ckpt_every=2), resume=True)


def test_resume_compares_places_and_refuses_another_worker_count(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shards, store = data
    rel = os.path.relpath(shards, tmp_path)
    Trainer(_cfg(data, Path("rel"), max_steps=2, ckpt_every=1, shards=rel)).run()
    again = Trainer(_cfg(data, tmp_path / "rel", max_steps=3, ckpt_every=1), resume=True)
    assert again.pos.step == 2
    with pytest.raises(InputError, match=r"different settings: workers \(the order of the data"):
        Trainer(_cfg(data, Path("rel"), max_steps=3, workers=2), resume=True)
    assert "workers" not in TrainConfig.RESUMABLE_CHANGES


def _truncate(path: Path, keep: int = 100) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def test_resume_falls_back_past_damaged_states(data, tmp_path: Path, caplog) -> None:
    """A truncated newest state.pt, a garbage one before it: resume from the one before that,
    with warnings, and train on exactly as the uninterrupted run did (history without repeats)."""
    Trainer(_cfg(data, tmp_path / "full", max_steps=6)).run()
    run = tmp_path / "run"
    Trainer(_cfg(data, run, max_steps=6, ckpt_every=2, keep_checkpoints=3)).run()
    (run / "student.safetensors").unlink()
    six, four, two = reversed(checkpoint_dirs(run))
    _truncate(six / "state.pt")
    (four / "state.pt").write_bytes(b"garbage" * 100)
    resumed = Trainer(_cfg(data, run, max_steps=6, ckpt_every=2, keep_checkpoints=3), resume=True)
    assert resumed.pos.step == 2
    assert f"{six / 'state.pt'}: cannot resume from it" in caplog.text
    resumed.run()
    assert [r["step"] for r in _history(run)] == [1, 2, 3, 4, 5, 6]
    for ra, rb in zip(_history(tmp_path / "full"), _history(run), strict=True):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-5, abs=1e-6)
    for ckpt in checkpoint_dirs(run):
        (ckpt / "state.pt").unlink()
    with pytest.raises(InputError, match="no checkpoint has a readable state.pt") as err:
        Trainer(_cfg(data, run, max_steps=6, ckpt_every=2), resume=True)
    assert "\n" not in str(err.value)


def test_truncated_config_json_is_a_one_line_error(data, tmp_path: Path) -> None:
    Trainer(_cfg(data, tmp_path / "r", max_steps=1)).run()
    _truncate(tmp_path / "r" / "config.json", 50)
    with pytest.raises(InputError, match="config.json: unreadable, cannot resume"):
        Trainer(_cfg(data, tmp_path / "r", max_steps=2), resume=True)


def test_history_after_resume_has_each_step_once(data, tmp_path: Path) -> None:
    run = tmp_path / "r"
    Trainer(_cfg(data, run, max_steps=4, ckpt_every=2)).run()
    shutil.rmtree(checkpoint_dirs(run)[-1])
    with open(run / "history.jsonl", "a") as fh:
        fh.write('{"step": 5, "lo')  # the torn last line of a killed run
    Trainer(_cfg(data, run, max_steps=4, ckpt_every=2), resume=True).run()
    assert [r["step"] for r in _history(run)] == [1, 2, 3, 4]


def _disk_fills_at(monkeypatch, calls: int) -> None:
    """The `calls`-th state.pt write onwards fails as a full disk does, after a partial write."""
    real, seen = torch.save, []

    def save(obj, f, *args, **kw):
        seen.append(1)
        if len(seen) < calls:
            return real(obj, f, *args, **kw)
        with open(f, "ab") if isinstance(f, (str, os.PathLike)) else nullcontext(f) as fh:
            fh.write(b"PK\x03\x04 partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", save)


def test_disk_full_while_checkpointing(data, tmp_path: Path, monkeypatch) -> None:
    """One line, no half checkpoint under a final name, the last one kept; --resume goes on."""
    run = tmp_path / "r"
    _disk_fills_at(monkeypatch, calls=2)
    with pytest.raises(InputError, match="disk full while training") as err:
        Trainer(_cfg(data, run, max_steps=4, ckpt_every=2)).run()
    assert "\n" not in str(err.value)
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000002"]
    monkeypatch.undo()
    Trainer(_cfg(data, run, max_steps=4, ckpt_every=2), resume=True).run()
    assert [p.name for p in checkpoint_dirs(run)] == ["step-00000002", "step-00000004"]


def test_a_run_that_fails_before_its_first_checkpoint_leaves_a_reusable_folder(
    data, tmp_path: Path, monkeypatch
) -> None:
    shards, store = data
    no_index = tmp_path / "no_index"
    shutil.copytree(shards, no_index, ignore=shutil.ignore_patterns("shards.json"))
    run = tmp_path / "r"
    with pytest.raises(InputError, match="shards.json: missing"):
        Trainer(_cfg(data, run, max_steps=2, shards=str(no_index)))
    assert not (run / "config.json").exists()
    _disk_fills_at(monkeypatch, calls=1)
    with pytest.raises(InputError, match="disk full"):
        Trainer(_cfg(data, run, max_steps=2, ckpt_every=1)).run()
    monkeypatch.undo()
    with pytest.raises(InputError, match="no finished checkpoint to resume from; start the run"):
        Trainer(_cfg(data, run, max_steps=2), resume=True)
    Trainer(_cfg(data, run, max_steps=2)).run()  # starts over
    assert [r["step"] for r in _history(run)] == [1, 2]


def test_input_error_in_a_worker_reads_as_its_own_line(data, tmp_path: Path) -> None:
    shards, _ = data
    other = make_shards(tmp_path, list(reversed(WORDS)), shard_size=16)
    store = fake_store(other, tmp_path / "other_store")
    trainer = Trainer(_cfg(data, tmp_path / "r", max_steps=2, workers=1, teacher_store=str(store)))
    with pytest.raises(InputError) as err:
        trainer.run()
    message = str(err.value)
    assert message.startswith(f"{store}/shard-00000") and "\n" not in message, message


def test_ctc_student_trains_with_a_named_ctc_term(data, tmp_path: Path) -> None:
    """Student overrides reach the model; the CTC term is logged, validated and exported."""
    shards, _ = data
    val = write_lmdb(tmp_path / "val", [(text_image(w), w) for w in WORDS[:4]])
    run = tmp_path / "ctc"
    cfg = _cfg(data, run, student={"stem": "conv", "ctc_weight": 0.5, "dec_layer": "two_stream"},
               max_steps=2, val=[str(val)], val_every=2, dec_lr_scale=3.0)  # fmt: skip
    from clipocr.commands.train import validation

    trainer = Trainer(cfg, validate=validation(cfg.val))
    base, dec = (g["initial_lr"] for g in trainer.optimizer.param_groups)
    assert dec == pytest.approx(3.0 * base)
    trainer.run()
    history = _history(run)
    assert {"ce", "ctc", "aam_img1", "loss"} <= history[0].keys()
    assert any("val_ctc_acc/val" in r for r in history)
    student = load_student(run / "student.safetensors")
    assert (student.cfg.stem, student.cfg.ctc_weight) == ("conv", 0.5)
    _, image, _ = next(iter(ShardReader(shards)))
    assert len(student.read_ctc(normalize(image[None]))) == 1
    with pytest.raises(InputError, match="bad student settings"):
        _cfg(data, tmp_path / "bad", student={"stem": "resnet"})


def test_param_groups_put_the_whole_decoder_side_in_the_second_group() -> None:
    from clipocr.train_student.model import Student, student_config
    from clipocr.train_student.system import DistillSystem, param_groups

    student = Student(student_config("test", ctc_weight=1.0))
    rest, dec = param_groups(DistillSystem(student), 1e-3, 2.0)
    names = {id(p): n for n, p in student.named_parameters()}
    dec_names = {names[id(p)] for p in dec["params"]}
    assert dec["lr"] == 2e-3 and rest["lr"] == 1e-3
    assert "pos_queries" in dec_names and "head.weight" in dec_names
    assert not any(n.startswith(("encoder", "ctc_head")) for n in dec_names)
    assert len(rest["params"]) + len(dec["params"]) == len(list(student.parameters()))


def test_disk_full_in_train_closes_the_bar_and_prints_one_line(data, tmp_path, monkeypatch,
                                                              capsys) -> None:  # fmt: skip
    """`clipocr train` on a full disk: the progress bar's line is finished first, then a single
    ``error: …`` line of its own (not glued to the bar), exit 2, no traceback."""
    from conftest import run_console

    from clipocr.commands.app import main

    shards, store = data
    _disk_fills_at(monkeypatch, calls=1)
    rc, _, err = run_console(main, "clipocr", capsys, monkeypatch, "train", "--shards", shards,
                             "--teacher-store", store, "--out", tmp_path / "r", "--preset", "test",
                             "--batch-size", 8, "--max-steps", 2, "--ckpt-every", 1, "--workers",
                             0, "--threads", 1, "--device", "cpu")  # fmt: skip
    assert rc == 2 and "Traceback" not in err, err
    assert "train:" in err  # the bar was drawn (so this checks that it was closed)
    before, line = err.rsplit("error: ", 1)
    assert before.endswith("\n"), err  # the bar's line ended before the error began
    assert line.startswith(f"{tmp_path / 'r'}: disk full while training") and line.count("\n") == 1


def test_device_augmentation_trains_and_resumes_exactly(data, tmp_path: Path) -> None:
    """``augment_on="device"``: the stream yields clean images and the trainer augments the
    batch where it trains (here the CPU) before normalising, from a seed of (seed, epoch,
    batch), so a resumed run replays the same pixels; `augment_from_epoch` holds it back.
    (Augmentation asked for: by default a 1-view store's run does not augment.)"""
    on_device = {"augment": True, "augment_on": "device"}
    trainer = Trainer(_cfg(data, tmp_path / "probe", max_steps=3, **on_device))
    assert trainer.stream.cfg.augment is False and trainer.device_augment is not None
    batch = next(iter(trainer.stream))
    clean = normalize(batch["images"])
    moved = trainer._to_device(batch)["images"]
    changed = (moved != clean).flatten(1).any(1)
    assert changed.sum() >= len(changed) // 2  # 7 in 8 images draw at least one op
    assert torch.equal(trainer._to_device(batch)["images"], moved)
    later = Trainer(_cfg(data, tmp_path / "later", max_steps=3, **on_device,
                         augment_from_epoch=1))  # fmt: skip
    assert torch.equal(later._to_device(batch)["images"], clean)  # epoch 0: clean

    full, cut = tmp_path / "full", tmp_path / "cut"
    for run in (full, cut):
        Trainer(_cfg(data, run, max_steps=4, ckpt_every=2, **on_device)).run()
    shutil.rmtree(checkpoint_dirs(cut)[-1])
    (cut / "student.safetensors").unlink()
    lines = (cut / "history.jsonl").read_text().splitlines()[:2]
    (cut / "history.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match="different settings: augment_on"):
        Trainer(_cfg(data, cut, max_steps=4, ckpt_every=2, augment=True), resume=True)
    Trainer(_cfg(data, cut, max_steps=4, ckpt_every=2, **on_device), resume=True).run()
    a, b = _history(full), _history(cut)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert json.loads((full / "config.json").read_text())["augment_on"] == "device"
    for ra, rb in zip(a, b):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-5, abs=1e-6)


def test_a_killed_dataloader_worker_is_one_line_and_resume_goes_on(data, tmp_path, monkeypatch):
    """torch raises "DataLoader worker (pid N) is killed by signal" from its SIGCHLD handler,
    anywhere in the step: the run stops with one line (exit 1), its checkpoints kept."""
    from torch.utils.data import get_worker_info

    from clipocr.pipeline.errors import RunInterrupted
    from clipocr.train_student.dataset import DistillStream

    real = DistillStream.__iter__

    def dies_in_the_worker(self):
        for i, batch in enumerate(real(self)):
            if (self.epoch, i) == (1, 1) and get_worker_info() is not None:  # 2 batches an epoch
                os.kill(os.getpid(), signal.SIGKILL)  # as kill -9 or the OOM killer would
            yield batch

    monkeypatch.setattr(DistillStream, "__iter__", dies_in_the_worker)
    run = tmp_path / "r"
    with pytest.raises(RunInterrupted, match="DataLoader worker") as err:
        Trainer(_cfg(data, run, max_steps=6, ckpt_every=1, workers=1)).run()
    assert str(err.value).startswith(f"{run}: ") and "\n" not in str(err.value)
    assert str(err.value).endswith("finished checkpoints are kept: rerun with --resume")
    monkeypatch.undo()
    Trainer(_cfg(data, run, max_steps=6, ckpt_every=1, workers=1), resume=True).run()
    assert [r["step"] for r in _history(run)] == [1, 2, 3, 4, 5, 6]
