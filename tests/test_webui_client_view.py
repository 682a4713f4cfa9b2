"""Issue 10: API callers and UI users learn the same things, and no server path reaches a client.

Each failure the issue reports is a test here: the prompt autocomplete under ``--api-auth`` (through the
UI's own channel, prefix matching, broken identities not offered), the API's ``info`` carrying the notes
the UI shows, and the error bodies of every route scanned for the server's folders.
Limits and the queue lock: test_webui_limits.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import types

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from safetensors import safe_open
from safetensors.torch import save_file
from webui_standin.extension import txt2img_request as txt2img
from webuiapp_doubles import make_api_client as make_client
from webuiapp_doubles import make_services, png_bytes, random_identity

from lib_magicnaming.errors import EncoderError
from lib_magicnaming.identity import embedding_hash
from lib_magicnaming.identity_library import IdentityLibrary
from lib_magicnaming.namespace_cache import NamespaceCache
from lib_magicnaming.webui.api import PREFIX
from lib_magicnaming.webui.encoder_cache import EncoderStatus

pytest_plugins = ["webui_standin", "webui_standin.extension"]
pytestmark = pytest.mark.ui_stack


@pytest.fixture()
def library(tmp_path):
    return IdentityLibrary(tmp_path / "mn" / "identities")


def write_nan_identity(library: IdentityLibrary, name: str) -> None:
    """An identity file whose header is sound (listing reads only headers) but whose embedding holds NaN."""
    path = library.save(random_identity(name, 9)).path
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    tensors["embedding"][3, 5] = float("nan")
    metadata["short_hash"] = embedding_hash(tensors["embedding"])
    save_file(tensors, str(path), metadata=metadata)


# ----------------------------------------------------------------------------- autocomplete under --api-auth


def test_autocomplete_works_under_api_auth_through_the_ui_and_offers_no_broken_identity(webui, tmp_path):
    """--api-auth guards the REST list (the browser has no API credentials); the names reach the page through
    the accordion's gradio channel instead, with broken identities left out."""
    import gradio as gr
    from gradio_wire import new_session, target_ids

    from lib_magicnaming.webui.accordion import build_accordion
    from lib_magicnaming.webui.autocomplete import webui_payload

    webui.shared.cmd_opts.magicnaming_dir = str(tmp_path / "mn")
    webui.shared.cmd_opts.api = True
    webui.shared.cmd_opts.api_auth = "user:secret"
    library = IdentityLibrary(tmp_path / "mn" / "identities")
    for name, seed in (("alice", 1), ("nanny", 2)):
        library.save(random_identity(name, seed))
    write_nan_identity(library, "broken")

    app = FastAPI()
    webui.load_script(webui.repo_root / "scripts" / "magicnaming_app.py")
    webui.script_callbacks.ui_settings_callback()
    webui.script_callbacks.app_started_callback(None, app)
    rest = TestClient(app)
    assert rest.get(f"{PREFIX}/identities").status_code == 401  # not open to anyone unauthenticated
    listed = rest.get(f"{PREFIX}/identities", auth=("user", "secret")).json()
    assert [item["name"] for item in listed["identities"]] == ["alice", "nanny"]
    assert [(item["name"], item["file"]) for item in listed["broken"]] == [("broken", "broken.safetensors")]
    assert "NaN" in listed["broken"][0]["problem"] and str(tmp_path) not in json.dumps(listed)

    with gr.Blocks() as blocks:
        controls = build_accordion(lambda part: f"script_txt2img_magicnaming_{part}", lambda: [],
                                   lambda: "status", webui_payload)
    blocks.queue()
    config = blocks.get_config_file()
    by_id = {c["props"].get("elem_id"): c for c in config["components"]}
    names_box = by_id["script_txt2img_magicnaming_names"]
    assert names_box["props"]["visible"] is False
    assert controls.names.do_not_save_to_config  # modules/ui_loadsave.py skips it: no stale list restored
    assert json.loads(names_box["props"]["value"]) == {"names": ["alice", "nanny"], "match": "prefix"}

    library.save(random_identity("bob", 3))
    button = by_id["script_txt2img_magicnaming_names_refresh"]["id"]
    refresh = next(i for i, dep in enumerate(config["dependencies"]) if target_ids(dep) == [button])
    output = asyncio.run(blocks.process_api(refresh, [], state=new_session(blocks)))["data"][0]
    value = output["value"] if isinstance(output, dict) else output  # gradio 3.41 may send an update dict
    assert json.loads(value) == {"names": ["alice", "bob", "nanny"], "match": "prefix"}
    assert controls.names._id == names_box["id"]

    webui.shared.opts.set("magicnaming_autocomplete_match", "anywhere")
    assert json.loads(webui_payload())["match"] == "anywhere"


# ------------------------------------------------------------------------------ notes reach the API's info


def info_notes(response) -> str:
    info = json.loads(response.json()["info"])
    notes = info["extra_generation_params"].get("MagicNaming notes", "")
    assert all(notes in text for text in info["infotexts"])  # each image's parameters carry them too
    return notes


def test_the_api_info_says_the_extension_is_off_while_the_prompt_has_tags(magicnaming, api_client):
    response = api_client.post("/sdapi/v1/txt2img", json=txt2img("<name:alice> jogging", []))
    assert response.status_code == 200
    assert "MagicNaming is off, so the WebUI dropped the <name:...> tags" in info_notes(response)
    plain = api_client.post("/sdapi/v1/txt2img", json=txt2img("jogging", []))
    assert "MagicNaming notes" not in plain.json()["info"]


def test_the_api_info_carries_the_text_pushed_out_of_the_first_chunk(magicnaming, api_client):
    prompt = "<name:alice> " + " ".join(["word"] * 74)
    response = api_client.post("/sdapi/v1/txt2img", json=txt2img(prompt, [True]))
    assert response.status_code == 200
    assert "the last 6 of its 74 prompt tokens were dropped" in info_notes(response)


def test_the_api_info_carries_what_the_one_off_face_reported(magicnaming, api_client):
    """A detector other than the one the encoder was trained with, as the UI's comment says it."""
    note = ("this encoder was trained on crops found by yunet-2023mar; this face was found by insightface:"
            "buffalo_l, so its crop may frame the face a little differently than the encoder expects")
    encoder = magicnaming.encoder
    plain = encoder.encode_photos

    def with_report(photos, **kwargs):
        result = plain(photos, **kwargs)
        result.per_photo = [types.SimpleNamespace(notes=[note])]
        return result

    encoder.encode_photos = with_report
    face = base64.b64encode(png_bytes((16, 16), (250, 200, 180))).decode()
    response = api_client.post("/sdapi/v1/txt2img", json=txt2img("<name:face> skiing", [{"face": face}]))
    assert response.status_code == 200, response.text
    assert f"MagicNaming, the one-off face: {note}" in info_notes(response)


# ------------------------------------------------------------------------ no server path in any error body


def routes_of(app) -> set[tuple[str, str]]:
    return {(method, route.path) for route in app.routes if route.path.startswith(PREFIX)
            for method in getattr(route, "methods", ())}


def test_no_error_body_of_any_route_names_a_server_folder(library, tmp_path):
    folder = library.folder.parent  # <tmp>/mn: the MagicNaming folder
    encoder_dir = folder / "encoder"

    def encoder():
        raise EncoderError(f"No MagicNaming encoder checkpoint installed: put one in {encoder_dir}")

    def encode_texts(texts):
        raise EncoderError(f"the text encoders of {tmp_path / 'webui' / 'models' / 'sdxl.safetensors'} fail")

    def status():
        return EncoderStatus(
            loaded=False, encoder_dir=str(encoder_dir), detector_state=f"none: {folder}/x.onnx",
            missing=[f"No checkpoint in {encoder_dir}", f"cannot read {tmp_path}/other"],
        )

    def loaded_checkpoint(**_kwargs):
        raise EncoderError(f"cannot hash {tmp_path}/webui/models/Stable-diffusion/sdxl.safetensors")

    def draw(job):
        raise EncoderError(f"the WebUI could not draw: {folder}/namespace/x.bin is locked")

    client = make_client(library, encoder=encoder, encode_texts=encode_texts, status=status,
                         loaded_checkpoint=loaded_checkpoint, draw=draw,
                         namespace_cache=lambda: NamespaceCache(folder / "namespace"))
    library.save(random_identity("alice", 1))
    write_nan_identity(library, "broken")
    (library.folder / "junk.safetensors").write_bytes(b"not an identity file at all" * 4)
    photo = base64.b64encode(png_bytes()).decode()
    requests = {
        ("GET", f"{PREFIX}/identities"): [None],
        ("GET", f"{PREFIX}/identities/{{name}}"): ["nobody", "broken", "junk", ".hidden"],
        ("DELETE", f"{PREFIX}/identities/{{name}}"): ["nobody", ".hidden"],
        ("POST", f"{PREFIX}/identities/from-photos"): [{"name": "d", "photos": [photo]},
                                                       {"name": "d", "photos": ["%%%"]}],
        ("POST", f"{PREFIX}/identities/from-names"): [{"name": "d", "names": [{"name": "Ada"}]}],
        ("POST", f"{PREFIX}/identities/mix"): [
            {"name": "m", "identities": [{"name": "alice"}, {"name": "zed"}]},
            {"name": "m", "identities": [{"name": "broken"}]},
        ],
        ("POST", f"{PREFIX}/identities/sample"): [{"name": "s", "seed": 1}],
        ("POST", f"{PREFIX}/identities/sample/candidates"): [
            {"count": 9}, {"size": 128, "steps": 1}, {"source": "encoder", "size": 128, "steps": 1},
        ],
        ("POST", f"{PREFIX}/identities/{{name}}/portrait"): ["nobody", "alice", "broken", "junk"],
        ("GET", f"{PREFIX}/namespace"): [None],  # 200, its status line naming the checkpoint's problem
        ("POST", f"{PREFIX}/namespace"): [None],
        ("GET", f"{PREFIX}/encoder"): [None],
    }
    assert set(requests) == routes_of(client.app_under_test)  # a new route must be added here
    forms = {str(tmp_path), str(tmp_path.resolve()), "/tmp/", str(folder)}
    errors = 0
    for (method, path), cases in requests.items():
        for case in cases:
            if isinstance(case, str):
                response = client.request(method, path.replace("{name}", case))
            else:
                response = client.request(method, path, json=case)
            errors += response.status_code >= 400
            for form in forms:
                assert form not in response.text, (method, path, case, response.text)
    assert errors >= 20
    detail = client.get(f"{PREFIX}/identities/nobody").json()["detail"]
    assert detail == "no identity named 'nobody' in <MagicNaming folder>/identities"
    assert client.get(f"{PREFIX}/encoder").json()["encoder_dir"] == "<MagicNaming folder>/encoder"
    status_line = client.get(f"{PREFIX}/namespace").json()["status"]
    assert status_line.startswith("Name space: cannot hash <temp>/") and "sdxl.safetensors" in status_line
    measure = client.post(f"{PREFIX}/namespace").json()["detail"]
    assert measure.startswith("cannot hash <temp>/") and measure.endswith("Stable-diffusion/sdxl.safetensors")
    drawn = client.post(f"{PREFIX}/identities/alice/portrait").json()["detail"]
    assert drawn == "the WebUI could not draw: <MagicNaming folder>/namespace/x.bin is locked"


def test_generation_errors_name_no_server_folder(magicnaming, api_client, tmp_path):
    def no_encoder_here():
        raise EncoderError(f"No MagicNaming encoder checkpoint installed: put one in {tmp_path}/mn/encoder")

    magicnaming.script.services = make_services(magicnaming.library, encoder=no_encoder_here)[0]
    face = base64.b64encode(png_bytes()).decode()
    response = api_client.post("/sdapi/v1/txt2img", json=txt2img("<name:face>", [{"face": face}]))
    assert response.status_code == 503
    assert str(tmp_path) not in response.text and "/tmp/" not in response.text
    assert "put one in <temp>/" in response.json()["detail"]  # the temp folder, by name


def test_webui_folders_are_named_relative_to_the_webui(webui, tmp_path):
    from modules import paths

    from lib_magicnaming.webui.redact import client_message

    root = tmp_path / "webui"
    paths.data_path = paths.script_path = str(root)
    paths.models_path = str(root / "models")
    webui.shared.cmd_opts.magicnaming_dir = None
    text = f"no identity named 'x' in {root}/models/magicnaming/identities; see {root}/extensions/a.py."
    assert client_message(text) == (
        "no identity named 'x' in models/magicnaming/identities; see extensions/a.py."
    )
    assert client_message("cannot write /srv/elsewhere/file.txt.") == "cannot write .../file.txt."
    assert client_message(f"cannot write {tmp_path}/x.txt").startswith("cannot write <temp>/")
