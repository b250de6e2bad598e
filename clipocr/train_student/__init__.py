"""Student training (DESIGN §6): the student, its distillation heads and losses, data, the loop.

Owns: the pure-`nn` student (`model`) and the system around it (`system`: loss terms;
`heads`/`losses`: AAM, GAM, LCL), the typed `TrainConfig`, the streaming dataset that joins shards
with cached teacher targets, augmentation, the trainer and the inference checkpoint.

May import: `pipeline` only. Never `cache_teacher` or open_clip (the teacher exists here only as
cached targets), never `evaluate` (validation comes in as a callable) or typer.
"""
