"""The names list shipped with the extension (lib_magicnaming/data/well_known_people.txt).

Sample measures the loaded checkpoint's name space from these names and the library shows the nearest of
them, so every line must be one plain name that the names box and the WebUI's prompt parser read as
written, with no name listed twice.
"""

import re
import unicodedata
from pathlib import Path

import pytest

from lib_magicnaming.namespace import parse_weighted_names

LIST_PATH = Path(__file__).resolve().parent.parent / "lib_magicnaming" / "data" / "well_known_people.txt"
MAX_LINE = 100
NAME_PUNCTUATION = " .-'"


def is_plain_name(name: str) -> bool:
    """Letters of any script, single blanks between words, and the . - ' of "Samuel L. Jackson", "Jay-Z" and
    "Lupita Nyong'o"; NFC, starting with a letter. Nothing the WebUI's prompt syntax reads ((), [], :, |,
    <>, backslash) and nothing the names box reads (+, quotes, a leading number)."""
    return (
        name[:1].isalpha()
        and name == name.strip()
        and "  " not in name
        and name == unicodedata.normalize("NFC", name)
        and all(ch.isalpha() or ch in NAME_PUNCTUATION for ch in name)
    )


def fold(name: str) -> str:
    """What makes two spellings the same name: case, accents, blanks, dots, hyphens, apostrophes."""
    decomposed = unicodedata.normalize("NFKD", name.casefold())
    bare = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return re.sub(r"[\s.'\-]", "", bare)


@pytest.fixture(scope="module")
def raw() -> bytes:
    return LIST_PATH.read_bytes()


@pytest.fixture(scope="module")
def lines(raw) -> list[str]:
    return raw.decode("utf-8").split("\n")[:-1]


@pytest.fixture(scope="module")
def names(lines) -> list[str]:
    return [line for line in lines if not line.startswith("#")]


def test_file_is_utf8_without_bom_with_unix_newlines_ending_in_one(raw):
    assert not raw.startswith(b"\xef\xbb\xbf")
    raw.decode("utf-8")  # strict: raises on a byte that is not UTF-8
    assert raw.endswith(b"\n") and not raw.endswith(b"\n\n")
    assert b"\r" not in raw


def test_header_says_what_the_list_is_for_its_licence_and_that_users_may_use_their_own(lines):
    header = []
    for line in lines:
        if not line.startswith("#"):
            break
        header.append(line)
    text = " ".join(line.lstrip("# ") for line in header)
    assert header[0].startswith("# MagicNaming names list")
    for words in ("Sample", "name space", "closest to", "MIT", "LICENSE", "your own list", "same format"):
        assert words in text, words


def test_at_least_a_thousand_names(names):
    assert len(names) >= 1000


def test_no_line_is_longer_than_the_limit(lines):
    too_long = [line for line in lines if len(line) > MAX_LINE]
    assert too_long == []


def test_every_name_line_is_one_plain_name(names):
    assert [name for name in names if not is_plain_name(name)] == []


def test_every_name_parses_as_itself_with_weight_one(names):
    unparsed = [name for name in names if parse_weighted_names(name) != [(name, 1.0)]]
    assert unparsed == []


def test_no_name_is_listed_twice_even_spelled_differently(names):
    first_of: dict[str, str] = {}
    twice = []
    for name in names:
        key = fold(name)
        if key in first_of:
            twice.append((first_of[key], name))
        first_of.setdefault(key, name)
    assert twice == []


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("Beyoncé", "beyonce"),
        ("Jay-Z", "Jay Z"),
        ("J. K. Rowling", "JK Rowling"),
        ("Zoë Kravitz", "ZOE  KRAVITZ"),
    ],
)
def test_fold_treats_spelling_variants_as_one_name(one, other):
    assert fold(one) == fold(other)


def test_fold_keeps_different_names_apart():
    assert fold("Chris Evans") != fold("Chris Evert")


READ_SPECIALLY = ("50 Cent", "Tom + Jerry", 'Dwayne "The Rock" Johnson', "(Keanu)", "Keanu: Reeves", "A|B")


@pytest.mark.parametrize("text", READ_SPECIALLY)
def test_name_rule_refuses_what_a_parser_would_read_specially(text):
    assert not is_plain_name(text)


@pytest.mark.parametrize("text", ["Samuel L. Jackson", "Jay-Z", "Lupita Nyong'o", "Sơn Tùng M-TP", "Björk"])
def test_name_rule_accepts_names_as_captions_write_them(text):
    assert is_plain_name(text)
