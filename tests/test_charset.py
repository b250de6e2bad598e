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
    # the length check comes before removal (PARSeq): 26 chars with one apostrophe is too long
    with pytest.raises(LabelRejected) as err:
        CS36.prepare("a" * 24 + "'b")
    assert err.value.reason == REASON_TOO_LONG


def test_training_label_length_is_checked_before_charset_filtering() -> None:
    """PARSeq's LmdbDataset: 27 characters, 3 of them punctuation, is too long for 36 symbols
    although its 24 letters would fit."""
    label = "abcdefgh.ijklmnop-qrstuvwx!"
    assert len(label) == 27 and len(CS36.filter(label)) == 24
    with pytest.raises(LabelRejected) as err:
        CS36.prepare(label)
    assert err.value.reason == REASON_TOO_LONG
    assert CS36.prepare(label[:25]) == "abcdefghijklmnopqrstuvw"  # 25 is still fine


def test_prepare_test_drops_long_before_filtering() -> None:
    assert CS36.prepare_test("a" * 24 + "'b") is None  # 26 raw chars → dropped (PARSeq test.py)
    assert CS36.prepare_test("Hello!") == "hello"
    assert CS36.prepare_test("...") is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("ﬁ" + "a" * 24, None),  # 25 raw, 26 after NFKD ("fi"): too long
        ("½" + "a" * 24, None),  # NFKD "1⁄2" → "12" once the fraction slash (non-ASCII) goes: 26
        ("e\u0301" * 13, "e" * 13),  # 26 raw, 13 once the combining accents are dropped
    ],
)
def test_test_label_length_is_measured_after_unicode_normalisation(
    raw: str, expected: str | None
) -> None:
    """PARSeq measures the label after NFKD + ASCII filtering, not as stored."""
    assert CS36.prepare_test(raw) == expected


def test_filter_does_not_normalise_unicode() -> None:
    """Predictions are filtered as PARSeq's CharsetAdapter does: raw, so a non-ASCII letter
    is removed, not decomposed into its ASCII base."""
    assert CS36.filter("héllo") == "hllo"
    assert CS36.filter("Hello World!") == "helloworld"
    assert CS94.filter("Don't stop") == "Don'tstop"


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
    """Bad input (the CLI prints one line) that config validation can still catch as ValueError."""
    from clipocr.pipeline.errors import InputError

    for kind in (ValueError, InputError):
        with pytest.raises(kind, match="unknown charset"):
            Charset.from_name("99")


# -- custom alphabets (issue 21) --------------------------------------------------------------
GERMAN = "0123456789abcdefghijklmnopqrstuvwxyzäöüß"


def test_charset_file_one_symbol_per_line_or_one_line(tmp_path) -> None:
    lines = tmp_path / "de.txt"
    # BOM, CRLF, blank lines and a decomposed "a" + combining diaeresis (NFC → "ä")
    text = "\ufeff" + "\r\n".join([*GERMAN[:36], "a\u0308", "", " ö ", "ü", "ß"]) + "\r\n"
    lines.write_text(text, encoding="utf-8")
    one_line = tmp_path / "de-line.txt"
    one_line.write_text(GERMAN + "\n", encoding="utf-8")
    for spec in (lines, one_line, GERMAN):
        cs = Charset.from_spec(str(spec))
        assert (cs.name, cs.chars, cs.is_custom) == (GERMAN, GERMAN, True)
        # The recorded name rebuilds it anywhere, without the file.
        assert Charset.from_name(cs.name) == cs
    assert "custom charset of 40 symbols" in Charset.from_spec(GERMAN).describe()


def test_a_file_listing_an_ascii_set_is_that_set(tmp_path) -> None:
    path = tmp_path / "lower.txt"
    path.write_text("\n".join(reversed(CS36.chars)))
    assert Charset.from_spec(str(path)) == CS36 and not CS36.is_custom


@pytest.mark.parametrize(
    ("spec", "message"),
    [("37", "unknown charset '37'"), ("charsets/de.txt", "no such charset file"),
     ("alphabet/de", "symbols listed twice"), ("ab c", "whitespace cannot be a symbol"),
     ("a", "at least 2 symbols")],
)  # fmt: skip
def test_bad_charset_specs_are_one_line(spec: str, message: str) -> None:
    from clipocr.pipeline.errors import InputError

    with pytest.raises(InputError, match=message):
        Charset.from_spec(spec)


def test_bad_charset_files_name_file_and_line(tmp_path) -> None:
    from clipocr.pipeline.errors import InputError

    path = tmp_path / "bad.txt"
    path.write_text("a\nb\nch\n")
    with pytest.raises(InputError, match=r"bad.txt:3: 'ch' is not one symbol"):
        Charset.from_spec(str(path))
    path.write_bytes(b"a\nb\n\xe9\n")
    with pytest.raises(InputError, match="not UTF-8"):
        Charset.from_spec(str(path))
    with pytest.raises(InputError, match="a folder, not a charset file"):
        Charset.from_spec(str(tmp_path))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("Äpfel", "äpfel"),  # kept in Unicode, case-folded (no upper case in the set)
     ("STRAßE!", "straße"),  # outside symbols removed as for the ASCII sets
     ("a\u0308rger", "ärger"),  # NFC: decomposed input matches the precomposed symbol
     ("café", "caf"),  # no ASCII folding: é is not in this set
     ("Grüße aus Köln", "grüßeausköln")],
)  # fmt: skip
def test_custom_labels_keep_unicode(raw: str, expected: str) -> None:
    assert Charset.from_spec(GERMAN).prepare(raw) == expected


def test_custom_label_length_is_measured_in_nfc() -> None:
    cs = Charset.from_spec(GERMAN)
    assert cs.prepare("a\u0308" * 25) == "ä" * 25  # 50 code points as stored, 25 symbols
    with pytest.raises(LabelRejected) as err:
        cs.prepare("ä" * 26)
    assert err.value.reason == REASON_TOO_LONG
    with pytest.raises(LabelRejected) as err:
        cs.prepare("日本語")
    assert err.value.reason == REASON_EMPTY
    assert cs.decode(cs.encode("äöüß")) == "äöüß"
