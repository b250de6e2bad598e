"""Find the font faces the synthetic word renderer may use (DESIGN §3 "Synthetic data").

Font diversity is what makes rendered words transfer to real ones, and the only faces this project
may rely on are those shipped inside pip packages (no apt, no downloads at run time): the
``font_*`` packages, ``deckr_fonts``, and the faces inside the ``matplotlib`` and ``reportlab``
wheels, plus any folder the user passes. A face is kept when

1. its character map covers every symbol the renderer will draw (for a lower-case charset that
   includes the upper-case letters too, because words are rendered in mixed case),
2. its name is not one of the faces known to map Latin code points to *symbols* (TeX's cmex/cmsy,
   STIX size variants, emoji, dingbats …) — the cmap test cannot see those, and
3. its glyphs for the letters and digits are non-empty and mostly distinct, which catches fallback
   faces such as LastResort that draw the same box for a whole Unicode block.

Variable fonts are expanded into their named instances (Inter Thin … Black), and duplicates of the
same family/style (e.g. Source Sans as both .otf and .ttf) are kept once. Discovery opens every
file, so it is cached per (symbols, folder).
"""

from __future__ import annotations

import importlib.util
import logging
import pkgutil
import string
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from fontTools import agl, t1Lib
from fontTools.ttLib import TTCollection, TTFont
from PIL import ImageFont

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
# Decorative faces that pass every automatic test but are not readable word shapes (see the
# contact sheet made by `contact_sheet`).
UNREADABLE_FACES: tuple[str, ...] = ("monofett", "sixtyfour")

# Glyph-distinctness threshold for test 3 (fraction of unique bitmaps among letters+digits).
MIN_DISTINCT_GLYPHS = 0.9


@dataclass(frozen=True, order=True)
class Face:
    """One renderable face: a file, the index inside a collection, and a variable instance."""

    name: str  # unique, human-readable: "Inter[opsz,wght].ttf:Bold", "DejaVuSans.ttf"
    path: Path
    family: str
    index: int = 0
    instance: str | None = None

    def load(self, size: int) -> ImageFont.FreeTypeFont:
        """A PIL font at `size` px; callers cache it (loading costs ~30 µs, rendering reuses it)."""
        font = ImageFont.truetype(str(self.path), size, index=self.index)
        if self.instance is not None:
            font.set_variation_by_name(self.instance)
        return font


def required_symbols(chars: str) -> str:
    """The symbols a face must cover to render words for `chars` (both cases of every letter)."""
    return "".join(sorted(set(chars) | set(chars.swapcase())))


def package_font_dirs() -> list[Path]:
    """Folders of faces inside installed pip packages, located without importing the packages."""
    names = [(m.name, "") for m in pkgutil.iter_modules() if m.name.startswith("font_")]
    dirs = []
    for name, sub in sorted(names) + list(PACKAGE_FONT_DIRS):
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            continue
        folder = Path(next(iter(spec.submodule_search_locations))) / sub
        if folder.is_dir():
            dirs.append(folder)
    return dirs


def _font_files(folder: Path) -> list[Path]:
    suffixes = SFNT_SUFFIXES | TYPE1_SUFFIXES
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in suffixes and p.is_file())


def _is_symbol_face(*names: str) -> bool:
    text = " ".join(names).lower()
    return any(m in text for m in SYMBOL_FACE_MARKERS + UNREADABLE_FACES)


def _sfnt_faces(path: Path, needed: set[int]) -> list[tuple[tuple[str, str], Face]]:
    """(dedup key, face) for every face and named instance in an sfnt file covering `needed`."""
    if path.suffix.lower() in {".ttc", ".otc"}:
        fonts = TTCollection(str(path), lazy=True).fonts
    else:
        fonts = [TTFont(str(path), lazy=True)]
    out = []
    for index, font in enumerate(fonts):
        cmap = font.getBestCmap() or {}
        if not needed <= cmap.keys():
            continue
        names = font["name"]
        family = names.getBestFamilyName() or path.stem
        style = names.getBestSubFamilyName() or "Regular"
        label = path.name if len(fonts) == 1 else f"{path.name}#{index}"
        if "fvar" not in font:
            out.append(((family.lower(), style.lower()), Face(label, path, family, index)))
            continue
        for inst in font["fvar"].instances:
            inst_name = names.getDebugName(inst.subfamilyNameID)
            if inst_name:
                face = Face(f"{label}:{inst_name}", path, family, index, inst_name)
                out.append(((family.lower(), inst_name.lower()), face))
    return out


def _type1_face(path: Path, needed: set[int]) -> list[tuple[tuple[str, str], Face]]:
    """A Type 1 (.pfb) face covers a symbol when it has the glyph named after it (AGL names)."""
    font = t1Lib.T1Font(str(path))
    font.parse()
    glyphs = font.font["CharStrings"].keys()
    if not all(agl.UV2AGL.get(cp) in glyphs for cp in needed):
        return []
    info = font.font.get("FontInfo", {})
    family = str(info.get("FamilyName") or path.stem)
    ps_name = str(font.font.get("FontName", path.stem))
    return [((family.lower(), ps_name.lower()), Face(path.name, path, family))]


def _draws_distinct_glyphs(face: Face) -> bool:
    """Letters and digits must have ink and (mostly) different shapes."""
    font = face.load(24)
    shapes = set()
    symbols = string.ascii_letters + string.digits
    for ch in symbols:
        mask, _ = font.getmask2(ch, mode="L")
        if mask.getbbox() is None:
            return False
        shapes.add((mask.size, bytes(mask)))
    return len(shapes) >= MIN_DISTINCT_GLYPHS * len(symbols)


def _faces_in(files: list[Path], needed: set[int]) -> dict[tuple[str, str], Face]:
    found: dict[tuple[str, str], Face] = {}
    for path in files:
        try:
            if path.suffix.lower() in TYPE1_SUFFIXES:
                candidates = _type1_face(path, needed)
            else:
                candidates = _sfnt_faces(path, needed)
        except Exception as err:  # fontTools raises many types on odd files (e.g. Type 1 MM)
            log.debug("skipping font %s: %s", path, err)
            continue
        for key, face in candidates:
            if key in found and found[key].path.suffix.lower() == ".ttf":
                continue  # keep one file per family/style, preferring TrueType outlines
            if _is_symbol_face(face.name, face.family):
                continue
            try:
                if not _draws_distinct_glyphs(face):
                    continue
            except OSError as err:  # FreeType cannot open it after all
                log.debug("skipping font %s: %s", path, err)
                continue
            found[key] = face
    return found


@lru_cache(maxsize=8)
def discover_faces(chars: str, fonts_dir: Path | None = None) -> tuple[Face, ...]:
    """All usable faces for rendering words over the charset symbols `chars`, sorted by name.

    `fonts_dir` adds a user folder of TTF/OTF/TTC/PFB faces (searched recursively); it must
    exist and contribute at least one usable face.
    """
    needed = {ord(c) for c in required_symbols(chars)}
    files = [f for d in package_font_dirs() for f in _font_files(d)]
    found = _faces_in(files, needed)
    if fonts_dir is not None:
        if not fonts_dir.is_dir():
            raise InputError(f"{fonts_dir}: no such fonts folder")
        extra = _faces_in(_font_files(fonts_dir), needed)
        if not extra:
            raise InputError(
                f"{fonts_dir}: no TTF/OTF/PFB face there covers the {len(needed)} symbols needed"
            )
        found.update(extra)
    return tuple(sorted(found.values()))
