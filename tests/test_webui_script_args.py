"""The script's arguments: positional (UI and API), the single-dict API form, and the API end to end."""

import base64
import io
import threading

import pytest
from fastapi import FastAPI
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from gradio_wire import choice_values, new_session, target_ids
from PIL import Image
from webui_standin.extension import txt2img_request as request

from lib_magicnaming.errors import MagicNamingError
from lib_magicnaming.webui.script_args import ScriptSettings, decode_face, parse_script_args

pytest_plugins = ["webui_standin", "webui_standin.extension"]

pytestmark = pytest.mark.ui_stack


def png_base64(color=(10, 200, 30)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_positional_args_with_defaults_for_missing_and_none():
    assert parse_script_args([]) == ScriptSettings()
    assert parse_script_args([True, None, None, None]) == ScriptSettings(enabled=True)
    settings = parse_script_args([True, "in_place", 0.25])
    assert (settings.enabled, settings.mode, settings.strength) == (True, "in place", 0.25)


def test_single_dict_form_defaults_to_enabled_and_names_unknown_keys():
    assert parse_script_args([{"strength": 1.5}]) == ScriptSettings(enabled=True, strength=1.5)
    assert parse_script_args([{"enabled": False}]).enabled is False
    with pytest.raises(MagicNamingError, match="'strenght'"):
        parse_script_args([{"strenght": 1.0}])


def test_bad_values_are_named():
    with pytest.raises(MagicNamingError, match="'enabled' must be true or false"):
        parse_script_args(["yes please"])
    with pytest.raises(MagicNamingError, match="from 0 to 2"):
        parse_script_args([True, "prepend", 5])
    with pytest.raises(MagicNamingError, match="not valid base64"):
        parse_script_args([True, "prepend", 1.0, "%%% not base64"])


def test_face_forms():
    data = base64.b64decode(png_base64())
    assert decode_face(png_base64()) == data
    assert decode_face("data:image/png;base64," + png_base64()) == data
    assert decode_face("") is None
    image = Image.new("RGB", (4, 4))
    assert decode_face(image) is image
    with pytest.raises(MagicNamingError, match="must be an image"):
        decode_face(3.5)
    with pytest.raises(MagicNamingError, match="must be an image"):
        decode_face({"name": __file__})  # an API client must not make the server read its files


def test_any_true_spelling_of_enabled_makes_a_bad_argument_stop_the_generation():
    from lib_magicnaming.webui.script_args import wants_enabled

    assert [wants_enabled(args) for args in ([1, "x"], ["true", "x"], [{"mode": "x"}], ["yes"])] == [True] * 4
    off = ([], [None, "x"], [False, "x"], [0, "x"], ["false"])
    assert [wants_enabled(args) for args in off] == [False] * 5


def test_api_positional_args_reach_the_script(magicnaming, api_client):
    body = request("<name:alice> jogging", [True, "in place", 0.8])
    response = api_client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    info = response.json()["info"]
    short_hash = magicnaming.library.get_info("alice").short_hash
    assert f"alice:{short_hash}, mode: in place, strength: 0.8" in info


def test_api_single_dict_with_a_base64_face(magicnaming, api_client):
    face = png_base64((250, 200, 180))
    body = request("<name:face> skiing", [{"mode": "prepend", "face": face}])
    response = api_client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    expected = magicnaming.encoder.encode_photos([base64.b64decode(face)]).embedding
    from lib_magicnaming.identity import embedding_hash

    assert f"face:{embedding_hash(expected)}" in response.json()["info"]


def test_api_unknown_identity_is_an_error_naming_it_and_the_api_keeps_working(magicnaming, api_client):
    response = api_client.post("/sdapi/v1/txt2img", json=request("<name:carol> jogging", [True]))
    assert response.status_code == 404  # the caller's mistake, as the REST routes answer it; not a 500
    assert response.json()["error"] == "MagicNamingError"
    assert "'carol'" in response.json()["errors"] and "'carol'" in response.json()["detail"]
    response = api_client.post("/sdapi/v1/txt2img", json=request("<name:bob> jogging", [True]))
    assert response.status_code == 200


def test_api_default_args_leave_magicnaming_off(magicnaming, api_client):
    body = request("<name:alice> jogging", [])
    response = api_client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200
    assert "MagicNaming:" not in response.json()["info"]


def test_api_bad_dict_key_stops_the_generation(magicnaming, api_client):
    response = api_client.post("/sdapi/v1/txt2img", json=request("<name:alice>", [{"strenght": 1}]))
    assert response.status_code == 400 and "'strenght'" in response.json()["errors"]


def test_api_malformed_tag_is_a_400(magicnaming, api_client):
    response = api_client.post("/sdapi/v1/txt2img", json=request("<name:alice:9> jogging", [True]))
    assert response.status_code == 400 and "strength" in response.json()["detail"]


def test_script_ui_returns_the_args_in_order_with_defaults(magicnaming):
    inputs = magicnaming.runner.inputs[magicnaming.script.args_from:magicnaming.script.args_to]
    assert [type(control).__name__ for control in inputs] == [
        "InputAccordion", "Radio", "Slider", "Image", "Checkbox"
    ]
    assert [control.value for control in inputs[:3]] == [False, "prepend", 1.0]
    assert inputs[4].value is False
    assert inputs[0].elem_id == "script_txt2img_magicnaming_enabled-checkbox"


def test_status_line_reports_the_encoder_and_identity_names_come_from_the_library(magicnaming, tmp_path):
    from lib_magicnaming.webui import setup

    magicnaming.webui.shared.cmd_opts.magicnaming_dir = str(tmp_path / "mn")
    assert "No MagicNaming encoder checkpoint installed" in setup.status_line()
    assert setup.saved_identity_names() == []
    magicnaming.webui.shared.cmd_opts.magicnaming_dir = str(magicnaming.library.folder.parent)
    assert setup.saved_identity_names() == ["alice", "bob"]


def test_opening_the_accordion_or_refresh_rereads_the_saved_identities(webui):
    import asyncio

    import gradio as gr

    from lib_magicnaming.webui.accordion import build_accordion

    names = ["alice"]
    with gr.Blocks() as blocks:
        controls = build_accordion(lambda part: f"script_txt2img_magicnaming_{part}", lambda: list(names),
                                   lambda: "status")
    blocks.queue()
    config = blocks.get_config_file()

    def event(trigger) -> int:
        return next(i for i, dep in enumerate(config["dependencies"])
                    if target_ids(dep) == [trigger._id] and controls.identity._id in dep["outputs"])

    names.append("bob")
    opened = asyncio.run(blocks.process_api(event(controls.enabled), [], state=new_session(blocks)))["data"]
    assert choice_values(opened[0]["choices"]) == ["alice", "bob"]
    names.append("carol")
    session = new_session(blocks)
    refreshed = asyncio.run(blocks.process_api(event(controls.refresh), [], state=session))["data"]
    assert choice_values(refreshed[0]["choices"]) == ["alice", "bob", "carol"] and refreshed[1] == "status"


def test_on_forges_api_stack_a_stopped_generation_is_answered_not_re_raised(magicnaming, monkeypatch):
    """Forge's API registers no middleware (modules/api/api.py: ``#api_middleware(self.app)``) and makes its
    app with ``exception_handlers={Exception: _handle_exception}`` (webui.py), which Starlette runs in its
    ServerErrorMiddleware: it answers, then re-raises, and uvicorn logs "Exception in ASGI application" and
    drops the client's connection (seen in the real Forge dfdcbab6: the next request on that connection got
    "Connection reset by peer"). A stop must reach the caller as an HTTPException instead: answered with its
    status by FastAPI's own handler, never re-raised (TestClient re-raises what the server re-raises)."""

    def forge_handle_exception(request, e):  # webui.py:_handle_exception, Forge dfdcbab6
        info = vars(e)
        content = {"error": type(e).__name__, "detail": info.get("detail", ""), "body": info.get("body", ""),
                   "message": str(e)}
        return JSONResponse(status_code=int(info.get("status_code", 500)), content=jsonable_encoder(content))

    app = FastAPI(exception_handlers={Exception: forge_handle_exception})
    monkeypatch.setattr(magicnaming.webui.api, "api_middleware", lambda app: None)
    magicnaming.webui.api.Api(app, threading.Lock())
    client = TestClient(app)  # raise_server_exceptions: a re-raised exception fails the test here
    response = client.post("/sdapi/v1/txt2img", json=request("<name:carol> jogging", [True]))
    assert response.status_code == 404
    assert "no saved identity called 'carol'" in response.json()["detail"]
    response = client.post("/sdapi/v1/txt2img", json=request("<name:alice jogging", [True]))
    assert response.status_code == 400 and "not closed" in response.json()["detail"]
    assert client.post("/sdapi/v1/txt2img", json=request("<name:bob> jogging", [True])).status_code == 200


def test_a_stop_reads_in_the_webui_as_a_magicnaming_error_with_its_message():
    from lib_magicnaming.webui.conditioning import stop_error
    from lib_magicnaming.webui.store import StopMessage

    message = "there is no saved identity called 'carol'."
    error = stop_error(StopMessage(f"MagicNaming: {message}", 404))
    # the text the UI shows under the image (modules/call_queue.py:88, v1.10.1; the same in Forge)
    assert f"{type(error).__name__}: {error}" == f"MagicNamingError: {message}"
    assert isinstance(error, MagicNamingError) and (error.status_code, error.detail) == (404, str(error))
