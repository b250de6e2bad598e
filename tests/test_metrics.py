import pytest

from clipocr.evaluate.metrics import Tally, edit_distance, normalized_edit_distance, score
from clipocr.pipeline.charset import Charset

CS36 = Charset.from_name("36")
CS94 = Charset.from_name("94")


@pytest.mark.parametrize(
    ("a", "b", "d"),
    [("kitten", "sitting", 3), ("", "abc", 3), ("abc", "", 3), ("", "", 0), ("abc", "abc", 0),
     ("abcd", "acbd", 2), ("flaw", "lawn", 2)],
)  # fmt: skip
def test_edit_distance(a: str, b: str, d: int) -> None:
    assert edit_distance(a, b) == d
    assert edit_distance(b, a) == d


def test_ned_follows_icdar2019() -> None:
    # Normalised by the longer string, so it stays in [0, 1].
    assert normalized_edit_distance("abcd", "abc") == pytest.approx(0.25)
    assert normalized_edit_distance("x", "abcdefgh") == pytest.approx(1.0)
    assert normalized_edit_distance("", "abc") == 1.0
    assert normalized_edit_distance("", "") == 0.0


def test_case_is_folded_under_36_but_not_94() -> None:
    s = score("Hello", "HELLO", CS36)
    assert s is not None and s.correct and s.label == "hello" and s.ned == 0.0
    s94 = score("Hello", "HELLO", CS94)
    assert s94 is not None and not s94.correct and s94.label == "HELLO"
    assert s94.ned == pytest.approx(4 / 5)


def test_punctuation_is_removed_from_label_and_prediction() -> None:
    for pred in ("dont", "don't", "DON'T!"):
        s = score(pred, "don't", CS36)
        assert s is not None and s.correct and s.label == "dont"
    s94 = score("dont", "don't", CS94)
    assert s94 is not None and not s94.correct


def test_unicode_and_whitespace() -> None:
    s = score("cafe", "Café", CS36)
    assert s is not None and s.correct and s.label == "cafe"
    s = score("newyork", "New York", CS36)
    assert s is not None and s.correct and s.label == "newyork"
    # A prediction the charset cannot express is filtered to nothing: wrong, NED 1.
    s = score("日本", "abc", CS36)
    assert s is not None and s.prediction == "" and not s.correct and s.ned == 1.0


def test_prediction_is_not_unicode_normalised() -> None:
    """PARSeq's CharsetAdapter filters predictions raw: a peer's "héllo" is "hllo", wrong."""
    s = score("héllo", "hello", CS36)
    assert s is not None and s.prediction == "hllo" and not s.correct
    assert s.ned == pytest.approx(1 / 5)


def test_empty_prediction_is_wrong_and_empty_label_is_dropped() -> None:
    s = score("", "abc", CS36)
    assert s is not None and not s.correct and s.ned == 1.0
    assert score("abc", "!!!", CS36) is None  # empty once filtered to 36 symbols
    assert score("abc", "   ", CS36) is None
    s94 = score("!!!", "!!!", CS94)  # but a 94-symbol protocol keeps it
    assert s94 is not None and s94.correct


def test_length_25_limit_applies_before_filtering() -> None:
    label25 = "a" * 25
    s = score(label25, label25, CS36)
    assert s is not None and s.correct
    assert score("a" * 26, "a" * 26, CS36) is None
    # 26 raw symbols of which 24 survive filtering: still dropped, as PARSeq's test set does.
    assert score("a" * 24, "a" * 24 + "''", CS36) is None


def test_tally_figures_and_pooling() -> None:
    a, b = Tally(), Tally()
    a.add(score("abc", "abc", CS36), 0.9)
    a.add(score("abd", "abc", CS36), 0.5)
    b.add(score("", "xy", CS36), 0.1)
    assert a.accuracy == pytest.approx(50.0)
    assert a.one_minus_ned == pytest.approx(100 * (1 - (0 + 1 / 3) / 2))
    assert a.confidence == pytest.approx(70.0)
    pooled = Tally.combine([a, b])
    assert (pooled.samples, pooled.correct) == (3, 1)
    assert pooled.accuracy == pytest.approx((50.0 * 2 + 0.0 * 1) / 3)
    assert pooled.confidence == pytest.approx(100 * 1.5 / 3)
    assert Tally().accuracy == 0.0
