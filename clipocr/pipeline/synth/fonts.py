"""Find the font faces the synthetic word renderer may use (DESIGN §3 "Synthetic data").

Font diversity is what makes rendered words transfer to real ones, and the only faces this project
may rely on are those shipped inside pip packages (no apt, no downloads at run time): the
``font_*`` packages, ``deckr_fonts``, and the faces inside the ``matplotlib`` and ``reportlab``
wheels, plus any folder the user passes. A face is kept when

1. its character map covers every symbol the renderer will draw (for a lower-case charset that
   includes the upper-case letters too, because words are rendered in mixed case),
2. its name is not one of the faces known to map Latin code points to *symbols* (TeX's cmex/cmsy,
   STIX size variants, emoji, dingbats …) — the cmap test cannot see those — nor one found
   unreadable by looking at every kept face, and
3. its glyphs for the letters and digits have ink and mostly distinct shapes (catches fallback
   faces such as LastResort that draw one box per Unicode block) and advance: a string is wider
   than its widest glyph (under raqm, Adobe's multiple-master Type 1 faces draw every glyph on
   one spot; faces are loaded with PIL's basic layout, where they work).

Small-caps faces (lower-case letters drawn as small capitals) are kept for the case-folded
36-symbol charset only: for a cased charset they would draw a label other than the stored one.
Variable fonts are expanded into their named instances (Inter Thin … Black), and duplicates of the
same family/style (e.g. Source Sans as both .otf and .ttf) are kept once. Discovery opens every
file, so it is cached per (symbols, folder).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import pkgutil
import string
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from fontTools import afmLib, agl, t1Lib
from fontTools.ttLib import TTCollection, TTFont
from PIL import Image, ImageFont

from clipocr.pipeline.errors import InputError

log = logging.getLogger(__name__)

# (package, sub-folder) pairs searched besides every top-level `font_*` package.
PACKAGE_FONT_DIRS: tuple[tuple[str, str], ...] = (
    ("deckr_fonts", "fonts"),
    ("matplotlib", "mpl-data/fonts/ttf"),
    ("reportlab", "fonts"),
)
SFNT_SUFFIXES = {".ttf", ".otf", ".ttc", ".otc"}
TYPE1_SUFFIXES = {".pfb"}

# Faces whose cmap covers Latin letters but whose glyphs are symbols, icons or placeholders.
SYMBOL_FACE_MARKERS: tuple[str, ...] = (
    "cmex",  # TeX math extension: big delimiters
    "cmsy",  # TeX math symbols
    "cmmi",  # TeX math italic: old-style digits, letters meant as variables
    "stixsiz",  # STIX size variants: big operators
    "stixnonuni",
    "symbol",
    "dingbat",
    "wingding",
    "webding",
    "emoji",
    "awesome",
    "icon",
    "lastresort",
    "last resort",
    "hb-test",
)
# Decorative faces that pass every automatic test but are not readable word shapes, found by
# looking at a contact sheet of every kept face (`bench/bench_synth.py --sheets DIR` draws one):
# Monofett draws capitals as white cut-outs of black rounded bars.
UNREADABLE_FACES: tuple[str, ...] = ("monofett",)

# Glyph tests, on glyphs rendered at GLYPH_TEST_PX: the fraction of distinct bitmaps among
# letters+digits a text face reaches, and the median lower/upper shape correlation (glyphs scaled
# to CASE_BOX px squares) above which a face is small caps. Measured on the pip faces: Amatic SC
# 0.84-0.85, every other face <= 0.72 (bold faces highest).
MIN_DISTINCT_GLYPHS = 0.9
CASELESS_SIMILARITY = 0.78
CASE_BOX = 24
GLYPH_TEST_PX = 20


@dataclass(frozen=True, order=True)
class Face:
    """One renderable face: a file, the index inside a collection, and a variable instance."""

    name: str  # unique, human-readable: "Inter[opsz,wght].ttf:Bold", "DejaVuSans.ttf"
    path: Path
    family: str
    index: int = 0
    instance: str | None = None

    def load(self, size: int) -> ImageFont.FreeTypeFont:
        """A PIL font at `size` px; callers cache it (loading costs ~30 µs, rendering reuses it).

        The basic layout engine is used: Latin words need no shaping, it measures text 2-4x
        faster than raqm, and it draws no ligatures, so every label character is one glyph.
        """
        font = ImageFont.truetype(
            str(self.path), size, index=self.index, layout_engine=ImageFont.Layout.BASIC
        )
        if self.instance is not None:
            font.set_variation_by_name(self.instance)
        return font


def required_symbols(chars: str) -> str:
    """The symbols a face must cover to render words for `chars` (both cases of every letter)."""
    return "".join(sorted(set(chars) | set(chars.swapcase())))


def package_dirs(places: list[tuple[str, str]]) -> list[Path]:
    """The folders `(package, subfolder)` inside installed packages, located without importing
    them; packages or folders that are absent are skipped (faces and background photos both
    come from what pip installed)."""
    dirs = []
    for name, sub in places:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            continue
        folder = Path(next(iter(spec.submodule_search_locations))) / sub
        if folder.is_dir():
            dirs.append(folder)
    return dirs


def package_font_dirs() -> list[Path]:
    """Folders of faces inside installed pip packages, located without importing the packages."""
    names = [(m.name, "") for m in pkgutil.iter_modules() if m.name.startswith("font_")]
    return package_dirs(sorted(names) + list(PACKAGE_FONT_DIRS))


def _font_files(folder: Path) -> list[Path]:
    suffixes = SFNT_SUFFIXES | TYPE1_SUFFIXES
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in suffixes and p.is_file())


def _is_symbol_face(*names: str) -> bool:
    text = " ".join(names).lower()
    return any(m in text for m in SYMBOL_FACE_MARKERS + UNREADABLE_FACES)


@dataclass(frozen=True)
class _Candidate:
    """A face plus what the charset-dependent filter needs: its family/style and its cmap."""

    key: tuple[str, str]  # (family, style), lower-case: one face per key is kept
    face: Face
    covers: frozenset[int]
    caseless: bool = False


def _sfnt_candidates(path: Path) -> list[_Candidate]:
    """Every face of an sfnt file, variable fonts expanded into their named instances."""
    if path.suffix.lower() in {".ttc", ".otc"}:
        fonts = TTCollection(str(path), lazy=True).fonts
    else:
        fonts = [TTFont(str(path), lazy=True)]
    out = []
    for index, font in enumerate(fonts):
        covers = frozenset(font.getBestCmap() or ())
        names = font["name"]
        family = names.getBestFamilyName() or path.stem
        style = names.getBestSubFamilyName() or "Regular"
        label = path.name if len(fonts) == 1 else f"{path.name}#{index}"
        if "fvar" not in font:
            out.append(
                _Candidate(
                    (family.lower(), style.lower()), Face(label, path, family, index), covers
                )
            )
            continue
        for inst in font["fvar"].instances:
            inst_name = names.getDebugName(inst.subfamilyNameID)
            if inst_name:
                face = Face(f"{label}:{inst_name}", path, family, index, inst_name)
                out.append(_Candidate((family.lower(), inst_name.lower()), face, covers))
    return out


def _type1_candidates(path: Path) -> list[_Candidate]:
    """A Type 1 (.pfb) face covers the code points whose AGL glyph names it has.

    The glyph names come from the .afm metrics file beside it when there is one: parsing the
    encrypted .pfb itself is ~100x slower.
    """
    afm_path = next(
        (p for p in (path.with_suffix(".afm"), path.with_suffix(".AFM")) if p.is_file()), None
    )
    if afm_path is not None:
        afm = afmLib.AFM(str(afm_path))
        glyphs, family, ps_name = set(afm.chars()), afm.FamilyName, afm.FontName
    else:
        font = t1Lib.T1Font(str(path))
        font.parse()
        glyphs = set(font.font["CharStrings"].keys())
        family = font.font.get("FontInfo", {}).get("FamilyName") or path.stem
        ps_name = font.font.get("FontName", path.stem)
    covers = frozenset(cp for cp, name in agl.UV2AGL.items() if name in glyphs)
    return [
        _Candidate(
            (str(family).lower(), str(ps_name).lower()), Face(path.name, path, str(family)), covers
        )
    ]


def _glyph_bitmaps(font: ImageFont.FreeTypeFont, symbols: str) -> list[np.ndarray] | None:
    """Each symbol's ink as a float array, or None when one of them draws nothing."""
    out = []
    for ch in symbols:
        mask, _ = font.getmask2(ch, mode="L")
        if mask.getbbox() is None:
            return None
        w, h = mask.size
        out.append(np.frombuffer(bytes(mask), np.uint8).reshape(h, w).astype(np.float32))
    return out


def _shape_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of two glyphs scaled to one box: ~1 when one is a scaled copy of the other."""
    x, y = (
        np.asarray(Image.fromarray(g).resize((CASE_BOX, CASE_BOX), Image.BILINEAR)) for g in (a, b)
    )
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum() + 1e-9))


def _glyph_test(face: Face) -> tuple[bool, bool]:
    """(draws text, caseless) for a face, judged from its letters and digits.

    Draws text: every letter and digit has ink, most have distinct shapes (LastResort draws one
    box per Unicode block), and a string is wider than its widest glyph (glyph advances work).
    Caseless: lower-case letters are scaled capitals (small-caps faces such as Amatic SC), which
    mislabels words for a cased charset.
    """
    font = face.load(GLYPH_TEST_PX)
    symbols = string.ascii_letters + string.digits
    glyphs = _glyph_bitmaps(font, symbols)
    if glyphs is None:
        return False, False
    distinct = {(g.shape, g.tobytes()) for g in glyphs}
    widest = max(g.shape[1] for g in glyphs)
    bbox = font.getbbox(symbols)
    if len(distinct) < MIN_DISTINCT_GLYPHS * len(symbols) or bbox[2] - bbox[0] < 4 * widest:
        return False, False
    pairs = zip(glyphs[:26], glyphs[26:52], strict=True)
    caseless = (
        float(np.median([_shape_similarity(lo, up) for lo, up in pairs])) > CASELESS_SIMILARITY
    )
    return True, caseless


@lru_cache(maxsize=32)
def _scan_folder(folder: Path) -> tuple[_Candidate, ...]:
    """The charset-independent part of discovery: open, name-filter and glyph-test every face."""
    out = []
    for path in _font_files(folder):
        try:
            if path.suffix.lower() in TYPE1_SUFFIXES:
                candidates = _type1_candidates(path)
            else:
                candidates = _sfnt_candidates(path)
            for cand in candidates:
                if _is_symbol_face(cand.face.name, cand.face.family):
                    continue
                draws_text, caseless = _glyph_test(cand.face)
                if draws_text:
                    out.append(dataclasses.replace(cand, caseless=caseless))
        except Exception as err:  # fontTools/FreeType raise many types on odd files (Type 1 MM)
            log.debug("skipping font %s: %s", path, err)
    return tuple(out)


def _select(
    candidates: list[_Candidate], needed: set[int], cased: bool
) -> dict[tuple[str, str], Face]:
    """Faces covering `needed`, one per family/style, preferring TrueType over CFF outlines.

    A `cased` charset keeps case in labels, so small-caps faces are left out for it.
    """
    found: dict[tuple[str, str], Face] = {}
    for cand in candidates:
        if not needed <= cand.covers or (cased and cand.caseless):
            continue
        if cand.key in found and found[cand.key].path.suffix.lower() == ".ttf":
            continue
        found[cand.key] = cand.face
    return found


@lru_cache(maxsize=8)
def discover_faces(chars: str, fonts_dir: Path | None = None) -> tuple[Face, ...]:
    """All usable faces for rendering words over the charset symbols `chars`, sorted by name.

    `fonts_dir` adds a user folder of TTF/OTF/TTC/PFB faces (searched recursively); it must
    exist and contribute at least one usable face.
    """
    needed = {ord(c) for c in required_symbols(chars)}
    cased = any(c.isupper() for c in chars)
    installed = [c for d in package_font_dirs() for c in _scan_folder(d)]
    found = _select(installed, needed, cased)
    if not found and fonts_dir is None:
        # A custom alphabet no installed face covers: say which symbols none of them has.
        uncovered = needed - set().union(*(c.covers for c in installed))
        raise InputError(
            f"no installed font covers all {len(needed)} symbols to render"
            + (f" (none has {''.join(map(chr, sorted(uncovered)))[:40]!r})" if uncovered else "")
            + "; add faces that do with --fonts DIR"
        )
    if fonts_dir is not None:
        if not fonts_dir.is_dir():
            raise InputError(f"{fonts_dir}: no such fonts folder")
        extra = _select(list(_scan_folder(fonts_dir.resolve())), needed, cased)
        if not extra:
            raise InputError(
                f"{fonts_dir}: no TTF/OTF/PFB face there covers the {len(needed)} symbols needed"
            )
        found.update(extra)
    return tuple(sorted(found.values()))
