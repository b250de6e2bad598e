"""What the teacher's text side can tokenise for a custom alphabet, and the one line it says
about what it cannot (issue 21): one token per character, or refused."""

import json
from pathlib import Path

import pytest

from clipocr.cache_teacher.char_tokenizer import BpeChars, CharVocab, tokenizer_from_spec
from clipocr.pipeline.charset import Charset

GERMAN = "0123456789abcdefghijklmnopqrstuvwxyzäöüß"
BUNDLED = Path(__file__).resolve().parents[1] / "clipocr" / "assets" / "teacher" / "teacher.json"


def test_the_bundled_teacher_names_every_symbol_it_lacks() -> None:
    spec = json.loads(BUNDLED.read_text())["tokenizer"]
    tokenizer_from_spec(spec, Charset.from_spec("36").chars)  # its own 36 symbols: fine
    with pytest.raises(ValueError) as err:
        tokenizer_from_spec(spec, Charset.from_spec(GERMAN).chars)
    message = str(err.value)
    assert "knows 36 symbols" in message and "no single token for 4 symbol(s)" in message
    assert "'äöüß'" in message and "\n" not in message


def test_a_char_vocab_over_a_custom_alphabet_encodes_it() -> None:
    vocab = CharVocab(GERMAN)  # what teacher-pretrain builds for this charset
    assert vocab.char_ids("äöüß") == [37, 38, 39, 40]
    assert vocab.encode(["größe"], 27)[0, :7].tolist() == [41, 17, 28, 38, 40, 15, 42]


def test_clip_bpe_splits_symbols_outside_its_merges_into_byte_tokens() -> None:
    """CLIP's BPE is byte-level: nothing is out of vocabulary, but ``ß`` and most Vietnamese
    letters come out as 2-3 byte tokens, which cannot align with one decoder position each.
    ``ä ö ü`` have tokens of their own (``Ä`` shares ``ä``'s: CLIP lower-cases)."""
    tok = BpeChars("abcäöüÄ")
    assert tok.char_ids("Ä") == tok.char_ids("ä") and len(tok.char_ids("äöü")) == 3
    with pytest.raises(ValueError) as err:
        BpeChars(GERMAN)
    assert "1 symbol(s) of the charset as 2 byte tokens, not one ('ß')" in str(err.value)
    with pytest.raises(ValueError, match=r"as 2-3 byte tokens, not one \('ảăấ'\)"):
        BpeChars("abcảăấ")
