"""The MagicNaming infotext entry: written per image, parsed back, and pasting restores the accordion."""

import pytest

from lib_magicnaming.webui.infotext import (
    INFOTEXT_KEY,
    InfotextSummary,
    PerImageInfotext,
    format_summary,
    parse_summary,
)

pytest_plugins = ["webui_standin", "webui_standin.extension"]

pytestmark = pytest.mark.ui_stack


def test_summary_round_trip_and_duplicates_once():
    text = format_summary([("alice", "1a2b3c4d5e"), ("bob.v2", "ffffffffff"), ("alice", "1a2b3c4d5e")],
                          "in place", 0.75)
    assert text == "alice:1a2b3c4d5e, bob.v2:ffffffffff, mode: in place, strength: 0.75"
    assert parse_summary(text) == InfotextSummary((("alice", "1a2b3c4d5e"), ("bob.v2", "ffffffffff")),
                                                  "in place", 0.75)


def test_foreign_values_are_not_ours():
    assert parse_summary("something else entirely") is None
    assert parse_summary("alice:1a2b3c4d5e, mode: sideways, strength: 1.0") is None
    assert parse_summary(None) is None


def test_per_image_value_answers_by_image_index():
    value = PerImageInfotext({0: "a", 3: "b"})

    class P:
        iteration = 1
        batch_size = 2

    assert value(p=P(), index=1) == "b" and value(p=P(), index=0) is None
    batch = ["x", "y"]
    assert value(p=P(), index=1, all_prompts=batch) == "b"  # per batch: index within p.prompts


def test_per_image_value_with_the_generation_wide_index():
    """Processed.infotext and hires intermediates pass p.all_prompts and an index over all images."""
    value = PerImageInfotext({0: "a", 3: "b"})

    class P:
        iteration = 1
        batch_size = 2
        all_prompts = ["p0", "p1", "p2", "p3"]

    p = P()
    assert value(p=p, index=3, all_prompts=p.all_prompts) == "b"
    assert value(p=p, index=0, all_prompts=p.all_prompts) == "a"


def paste(magicnaming, infotext):
    webui = magicnaming.webui
    params = webui.infotext_utils.parse_generation_parameters(infotext)
    values = webui.infotext_utils.paste_values(magicnaming.runner.infotext_fields, params)
    args = magicnaming.runner.inputs[magicnaming.script.args_from:magicnaming.script.args_to]
    return params, [values.get(control) for control in args[:3]]


def test_pasting_a_generated_image_restores_the_accordion(magicnaming):
    _, processed = magicnaming.run("<name:bob:0.6> reading", args=(True, "in place", 1.25))
    params, (enabled, mode, strength) = paste(magicnaming, processed.infotexts[0])
    assert params["Prompt"] == "<name:bob:0.6> reading"
    assert parse_summary(params[INFOTEXT_KEY]).identities[0][0] == "bob"
    assert (enabled, mode, strength) == (True, "in place", 1.25)


def test_pasting_an_image_without_the_entry_turns_the_accordion_off(magicnaming):
    _, processed = magicnaming.run("nobody reading")
    _, (enabled, mode, strength) = paste(magicnaming, processed.infotexts[0])
    assert (enabled, mode, strength) == (False, None, None)
