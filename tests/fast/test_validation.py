"""Validators for what users and producers hand fpcancel (SPEC.md, "Inputs")."""

from __future__ import annotations

import string
import unicodedata
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fpcancel.errors import BadInput, ValidationError
from fpcancel.validation import clean_lane, clean_note, clean_order_uuid, clean_source

# The contract's alphabets, spelled out here rather than borrowed from the module under test.
ORDER_ID_CHARS = frozenset(string.ascii_letters + string.digits + "_-")
SOURCE_CHARS = ORDER_ID_CHARS | frozenset(".:")

# Text that mixes the allowed alphabet with the characters an attacker or a typo brings in.
NASTY = "/\\.%?#&=+ \t\n\r\x00:;'\"<>|é0Ⅻ１٣ßİ\u200b\u2028"
mixed_text = st.text(alphabet=st.sampled_from(sorted(ORDER_ID_CHARS) + list(NASTY)), max_size=80)
any_text = st.one_of(st.text(max_size=120), mixed_text)


# -- order ids ----------------------------------------------------------------------------------


@pytest.mark.parametrize("order_id", ["ODR123456789", "ODR2005869234", "a", "x" * 64, "odr_1-A"])
def test_real_order_ids_are_accepted_unchanged(order_id: str) -> None:
    """Real ids (`ODR…`, not RFC 4122 UUIDs) and any 1-64 allowed characters pass as-is."""
    assert clean_order_uuid(order_id) == order_id


@pytest.mark.parametrize(
    "order_id",
    [
        "../../etc/passwd",
        "ODR1 23",
        "",
        "A" * 70,
        "A" * 65,
        "ODR1%2F..",
        "ODR123/cancel",
        "ODR123\n",
        " ODR123",
        "ODR１２３",  # full-width digits look like digits but are not ASCII
        "8f14e45f-ceea-467f-a9d4-3c9b1d6a2b7e?x=1",
    ],
)
def test_bad_order_ids_are_refused_naming_the_field(order_id: str) -> None:
    """An order id outside 1-64 of A-Z a-z 0-9 _ - raises ValidationError naming `order_uuid`."""
    with pytest.raises(ValidationError) as caught:
        clean_order_uuid(order_id)
    assert caught.value.field == "order_uuid"
    assert str(caught.value).startswith("order_uuid: ")
    assert "\n" not in str(caught.value)


def test_order_id_error_names_the_field_the_caller_gives() -> None:
    """A caller validating a CSV column or option gets its own field name in the message."""
    with pytest.raises(ValidationError, match=r"^line 3 order_uuid: "):
        clean_order_uuid("bad id", field="line 3 order_uuid")


def test_bad_input_is_a_usage_error() -> None:
    """A refused value is a BadInput, which the CLI turns into exit code 2."""
    with pytest.raises(BadInput) as caught:
        clean_order_uuid("../x")
    assert caught.value.exit_code == 2


@pytest.mark.parametrize("value", [None, 123456789, b"ODR123", ["ODR123"]])
def test_order_id_that_is_not_a_string_is_refused(value: object) -> None:
    """A producer passing a non-string order id gets a ValidationError, not a TypeError."""
    with pytest.raises(ValidationError) as caught:
        clean_order_uuid(value)
    assert caught.value.field == "order_uuid"


def test_long_bad_order_id_keeps_the_message_one_short_line() -> None:
    """Quoting a 10,000-character id in the error does not flood the user's terminal."""
    with pytest.raises(ValidationError) as caught:
        clean_order_uuid("/" * 10_000)
    assert len(str(caught.value)) < 200


@given(any_text)
def test_any_text_is_a_clean_order_id_or_a_validation_error(text: str) -> None:
    """Any string comes back unchanged iff it is 1-64 allowed chars, and is refused otherwise."""
    valid = 1 <= len(text) <= 64 and set(text) <= ORDER_ID_CHARS
    try:
        cleaned = clean_order_uuid(text)
    except ValidationError as exc:
        assert not valid, f"a valid id was refused: {exc}"
        assert exc.field == "order_uuid"
    else:
        assert valid, f"an invalid id was accepted: {text!r}"
        assert cleaned == text
        assert quote(cleaned, safe="") == cleaned  # safe as one URL path segment


@given(st.text(alphabet=sorted(ORDER_ID_CHARS), min_size=1, max_size=64))
def test_every_id_in_the_contract_is_accepted(text: str) -> None:
    """No id the contract allows is refused."""
    assert clean_order_uuid(text) == text


# -- notes --------------------------------------------------------------------------------------


def test_note_is_trimmed() -> None:
    """Surrounding white space goes; the inside of the note stays as written."""
    assert clean_note("  \tCustomer  asked\nto cancel \n") == "Customer  asked\nto cancel"


@pytest.mark.parametrize("note", ["", "   ", "\t\n \r", "x" * 1001, "  " + "x" * 1001 + "  "])
def test_empty_blank_or_long_notes_are_refused(note: str) -> None:
    """A note that is empty after trimming, or over 1,000 characters, raises naming `note`."""
    with pytest.raises(ValidationError) as caught:
        clean_note(note)
    assert caught.value.field == "note"


def test_a_note_of_exactly_1000_characters_after_trimming_is_kept() -> None:
    """The 1,000-character limit counts the trimmed note, so padding does not push it over."""
    note = "y" * 1000
    assert clean_note("   " + note + "\n") == note


@pytest.mark.parametrize("value", [None, 42, b"note"])
def test_note_that_is_not_a_string_is_refused(value: object) -> None:
    """The note is required and must be text."""
    with pytest.raises(ValidationError) as caught:
        clean_note(value)
    assert caught.value.field == "note"


# Spelled out here, not borrowed from the module: what a note may not hold, and what is invisible.
FORBIDDEN_IN_NOTES = {
    chr(c) for c in [*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), *range(0x7F, 0xA0)]
}
INVISIBLE = "\u200b\u200c\u200d\u2060\ufeff\u00ad\u200e\u202e\u3164\u2800"
note_text = st.one_of(
    st.text(max_size=1100),
    st.text(alphabet=" \t\nab", max_size=1100),
    st.text(alphabet=st.sampled_from(list(" ab\x00\x1b\x9b\ud800\udcff" + INVISIBLE)), max_size=40),
)


def _edge_invisible(char: str) -> bool:
    return char.isspace() or char in INVISIBLE or unicodedata.category(char) == "Cf"


@given(note_text)
def test_any_text_is_a_clean_note_or_a_validation_error(text: str) -> None:
    """Any note comes back trimmed and 1-1,000 characters long, or is refused; nothing else."""
    expected = text
    while expected and _edge_invisible(expected[0]):
        expected = expected[1:]
    while expected and _edge_invisible(expected[-1]):
        expected = expected[:-1]
    storable = not (set(text) & FORBIDDEN_IN_NOTES) and not any(
        "\ud800" <= c <= "\udfff" for c in text
    )
    try:
        cleaned = clean_note(text)
    except ValidationError as exc:
        assert exc.field == "note"
        assert not (storable and 1 <= len(expected) <= 1000), f"a valid note was refused: {exc}"
    else:
        assert storable
        assert cleaned == expected
        assert 1 <= len(cleaned) <= 1000
        cleaned.encode("utf-8")  # what both databases store


@pytest.mark.parametrize(
    "note",
    ["\u200b", "\ufeff", "\u200b \ufeff\n", "\u3164\u3164", "\u2060\u00ad"],
)
def test_a_note_of_only_invisible_characters_is_blank(note: str) -> None:
    """Zero-width spaces, a BOM, Hangul fillers: nothing a reader could see, so the note is empty."""
    with pytest.raises(ValidationError, match="empty"):
        clean_note(note)


@pytest.mark.parametrize(
    "note, what",
    [("cancel\x00now", "\\x00"), ("a\x1b[2Jb", "\\x1b"), ("\udcff\udcfe", "not valid Unicode")],
)
def test_a_note_neither_database_can_store_is_refused(note: str, what: str) -> None:
    """NUL (PostgreSQL refuses it), escape sequences and lone surrogates (invalid UTF-8 from a
    command line) never reach the database."""
    with pytest.raises(ValidationError) as caught:
        clean_note(note)
    assert what in str(caught.value)


def test_tabs_and_line_breaks_stay_in_a_note() -> None:
    """A note may span lines; only the edges are trimmed."""
    assert clean_note(" line one\n\tline two\r\n") == "line one\n\tline two"


# -- sources ------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["shop", "stock-out:2024.06.01", "a_b", "s" * 64])
def test_good_sources_pass_unchanged(source: str) -> None:
    """A source label of 1-64 of A-Z a-z 0-9 _ - . : is kept as given."""
    assert clean_source(source) == source


def test_no_source_is_fine() -> None:
    """The source is optional: None stays None."""
    assert clean_source(None) is None


@pytest.mark.parametrize("source", ["", "s" * 65, "shop web", "shop/web", "späti", 7])
def test_bad_sources_are_refused_naming_the_field(source: object) -> None:
    """An empty, too long or oddly spelled source raises ValidationError naming `source`."""
    with pytest.raises(ValidationError) as caught:
        clean_source(source)
    assert caught.value.field == "source"


@given(st.one_of(st.text(max_size=80), st.text(alphabet=sorted(SOURCE_CHARS) + list(NASTY))))
def test_any_text_is_a_clean_source_or_a_validation_error(text: str) -> None:
    """Any string is a source exactly when it is 1-64 allowed characters."""
    valid = 1 <= len(text) <= 64 and set(text) <= SOURCE_CHARS
    try:
        cleaned = clean_source(text)
    except ValidationError as exc:
        assert not valid, f"a valid source was refused: {exc}"
        assert exc.field == "source"
    else:
        assert valid and cleaned == text


# -- lanes --------------------------------------------------------------------------------------


@pytest.mark.parametrize("lane", ["live", "bulk"])
def test_the_two_lanes_are_accepted(lane: str) -> None:
    """`live` and `bulk` are the lanes a producer may choose."""
    assert clean_lane(lane) == lane


@pytest.mark.parametrize("lane", ["", "LIVE", "Bulk", " live", "fast", None, 1, ["live"]])
def test_other_lanes_are_refused_naming_the_field(lane: object) -> None:
    """Anything but `live` or `bulk` raises ValidationError naming `lane` and the choices."""
    with pytest.raises(ValidationError) as caught:
        clean_lane(lane)
    assert caught.value.field == "lane"
    assert "live" in caught.value.reason and "bulk" in caught.value.reason


@given(st.one_of(st.text(max_size=10), st.sampled_from(["live", "bulk"])))
def test_any_text_is_a_lane_or_a_validation_error(text: str) -> None:
    """Any string is either one of the two lanes or refused; never another exception."""
    try:
        assert clean_lane(text) in ("live", "bulk")
    except ValidationError as exc:
        assert text not in ("live", "bulk")
        assert exc.field == "lane"
