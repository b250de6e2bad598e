"""clipocr: distil a frozen CLIP teacher, cached once to Zarr, into small scene text recognizers."""

__version__ = "0.1.0"
