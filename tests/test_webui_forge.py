"""What only the Forge family does, in the Forge stand-in (tests/forge_standin: Forge dfdcbab6's SDXL engine
path; "forge-neo" adds Forge Neo 283cb2c4's unloading), and WebUI layouts MagicNaming does not know.

test_webui_generation.py runs every generation test in the Forge stand-in too; here: the textual-inversion
infotext the engines write, model (re)loads, names encoded with the checkpoint loaded on demand, and what an
unknown layout still allows.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from safetensors.torch import save_file
from webui_standin import FORGE, FORGE_NEO, V1_10_1, webui_for
from webui_standin.extension import build_extension

from lib_magicnaming.errors import MagicNamingError
from lib_magicnaming.namespace import f_id_from_encoding

pytestmark = pytest.mark.ui_stack

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=[FORGE, FORGE_NEO])
def forge(request, tmp_path):
    """MagicNaming loaded into the Forge stand-in (Forge, then Forge Neo); the checkpoint not loaded yet."""
    with webui_for(request.param) as webui:
        yield build_extension(webui, tmp_path / "identities")


def first_cond(p, item=0):
    call = next(c for c in p.sampler_log if c.pass_name == "first" and c.step == 0)
    return {key: value[call.conds_list[item][0][0]] for key, value in call.cond.items()}


def write_textual_inversion(folder: Path, name: str) -> None:
    """An SDXL textual-inversion file of 2 vectors, as Forge reads them from the embeddings folder."""
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(5)
    vectors = {"clip_l": torch.randn(2, 768, generator=generator),
               "clip_g": torch.randn(2, 1280, generator=generator)}
    save_file(vectors, str(folder / f"{name}.safetensors"))


def infotext_entry(infotext: str, key: str) -> str | None:
    from modules import infotext_utils

    return infotext_utils.parse_generation_parameters(infotext).get(key)


def test_placeholders_stay_out_of_the_ti_infotext_and_real_embeddings_stay_in(forge):
    write_textual_inversion(Path(forge.webui.shared.cmd_opts.embeddings_dir), "realti")
    _, plain = forge.run("a photo of realti and someone")
    forge_entry = infotext_entry(plain.infotexts[0], "TI")
    assert forge_entry == "realti, realti"  # Forge's own: one name per engine that used it
    prompt = "a photo of realti <name:alice> and <name:bob>"
    p, processed = forge.run(prompt, args=(True, "in place"))
    assert torch.equal(first_cond(p)["crossattn"][6:14], forge.alice)
    assert infotext_entry(processed.infotexts[0], "TI") == forge_entry
    assert "mnid" not in processed.infotexts[0] and "mnid" not in str(p.sd_model.extra_generation_params)
    # a cache hit replays the TI entry the first computation recorded (its third slot): still ours-free
    p2, processed2 = forge.run(prompt, args=(True, "in place"))
    assert p2.c is p.c and infotext_entry(processed2.infotexts[0], "TI") == forge_entry
    _, processed3 = forge.run("<name:alice> in a park", args=(True, "in place"))
    assert infotext_entry(processed3.infotexts[0], "TI") is None


def test_a_model_reload_brings_new_engines_and_placeholders_go_into_those(forge, monkeypatch):
    webui = forge.webui
    from backend.text_processing import textual_inversion

    registrations = []
    register = textual_inversion.EmbeddingDatabase.register_embedding_by_name

    def recording(database, embedding, name):
        registrations.append((database, name, embedding is not None))
        return register(database, embedding, name)

    monkeypatch.setattr(textual_inversion.EmbeddingDatabase, "register_embedding_by_name", recording)
    loaded = []
    webui.script_callbacks.on_model_loaded(loaded.append)

    p, _ = forge.run("<name:alice> and <name:bob> at sea", args=(True, "in place"))
    first_model = p.sd_model
    assert loaded == [first_model]
    assert torch.equal(first_cond(p)["crossattn"][1:9], forge.alice)
    first_databases = webui.embedding_databases()

    # a changed choice (another VAE, say) makes the next generation load the checkpoint again
    parameters = webui.sd_models.model_data.forge_loading_parameters
    webui.sd_models.model_data.forge_loading_parameters = {**parameters, "additional_modules": ["vae.sft"]}
    registrations.clear()
    p2, _ = forge.run("<name:alice> and <name:bob> at home", args=(True, "in place"))
    second_model = p2.sd_model
    assert second_model is not first_model and loaded == [first_model, second_model]
    new_databases = webui.embedding_databases()
    assert not {id(db) for db in new_databases} & {id(db) for db in first_databases}
    assert torch.equal(first_cond(p2)["crossattn"][1:9], forge.alice)
    assert torch.equal(first_cond(p2)["crossattn"][10:18], forge.bob)
    # registered in both new engines, then removed; the old engines saw nothing
    touched = {id(database) for database, _name, _added in registrations}
    assert touched == {id(db) for db in new_databases}
    for database in new_databases:
        added = [name for db, name, is_added in registrations if db is database and is_added]
        removed = [name for db, name, is_added in registrations if db is database and not is_added]
        assert len(added) == 2 and sorted(added) == sorted(removed)
        assert not database.word_embeddings
    if webui.kind == FORGE_NEO:  # Neo strips the old model of its engines when it unloads it
        assert not hasattr(first_model, "text_processing_engine_l")


def test_the_dropped_text_warning_reaches_the_image_comments(forge):
    p, processed = forge.run("<name:alice> " + " ".join(["word"] * 74))
    assert any("last 6 of its 74 prompt tokens" in comment for comment in p.comments)
    assert any("last 6 of its 74 prompt tokens" in comment for comment in p.sd_model.comments)


@pytest.fixture()
def forge_app(tmp_path):
    """The Forge stand-in with scripts/magicnaming_app.py loaded and its REST routes started."""
    with webui_for(FORGE) as webui:
        webui.load_script(ROOT / "scripts" / "magicnaming_app.py")
        webui.script_callbacks.ui_settings_callback()
        webui.shared.cmd_opts.magicnaming_dir = str(tmp_path / "mn")
        webui.shared.cmd_opts.magicnaming_device = None
        webui.shared.cmd_opts.embeddings_dir = str(tmp_path / "embeddings")
        webui.shared.cmd_opts.api = True
        app = FastAPI()
        webui.api.api_middleware(app)
        webui.script_callbacks.app_started_callback(None, app)
        yield webui, TestClient(app)


@pytest.mark.ui_stack
def test_from_names_loads_the_checkpoint_the_webuis_way_instead_of_answering_503(forge_app):
    webui, client = forge_app
    loaded = []
    webui.script_callbacks.on_model_loaded(loaded.append)
    webui.use_checkpoint("sdxl")
    assert not hasattr(webui.sd_models.model_data.sd_model, "get_learned_conditioning")  # FakeInitialModel
    body = {"name": "ada", "names": [{"name": "Ada Lovelace"}]}
    response = client.post("/magicnaming/v1/identities/from-names", json=body)
    assert response.status_code == 201, response.text
    model = webui.sd_models.model_data.sd_model
    assert loaded == [model]
    from lib_magicnaming.webui import services

    expected = f_id_from_encoding(model.get_learned_conditioning(["Ada Lovelace"])["crossattn"])
    torch.testing.assert_close(services.identity_library().load("ada").embedding, expected.float(),
                               rtol=1e-3, atol=2e-3)

    webui.use_checkpoint("refiner")
    response = client.post("/magicnaming/v1/identities/from-names", json={**body, "name": "b"})
    assert response.status_code == 503 and "refiner" in response.json()["detail"]
    webui.use_checkpoint(None)  # no checkpoint at all: Forge's loader raises
    response = client.post("/magicnaming/v1/identities/from-names", json={**body, "name": "c"})
    detail = response.json()["detail"]
    assert response.status_code == 503 and "could not load its checkpoint (ValueError" in detail
    assert "models/" not in detail and "Stable-diffusion" not in detail


NAMES = ["Alan Turing", "Marie Curie", "Frida Kahlo", "Nelson Mandela", "Greta Garbo", "Bob Marley"]


@pytest.fixture()
def forge_sample(tmp_path):
    """The Forge stand-in as a user starts it: MagicNaming's scripts and REST routes loaded, the txt2img
    runner built (with the Seed section), a short names list chosen, the checkpoint chosen but not loaded."""
    with webui_for(FORGE) as webui:
        webui.shared.cmd_opts.magicnaming_dir = str(tmp_path / "mn")
        webui.shared.cmd_opts.magicnaming_device = None
        webui.shared.cmd_opts.embeddings_dir = str(tmp_path / "embeddings")
        webui.shared.cmd_opts.api = True
        webui.load_script(ROOT / "scripts" / "magicnaming_app.py")
        webui.script_callbacks.ui_settings_callback()
        names_file = tmp_path / "people.txt"
        names_file.write_text("\n".join(NAMES) + "\n", encoding="utf-8")
        webui.shared.opts.set("magicnaming_names_list", str(names_file))
        webui.use_checkpoint("sdxl")
        webui.load_seed_section()
        webui.load_script(ROOT / "scripts" / "magicnaming.py")
        webui.script_callbacks.before_ui_callback()
        webui.make_runner()
        app = FastAPI()
        webui.api.api_middleware(app)
        webui.script_callbacks.app_started_callback(None, app)
        yield webui, TestClient(app)


@pytest.mark.ui_stack
def test_sample_portraits_load_the_checkpoint_and_draw_through_forges_txt2img(forge_sample, monkeypatch):
    """Before any generation Forge has no model: the name-space status says so (no error), and Sample loads
    the checkpoint the WebUI's way, measures its name space with Forge's engines and draws the candidates
    in one batch through Forge's processing, each identity in its portrait's conditioning."""
    webui, client = forge_sample
    loaded = []
    webui.script_callbacks.on_model_loaded(loaded.append)
    status = client.get("/magicnaming/v1/namespace")
    assert status.status_code == 200 and status.json()["measured"] is False
    assert "no checkpoint is loaded in the WebUI yet" in status.json()["status"]
    assert loaded == []  # asking never loads

    drawn = []
    real_process_images = webui.processing.process_images
    monkeypatch.setattr(webui.processing, "process_images",
                        lambda p: drawn.append(p) or real_process_images(p))
    body = {"seed": 3, "count": 2, "size": 128, "steps": 2}
    response = client.post("/magicnaming/v1/identities/sample/candidates", json=body)
    assert response.status_code == 200, response.text
    model = webui.sd_models.model_data.sd_model
    assert loaded == [model]  # loaded once, by forge_model_reload
    assert model.encoded_texts[: len(NAMES)] == NAMES  # the name space, measured with Forge's engines
    (p,) = drawn
    assert (p.batch_size, p.width, p.sampler_name, p.scheduler) == (2, 128, "DPM++ 2M", "Karras")
    from lib_magicnaming.webui.sampling import SamplingUseCases
    from lib_magicnaming.webui.services import webui_services

    cases = SamplingUseCases(webui_services())
    call = next(c for c in p.sampler_log if c.step == 0)
    for index, seed in enumerate([3, 4]):
        row = call.conds_list[index][0][0]
        torch.testing.assert_close(call.cond["crossattn"][row, 1:9], cases.sample(seed).embedding,
                                   rtol=0, atol=1e-6)
    candidates = response.json()["candidates"]
    assert candidates[0]["origin"]["checkpoint_hash"] == model.sd_checkpoint_info.sha256[:10]
    assert client.get("/magicnaming/v1/namespace").json()["measured"] is True


def test_portraits_name_the_schedule_in_the_sampler_where_processing_has_no_scheduler_field():
    """Forge Classic's processing (1f95d717) predates the separate ``scheduler`` field: its samplers list
    names the schedule ('DPM++ 2M Karras', modules/sd_samplers_kdiffusion.py)."""
    from dataclasses import dataclass

    with webui_for(V1_10_1):
        from lib_magicnaming.webui.compat import sampler_fields

        @dataclass
        class Classic:
            sampler_name: str = None

        @dataclass
        class Current(Classic):
            scheduler: str = None

        assert sampler_fields(Classic, "DPM++ 2M", "Karras") == {"sampler_name": "DPM++ 2M Karras"}
        assert sampler_fields(Current, "DPM++ 2M", "Karras") == {"sampler_name": "DPM++ 2M",
                                                                  "scheduler": "Karras"}


def test_names_are_encoded_with_the_clip_skip_of_the_settings_as_plain_tensors(forge):
    from lib_magicnaming.webui import services

    webui = forge.webui
    at_default = services.webui_encode_texts(["Ada Lovelace"])
    assert not at_default.is_inference()
    at_default.add_(0)  # Forge's own results are inference tensors: this would raise on one
    webui.shared.opts.CLIP_stop_at_last_layers = 3
    at_three = services.webui_encode_texts(["Ada Lovelace"])
    model = webui.model()
    model.set_clip_skip(3)
    assert torch.equal(at_three, model.get_learned_conditioning(["Ada Lovelace"])["crossattn"].float())
    assert not torch.equal(at_three, at_default)


class _EngineInADict:
    """A property keeping an engine in the model's ``clip_engines`` dict instead of its own attribute."""

    def __init__(self, key):
        self.key = key

    def __get__(self, model, owner=None):
        return self if model is None else model.clip_engines[self.key]

    def __set__(self, model, engine):
        model.__dict__.setdefault("clip_engines", {})[self.key] = engine


def test_an_unknown_layout_is_named_once_and_prepend_and_names_still_work(forge, caplog):
    """A future fork that keeps its text engines elsewhere: one warning naming what was not found; the
    WebUI keeps working, 'prepend' and identities from names work, 'in place' stops with a clear message."""
    webui = forge.webui
    toy = webui.toy

    class FutureSDXL(toy.ToyForgeSDXL):
        text_processing_engine_l = _EngineInADict("l")
        text_processing_engine_g = _EngineInADict("g")

    info = toy.CheckpointInfo("toy-future.safetensors", "toy-future", "toy-future.safetensors")
    toy.CHECKPOINTS["future"] = (info, lambda: FutureSDXL(None, toy.sdxl_components()))
    webui.use_checkpoint("future")
    with caplog.at_level(logging.WARNING, logger="magicnaming"):
        p, processed = forge.run("<name:alice> by a lake")
    (warning,) = [r for r in caplog.records if r.name == "magicnaming"]
    assert "modules.sd_hijack.model_hijack.embedding_db" in warning.getMessage()
    assert "text_processing_engine_l/_g" in warning.getMessage()
    assert "'prepend' mode work" in warning.getMessage()
    assert torch.equal(first_cond(p)["crossattn"][1:9], forge.alice)
    assert "mode: prepend" in processed.infotexts[0]

    with pytest.raises(MagicNamingError, match="'in place' mode needs") as stopped:
        forge.run("<name:alice> by a lake", args=(True, "in place"))
    assert stopped.value.status_code == 400
    p, _ = forge.run("<name:bob> by a lake")
    assert torch.equal(first_cond(p)["crossattn"][1:9], forge.bob)

    from lib_magicnaming.webui import services

    assert services.webui_encode_texts(["Ada Lovelace"]).shape == (1, 77, 2048)


def test_without_the_conditioning_function_the_webui_loads_and_says_what_is_missing(tmp_path, caplog):
    with webui_for(V1_10_1) as webui:
        del webui.prompt_parser.get_learned_conditioning  # a fork that renamed it
        with caplog.at_level(logging.WARNING, logger="magicnaming"):
            magicnaming = build_extension(webui, tmp_path / "identities")
        (warning,) = [r for r in caplog.records if r.name == "magicnaming"]
        assert "modules.prompt_parser.get_learned_conditioning" in warning.getMessage()
        assert "<name:...> tags do not" in warning.getMessage()
        from lib_magicnaming.webui import generation

        p = webui.txt2img(magicnaming.runner, {"magicnaming": [True]}, prompt="<name:alice> waving")
        p.setup_prompts()
        prompts = list(p.all_prompts)
        magicnaming.script.before_process_batch(p, True, batch_number=0, prompts=prompts)
        assert prompts == ["<name:alice> waving"]
        assert generation.HOOK_MISSING_COMMENT in p.comments


def test_forget_used_takes_only_placeholders_out_of_both_ti_entries():
    from lib_magicnaming.webui.compat import TextEngines

    params = {"TI": "mnid_a, realti, mnid_a", "TI hashes": "mnid_a: 0123, realti: abcdef012345"}
    only_ours = {"TI": "mnid_a, mnid_b"}
    engines = TextEngines("test", None, None, (), (lambda: params, lambda: only_ours, lambda: None))
    engines.forget_used(["mnid_a", "mnid_b"])
    assert params == {"TI": "realti", "TI hashes": "realti: abcdef012345"}
    assert only_ours == {}
