"""Data plumbing shared by every job: labels, LMDB/WebDataset io, preprocessing, the teacher store.

Owns: charset and label preparation (PARSeq's order, DESIGN §3), STR LMDB and tar-shard io,
image decoding and the one 32×128 resize, the teacher-store format (`teacher_store/`, the one
contract between caching and training, DESIGN §5), rendered words (`synth/`), the student
augmentation and cached views (`augment`, `views`: both jobs apply them), and the small
job-wide helpers (CPU threads, typed config files, autocast policy, `InputError`).

May import: nothing from clipocr outside itself — no `cache_teacher`, `train_student`,
`evaluate` or `commands` — and neither open_clip nor typer, so both jobs can rely on it without
importing each other.
"""
