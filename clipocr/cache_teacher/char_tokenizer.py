"""Character-level tokenisation for CLIP text towers (DESIGN §4).

The teacher's text targets must line up one to one with the student's decoder positions, so every
character of a label is exactly one token: ``"abc" → [SOT, a, b, c, EOT]``. Two vocabularies:

* `BpeChars` — an OpenAI-style CLIP (open_clip's `SimpleTokenizer`). Feeding it ``"a b c"`` makes
  each character its own BPE word, so one token each; we build the per-character table once from
  the tokenizer itself and refuse a charset whose symbols do not map to a single token. CLIP's BPE
  lower-cases its input, so upper- and lower-case letters share a token (CLIP cannot tell them
  apart either).
  Nothing is out of CLIP's vocabulary, and that is the catch: its BPE is byte-level, so a symbol
  without a merged token of its own is spelled as its UTF-8 bytes, 2–4 tokens (measured: ``ä ö
  ü é à ø € £`` and ``Ä`` → ``ä`` are one token each; ``ß â ê ô ñ ç å æ œ`` two; ``ả ạ ế ệ ọ``,
  most of Vietnamese, three; ``本 한`` two). A multi-token symbol breaks the one-position-per-
  character alignment the distillation needs, so a charset holding one is refused, naming all of
  them, rather than distilled from byte pieces.
* `CharVocab` — the small teacher trained here: ids ``0 = pad, 1..C = chars, C+1 = SOT,
  C+2 = EOT``. EOT is the largest id because open_clip's text tower pools at ``argmax(ids)``.
  It knows exactly the symbols it was trained on (the bundled one: the 36 of ``0-9a-z``).

Both pad with id 0 after EOT; the text tower is causal, so padding never changes the features of
the kept tokens.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from functools import lru_cache

import torch


class CharTokenizer(ABC):
    """Shared behaviour: a per-character id table plus SOT/EOT/pad ids."""

    kind: str
    pad_id = 0

    def __init__(self, table: dict[str, int], sot_id: int, eot_id: int) -> None:
        self.table = table
        self.sot_id = sot_id
        self.eot_id = eot_id

    def char_ids(self, label: str) -> list[int]:
        """Token ids of the characters of `label`, without SOT/EOT."""
        try:
            return [self.table[c] for c in label]
        except KeyError as err:
            raise ValueError(
                f"character {err.args[0]!r} of label {label!r} has no token in the {self.kind} "
                "tokenizer"
            ) from None

    def encode(self, labels: Iterable[str], context_length: int) -> torch.Tensor:
        """``(B, context_length)`` long tensor: ``[SOT, c1 … cL, EOT, 0 …]`` per label."""
        labels = list(labels)
        out = torch.full((len(labels), context_length), self.pad_id, dtype=torch.long)
        for row, label in enumerate(labels):
            ids = [self.sot_id, *self.char_ids(label), self.eot_id]
            if len(ids) > context_length:
                raise ValueError(
                    f"label {label!r} needs {len(ids)} tokens, more than context length "
                    f"{context_length}"
                )
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def check_charset(self, chars: str) -> None:
        """Raise ValueError (one line, every missing symbol) unless each of `chars` has a token."""
        missing = [c for c in chars if c not in self.table]
        if missing:
            raise ValueError(
                f"this teacher's character vocabulary knows {len(self.table)} symbols "
                f"({_shown(''.join(self.table))}) and no single token for {len(missing)} "
                f"symbol(s) of the charset: {_shown(''.join(missing))}; cache with a teacher "
                "that covers them (teacher-pretrain --charset, or a CLIP model) or train with "
                "--no-distill"
            )

    @abstractmethod
    def describe(self) -> dict:
        """JSON-able identity of the tokenizer, recorded in fingerprints and configs."""


class CharVocab(CharTokenizer):
    """The trained-here teacher's vocabulary: ids 0 pad, 1..C chars, C+1 SOT, C+2 EOT."""

    kind = "char"

    def __init__(self, chars: str) -> None:
        if len(set(chars)) != len(chars):
            raise ValueError(f"duplicate characters in char vocabulary {chars!r}")
        self.chars = chars
        table = {c: i + 1 for i, c in enumerate(chars)}
        super().__init__(table, sot_id=len(chars) + 1, eot_id=len(chars) + 2)

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + 3

    def describe(self) -> dict:
        return {"type": "char", "chars": self.chars}


class BpeChars(CharTokenizer):
    """Character tokens of open_clip's OpenAI BPE (`SimpleTokenizer`): ``"a b c"`` per char."""

    kind = "bpe"

    def __init__(self, chars: str) -> None:
        tok = _simple_tokenizer()
        table = {}
        split: dict[str, int] = {}
        for c in chars:
            ids = tok.encode(c)
            if len(ids) == 1:
                table[c] = ids[0]
            else:
                split[c] = len(ids)
        if split:
            counts = sorted(set(split.values()))
            spread = "-".join(map(str, counts[:: max(len(counts) - 1, 1)]))
            raise ValueError(
                f"CLIP's byte-level BPE spells {len(split)} symbol(s) of the charset as {spread} "
                f"byte tokens, not one ({_shown(''.join(split))}), and distillation needs one "
                "token per character; leave them out of the charset or train with --no-distill"
            )
        super().__init__(table, sot_id=tok.sot_token_id, eot_id=tok.eot_token_id)

    def describe(self) -> dict:
        return {"type": "bpe-chars", "sot": self.sot_id, "eot": self.eot_id}


def _shown(symbols: str, limit: int = 40) -> str:
    """Symbols for a one-line message, cut after `limit`."""
    return repr(symbols if len(symbols) <= limit else symbols[:limit] + "...")


@lru_cache(maxsize=1)
def _simple_tokenizer():
    """open_clip's BPE tokenizer; built once (reading its merges file takes about a second)."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


def tokenizer_from_spec(spec: dict | None, chars: str) -> CharTokenizer:
    """Build the tokenizer a model config asks for (`None` = OpenAI BPE) covering `chars`."""
    if spec is None or spec.get("type") == "bpe-chars":
        return BpeChars(chars)
    if spec.get("type") == "char":
        vocab = CharVocab(spec["chars"])
        vocab.check_charset(chars)
        return vocab
    raise ValueError(f"unknown tokenizer type {spec.get('type')!r}; expected 'char' or 'bpe-chars'")
