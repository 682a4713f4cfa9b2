"""Prompt tags: grammar, errors, and property tests (round trips, no crash on arbitrary text)."""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lib_magicnaming.errors import IdentityError, StrengthError, TagError
from lib_magicnaming.tags import (
    DEFAULT_STRENGTH,
    NAME_RE,
    STRENGTH_MAX,
    STRENGTH_MIN,
    NameTag,
    check_strength,
    find_name_tags,
    format_name_tag,
    identity_key,
    rewrite_name_tags,
    validate_identity_name,
)

# ---------------------------------------------------------------- identity names


@pytest.mark.parametrize("name", ["a", "Alice", "bob_2", "x-y.z", "_", "-", "9", "a" * 64, "a.", "A..b"])
def test_legal_names_are_returned_unchanged(name):
    assert validate_identity_name(name) == name


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("", "empty"),
        (".hidden", "starts with '.'"),
        ("a" * 65, "65 characters"),
        ("../x", "'/'"),
        ("/etc/passwd", "'/'"),
        ("a b", "' '"),
        ("a\x00b", "'\\x00'"),
        ("ålice", "'å'"),
        ("аlice", "'а'"),  # Cyrillic a, a look-alike
        ("c:x", "':'"),
        ("a\\b", "'\\\\'"),
    ],
)
def test_illegal_names_raise_identity_error_naming_the_problem(name, says):
    with pytest.raises(IdentityError) as caught:
        validate_identity_name(name)
    assert says in str(caught.value)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=70) | st.text(alphabet="aZ09_-./ ", max_size=70))
def test_property_validation_agrees_with_name_re(name):
    legal = NAME_RE.fullmatch(name) is not None
    try:
        validate_identity_name(name)
    except IdentityError:
        assert not legal
    else:
        assert legal


def test_non_text_name_is_refused():
    with pytest.raises(IdentityError, match="must be text"):
        validate_identity_name(7)  # type: ignore[arg-type]


def test_identity_key_is_case_insensitive_and_validates():
    assert identity_key("Alice") == identity_key("ALICE") == "alice"
    with pytest.raises(IdentityError):
        identity_key("../alice")


# ---------------------------------------------------------------- finding tags


def test_finds_every_tag_with_span_name_and_strength():
    prompt = "photo of <name:Alice> and <name:bob_2:0.75>, <NAME: carol.x : 1.5 > <Name:d:2>"
    tags = find_name_tags(prompt)
    assert [(t.identity, t.strength) for t in tags] == [
        ("Alice", None),
        ("bob_2", 0.75),
        ("carol.x", 1.5),
        ("d", 2.0),
    ]
    for tag in tags:
        assert prompt[tag.start : tag.end] == tag.text
    assert tags[0].key == "alice"
    assert tags[2].text == "<NAME: carol.x : 1.5 >"


@pytest.mark.parametrize(
    "prompt",
    [
        "no tags at all",
        "<lora:alice:0.8> <hypernet:x:1>",
        "<names:alice> <named:x> <nam:e>",
        "< name:alice> <name :alice>",
        "<name alice> name:alice> <>",
        "<<name",
    ],
)
def test_text_that_is_not_our_tag_is_left_alone(prompt):
    assert find_name_tags(prompt) == []
    assert rewrite_name_tags(prompt, lambda tag: "X") == prompt


@pytest.mark.parametrize(
    ("text", "strength"),
    [("1", 1.0), ("0", 0.0), ("0.8", 0.8), (".5", 0.5), ("2.", 2.0), ("1e-1", 0.1), ("+1.25", 1.25)],
)
def test_strength_forms(text, strength):
    (tag,) = find_name_tags(f"<name:a:{text}>")
    assert tag.strength == strength


@pytest.mark.parametrize(
    ("prompt", "says", "span"),
    [
        ("x <name:alice", "is not closed", (2, 13)),
        ("x <name:alice, red hair", "'<name:alice, red hair' is not closed", (2, 23)),
        ("<name:alice <lora:y:1>", "'<name:alice ' is not closed", (0, 12)),
        ("<name:alice\n>", "is not closed", (0, 11)),
        ("<name:>", "names no identity", (0, 7)),
        ("<name:  :1>", "names no identity", (0, 11)),
        ("<name:a b>", "contains ' '", (0, 10)),
        ("<name:.a>", "starts with '.'", (0, 9)),
        ("ok <name:../etc>", "'/'", (3, 16)),
        ("<name:" + "a" * 65 + ">", "65 characters", (0, 72)),
        ("<name:a:>", "empty strength", (0, 9)),
        ("<name:a:high>", "'high' in the tag '<name:a:high>' is not a number", (0, 13)),
        ("<name:a:0x1>", "is not a number", (0, 12)),
        ("<name:a:1_0>", "is not a number", (0, 12)),
        ("<name:a:nan>", "must be a finite number", (0, 12)),
        ("<name:a:-inf>", "must be a finite number", (0, 13)),
        ("<name:a:1e999>", "must be a finite number", (0, 14)),
        ("<name:a:2.5>", "is 2.5; it must be from 0 to 2", (0, 12)),
        ("<name:a:-0.1>", "is -0.1; it must be from 0 to 2", (0, 13)),
        ("<name:a:1:2>", "too many ':'", (0, 12)),
    ],
)
def test_malformed_tags_raise_tag_error_quoting_the_tag(prompt, says, span):
    with pytest.raises(TagError) as caught:
        find_name_tags(prompt)
    assert says in str(caught.value)
    assert caught.value.span == span


def test_first_malformed_tag_is_reported_even_after_good_ones():
    with pytest.raises(TagError) as caught:
        find_name_tags("<name:a> <name:b:9> <name:c:x>")
    assert "'<name:b:9>'" in str(caught.value)
    assert caught.value.span == (9, 19)


def test_long_tag_text_is_shortened_in_messages():
    with pytest.raises(TagError) as caught:
        find_name_tags("<name:" + "a b " * 100 + ">")
    assert len(str(caught.value)) < 300
    assert "..." in str(caught.value)


@pytest.mark.parametrize(
    ("value", "strength"), [(0, 0.0), (2, 2.0), (0.5, 0.5), ("1.5", 1.5), (" .25 ", 0.25)]
)
def test_the_one_strength_rule_accepts_numbers_in_range(value, strength):
    assert check_strength(value) == strength


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("strong", "'strong' is not a number"),
        (None, "None is not a number"),
        (True, "True is not a number"),
        (10**400, "is not a number"),
        (float("nan"), "must be a finite number"),
        ("-inf", "must be a finite number"),
        (2.5, "is 2.5; it must be from 0 to 2"),
        (-0.1, "is -0.1; it must be from 0 to 2"),
    ],
)
def test_the_one_strength_rule_names_the_problem(value, problem):
    with pytest.raises(StrengthError) as caught:
        check_strength(value)
    assert problem in caught.value.problem and str(caught.value).startswith("The strength ")


def test_strength_bounds_and_default_are_the_documented_ones():
    assert (STRENGTH_MIN, STRENGTH_MAX, DEFAULT_STRENGTH) == (0.0, 2.0, 1.0)
    plain, weighted = find_name_tags("<name:a> <name:b:0.5>")
    assert (plain.strength, weighted.strength) == (None, 0.5)


# ---------------------------------------------------------------- formatting and NameTag


def test_format_name_tag_round_trips_through_the_parser():
    for identity, strength in [("alice", None), ("Bob", 0.8), ("c", 0.1 + 0.2), ("d", 2.0), ("e", 0.0)]:
        (tag,) = find_name_tags(format_name_tag(identity, strength))
        assert (tag.identity, tag.strength) == (identity, strength)


def test_format_name_tag_validates():
    with pytest.raises(IdentityError):
        format_name_tag("a/b")
    with pytest.raises(TagError):
        format_name_tag("a", 3.0)


def test_name_tag_built_by_hand_gets_canonical_text():
    assert NameTag("alice", 0.5, 0, 0).text == "<name:alice:0.5>"
    assert NameTag("alice", None, 0, 0).text == "<name:alice>"


# ---------------------------------------------------------------- rewriting


def test_rewrite_substitutes_each_tag_and_keeps_other_text():
    prompt = "<name:a> with <name:B:0.5>, <lora:x:1>"
    out = rewrite_name_tags(prompt, lambda t: f"[{t.key}@{t.strength}]")
    assert out == "[a@None] with [b@0.5], <lora:x:1>"


def test_rewrite_parses_everything_before_replacing():
    calls = []
    with pytest.raises(TagError):
        rewrite_name_tags("<name:a> <name:>", lambda t: calls.append(t) or "")
    assert calls == []


# ---------------------------------------------------------------- property tests

NAME_CHARS = "abcXYZ019_-."
names = st.text(alphabet=NAME_CHARS, min_size=1, max_size=12).filter(lambda s: not s.startswith("."))
strengths = st.one_of(st.none(), st.floats(min_value=STRENGTH_MIN, max_value=STRENGTH_MAX, allow_nan=False))
# Filler text that cannot start a tag of ours ('<' is never followed by "name:"): may hold other tags.
fillers = st.text(alphabet="ab <>:,()\n\tNnAaMmEe.é1", max_size=20).filter(
    lambda s: re.search(r"<name:", s, re.IGNORECASE) is None
)
tag_texts = st.builds(format_name_tag, names, strengths)


@st.composite
def prompts_with_tags(draw):
    """A prompt of filler and tags, with the tags it holds."""
    count = draw(st.integers(min_value=0, max_value=5))
    pieces, expected = [draw(fillers)], []
    for _ in range(count):
        identity, strength = draw(names), draw(strengths)
        pieces.append(format_name_tag(identity, strength))
        expected.append((identity, strength))
        pieces.append(draw(fillers))
    prompt = "".join(pieces)
    return prompt, expected


@settings(max_examples=200, deadline=None)
@given(prompts_with_tags())
def test_property_finds_exactly_the_tags_put_in(case):
    prompt, expected = case
    tags = find_name_tags(prompt)
    assert [(t.identity, t.strength) for t in tags] == expected
    for tag in tags:
        assert prompt[tag.start : tag.end] == tag.text


@settings(max_examples=200, deadline=None)
@given(prompts_with_tags())
def test_property_rewriting_with_own_text_gives_the_prompt_back(case):
    prompt, _ = case
    assert rewrite_name_tags(prompt, lambda tag: tag.text) == prompt


MARKER_RE = re.compile(r"\x02(\d+)\x03")


@settings(max_examples=200, deadline=None)
@given(prompts_with_tags())
def test_property_rewrite_to_markers_and_back(case):
    prompt, expected = case
    seen: list[NameTag] = []

    def to_marker(tag: NameTag) -> str:
        seen.append(tag)
        return f"\x02{len(seen) - 1}\x03"

    marked = rewrite_name_tags(prompt, to_marker)
    assert find_name_tags(marked) == []
    assert [(t.identity, t.strength) for t in seen] == expected
    restored = MARKER_RE.sub(lambda m: seen[int(m.group(1))].text, marked)
    assert restored == prompt


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_property_arbitrary_text_raises_only_tag_error(text):
    try:
        tags = find_name_tags(text)
    except TagError as error:
        assert error.span is not None and 0 <= error.span[0] < error.span[1] <= len(text)
        assert text[error.span[0] :].lower().startswith("<name:")
    else:
        assert rewrite_name_tags(text, lambda tag: tag.text) == text
        assert all(text[t.start : t.end] == t.text for t in tags)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.sampled_from(["<name:", "<NAME:", ">", ":", "<", " ", "\n"]),
            names,
            st.sampled_from(["0.5", "nan", "-1", "3", "x", ""]),
        ),
        max_size=12,
    )
)
def test_property_tag_like_soup_raises_only_tag_error(parts):
    text = "".join(parts)
    try:
        tags = find_name_tags(text)
    except TagError:
        return
    for tag in tags:
        assert STRENGTH_MIN <= (tag.strength if tag.strength is not None else 1.0) <= STRENGTH_MAX
        assert validate_identity_name(tag.identity) == tag.identity
