"""Teacher side of CLIP-OCR (DESIGN §4): the only package that loads CLIP.

Owns: the frozen open_clip teacher (model config and weights with their activation, `weights`;
stage taps and the store spec that describes them, `teacher`), character tokenisation, the batch
runner that caches one shard's features, the dask orchestration over shards, and
`teacher-pretrain` (the small character-level CLIP the offline demo ships).

May import: `pipeline` (and open_clip, torch, dask). Never `train_student`, `evaluate` or
`commands`.
"""
