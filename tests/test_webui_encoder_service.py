"""The photo encoder as the WebUI glue serves it: built from settings inside the WebUI stand-in, cached by
the checkpoint's content hash, used by the REST routes and the tab with tiny random towers and a tiny
SCRFD-signature detector (the encoder part's fixtures)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from encoder_fixtures import install_pack, write_tiny_checkpoint
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from skimage import data as skdata
from webui_standin import webui  # noqa: F401 - the fixture

from lib_magicnaming.errors import EncoderError

pytestmark = pytest.mark.ui_stack

ROOT = Path(__file__).resolve().parents[1]
FACE_BOX = (180.0, 60.0, 260.0, 170.0, 0.9)  # the astronaut's face in skimage's 512 x 512 photo


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def astronaut_png() -> bytes:
    return png_bytes(Image.fromarray(skdata.astronaut()))


@pytest.fixture()
def env(webui, tmp_path):  # noqa: F811 - the fixture above
    """Stand-in WebUI whose models folder is tmp_path/models, with the app script loaded and a tiny encoder
    checkpoint installed in models/magicnaming/encoder."""
    from modules import paths

    paths.models_path = str(tmp_path / "models")
    webui.shared.cmd_opts.magicnaming_dir = None
    webui.shared.cmd_opts.magicnaming_device = None
    webui.shared.cmd_opts.api = True
    webui.load_script(ROOT / "scripts" / "magicnaming_app.py")
    webui.script_callbacks.ui_settings_callback()
    encoder_dir = tmp_path / "models" / "magicnaming" / "encoder"
    encoder_dir.mkdir(parents=True)
    webui.checkpoint_path = encoder_dir / "tiny.safetensors"
    webui.checkpoint_hash = write_tiny_checkpoint(webui.checkpoint_path)
    webui.insightface_root = tmp_path / "models" / "insightface"
    app = FastAPI()
    webui.api.api_middleware(app)
    webui.script_callbacks.app_started_callback(None, app)
    webui.client = TestClient(app)
    return webui


def test_status_before_and_after_use(env, astronaut_png):
    env.shared.opts.set("magicnaming_keep_encoder_loaded", True)
    status = env.client.get("/magicnaming/v1/encoder").json()
    assert status["ready"] is True and status["loaded"] is False
    assert (status["checkpoint"], status["checkpoint_hash"]) == ("tiny.safetensors", env.checkpoint_hash)
    assert status["detector_provider"].startswith("none: No face detector")

    install_pack(env.insightface_root, [FACE_BOX], (512, 512))
    body = {"name": "astro", "photos": [base64.b64encode(astronaut_png).decode()]}
    response = env.client.post("/magicnaming/v1/identities/from-photos", json=body)
    assert response.status_code == 201, response.text
    (report,) = response.json()["per_photo"]
    assert report["face_found"] and report["faces_found"] == 1
    assert report["score"] == pytest.approx(0.9, abs=0.01)
    assert report["provider"] == "CPUExecutionProvider"
    origin = response.json()["identity"]["origin"]
    assert origin["kind"] == "photos" and origin["encoder_hash"] == env.checkpoint_hash
    assert response.json()["identity"]["has_thumbnail"] is True

    status = env.client.get("/magicnaming/v1/encoder").json()
    assert status["loaded"] is True and status["detector_provider"] == "CPUExecutionProvider"


def test_no_face_is_422_naming_the_photo(env, astronaut_png):
    install_pack(env.insightface_root, [], (512, 512))
    body = {"name": "astro", "photos": [base64.b64encode(astronaut_png).decode()]}
    response = env.client.post("/magicnaming/v1/identities/from-photos", json=body)
    assert response.status_code == 422 and "photo 1: no face found" in response.json()["detail"]
    assert env.client.get("/magicnaming/v1/identities").json() == {"identities": []}


def test_sample_route(env):
    body = {"name": "nobody", "seed": 7, "scale": 0.5}
    response = env.client.post("/magicnaming/v1/identities/sample", json=body)
    assert response.status_code == 201, response.text
    assert response.json()["identity"]["origin"] == {
        "kind": "sampled", "encoder_hash": env.checkpoint_hash, "seed": 7, "scale": 0.5
    }
    again = env.client.post("/magicnaming/v1/identities/sample", json={**body, "name": "nobody2"}).json()
    assert again["identity"]["short_hash"] == response.json()["identity"]["short_hash"]


def test_encoder_is_cached_by_content_hash(env):
    from lib_magicnaming.webui import services

    first = services.get_encoder()
    assert services.get_encoder() is first and first.encoder_hash == env.checkpoint_hash
    new_hash = write_tiny_checkpoint(env.checkpoint_path, seed=1)  # same file name, new content
    second = services.get_encoder()
    assert second is not first and second.encoder_hash == new_hash != env.checkpoint_hash


def test_keep_loaded_off_unloads_after_use(env, astronaut_png):
    env.shared.opts.set("magicnaming_keep_encoder_loaded", False)
    body = {"name": "crop", "photos": [base64.b64encode(astronaut_png).decode()], "assume_cropped": True}
    assert env.client.post("/magicnaming/v1/identities/from-photos", json=body).status_code == 201
    assert env.client.get("/magicnaming/v1/encoder").json()["loaded"] is False


def test_missing_package_is_named(env, monkeypatch):
    from lib_magicnaming.webui import services

    monkeypatch.setitem(services.OPTIONAL_PACKAGES, "magicnaming_absent_module", "absent-package")
    with pytest.raises(EncoderError, match="absent-package"):
        services.get_encoder()
    status = services.encoder_status()
    assert "package absent-package" in status.missing and not status.ready


def test_tab_preview_then_save(env, astronaut_png):
    from lib_magicnaming.webui import services
    from lib_magicnaming.webui.tab import TabActions

    install_pack(env.insightface_root, [FACE_BOX], (512, 512))
    actions = TabActions(services.webui_context())
    crops, report, preview, message = actions.preview_photos([astronaut_png, b"junk"], False)
    assert "Encoded 2 photo(s)" in message
    assert len(crops) == 1 and crops[0][0].size == (224, 224)
    rows = report.splitlines()
    assert rows[0].startswith("| photo | face | faces found | score")
    assert rows[2].startswith("| 1 | yes | 1 | 0.9") and rows[3].startswith("| 2 | no |")
    assert "not an image" in rows[3]
    assert "Saved astro" in actions.save_photos(preview, "astro", False)
    saved = services.identity_library().load("astro")
    assert saved.thumbnail is not None and saved.origin["photo_hashes"] == preview.photo_hashes
    assert "Saved dice" in actions.create_sampled("dice", 3, 1.0, False)


def test_checkpoint_hash_is_computed_once_per_version_of_the_file(tmp_path, monkeypatch):
    import os

    from lib_magicnaming import checkpoint as checkpoint_module
    from lib_magicnaming.webui import services

    hashed = []
    real = checkpoint_module.file_sha256
    monkeypatch.setattr(checkpoint_module, "file_sha256", lambda path: hashed.append(path) or real(path))
    path = tmp_path / "enc.safetensors"
    path.write_bytes(b"one")
    first = services.checkpoint_sha256(path)
    assert services.checkpoint_sha256(path) == first and len(hashed) == 1
    path.write_bytes(b"two")
    os.utime(path, ns=(1, 1))  # a rewrite within one clock tick could keep the mtime; make it differ
    assert services.checkpoint_sha256(path) == real(path) != first and len(hashed) == 2
