"""New people without an encoder, inside the WebUI stand-in (v1.10.1's hook order, the toy SDXL's two text
towers behind the WebUI's own chunking): the loaded checkpoint's name space measured once and cached, Sample
with no encoder installed, candidates drawn as portraits in one batch through the stand-in's txt2img
processing, portraits of saved identities as thumbnails, nearest names, and the tab that starts where it
works."""

from __future__ import annotations

import asyncio
import base64
import io
from pathlib import Path

import gradio as gr
import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from gradio_wire import gallery_captions, new_session
from PIL import Image
from safetensors import safe_open
from webui_standin import webui  # noqa: F401 - the fixture

from lib_magicnaming import namespace_cache
from lib_magicnaming.names_list import parse_names

pytestmark = pytest.mark.ui_stack

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "/magicnaming/v1"
NAMES = ["Alan Turing", "Albert Einstein", "Marie Curie", "Frida Kahlo", "Pelé", "Serena Williams",
         "Nelson Mandela", "Yuri Gagarin", "Amitabh Bachchan", "Greta Garbo", "Miyazaki Hayao", "Bob Marley",
         "Aretha Franklin", "Charlie Chaplin", "Ada Yonath", "Wangari Maathai", "Keanu Reeves", "Zhang Ziyi",
         "Usain Bolt", "Audrey Hepburn"]
SMALL = {"size": 128, "steps": 2}
ALAN = {"name": "alan", "names": [{"name": "Alan Turing"}]}


@pytest.fixture()
def standin(webui, tmp_path, monkeypatch):  # noqa: F811 - the fixture above
    """The stand-in with both MagicNaming scripts loaded, no encoder installed, a 20-name list chosen in
    Settings, the toy SDXL loaded, the txt2img runner (with the Seed section) built, and the REST API."""
    namespace_cache.forget_loaded_files()
    webui.shared.cmd_opts.magicnaming_dir = str(tmp_path / "mn")
    webui.shared.cmd_opts.magicnaming_device = None
    webui.shared.cmd_opts.api = True
    webui.load_script(ROOT / "scripts" / "magicnaming_app.py")
    webui.script_callbacks.ui_settings_callback()
    names_file = tmp_path / "people.txt"
    names_file.write_text("# test people\n" + "\n".join(NAMES) + "\n", encoding="utf-8")
    webui.shared.opts.set("magicnaming_names_list", str(names_file))
    webui.names_list = parse_names(names_file.read_text(encoding="utf-8"), "people.txt")
    webui.shared.sd_model = webui.toy.ToySDXL()
    webui.load_seed_section()
    webui.load_script(ROOT / "scripts" / "magicnaming.py")
    webui.script_callbacks.before_ui_callback()
    webui.runner = webui.make_runner()
    app = FastAPI()
    webui.api.api_middleware(app)
    webui.script_callbacks.app_started_callback(None, app)
    webui.client = TestClient(app)
    webui.folder = tmp_path / "mn"
    processed = []

    def recorded(p):
        result = real_process_images(p)
        processed.append((p, result))
        return result

    real_process_images = webui.processing.process_images
    monkeypatch.setattr(webui.processing, "process_images", recorded)
    webui.processed = processed
    return webui


def sampling_cases():
    from lib_magicnaming.webui.sampling import SamplingUseCases
    from lib_magicnaming.webui.services import webui_services

    return SamplingUseCases(webui_services())


def decoded(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text)))


def file_bytes_and_created(path: Path) -> tuple[bytes, str]:
    """An identity file's bytes and the time it was made (its one field that differs between two saves)."""
    with safe_open(str(path), framework="pt") as handle:
        return path.read_bytes(), handle.metadata()["created"]


# -------------------------------------------------------------------------------------------- Sample


def test_sample_with_no_encoder_measures_the_checkpoint_once_then_reads_its_file(standin):
    model = standin.shared.sd_model
    assert standin.client.get(f"{PREFIX}/encoder").json()["ready"] is False  # no encoder installed
    assert standin.client.get(f"{PREFIX}/namespace").json()["measured"] is False
    response = standin.client.post(f"{PREFIX}/identities/sample", json={"name": "nova", "seed": 7})
    assert response.status_code == 201, response.text
    checkpoint_hash = model.sd_checkpoint_info.sha256[:10]
    assert response.json()["identity"]["origin"] == {
        "kind": "sampled", "source": "checkpoint", "checkpoint_hash": checkpoint_hash,
        "names_list_hash": standin.names_list.short_hash, "seed": 7, "scale": 1.0,
    }
    assert model.encoded_texts == NAMES  # every listed name, through the loaded model's text encoders
    files = sorted((standin.folder / "namespace").iterdir())
    assert [f.name for f in files] == [f"{checkpoint_hash}-{standin.names_list.short_hash}.safetensors"]

    namespace_cache.forget_loaded_files()  # nothing in memory: the second call reads the file
    again = standin.client.post(f"{PREFIX}/identities/sample", json={"name": "nova2", "seed": 7}).json()
    assert model.encoded_texts == NAMES  # nothing encoded again
    assert again["identity"]["short_hash"] == response.json()["identity"]["short_hash"]
    status = standin.client.get(f"{PREFIX}/namespace").json()
    assert status["measured"] is True and status["names"] == 20
    assert status["checkpoint_hash"] == checkpoint_hash

    standin.shared.sd_model = other = standin.toy.ToySDXL(name="other-sdxl")  # another checkpoint
    standin.client.post(f"{PREFIX}/identities/sample", json={"name": "nova3", "seed": 7})
    assert other.encoded_texts == NAMES and len(list((standin.folder / "namespace").iterdir())) == 2
    shorter = standin.folder.parent / "shorter.txt"
    shorter.write_text("\n".join(NAMES[:10]), encoding="utf-8")
    standin.shared.opts.set("magicnaming_names_list", str(shorter))  # another list
    standin.client.post(f"{PREFIX}/identities/sample", json={"name": "nova4", "seed": 7})
    assert other.encoded_texts == NAMES + NAMES[:10]
    assert len(list((standin.folder / "namespace").iterdir())) == 3


def test_same_seed_and_source_give_identical_file_bytes_even_measured_again(standin):
    library = standin.folder / "identities"
    body = {"name": "twin", "seed": 11, "scale": 0.8}
    first = standin.client.post(f"{PREFIX}/identities/sample", json=body)
    assert first.status_code == 201
    content, created = file_bytes_and_created(library / "twin.safetensors")
    standin.client.delete(f"{PREFIX}/identities/twin")
    for path in (standin.folder / "namespace").iterdir():
        path.unlink()  # measured again from scratch
    namespace_cache.forget_loaded_files()
    standin.client.post(f"{PREFIX}/identities/sample", json=body)
    again, created_again = file_bytes_and_created(library / "twin.safetensors")
    assert len(created) == len(created_again) and created.encode() in content
    assert again == content.replace(created.encode(), created_again.encode())  # byte for byte
    assert standin.shared.sd_model.encoded_texts == NAMES + NAMES
    other = standin.client.post(f"{PREFIX}/identities/sample", json={**body, "name": "other", "seed": 12})
    assert other.json()["identity"]["short_hash"] != first.json()["identity"]["short_hash"]


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_a_damaged_cache_file_is_refused_and_measured_again(standin, damage, caplog):
    first = standin.client.post(f"{PREFIX}/identities/sample", json={"name": "one", "seed": 5}).json()
    (path,) = (standin.folder / "namespace").iterdir()
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        del data[-1000:]
    else:
        data[-5] ^= 0x40  # one bit of one F_ID
    path.write_bytes(bytes(data))
    namespace_cache.forget_loaded_files()
    second = standin.client.post(f"{PREFIX}/identities/sample", json={"name": "two", "seed": 5})
    assert second.status_code == 201, second.text
    assert "refused the name-space file" in caplog.text and path.name in caplog.text
    assert standin.shared.sd_model.encoded_texts == NAMES + NAMES  # measured again
    assert second.json()["identity"]["short_hash"] == first["identity"]["short_hash"]
    assert namespace_cache.read_namespace_file(path).names == tuple(NAMES)  # a sound file replaced it


def test_measuring_shows_progress_as_the_webui_does_and_stops_on_interrupt(standin, monkeypatch):
    model, state = standin.shared.sd_model, standin.shared.state
    console = io.StringIO()
    monkeypatch.setattr(standin.shared, "progress_print_out", console)
    seen = []
    encode = model.get_learned_conditioning

    def watched(batch):
        seen.append((state.job, state.job_count, state.job_no, state.textinfo))
        if len(seen) == 2 and interrupt:
            state.interrupt()  # as POST /sdapi/v1/interrupt does while the first names are encoded
        return encode(batch)

    monkeypatch.setattr(model, "get_learned_conditioning", watched)
    interrupt = True
    response = standin.client.post(f"{PREFIX}/identities/sample", json={"name": "cut", "seed": 1})
    assert response.status_code == 503 and "interrupted" in response.json()["detail"]
    assert not (standin.folder / "namespace").exists() or not any((standin.folder / "namespace").iterdir())
    assert standin.client.get(f"{PREFIX}/identities").json() == {"identities": []}
    assert state.job == "" and state.job_count == 0  # the job ended

    seen.clear()
    interrupt = False
    response = standin.client.post(f"{PREFIX}/namespace")
    assert response.status_code == 200, response.text
    job = "MagicNaming: measuring the name space"
    assert seen[0] == (job, 20, 0, None) and seen[1] == (job, 20, 16, "Encoding listed names: 16 / 20")
    assert "20/20" in console.getvalue() and job in console.getvalue()  # tqdm's bar on the console
    assert state.job == "" and state.job_count == 0


def test_bad_sample_requests_are_named(standin):
    post = standin.client.post
    assert post(f"{PREFIX}/identities/sample", json={"name": "x", "source": "elsewhere"}).status_code == 400
    response = post(f"{PREFIX}/identities/sample", json={"name": "x", "source": "encoder"})
    assert response.status_code == 503 and "encoder" in response.json()["detail"]
    for body in ({"count": 0}, {"count": 9}, {"size": 100}, {"steps": 0}, {"scale": -1}):
        response = post(f"{PREFIX}/identities/sample/candidates", json={**SMALL, **body})
        assert response.status_code == 400, (body, response.text)
    standin.shared.sd_model = standin.toy.ToySD15()
    response = post(f"{PREFIX}/identities/sample", json={"name": "x"})
    assert response.status_code == 503 and "SDXL" in response.json()["detail"]
    assert standin.client.get(f"{PREFIX}/identities").json() == {"identities": []}


# ------------------------------------------------------------------------------------ candidates


def test_candidates_are_drawn_in_one_batch_through_txt2img_then_one_is_saved(standin):
    body = {"seed": 3, "count": 4, **SMALL}
    response = standin.client.post(f"{PREFIX}/identities/sample/candidates", json=body)
    assert response.status_code == 200, response.text
    candidates = response.json()["candidates"]
    assert [c["seed"] for c in candidates] == [3, 4, 5, 6] and len({c["short_hash"] for c in candidates}) == 4
    assert all(decoded(c["portrait"]).size == (128, 128) for c in candidates)

    ((p, processed),) = standin.processed  # ONE txt2img, one batch of four
    assert (p.batch_size, p.n_iter, p.steps, p.width) == (4, 1, 2, 128)
    assert p.all_seeds == [1234] * 4  # one fixed seed: the Seed section's UI value (-1) did not replace it
    assert p.do_not_save_samples and p.is_api
    cases = sampling_cases()
    for index, seed in enumerate([3, 4, 5, 6]):
        call = next(c for c in p.sampler_log if c.step == 0)
        row = call.conds_list[index][0][0]
        expected = cases.sample(seed).embedding
        torch.testing.assert_close(call.cond["crossattn"][row, 1:9], expected, rtol=0, atol=1e-6)
        assert f'MagicNaming: "candidate-{index + 1}:' in processed.infotexts[index]
    assert all(p.all_prompts[i] == f"portrait photo of <name:candidate-{i + 1}>, plain background"
               for i in range(4))

    chosen = candidates[2]
    body = {"name": "pick", "seed": chosen["seed"], "thumbnail": chosen["portrait"]}
    saved = standin.client.post(f"{PREFIX}/identities/sample", json=body).json()["identity"]
    assert saved["short_hash"] == chosen["short_hash"] and saved["has_thumbnail"] is True
    assert saved["origin"] == chosen["origin"]


def test_unsaved_identities_travel_with_the_processing_object_only(standin):
    """A saved identity of a candidate's name is not what its portrait shows: the one on ``p`` is."""
    from lib_magicnaming.identity import Identity
    from lib_magicnaming.identity_library import IdentityLibrary

    library = IdentityLibrary(standin.folder / "identities")
    library.save(Identity("candidate-1", torch.ones(8, 2048), {"kind": "imported"}))
    standin.client.post(f"{PREFIX}/identities/sample/candidates", json={"seed": 9, "count": 1, **SMALL})
    ((p, _),) = standin.processed
    call = next(c for c in p.sampler_log if c.step == 0)
    torch.testing.assert_close(call.cond["crossattn"][0, 1:9], sampling_cases().sample(9).embedding)
    later = standin.txt2img(standin.runner, {"magicnaming": [True]}, prompt="<name:candidate-1>", steps=1)
    standin.processing.process_images(later)
    first = next(c for c in later.sampler_log if c.step == 0)
    assert torch.equal(first.cond["crossattn"][0, 1:9], torch.ones(8, 2048))  # the library's, not p's


def test_a_saved_identitys_portrait_becomes_its_thumbnail(standin):
    made = standin.client.post(f"{PREFIX}/identities/from-names", json=ALAN).json()["identity"]
    response = standin.client.post(f"{PREFIX}/identities/alan/portrait",
                                   json={**SMALL, "set_thumbnail": True})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["thumbnail_set"] is True and body["identity"]["short_hash"] == made["short_hash"]
    fetched = standin.client.get(f"{PREFIX}/identities/alan").json()
    assert fetched["has_thumbnail"] and fetched["short_hash"] == made["short_hash"]
    assert decoded(fetched["thumbnail"]).tobytes() == decoded(body["portrait"]).tobytes()
    assert standin.client.post(f"{PREFIX}/identities/nobody/portrait", json=SMALL).status_code == 404


# --------------------------------------------------------------------------------------- nearest


def test_get_identity_names_the_nearest_listed_people_once_measured(standin):
    standin.client.post(f"{PREFIX}/identities/from-names", json=ALAN)
    before = standin.client.get(f"{PREFIX}/identities/alan").json()
    assert before["nearest_names"] is None and "not measured yet" in before["nearest_names_note"]
    assert standin.shared.sd_model.encoded_texts == ["Alan Turing"]  # reading never measures

    measured = standin.client.post(f"{PREFIX}/namespace").json()
    assert measured["measured"] is True and measured["names"] == 20
    nearest = standin.client.get(f"{PREFIX}/identities/alan").json()["nearest_names"]
    assert nearest["names"][0]["name"] == "Alan Turing" and nearest["names"][0]["cosine"] > 0.999
    assert len(nearest["names"]) == 5 and nearest["names"][1]["cosine"] < 0.999
    assert nearest["checkpoint_hash"] == standin.shared.sd_model.sd_checkpoint_info.sha256[:10]


# ------------------------------------------------------------------------------------------- the tab


def _tab(standin):
    from lib_magicnaming.webui import tab

    ((blocks, title, _),) = tab.on_ui_tabs()
    assert title == "MagicNaming"
    return blocks


def _dependency(blocks, trigger_elem_id: str, event: str) -> int:
    config = blocks.get_config_file()
    ids = {c["id"]: c["props"].get("elem_id") for c in config["components"]}
    for index, dependency in enumerate(config["dependencies"]):
        for target in dependency["targets"]:
            target_id, target_event = (target, None) if isinstance(target, int) else target
            if ids.get(target_id) == trigger_elem_id and target_event in (None, event):
                if target_event is None and dependency.get("trigger") not in (None, event):
                    continue
                return index
    raise AssertionError(f"no {event} event on {trigger_elem_id}")


def test_the_tab_opens_on_names_without_an_encoder_and_photos_says_what_it_needs(standin):
    blocks = _tab(standin)
    config = blocks.get_config_file()
    by_id = {c["props"].get("elem_id"): c for c in config["components"]}
    assert by_id["magicnaming_tabs"]["props"]["selected"] == "names"
    needs = by_id["magicnaming_photos_needs"]["props"]["value"]
    assert "Needs a MagicNaming encoder checkpoint" in needs and "\n" not in needs
    assert "not measured yet" in by_id["magicnaming_namespace_status"]["props"]["value"]


def _restore_saved_ui_settings(blocks, saved: dict) -> None:
    """What A1111 v1.10.1's modules/ui_loadsave.py (UiLoadsave.add_block -> add_component -> apply_field) does
    at start to a ``gr.Tabs`` with an elem_id under the tab "magicnaming": a value saved in ui-config.json
    replaces the built ``selected``, unless the block carries ``do_not_save_to_config``."""
    import gradio as gr

    for block in blocks.blocks.values():
        if isinstance(block, gr.Tabs) and block.elem_id is not None:
            if getattr(block, "do_not_save_to_config", False):
                continue
            value = saved.get(f"magicnaming/Tabs@{block.elem_id}/selected")
            if value is not None:
                block.selected = value


def test_the_starting_section_is_not_restored_from_the_webuis_ui_config(standin):
    """Found in the real A1111: ui-config.json kept "photos" from a start with an encoder, so the tab opened
    on From photos after the encoder was removed."""
    blocks = _tab(standin)
    _restore_saved_ui_settings(blocks, {"magicnaming/Tabs@magicnaming_tabs/selected": "photos"})
    by_id = {c["props"].get("elem_id"): c for c in blocks.get_config_file()["components"]}
    assert by_id["magicnaming_tabs"]["props"]["selected"] == "names"


def test_the_tab_draws_candidates_picks_one_and_saves_it_with_its_portrait(standin):
    from lib_magicnaming.identity_library import IdentityLibrary

    blocks = _tab(standin)
    blocks.queue()
    draw = _dependency(blocks, "magicnaming_sample_draw", "click")
    choose = _dependency(blocks, "magicnaming_candidates", "select")
    save = _dependency(blocks, "magicnaming_sample_save", "click")

    async def run():
        session = new_session(blocks)
        drawn = await blocks.process_api(draw, [5, 3, 1.0, "loaded checkpoint", 128, 2], state=session)
        chosen = await blocks.process_api(choose, [None], state=session,
                                          event_data=gr.EventData(None, {"index": 1, "value": None}))
        saved = await blocks.process_api(save, ["picked", 6, 1.0, False, "loaded checkpoint", None],
                                         state=session)
        return drawn["data"], chosen["data"], saved["data"]

    drawn, chosen, saved = asyncio.run(run())
    gallery, _state, status, message = drawn
    assert [caption.split(" [")[0] for caption in gallery_captions(gallery)] == ["seed 5", "seed 6", "seed 7"]
    assert "Drew 3 candidates" in message and "20 names" in status
    assert chosen[0] == 6 and "Chose seed 6" in chosen[1]
    assert "Saved picked" in saved[0]
    identity = IdentityLibrary(standin.folder / "identities").load("picked")
    assert identity.thumbnail is not None and identity.thumbnail.size == (128, 128)
    assert identity.origin["seed"] == 6 and identity.origin["source"] == "checkpoint"


def test_library_details_show_the_nearest_names_and_draw_a_portrait(standin):
    from lib_magicnaming.webui.sample_actions import SampleActions
    from lib_magicnaming.webui.services import webui_services

    standin.client.post(f"{PREFIX}/identities/from-names", json=ALAN)
    actions = SampleActions(webui_services())
    assert "known once the loaded checkpoint's name space is measured" in actions.nearest_text("alan")
    sampling_cases().namespace()
    assert actions.nearest_text("alan").startswith("closest to: Alan Turing (1.00), ")
    image, pending, message = actions.draw_portrait("alan")
    assert image.size == (640, 640) and "Drew alan" in message  # the default portrait size
    assert "now the thumbnail of alan" in actions.use_portrait(pending)


def test_the_accordion_status_is_one_short_line_with_the_details_on_hover(standin):
    from lib_magicnaming.webui import setup

    line = setup.status_line()
    text = line.split(">", 1)[1].rsplit("<", 1)[0]
    assert text.startswith("Photo encoder: none installed") and len(text) < 80
    assert "title='MagicNaming encoder unavailable: No MagicNaming encoder checkpoint installed" in line
