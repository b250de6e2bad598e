"""The command floor: every typer command of `clipocr` and `clipocr-eval`, and nothing else.

This is the only package that imports typer. Each module turns flags into the library's typed
configs and calls one library entry point; heavy modules (torch, open_clip, dask) are imported
inside the command functions so `clipocr --help` stays fast. The library packages below
(`pipeline`, `cache_teacher`, `train_student`, `evaluate`) never import this one.
"""
