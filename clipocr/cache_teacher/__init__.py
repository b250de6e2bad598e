"""Teacher side of CLIP-OCR: the frozen open_clip teacher with its stage taps and character
tokenisation, the batch runner that caches its features, the dask orchestration over shards, and
`teacher-pretrain` (the small character-level CLIP the offline demo ships)."""
