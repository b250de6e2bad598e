"""Synthetic word images after MJSynth and SynthTIGER (DESIGN §3 "Synthetic data").

Owns everything `clipocr synth` needs to turn a seed into labelled word crops that transfer to
real ones, at hundreds of images per second on one core:

- `fonts`: the faces pip packages ship, filtered to those that draw readable words;
- `lexicon`, `signs`: the strings drawn (wordfreq's English list in sign-like case, prices, phone
  numbers, codes, addresses, brand-like names, random strings);
- `colours`: text/background colour pairs measured on real crops (``assets/synth``);
- `backgrounds`: photo crops from installed packages or ``--backgrounds DIR``, textures;
- `geometry`: projective, curved and elastic distortion in one resampling;
- `effects`: light, fade, blur, motion blur, low resolution, noise, JPEG;
- `styles`: the parameter ranges of the ``clean`` and ``hard`` styles;
- `raster`: cached glyphs, palette, noise and warp primitives the renderer reuses;
- `renderer`: `WordRenderer`, one image per ``(seed, index)``, byte-identical for a seed;
- `dataset`: JPEG sample streams and whole STR LMDBs with their ``synth.json``.

Imports only `clipocr.pipeline` modules (charset, errors, lmdb_io) besides PIL, numpy, fontTools
and wordfreq. The names below are the package's public interface.
"""

from clipocr.pipeline.synth.dataset import RenderResult, encode_jpeg, iter_samples, render_lmdb
from clipocr.pipeline.synth.fonts import Face, discover_faces, package_font_dirs, required_symbols
from clipocr.pipeline.synth.lexicon import WordSampler
from clipocr.pipeline.synth.renderer import WordRenderer
from clipocr.pipeline.synth.styles import STYLES, Style

__all__ = [
    "STYLES",
    "Face",
    "RenderResult",
    "Style",
    "WordRenderer",
    "WordSampler",
    "discover_faces",
    "encode_jpeg",
    "iter_samples",
    "package_font_dirs",
    "render_lmdb",
    "required_symbols",
]
