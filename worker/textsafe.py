"""Text from outside (notes, provider answers, error messages) made safe to show, trim or export.

- `printable(text)`: for a person at a terminal or reading a pipe. Control characters (C0, DEL,
  C1), line and paragraph separators, lone surrogates, unassigned code points and invisible
  format characters (bidi overrides, zero-width characters, the BOM) are shown as Python-style
  escapes (`\\x1b`, `\\n`, `\\u202e`), so an answer can neither drive the terminal (clear it,
  write the clipboard, hide a hyperlink) nor forge an extra line. Everything else is unchanged.
- `trim(text)` and `is_blank(text)`: white space and invisible characters at the edges go; a text
  made of nothing else is blank.
- `csv_cell(value)`: a spreadsheet cell that cannot start a formula (OWASP's CSV-injection advice).

`--json` output never goes through here: it stays exact.
"""

import unicodedata
from typing import Any

# Categories a terminal may act on or that do not show: control, format, surrogate, unassigned,
# line and paragraph separators.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Cn", "Zl", "Zp"})
# Letters that render as nothing although Unicode calls them letters (Hangul fillers, the
# braille blank): a note made of them is as blank as one made of spaces.
_BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Cells starting with these are formulas to Excel, LibreOffice and Google Sheets.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _escape(char: str) -> str:
    if char in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[char]
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def is_unsafe(char: str) -> bool:
    """Whether `char` must not reach a terminal as it is."""
    return unicodedata.category(char) in _UNSAFE_CATEGORIES


def printable(value: Any) -> str:
    """`value` as text a terminal shows as it is: every unsafe character escaped."""
    text = "" if value is None else str(value)
    if text.isascii() and text.isprintable():
        return text  # the common case, without looking at each character
    return "".join(_escape(c) if is_unsafe(c) else c for c in text)


def _invisible(char: str) -> bool:
    return char.isspace() or char in _BLANK_LETTERS or unicodedata.category(char) == "Cf"


def trim(text: str) -> str:
    """`text` without white space or invisible characters (zero-width space, BOM) at either end."""
    start, end = 0, len(text)
    while start < end and _invisible(text[start]):
        start += 1
    while end > start and _invisible(text[end - 1]):
        end -= 1
    return text[start:end]


def is_blank(text: str) -> bool:
    """Nothing a reader could see: empty, or only white space and invisible characters."""
    return not trim(text)


def csv_cell(value: Any) -> Any:
    """A CSV cell that a spreadsheet will not run: text starting with `=`, `+`, `-`, `@`, a tab or
    a carriage return gets a leading `'`. Numbers and empty cells pass as they are."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value
