"""The photo encoder as the WebUI glue serves it: built from settings inside the WebUI stand-in, cached by
the checkpoint's content hash, used by the REST routes and the tab with tiny random towers and tiny
detectors of YuNet's and SCRFD's signatures (the encoder part's fixtures)."""

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
from yunet_fixtures import FileServer, pin_for, yunet_for_photo

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
    # the default detector, 'auto', with no YuNet file and downloads off (HF_HUB_OFFLINE=1 in the tests)
    assert status["detector"] == "auto"
    assert status["detector_provider"].startswith("none: The face detector file face_detection_yunet_2023mar")

    install_pack(env.insightface_root, [FACE_BOX], (512, 512))  # auto falls back to an installed pack
    status = env.client.get("/magicnaming/v1/encoder").json()
    assert status["detector_state"] == "insightface:buffalo_l (loads on first use)"
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

    assert report["detector"] == "insightface:buffalo_l"
    status = env.client.get("/magicnaming/v1/encoder").json()
    assert status["loaded"] is True and status["detector_provider"] == "CPUExecutionProvider"
    assert status["detector_state"] == "insightface:buffalo_l on CPUExecutionProvider"


def test_no_face_is_422_naming_the_photo(env, astronaut_png):
    install_pack(env.insightface_root, [], (512, 512))
    body = {"name": "astro", "photos": [base64.b64encode(astronaut_png).decode()]}
    response = env.client.post("/magicnaming/v1/identities/from-photos", json=body)
    assert response.status_code == 422 and "photo 1: no face found" in response.json()["detail"]
    assert env.client.get("/magicnaming/v1/identities").json() == {"identities": []}


def test_sample_route(env):
    body = {"name": "nobody", "seed": 7, "scale": 0.5, "source": "encoder"}
    response = env.client.post("/magicnaming/v1/identities/sample", json=body)
    assert response.status_code == 201, response.text
    assert response.json()["identity"]["origin"] == {
        "kind": "sampled", "encoder_hash": env.checkpoint_hash, "seed": 7, "scale": 0.5
    }
    again = env.client.post("/magicnaming/v1/identities/sample", json={**body, "name": "nobody2"}).json()
    assert again["identity"]["short_hash"] == response.json()["identity"]["short_hash"]


def test_encoder_is_cached_by_content_hash(env):
    from lib_magicnaming.webui import encoder_cache

    first = encoder_cache.get_encoder()
    assert encoder_cache.get_encoder() is first and first.encoder_hash == env.checkpoint_hash
    new_hash = write_tiny_checkpoint(env.checkpoint_path, seed=1)  # same file name, new content
    second = encoder_cache.get_encoder()
    assert second is not first and second.encoder_hash == new_hash != env.checkpoint_hash


def test_the_encoder_decides_where_its_weights_live_and_the_cache_frees_a_replaced_one(env, astronaut_png,
                                                                                       monkeypatch):
    """The routes and the tab never unload the encoder: without "keep loaded" its weights wait in RAM between
    uses (on a GPU only a copy goes up per call, dropped after it), with it they stay on its device. When a
    changed setting (or checkpoint) makes the cache build a new encoder, the replaced one is unloaded: its
    RAM, pinned RAM, GPU memory and graphs freed."""
    from lib_magicnaming.encode import IdentityEncoder
    from lib_magicnaming.webui import encoder_cache

    unloaded = []
    unload = IdentityEncoder.unload
    monkeypatch.setattr(IdentityEncoder, "unload", lambda self: unloaded.append(self) or unload(self))
    env.shared.opts.set("magicnaming_keep_encoder_loaded", False)
    body = {"name": "crop", "photos": [base64.b64encode(astronaut_png).decode()], "assume_cropped": True}
    assert env.client.post("/magicnaming/v1/identities/from-photos", json=body).status_code == 201
    first = encoder_cache.get_encoder()
    assert unloaded == [] and not first.keep_loaded and first.is_loaded and first.weights_device == "cpu"
    again = {**body, "name": "again"}
    assert env.client.post("/magicnaming/v1/identities/from-photos", json=again).status_code == 201
    assert unloaded == [] and first.stats.loads == 1  # the same weights served the second request

    env.shared.opts.set("magicnaming_keep_encoder_loaded", True)
    kept = {**body, "name": "kept"}
    assert env.client.post("/magicnaming/v1/identities/from-photos", json=kept).status_code == 201
    second = encoder_cache.get_encoder()
    assert second is not first and unloaded == [first] and not first.is_loaded
    assert second.keep_loaded and second.is_loaded

    env.shared.opts.set("magicnaming_pin_encoder_memory", True)
    third = encoder_cache.get_encoder()
    assert third is not second and unloaded == [first, second] and not second.is_loaded
    assert not third.pin_memory  # the CPU encoder has no GPU copy to speed up; on CUDA it pins its master


def test_the_pin_setting_is_registered_off_by_default(env):
    from lib_magicnaming.webui import options

    info = env.shared.opts.data_labels[options.OPT_PIN_ENCODER_MEMORY]
    assert info.default is False and info.section == options.SECTION and "4.4 GB" in info.label
    assert options.current_settings().pin_encoder_memory is False


def test_missing_package_is_named(env, monkeypatch):
    from lib_magicnaming.webui import encoder_cache

    monkeypatch.setitem(encoder_cache.OPTIONAL_PACKAGES, "magicnaming_absent_module", "absent-package")
    with pytest.raises(EncoderError, match="absent-package"):
        encoder_cache.get_encoder()
    status = encoder_cache.encoder_status()
    assert "package absent-package" in status.missing and not status.ready


def test_tab_preview_then_save(env, astronaut_png):
    from lib_magicnaming.webui import services
    from lib_magicnaming.webui.sample_actions import SampleActions
    from lib_magicnaming.webui.tab_actions import TabActions

    install_pack(env.insightface_root, [FACE_BOX], (512, 512))
    actions = TabActions(services.webui_services())
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
    sample = SampleActions(services.webui_services())
    assert "Saved dice" in sample.create_sampled("dice", 3, 1.0, False, "encoder checkpoint", None)


def test_checkpoint_hash_is_computed_once_per_version_of_the_file(tmp_path, monkeypatch):
    import os

    from lib_magicnaming import checkpoint as checkpoint_module
    from lib_magicnaming.webui import encoder_cache

    hashed = []
    real = checkpoint_module.file_sha256
    monkeypatch.setattr(checkpoint_module, "file_sha256", lambda path: hashed.append(path) or real(path))
    path = tmp_path / "enc.safetensors"
    path.write_bytes(b"one")
    first = encoder_cache.checkpoint_sha256(path)
    assert encoder_cache.checkpoint_sha256(path) == first and len(hashed) == 1
    path.write_bytes(b"two")
    os.utime(path, ns=(1, 1))  # a rewrite within one clock tick could keep the mtime; make it differ
    assert encoder_cache.checkpoint_sha256(path) == real(path) != first and len(hashed) == 2


def test_default_settings_fetch_yunet_on_first_use_and_make_an_identity(env, astronaut_png, tmp_path,
                                                                        monkeypatch):
    """A WebUI where install.py installed nothing for detection: the default detector downloads its file
    (from a server on 127.0.0.1 standing in for opencv_zoo) at the first photo, then finds the face."""
    from lib_magicnaming import detector_files
    from lib_magicnaming.webui import encoder_cache

    model = yunet_for_photo(tmp_path / "served" / "tiny.onnx", [FACE_BOX], (512, 512))
    server = FileServer(model.read_bytes())
    try:
        monkeypatch.setattr(detector_files, "YUNET_2023MAR", pin_for(model, url=server.url()))
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            monkeypatch.delenv(name, raising=False)
        status = env.client.get("/magicnaming/v1/encoder").json()
        assert status["ready"] is True and "downloaded into" in status["detector_state"]
        assert server.requests == 0  # not at start-up, not for the status
        body = {"name": "astro", "photos": [base64.b64encode(astronaut_png).decode()]}
        response = env.client.post("/magicnaming/v1/identities/from-photos", json=body)
        assert response.status_code == 201, response.text
        (report,) = response.json()["per_photo"]
        assert report["detector"] == "yunet-2023mar" and report["provider"].startswith("OpenCV 4.")
        assert report["box"] == pytest.approx(list(FACE_BOX[:4]), abs=0.1) and report["notes"] == []
        detectors = tmp_path / "models" / "magicnaming" / "detectors"
        assert (detectors / "face_detection_yunet_2023mar.onnx").read_bytes() == model.read_bytes()
        env.client.post("/magicnaming/v1/identities/from-photos", json={**body, "name": "astro2"})
        assert server.requests == 1  # downloaded once
        assert encoder_cache.encoder_status().detector_state.startswith("yunet-2023mar")
    finally:
        server.close()


def test_the_insightface_setting_without_insightface_says_what_to_do(env, monkeypatch):
    import sys

    from lib_magicnaming.webui import encoder_cache

    env.shared.opts.set("magicnaming_face_detector", "insightface")
    monkeypatch.setitem(sys.modules, "insightface", None)  # install.py could not install it
    status = encoder_cache.encoder_status()
    assert not status.ready and status.detector == "insightface"
    (missing,) = [m for m in status.missing if "insightface" in m]
    assert "install.py installs it at the next WebUI start" in missing and "'auto'" in missing
    assert status.summary().startswith("MagicNaming encoder unavailable: package insightface")
    with pytest.raises(EncoderError, match="package|insightface"):
        encoder_cache.get_encoder()
    env.shared.opts.set("magicnaming_face_detector", "auto")  # YuNet needs no package
    assert encoder_cache.encoder_status().ready
