import pytest
import torch

from clipocr.pipeline.charset import REASON_EMPTY, REASON_TOO_LONG, Charset, LabelRejected

CS36 = Charset.from_name("36")
CS94 = Charset.from_name("94")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Hello", "hello"),  # case-folded for a lower-case charset
        ("don't", "dont"),  # symbols outside the charset are removed, not rejected
        ("New York", "newyork"),  # whitespace stripped
        ("café", "cafe"),  # NFKD + drop non-ASCII
        ("ﬁne", "fine"),  # compatibility ligature decomposes
        ("A1b2", "a1b2"),
    ],
)
def test_prepare_36(raw: str, expected: str) -> None:
    assert CS36.prepare(raw) == expected


def test_prepare_94_keeps_case_and_punctuation() -> None:
    assert CS94.prepare("Don't!") == "Don't!"
    assert CS94.prepare(" a b ") == "ab"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [("", REASON_EMPTY), ("!!!", REASON_EMPTY), ("  ", REASON_EMPTY), ("日本", REASON_EMPTY)],
)
def test_rejects_empty(raw: str, reason: str) -> None:
    with pytest.raises(LabelRejected) as err:
        CS36.prepare(raw)
    assert err.value.reason == reason


def test_length_limit_never_truncates() -> None:
    assert CS36.prepare("a" * 25) == "a" * 25
    with pytest.raises(LabelRejected) as err:
        CS36.prepare("a" * 26)
    assert err.value.reason == REASON_TOO_LONG
    # removal happens before the length check: 26 chars with one apostrophe is fine
    assert CS36.prepare("a" * 24 + "'b") == "a" * 24 + "b"


def test_prepare_test_drops_long_before_filtering() -> None:
    assert CS36.prepare_test("a" * 24 + "'b") is None  # 26 raw chars → dropped (PARSeq test.py)
    assert CS36.prepare_test("Hello!") == "hello"
    assert CS36.prepare_test("...") is None


def test_ids_and_round_trip() -> None:
    assert CS36.eos_id == 0 and CS36.num_classes == 37
    assert CS36.bos_id == 37 and CS36.pad_id == 38
    ids = CS36.encode("a0z9")
    assert ids == [11, 1, 36, 10]
    assert CS36.decode(ids + [CS36.eos_id, 5, 6]) == "a0z9"  # stops at EOS
    assert CS36.decode(torch.tensor([CS36.bos_id, 11, CS36.pad_id])) == "a"
    with pytest.raises(ValueError):
        CS36.encode("A")


def test_batch_targets_layout() -> None:
    tgt_in, tgt_out = CS36.batch_targets(["ab", "c"])
    assert tgt_in.shape == tgt_out.shape == (2, 3)
    assert tgt_in.tolist() == [[37, 11, 12], [37, 13, 38]]
    assert tgt_out.tolist() == [[11, 12, 0], [13, 0, 38]]


def test_unknown_charset() -> None:
    with pytest.raises(ValueError, match="unknown charset"):
        Charset.from_name("99")
