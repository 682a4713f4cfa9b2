"""The MagicNaming tab: built under this gradio (3.41.2, or 4.40 in CI's second environment) without errors,
and its handlers on a real library."""

from __future__ import annotations

import tempfile

import gradio as gr
import pytest
import torch
from gradio_wire import choice_values, gallery_captions, new_session, target_ids
from PIL import Image
from webuiapp_doubles import make_services, random_identity, text_encoding

from lib_magicnaming.encode import PhotoReport
from lib_magicnaming.face import FaceCrop
from lib_magicnaming.identity_file import read_identity_file
from lib_magicnaming.identity_library import IdentityLibrary
from lib_magicnaming.webui.sample_actions import SampleActions
from lib_magicnaming.webui.tab import build_tab
from lib_magicnaming.webui.tab_actions import LIBRARY_HEADERS, TabActions, describe_origin, report_markdown

pytestmark = pytest.mark.ui_stack


@pytest.fixture()
def library(tmp_path):
    return IdentityLibrary(tmp_path / "identities")


@pytest.fixture()
def actions(library):
    services, _calls, _lock = make_services(library)
    return TabActions(services)


def test_tab_builds_under_this_gradio(actions, library):
    library.save(random_identity("alice", 1, Image.new("RGB", (16, 16), (1, 2, 3))))
    blocks = build_tab(actions)
    assert isinstance(blocks, gr.Blocks)
    config = blocks.get_config_file()
    ids = {c["props"].get("elem_id") for c in config["components"]}
    assert {"magicnaming_photos", "magicnaming_library_gallery", "magicnaming_tab_status"} <= ids
    status = next(c for c in config["components"] if c["props"].get("elem_id") == "magicnaming_tab_status")
    assert "no checkpoint in .../encoder" in status["props"]["value"]  # no server path
    assert len(config["dependencies"]) >= 12
    table = next(c for c in config["components"] if c["props"].get("headers") == LIBRARY_HEADERS)
    assert [row[0] for row in table["props"]["value"]["data"]] == ["alice"]  # filled at build time
    by_id = {c["props"].get("elem_id"): c for c in config["components"]}
    choices = by_id["magicnaming_library_selected"]["props"]["choices"]
    assert choice_values(choices) == ["alice"]
    # no image at build time (a WebUI may have no temp folder for it yet); the load event brings them
    assert not by_id["magicnaming_library_gallery"]["props"]["value"]


def test_names_then_mix_then_library_view(actions, library):
    message = actions.create_from_names("ada", "0.6 Ada Lovelace + 0.4 Alan Turing", "linear", False)
    assert "Saved ada" in message and "error" not in message
    expected = 0.6 * text_encoding("Ada Lovelace")[1:9] + 0.4 * text_encoding("Alan Turing")[1:9]
    torch.testing.assert_close(library.load("ada").embedding, expected, rtol=1e-3, atol=2e-3)

    library.save(random_identity("bob", 2))
    assert "Saved ab" in actions.create_mix("ab", "0.5 ada + 0.5 bob", "slerp", False)
    assert library.load("ab").origin["method"] == "slerp"

    gallery, rows, names = actions.library_view()
    assert names == ["ab", "ada", "bob"]
    ada_hash = library.get_info("ada").short_hash
    assert rows[1][:3] == ["ada", ada_hash, "names: 0.6 Ada Lovelace + 0.4 Alan Turing"]
    # None of these has a photo: each gets a card with its initials on a colour taken from its hash.
    assert [caption for _, caption in gallery] == [f"{n} [{library.get_info(n).short_hash}]" for n in names]
    cards = [image for image, _ in gallery]
    assert all(card.size == (128, 128) for card in cards)
    assert len({card.getpixel((0, 0)) for card in cards}) == 3
    assert actions.library_view()[0][1][0].tobytes() == cards[1].tobytes()  # the same card every time
    assert "<name:ada>" in actions.identity_details("ADA")


def test_delete_asks_about_the_selected_identity_by_name():
    from lib_magicnaming.webui.tab import ask_delete

    row, text, message = ask_delete("alice")
    assert row["visible"] is True and "`alice`" in text and message == ""
    row, text, message = ask_delete(None)
    assert row["visible"] is False and text == "" and "Choose an identity to delete" in message


def test_errors_come_back_as_messages(actions, library):
    library.save(random_identity("bob", 2))
    duplicate = actions.create_from_names("Bob", "someone", "linear", False)
    assert "class='error'" in duplicate and "already exists" in duplicate
    assert "class='error'" in actions.create_mix("m", "0.5 bob + 0.5 nobody", "linear", False)
    assert "nobody" in actions.create_mix("m", "0.5 bob + 0.5 nobody", "linear", False)
    assert "class='error'" in actions.create_from_names("bad name!", "x", "linear", False)
    sample = SampleActions(actions.cases.services)
    # the folder, not its path
    assert ".../encoder</div>" in sample.create_sampled("s", 1, 1.0, False, "encoder checkpoint", None)
    no_checkpoint = sample.create_sampled("s", 1, 1.0, False, "loaded checkpoint", None)
    assert "class='error'" in no_checkpoint and not library.exists("s")
    crops, report, preview, message = actions.preview_photos([b"abc"], False)
    assert preview is None and ".../encoder</div>" in message
    assert "Upload at least one photo" in actions.preview_photos(None, False)[3]
    assert "Encode some photos first" in actions.save_photos(None, "x", False)


def test_rename_delete_export_import(actions, library, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    library.save(random_identity("alice", 1))
    original_hash = library.get_info("alice").short_hash
    assert "Renamed alice to carol" in actions.rename("alice", " carol ")[0]
    assert not library.exists("alice") and library.get_info("carol").short_hash == original_hash

    path, message = actions.export("carol")
    assert "Exported carol" in message and read_identity_file(path).short_hash == original_hash
    assert actions.export("carol")[0] == path  # exporting again reuses the file: nothing piles up
    assert [p.name for p in (tmp_path / "tmp").rglob("*") if p.is_file()] == ["carol.safetensors"]
    data = open(path, "rb").read()

    assert "Deleted carol" in actions.delete("carol")
    assert "class='error'" in actions.delete("carol")
    assert "Imported dave" in actions.import_files([data], "dave", False)
    assert library.get_info("dave").short_hash == original_hash
    assert "already exists" in actions.import_files([data], "dave", False)
    assert "one file at a time" in actions.import_files([data, data], "x", False)
    assert "File 1" in actions.import_files([b"not an identity file"], "", False)
    assert "Choose an identity" in actions.export(None)[1]


def test_describe_origin_kinds():
    assert describe_origin({"kind": "photos", "encoder_hash": "abc", "photo_hashes": ["1", "2"]}) == (
        "2 photo(s), encoder abc"
    )
    assert describe_origin({"kind": "sampled", "seed": 3, "scale": 0.5}) == "sampled: seed 3, scale 0.5"
    mix = {"kind": "mix", "method": "slerp", "identities": [["a", "h", 0.5], ["b", "h", 0.5]]}
    assert describe_origin(mix) == "slerp mix: 0.5 a + 0.5 b"


def test_report_markdown_one_row_per_photo():
    crop = FaceCrop(
        image=Image.new("RGB", (4, 4)), box=(1.0, 2.0, 3.0, 4.0), score=0.87654, faces_found=2,
        provider="CPUExecutionProvider", crop_box=(0, 0, 4, 4), notes=["2 faces found; used the largest"],
    )
    good = PhotoReport(0, "ab" * 32, True, crop, 2, list(crop.notes), distance_from_mean=0.12345)
    bad = PhotoReport(1, "cd" * 32, False, None, None, [], error="photo 2: not an image")
    lines = report_markdown([good, bad]).splitlines()
    assert lines[0] == "| photo | face | faces found | score | distance from mean | notes |"
    assert lines[2] == "| 1 | yes | 2 | 0.8765 | 0.123 | 2 faces found; used the largest |"
    assert lines[3] == "| 2 | no | (not run) |  |  | photo 2: not an image |"
    assert report_markdown([]) == ""


def dependency_index(blocks, trigger_label: str, input_labels: list[str]) -> int:
    """The fn_index of the event fired by the component labelled ``trigger_label`` with these inputs."""
    config = blocks.get_config_file()
    labels = {c["id"]: c["props"].get("label") or c["props"].get("value") for c in config["components"]}
    for index, dependency in enumerate(config["dependencies"]):
        targets = [labels.get(target) for target in target_ids(dependency)]
        if trigger_label in targets and [labels.get(i) for i in dependency["inputs"]] == input_labels:
            return index
    raise AssertionError(f"no event for {trigger_label} with inputs {input_labels}")


def test_events_run_through_gradio(actions, library):
    """Through gradio's own pre/postprocessing (with the queue the WebUI enables, for gr.Progress)."""
    import asyncio

    library.save(random_identity("bob", 2, Image.new("RGB", (8, 8), (9, 9, 9))))
    blocks = build_tab(actions)
    blocks.queue()
    save_names = dependency_index(blocks, "Save identity", ["Identity name", "Names", "Mix", "Overwrite"])
    export = dependency_index(blocks, "Export", ["Identity"])

    async def run():
        session = new_session(blocks)
        names = ["ada", "0.6 Ada + 0.4 Alan", "linear", False]
        saved = await blocks.process_api(save_names, names, state=session)
        exported = await blocks.process_api(export, ["bob"], state=session)
        return saved["data"], exported["data"]

    saved, exported = asyncio.run(run())
    message, gallery, table, dropdown, details = saved
    assert "Saved ada" in message
    assert gallery_captions(gallery) == [
        f"{name} [{library.get_info(name).short_hash}]" for name in ("ada", "bob")
    ]
    assert [row[0] for row in table["data"]] == ["ada", "bob"]
    assert choice_values(dropdown["choices"]) == ["ada", "bob"]
    assert exported[0]["orig_name"] == "bob.safetensors" and "Exported bob" in exported[1]


def test_rename_keeps_the_identity_selected_and_empties_new_name(actions, library):
    import asyncio

    library.save(random_identity("bob", 2, None))
    blocks = build_tab(actions)
    rename = dependency_index(blocks, "Rename", ["Identity", "New name"])

    async def run(old, new):
        return (await blocks.process_api(rename, [old, new], state=new_session(blocks)))["data"]

    message, _gallery, _table, dropdown, details, new_name = asyncio.run(run("bob", "robert"))
    assert "Renamed bob to robert" in message
    assert dropdown["value"] == "robert" and choice_values(dropdown["choices"]) == ["robert"]
    assert "**robert**" in details and new_name == ""
    message, _gallery, _table, dropdown, _details, new_name = asyncio.run(run("robert", "bad name!"))
    assert "error" in message and dropdown["value"] == "robert"
    assert new_name == {"__type__": "update"}  # the mistyped name stays to be corrected


def test_delete_confirmation_deletes_the_identity_it_named(actions, library):
    """Delete with bob selected, then select another: confirming deletes bob, the one the question named."""
    import asyncio

    library.save(random_identity("ada", 1))
    library.save(random_identity("bob", 2))
    blocks = build_tab(actions)
    blocks.queue()
    ask = dependency_index(blocks, "Delete", ["Identity"])
    confirm = dependency_index(blocks, "Yes, delete", [None])
    session = new_session(blocks)

    async def run():
        asked = await blocks.process_api(ask, ["bob"], state=session)
        confirmed = await blocks.process_api(confirm, [None], state=session)
        return asked["data"], confirmed["data"]

    asked, confirmed = asyncio.run(run())
    assert "`bob`" in asked[1]
    assert "Deleted bob" in confirmed[0]
    assert library.exists("ada") and not library.exists("bob")
