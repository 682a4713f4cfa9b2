"""Marker text: round trips, and it survives everything the WebUI does to a prompt before encoding."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lib_magicnaming.errors import MagicNamingError
from lib_magicnaming.webui import markers

pytest_plugins = ["webui_standin"]

HASH = "0123456789"


@given(strength=st.floats(min_value=0.0, max_value=2.0), mode=st.sampled_from(markers.MODES))
def test_marker_round_trip_keeps_hash_mode_and_strength_to_a_thousandth(strength, mode):
    marker = markers.parse_marker(markers.format_marker(HASH, mode, strength))
    assert marker.short_hash == HASH and marker.mode == mode
    assert abs(marker.strength - strength) <= 0.0005


def test_mode_aliases_and_bad_values():
    assert markers.normalise_mode("In_Place") == markers.IN_PLACE
    assert markers.normalise_mode(" prepend ") == markers.PREPEND
    with pytest.raises(MagicNamingError, match="'sideways'"):
        markers.normalise_mode("sideways")
    with pytest.raises(MagicNamingError, match="from 0 to 2"):
        markers.format_marker(HASH, "prepend", 2.5)
    with pytest.raises(MagicNamingError, match="not a short identity hash"):
        markers.format_marker("XYZ", "prepend", 1.0)
    with pytest.raises(MagicNamingError, match="not a number"):
        markers.check_strength("strong")


def test_strip_markers_by_mode_and_to_empty():
    prepend = markers.format_marker(HASH, "prepend", 1.0)
    in_place = markers.format_marker("abcdefabcd", "in place", 0.5)
    text = f"a{markers.padded(prepend)}b{markers.padded(in_place)}c"
    assert markers.strip_markers(text, "prepend") == f"a b{markers.padded(in_place)}c"
    assert markers.strip_markers(text) == "a b c"
    assert markers.strip_markers(markers.padded(prepend)) == ""
    assert [m.text for m in markers.find_markers(text)] == [prepend, in_place]


def test_error_markers_carry_a_message_hash():
    text = f"{markers.format_error_marker('boom')} a cat"
    assert markers.find_error_hashes(text) == [markers.message_hash("boom")]
    assert markers.has_markers(text)
    assert not markers.has_markers("a cat")


def test_markers_survive_extra_networks_scheduling_and_and(webui):
    word = markers.format_marker(HASH, "in place", 1.25)
    prompt = f"<lora:x:1> [{markers.padded(word)}:dog:3] AND (cat{markers.padded(word)}:1.2) BREAK x"
    stripped, extra = webui.extra_networks.parse_prompts([prompt])
    assert "lora" in extra and word in stripped[0]
    schedules = webui.prompt_parser.get_learned_conditioning_prompt_schedules(stripped, 10)[0]
    assert word in schedules[0][1].split("AND")[0] and word not in schedules[1][1].split("AND")[0]
    _, flat, _ = webui.prompt_parser.get_multicond_prompt_list(stripped)
    assert all(word in text for text in flat)
    pieces = webui.prompt_parser.parse_prompt_attention(flat[1])
    assert any(word in text and weight > 1 for text, weight in pieces)
