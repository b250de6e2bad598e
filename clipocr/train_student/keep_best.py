"""`--keep-best K`: the K students of best validation accuracy, beside the newest checkpoints.

PARSeq keeps its top-k checkpoints by validation accuracy; the newest checkpoint is not always
the best, and a run whose accuracy peaks before its end should not lose that student. Kept are
students alone (``RUN/best/step-N/student.safetensors``, what `read` and `clipocr-eval` load),
not training states: resuming is the newest checkpoint's job (`run_dir`).

The score is the mean of the ``val_acc/*`` word accuracies over the validation sets (each set
counts once, whatever its size); ties keep the earlier step. ``RUN/best.json`` lists the kept
students best first, and says which student ``RUN/student.safetensors`` is (`export`: ``last``,
the run's final step; ``best``, the best kept). A resumed run drops the entries written after
the step it resumes from (it validates those steps again, identically).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from clipocr.train_student.checkpoint import save_student
from clipocr.train_student.model import Student

log = logging.getLogger(__name__)

BEST_DIR = "best"
BEST_RECORD = "best.json"
METRIC = "mean of val_acc/* (word accuracy, each validation set once)"


def val_score(record: dict[str, float]) -> float | None:
    """The ranking score of one validation record, None without word accuracies."""
    accs = [v for k, v in record.items() if k.startswith("val_acc/")]
    return sum(accs) / len(accs) if accs else None


class BestKeeper:
    """Keeps the `keep` best students of a run in RUN/best and their record in RUN/best.json."""

    def __init__(self, run_dir: Path, keep: int, resumed_at: int | None) -> None:
        self.run_dir = Path(run_dir)
        self.root = self.run_dir / BEST_DIR
        self.keep = keep
        self.kept: list[dict[str, Any]] = []
        if resumed_at is None:  # a fresh run: whatever an abandoned start left is not its own
            shutil.rmtree(self.root, ignore_errors=True)
            (self.run_dir / BEST_RECORD).unlink(missing_ok=True)
        else:
            self.kept = [e for e in self._read() if e["step"] <= resumed_at]
        self._prune()

    def _read(self) -> list[dict[str, Any]]:
        try:
            kept = json.loads((self.run_dir / BEST_RECORD).read_text())["kept"]
        except (OSError, ValueError, KeyError, TypeError):
            return []
        return [e for e in kept if (self.run_dir / e["path"]).is_file()]

    def _prune(self) -> None:
        """Rank, cut to `keep`, delete every folder no entry names, write best.json."""
        self.kept.sort(key=lambda e: (-e["score"], e["step"]))
        self.kept = self.kept[: self.keep]
        named = {self.run_dir / e["path"] for e in self.kept}
        if self.root.exists():
            for folder in self.root.iterdir():
                if folder / "student.safetensors" not in named:
                    shutil.rmtree(folder, ignore_errors=True)
        self.write()

    def offer(self, step: int, record: dict[str, float], student: Student) -> bool:
        """Keep `student` if its validation `record` ranks among the best `keep`."""
        score = val_score(record)
        if self.keep < 1 or score is None:
            return False
        self.kept = [e for e in self.kept if e["step"] != step]
        if len(self.kept) >= self.keep and score <= min(e["score"] for e in self.kept):
            return False
        rel = Path(BEST_DIR) / f"step-{step:08d}" / "student.safetensors"
        save_student(self.run_dir / rel, student)
        accs = {k.removeprefix("val_acc/"): v for k, v in record.items() if "val_acc/" in k}
        self.kept.append({"step": step, "score": score, "val_acc": accs, "path": str(rel)})
        self._prune()
        return True

    def write(self, exported: dict[str, Any] | None = None) -> None:
        record: dict[str, Any] = {"metric": METRIC, "keep": self.keep, "kept": self.kept}
        if exported is not None:
            record["student.safetensors"] = exported
        tmp = self.run_dir / f".tmp-{BEST_RECORD}"
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(tmp, self.run_dir / BEST_RECORD)

    def export(self, final: Path, which: str, last_step: int, student: Student) -> None:
        """Write RUN/student.safetensors: the last step's `student`, or the best kept one (a
        copy of its file); best.json says which."""
        best = self.kept[0] if self.kept else None
        if which == "best" and best is not None:
            tmp = final.with_name(final.name + ".tmp")
            shutil.copyfile(self.run_dir / best["path"], tmp)
            os.replace(tmp, final)
            exported = {"from": "best", "step": best["step"], "score": best["score"]}
        else:
            if which == "best":
                log.warning("%s: no validated student was kept; exporting the last", self.run_dir)
            save_student(final, student)
            exported = {"from": "last", "step": last_step}
        self.write(exported)
