"""The app-level glue inside the WebUI stand-in: callbacks, settings and flags, REST routes with the
WebUI's middleware and --api-auth, names encoded by the (toy) SDXL model, the tab built by on_ui_tabs."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from webui_standin import webui  # noqa: F401 - the fixture

from lib_magicnaming.errors import EncoderError
from lib_magicnaming.namespace import f_id_from_encoding

pytestmark = pytest.mark.ui_stack

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def app_webui(webui, tmp_path):  # noqa: F811 - the fixture above
    """The stand-in with scripts/magicnaming_app.py loaded and the MagicNaming folder under tmp_path."""
    webui.load_script(ROOT / "scripts" / "magicnaming_app.py")
    webui.script_callbacks.ui_settings_callback()
    webui.shared.cmd_opts.magicnaming_dir = str(tmp_path / "mn")
    webui.shared.cmd_opts.magicnaming_device = None
    webui.shared.cmd_opts.api = True
    return webui


def started_app(standin) -> TestClient:
    app = FastAPI()
    standin.api.api_middleware(app)
    standin.script_callbacks.app_started_callback(None, app)
    return TestClient(app)


def test_callbacks_registered(app_webui):
    callbacks = app_webui.script_callbacks.callback_map
    for kind in ("callbacks_app_started", "callbacks_ui_tabs", "callbacks_ui_settings"):
        assert [c.script for c in callbacks[kind]] == [str(ROOT / "scripts" / "magicnaming_app.py")]


def test_settings_section_and_defaults(app_webui):
    from lib_magicnaming.webui import options

    labels = app_webui.shared.opts.data_labels
    keys = [options.OPT_MODELS_DIR, options.OPT_ENCODER_CHECKPOINT, options.OPT_ENCODER_DEVICE,
            options.OPT_KEEP_ENCODER_LOADED, options.OPT_DETECTOR_PACK, options.OPT_DOWNLOAD_TOWERS,
            options.OPT_FACE_DETECTOR, options.OPT_DOWNLOAD_DETECTOR]
    assert all(labels[key].section == ("magicnaming", "MagicNaming") for key in keys)
    assert all(labels[key].category_id == "sd" for key in keys)  # not "Uncategorized" on the settings page
    app_webui.shared.cmd_opts.magicnaming_dir = None
    settings = options.current_settings()
    from modules import paths

    models = Path(paths.models_path)
    assert settings.models_dir == models / "magicnaming"
    assert settings.identities_dir == models / "magicnaming" / "identities"
    assert settings.detector_dir == models / "insightface" / "models" / "buffalo_l"
    assert settings.detectors_dir == models / "magicnaming" / "detectors"
    assert settings.face_detector == "auto"
    assert labels[options.OPT_FACE_DETECTOR].component_args == {"choices": ["auto", "yunet", "insightface"]}
    assert (settings.encoder_device, settings.keep_encoder_loaded) == ("auto", False)


@pytest.mark.parametrize(
    ("option", "attribute", "offline_switch"),
    [("OPT_DOWNLOAD_TOWERS", "download_towers", "HF_HUB_OFFLINE"),
     ("OPT_DOWNLOAD_DETECTOR", "download_detector", "TRANSFORMERS_OFFLINE")],
)
def test_downloads_follow_their_setting_and_the_offline_switch(app_webui, monkeypatch, option, attribute,
                                                               offline_switch):
    from lib_magicnaming.webui import options

    for name in options.OFFLINE_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    assert getattr(options.current_settings(), attribute) is True
    monkeypatch.setenv(offline_switch, "1")
    assert getattr(options.current_settings(), attribute) is False
    monkeypatch.delenv(offline_switch)
    app_webui.shared.opts.set(getattr(options, option), False)
    assert getattr(options.current_settings(), attribute) is False


def test_an_unknown_face_detector_is_named(app_webui):
    from lib_magicnaming.webui import options

    app_webui.shared.opts.set(options.OPT_FACE_DETECTOR, "mtcnn")
    with pytest.raises(EncoderError, match="face detector must be one of auto, yunet, insightface, got "
                                           "'mtcnn'"):
        options.current_settings()


def test_flags_beat_settings(app_webui, tmp_path):
    from lib_magicnaming.webui import options

    opts, cmd_opts = app_webui.shared.opts, app_webui.shared.cmd_opts
    opts.set(options.OPT_MODELS_DIR, str(tmp_path / "from-setting"))
    opts.set(options.OPT_ENCODER_DEVICE, "cpu")
    cmd_opts.magicnaming_dir = None
    assert options.current_settings().models_dir == tmp_path / "from-setting"
    assert options.current_settings().encoder_device == "cpu"
    cmd_opts.magicnaming_dir = str(tmp_path / "from-flag")
    cmd_opts.magicnaming_device = "cuda:1"
    assert options.current_settings().models_dir == tmp_path / "from-flag"
    assert options.current_settings().encoder_device == "cuda:1"
    cmd_opts.magicnaming_device = "gpu0"
    with pytest.raises(EncoderError, match="gpu0"):
        options.current_settings()
    cmd_opts.magicnaming_device = None
    opts.set(options.OPT_DETECTOR_PACK, "../etc")
    with pytest.raises(EncoderError, match="detector pack"):
        options.current_settings()


def test_preload_adds_the_flags():
    spec = importlib.util.spec_from_file_location("magicnaming_preload", ROOT / "preload.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    parser = argparse.ArgumentParser()
    module.preload(parser)
    args = parser.parse_args(["--magicnaming-dir", "/data/mn", "--magicnaming-device", "cpu"])
    assert (args.magicnaming_dir, args.magicnaming_device) == ("/data/mn", "cpu")
    assert parser.parse_args([]).magicnaming_dir is None


def test_encoder_missing_is_explained(app_webui, tmp_path):
    from lib_magicnaming.webui import encoder_cache

    encoder_dir = tmp_path / "mn" / "encoder"
    with pytest.raises(EncoderError, match=str(encoder_dir)):
        encoder_cache.get_encoder()
    status = encoder_cache.encoder_status()
    assert not status.ready and not status.loaded and str(encoder_dir) in status.missing[0]
    assert status.device == "cpu"  # auto -> the WebUI's device (the stand-in's is the CPU)
    assert "unavailable" in status.summary()
    app_webui.shared.opts.set("magicnaming_encoder_checkpoint", "mine.safetensors")
    with pytest.raises(EncoderError, match="'mine.safetensors' is not in"):
        encoder_cache.get_encoder()


def test_routes_through_the_webui_middleware(app_webui):
    client = started_app(app_webui)
    assert client.get("/magicnaming/v1/identities").json() == {"identities": [], "broken": []}
    response = client.get("/magicnaming/v1/identities/zed")
    assert response.status_code == 404
    assert response.json()["error"] == "HTTPException" and "zed" in response.json()["detail"]
    status = client.get("/magicnaming/v1/encoder").json()
    assert status["ready"] is False and "encoder" in status["missing"][0]


def test_api_auth_as_the_builtin_api(app_webui):
    app_webui.shared.cmd_opts.api_auth = "alice:s3cret,bob:hunter2"
    client = started_app(app_webui)
    for path in ("/magicnaming/v1/identities", "/magicnaming/v1/encoder"):
        assert client.get(path).status_code == 401
        assert client.get(path, auth=("alice", "wrong")).status_code == 401
        assert client.get(path, auth=("alice", "s3cret")).status_code == 200
        assert client.get(path, auth=("bob", "hunter2")).status_code == 200


@pytest.mark.parametrize(("api", "nowebui", "served"), [(False, False, False), (True, False, True),
                                                       (False, True, True)])
def test_without_the_webui_api_no_route_is_served(app_webui, api, nowebui, served):
    """No --api: no built-in API and no --api-auth to guard one, so no route at all (not even the identity
    list: the prompt autocomplete reads its names through the UI, lib_magicnaming.webui.autocomplete)."""
    app_webui.shared.cmd_opts.api, app_webui.shared.cmd_opts.nowebui = api, nowebui
    client = started_app(app_webui)
    assert client.get("/magicnaming/v1/identities").status_code == (200 if served else 404)
    routes = {(method, route.path) for route in client.app.routes for method in getattr(route, "methods", ())}
    ours = {("GET", "/magicnaming/v1/identities"), ("GET", "/magicnaming/v1/encoder"),
            ("POST", "/magicnaming/v1/identities/from-names"),
            ("DELETE", "/magicnaming/v1/identities/{name}"), ("GET", "/magicnaming/v1/identities/{name}")}
    assert (ours <= routes) is served and (not ours & routes) is not served


def test_names_use_the_loaded_sdxl_text_encoders(app_webui):
    client = started_app(app_webui)
    body = {"name": "ada", "names": [{"name": "Ada Lovelace"}]}
    response = client.post("/magicnaming/v1/identities/from-names", json=body)
    assert response.status_code == 503 and "SDXL checkpoint" in response.json()["detail"]

    app_webui.shared.sd_model = app_webui.toy.ToySD15()
    assert client.post("/magicnaming/v1/identities/from-names", json=body).status_code == 503

    app_webui.shared.sd_model = app_webui.toy.ToySDXL(refiner=True)
    response = client.post("/magicnaming/v1/identities/from-names", json=body)
    assert response.status_code == 503 and "refiner" in response.json()["detail"]

    model = app_webui.toy.ToySDXL()
    app_webui.shared.sd_model = model
    response = client.post("/magicnaming/v1/identities/from-names", json=body)
    assert response.status_code == 201, response.text
    expected = f_id_from_encoding(model.get_learned_conditioning(["Ada Lovelace"])["crossattn"])
    from lib_magicnaming.webui import services

    saved = services.identity_library().load("ada").embedding
    torch.testing.assert_close(saved, expected.float(), rtol=1e-3, atol=2e-3)


def test_tab_built_by_on_ui_tabs(app_webui):
    import gradio as gr

    tabs = app_webui.script_callbacks.ui_tabs_callback()
    assert len(tabs) == 1
    blocks, title, elem_id = tabs[0]
    assert isinstance(blocks, gr.Blocks) and (title, elem_id) == ("MagicNaming", "magicnaming")


def test_loads_and_explains_without_optional_packages(webui, monkeypatch, tmp_path):  # noqa: F811
    """A failed install step (no open_clip, insightface, onnxruntime): the extension loads, the tab builds,
    names still work, and the status says what to install (insightface only when it is the chosen
    detector: the default, YuNet, needs only OpenCV)."""
    for module in ("open_clip", "insightface", "onnxruntime"):
        monkeypatch.setitem(sys.modules, module, None)  # "import x" now raises ImportError
    webui.shared.cmd_opts.magicnaming_dir = str(tmp_path / "mn")
    webui.shared.cmd_opts.api = True
    webui.load_script(ROOT / "scripts" / "magicnaming_app.py")
    webui.script_callbacks.ui_settings_callback()
    (tab,) = webui.script_callbacks.ui_tabs_callback()
    from lib_magicnaming.webui import encoder_cache

    status = encoder_cache.encoder_status()
    assert status.missing[-1] == "package open_clip_torch" and "insightface" not in " ".join(status.missing)
    webui.shared.opts.set("magicnaming_face_detector", "insightface")
    status = encoder_cache.encoder_status()
    assert any(m.startswith("package insightface (the face detector setting is") for m in status.missing)
    assert "package onnxruntime (or onnxruntime-gpu), for insightface" in status.missing
    webui.shared.sd_model = webui.toy.ToySDXL()
    client = started_app(webui)
    body = {"name": "ada", "names": [{"name": "Ada Lovelace"}]}
    assert client.post("/magicnaming/v1/identities/from-names", json=body).status_code == 201
