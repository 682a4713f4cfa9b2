"""Issue 10: no request can stall the WebUI and the limits hold for every body.

Each failure the issue reports is a test here: a chunked body over the limit (413, nothing written), a
100,000-character name (400 at once, the queue lock never taken), the limits checked before any work and
before the lock (only the model work under it, one name per hold), for the identity routes and for Sample's
(candidates, portraits, the names list that measures the name space). The bounded load test on 127.0.0.1:
test_webui_load.py. What clients see (autocomplete, notes, no server paths): test_webui_client_view.py.
"""

from __future__ import annotations

import asyncio
import base64
import io

import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from webuiapp_doubles import RecordingLock, make_services, png_bytes
from webuiapp_doubles import make_api_client as make_client

from lib_magicnaming.identity_library import IdentityLibrary
from lib_magicnaming.webui.api import PREFIX, build_router
from lib_magicnaming.webui.limits import LIMITS, Limits, TooLarge, limit_rows
from lib_magicnaming.webui.use_cases import IdentityUseCases

pytest_plugins = ["webui_standin", "webui_standin.extension"]
pytestmark = pytest.mark.ui_stack

FROM_NAMES = f"{PREFIX}/identities/from-names"


@pytest.fixture()
def library(tmp_path):
    return IdentityLibrary(tmp_path / "mn" / "identities")


# ------------------------------------------------------------------------------------ bodies, by bytes read


def test_a_chunked_body_over_the_limit_is_413_and_nothing_is_written(library):
    limits = Limits(request_bytes=64 << 10)
    client = make_client(library, limits=limits)
    piece = 16 << 10

    def body():  # a valid JSON body of 1 MiB, sent without Content-Length
        yield b'{"name": "big", "names": [{"name": "'
        for _ in range(64):
            yield b"a" * piece
        yield b'"}]}'

    response = client.post(FROM_NAMES, content=body(), headers={"content-type": "application/json"})
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in response.request.headers
    assert response.status_code == 413, response.text
    assert response.json()["detail"] == "request body larger than 65,536 bytes"
    # (the TestClient hands the app the whole body; how much the server reads: the next test)
    assert not library.folder.exists() and client.encode_calls == [] and client.lock.entered == 0


def asgi_post(app, path: str, headers: list[tuple[bytes, bytes]], receive) -> list[dict]:
    """POST to the ASGI ``app`` with a hand-made ``receive``; the messages it sent back."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"), *headers],
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 80),
    }
    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def test_an_endless_chunked_body_is_cut_at_the_limit(library):
    """A client that never stops sending: 413, after reading at most the limit and one piece more."""
    limits = Limits(request_bytes=1 << 20)
    client = make_client(library, limits=limits)
    piece = 64 << 10
    received = 0

    async def endless():
        nonlocal received
        received += piece
        return {"type": "http.request", "body": b" " * piece, "more_body": True}

    sent = asgi_post(client.app_under_test, FROM_NAMES, [(b"transfer-encoding", b"chunked")], endless)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 413
    assert received <= limits.request_bytes + piece
    assert client.lock.entered == 0


def test_a_content_length_over_the_limit_is_413_before_a_byte_is_read(library):
    client = make_client(library, limits=Limits(request_bytes=1000))
    reads = []

    async def receive():
        reads.append(1)
        return {"type": "http.request", "body": b"{}", "more_body": False}

    sent = asgi_post(client.app_under_test, FROM_NAMES, [(b"content-length", b"5000")], receive)
    assert sent[0]["status"] == 413 and reads == []


def test_a_body_within_the_limit_is_parsed_as_before(library):
    client = make_client(library, limits=Limits(request_bytes=4096))

    def body():
        yield b'{"name": "ada", "names": '
        yield b'[{"name": "Ada Lovelace"}]}'

    response = client.post(FROM_NAMES, content=body(), headers={"content-type": "application/json"})
    assert response.status_code == 201, response.text and library.exists("ada")


# ---------------------------------------------------------------------- limits before any work and the lock


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"name": "x", "names": [{"name": "a" * 100_000}]}, 400, "100,000 characters long; a name may"),
        ({"name": "x", "names": [{"name": "a" * 201}]}, 400, "at most 200"),
        ({"name": "x", "names": [{"name": f"n{i}"} for i in range(17)]}, 413, "at most 16 names"),
        ({"name": "x", "names": [{"name": "Ada BREAK BREAK BREAK"}]}, 400, "BREAK"),
        # no WebUI tokenizer here: CLIP's own counts 800 tokens for 200 characters outside the BMP
        ({"name": "x", "names": [{"name": "\U00010000" * 200}]}, 400, "fills 11 prompt chunks of 75 tokens"),
        ({"name": "x" * 65, "names": [{"name": "Ada"}]}, 400, "the limit is 64"),
    ],
)
def test_names_over_the_limits_are_refused_at_once_without_the_lock(library, body, status, fragment):
    client = make_client(library)
    response = client.post(FROM_NAMES, json=body)
    assert response.status_code == status, response.text
    assert fragment in response.json()["detail"]
    assert len(response.json()["detail"]) < 300  # the message quotes the name shortened
    assert client.lock.entered == 0 and client.encode_calls == [] and not library.folder.exists()


def test_a_name_at_the_limit_is_encoded(library):
    client = make_client(library)
    response = client.post(FROM_NAMES, json={"name": "x", "names": [{"name": "a" * 200}] * 16})
    assert response.status_code == 201 and client.lock.entered == 16


def test_a_name_longer_than_one_prompt_chunk_is_refused_before_the_lock(webui, tmp_path):
    """In the WebUI the loaded checkpoint's own tokenizer counts a name's chunks (no model work) before the
    lock: a 200-character name of 1-letter words is 100 tokens, two chunks, of which only the start of the
    first would make the identity."""

    class CountingLock:
        entered = 0

        def __enter__(self):
            CountingLock.entered += 1

        def __exit__(self, *exc):
            pass

    webui.shared.cmd_opts.magicnaming_dir = str(tmp_path / "mn")
    webui.shared.cmd_opts.api = True
    webui.shared.sd_model = webui.toy.ToySDXL()
    from modules import call_queue

    call_queue.queue_lock = CountingLock()
    webui.load_script(webui.repo_root / "scripts" / "magicnaming_app.py")
    app = FastAPI()
    webui.script_callbacks.app_started_callback(None, app)
    client = TestClient(app)
    response = client.post(FROM_NAMES, json={"name": "x", "names": [{"name": "a " * 100}]})
    assert response.status_code == 400
    assert "fills 2 prompt chunks of 75 tokens; a name must fit in 1" in response.json()["detail"]
    assert CountingLock.entered == 0
    response = client.post(FROM_NAMES, json={"name": "x", "names": [{"name": "a " * 70}, {"name": "Ada"}]})
    assert response.status_code == 201 and CountingLock.entered == 2


def test_each_name_is_encoded_under_its_own_hold_of_the_lock(library):
    """A generation waiting for the lock waits for one name at most, not a whole request."""
    held: list[list[str]] = []
    lock = RecordingLock()

    def encode(texts):
        assert lock.lock.locked()
        held.append(list(texts))
        return torch.randn(len(texts), 154, 2048)  # two chunks: only the first one is kept

    services, _calls, _lock = make_services(library, encode_texts=encode, lock=lock)
    IdentityUseCases(services).create_from_names("ab", [("Ada", 1.0), ("Bob", 1.0), ("Cy", 2.0)])
    assert held == [["Ada"], ["Bob"], ["Cy"]] and lock.entered == 3


def test_the_tab_refuses_the_same_limits_without_the_lock(library):
    from lib_magicnaming.webui.tab_actions import TabActions

    services, calls, lock = make_services(library)
    actions = TabActions(services)
    message = actions.create_from_names("x", "a" * 100_000, "linear", False)
    assert "class='error'" in message and "a name may have at most 200" in message
    many = " + ".join(f"n{i}" for i in range(17))
    assert "at most 16 names" in actions.create_from_names("x", many, "linear", False)
    assert "at most 16 identities per mix" in actions.create_mix("x", many, "linear", False)
    assert "at most 16 photos" in actions.preview_photos([png_bytes()] * 17, False)[3]
    assert "at most 16 identity files" in actions.import_files([b"x"] * 17, "", False)
    assert "larger than an identity file can be" in actions.import_files([bytes(5 << 20)], "", False)
    assert lock.entered == 0 and calls == []


def test_photos_over_the_limits_never_reach_the_encoder_or_the_lock(library):
    encoders = []
    client = make_client(library, encoder=lambda: encoders.append(1), limits=Limits(photo_bytes=2000))
    photo = base64.b64encode(png_bytes()).decode()
    body = {"name": "d", "photos": [photo] * 17}
    response = client.post(f"{PREFIX}/identities/from-photos", json=body)
    assert response.status_code == 413 and "at most 16 photos" in response.json()["detail"]
    big = base64.b64encode(bytes(3000)).decode()
    response = client.post(f"{PREFIX}/identities/from-photos", json={"name": "d", "photos": [big]})
    assert response.status_code == 413 and "larger than 2,000 bytes" in response.json()["detail"]
    with pytest.raises(TooLarge, match="at most 16 photos"):
        IdentityUseCases(make_services(library)[0]).encode_photos([b"x"] * 17)
    assert encoders == [] and client.lock.entered == 0


def test_only_the_towers_run_under_the_queue_lock(library, tmp_path):
    """Loading (maybe downloading) the face detector, decoding the photos, finding their faces and reading
    the encoder's model from disk must not happen while the WebUI's queue waits: with the real encoder (tiny
    towers, a detector of YuNet's signature), only the towers run under the lock."""
    from encoder_fixtures import write_tiny_checkpoint
    from skimage import data as skdata
    from yunet_fixtures import yunet_for_photo

    from lib_magicnaming.encode import IdentityEncoder
    from lib_magicnaming.yunet_detector import YuNetDetector

    lock = RecordingLock()
    events = []
    model = yunet_for_photo(tmp_path / "yunet.onnx", [(180.0, 60.0, 260.0, 170.0, 0.9)], (512, 512))
    detector = YuNetDetector(model_path=model)
    for method in ("load", "detect"):
        def watched(*args, _real=getattr(detector, method), _name=method, **kwargs):
            events.append((_name, lock.lock.locked()))
            return _real(*args, **kwargs)
        setattr(detector, method, watched)
    write_tiny_checkpoint(tmp_path / "tiny.safetensors")
    encoder = IdentityEncoder(tmp_path / "tiny.safetensors", detector=detector, random_towers=True)
    real_embed = encoder.embed_pixels

    def embed(pixels):
        events.append(("towers", lock.lock.locked()))
        return real_embed(pixels)

    encoder.embed_pixels = embed
    checkpoint = encoder.checkpoint
    real_build = checkpoint.build_model

    def build(**kwargs):
        events.append(("build", lock.lock.locked()))
        return real_build(**kwargs)

    checkpoint.build_model = build
    services, _calls, _lock = make_services(library, encoder=lambda: encoder, lock=lock)
    photo = io.BytesIO()
    Image.fromarray(skdata.astronaut()).save(photo, format="PNG")
    result = IdentityUseCases(services).encode_photos([photo.getvalue()])
    assert result.per_photo[0].face_found and lock.entered == 1
    assert ("towers", True) in events and ("build", False) in events
    assert all(not locked for name, locked in events if name != "towers"), events
    assert events[0] == ("load", False)


def test_a_one_off_face_over_the_size_limit_is_refused_before_decoding():
    # imported here, together: the WebUI stand-in's tests import lib_magicnaming.webui afresh
    from lib_magicnaming.webui.limits import TooLarge
    from lib_magicnaming.webui.script_args import parse_script_args

    too_big = "A" * (LIMITS.photo_bytes * 4 // 3 + 8)
    with pytest.raises(TooLarge, match="'face' argument is larger than 16 MiB"):
        parse_script_args([True, "prepend", 1.0, too_big])


def test_too_many_tags_in_a_prompt_stop_the_generation_before_any_identity_is_read(magicnaming):
    prompt = " ".join(["<name:alice>"] * (LIMITS.tags_per_prompt + 1))
    with pytest.raises(Exception, match="holds 17 <name:...> tags; at most 16 per prompt") as raised:
        magicnaming.run(prompt)
    assert raised.value.status_code == 413
    p, _ = magicnaming.run(" ".join(["<name:alice>"] * LIMITS.tags_per_prompt))
    assert "alice:" in p.extra_generation_params["MagicNaming"]


# ------------------------------------------------------------------ Sample: candidates, portraits, names list


def sampling_services(library, tmp_path, names: list[str], **more):
    """Services whose loaded checkpoint is a toy one (the doubles' text encoders), with ``names`` as the
    names list and a name-space cache under ``tmp_path``; ``draw`` records its jobs and whether the lock was
    held. Returns (services, encode calls, lock, drawn jobs)."""
    from lib_magicnaming.names_list import parse_names
    from lib_magicnaming.namespace_cache import NamespaceCache, SourceCheckpoint

    lock = RecordingLock()
    drawn = []

    def draw(job):
        drawn.append((len(job.identities), job.settings.size, lock.lock.locked()))
        return [Image.new("RGB", (8, 8))] * len(job.identities)

    services, calls, _lock = make_services(
        library, lock=lock, draw=draw, names_list=lambda: parse_names("\n".join(names), "people.txt"),
        loaded_checkpoint=lambda **_kwargs: SourceCheckpoint("0123456789", "toy-sdxl"),
        namespace_cache=lambda: NamespaceCache(tmp_path / "namespace"), **more,
    )
    return services, calls, lock, drawn


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"count": 9}, 413, "at most 8 candidates at a time, not 9"),
        ({"count": 100_000}, 413, "at most 8 candidates"),
        ({"count": 0}, 400, "draw 1 to 8 candidates"),
        ({"size": 2048}, 400, "a multiple of 64 from 64 to 1024, not 2048"),
        ({"steps": 51}, 400, "1 to 50 steps, not 51"),
    ],
)
def test_candidates_over_the_limits_are_refused_before_any_work_and_the_lock(
    library, tmp_path, body, status, fragment
):
    services, calls, lock, drawn = sampling_services(library, tmp_path, ["Ada Lovelace", "Alan Turing"])
    client = TestClient(FastAPI())
    client.app.include_router(build_router(services))
    response = client.post(f"{PREFIX}/identities/sample/candidates", json=body)
    assert response.status_code == status, response.text
    assert fragment in response.json()["detail"]
    assert lock.entered == 0 and calls == [] and drawn == [] and not (tmp_path / "namespace").exists()


def test_a_portrait_over_the_limits_is_refused_before_the_lock(library, tmp_path):
    from webuiapp_doubles import random_identity

    library.save(random_identity("alice", 1))
    services, _calls, lock, drawn = sampling_services(library, tmp_path, ["Ada Lovelace", "Alan Turing"])
    client = TestClient(FastAPI())
    client.app.include_router(build_router(services))
    response = client.post(f"{PREFIX}/identities/alice/portrait", json={"size": 4096, "steps": 500})
    assert response.status_code == 400 and "not 4096" in response.json()["detail"]
    assert lock.entered == 0 and drawn == []
    response = client.post(f"{PREFIX}/identities/alice/portrait", json={"size": 64, "steps": 1})
    assert response.status_code == 200 and drawn == [(1, 64, True)] and lock.entered == 1


def test_candidates_at_the_limit_measure_once_and_draw_one_batch_under_the_lock(library, tmp_path):
    names = ["Ada Lovelace", "Alan Turing", "Marie Curie", "Frida Kahlo"]
    services, calls, lock, drawn = sampling_services(library, tmp_path, names)
    client = TestClient(FastAPI())
    client.app.include_router(build_router(services))
    body = {"count": LIMITS.candidates, "size": 64, "steps": 1}
    response = client.post(f"{PREFIX}/identities/sample/candidates", json=body)
    assert response.status_code == 200, response.text
    assert len(response.json()["candidates"]) == 8 and drawn == [(8, 64, True)]
    assert calls == [names] and lock.entered == 2  # one hold measures the list, one draws the batch


def test_a_listed_name_longer_than_one_prompt_chunk_is_refused_before_the_lock(library, tmp_path):
    """Measuring costs one chunk of the text encoders per listed name: a list whose name fills two chunks
    (CLIP's tokenizer counts, no WebUI one here) is a setup problem named before the queue lock."""
    names = ["Ada Lovelace", "a " * 100, "Alan Turing"]
    services, calls, lock, _drawn = sampling_services(library, tmp_path, names)
    client = TestClient(FastAPI())
    client.app.include_router(build_router(services))
    for method, path, body in (("POST", "/namespace", None), ("POST", "/identities/sample", {"name": "s"})):
        response = client.request(method, f"{PREFIX}{path}", json=body)
        assert response.status_code == 503, response.text
        detail = response.json()["detail"]
        assert "names-list setting: names list people.txt: name 2 ('a a a a" in detail
        assert "fills 2 prompt chunks of 75 tokens" in detail
    assert lock.entered == 0 and calls == [] and not library.folder.exists()
    counted = []
    services, calls, lock, _drawn = sampling_services(
        library, tmp_path, names, count_chunks=lambda text: counted.append(text) or 1)
    assert IdentityUseCases(services).create_sampled("s", 1).origin["kind"] == "sampled"
    assert counted == [name.strip() for name in names] and lock.entered == 1  # the loaded model's count


def test_the_readme_lists_every_limit():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    for row in limit_rows():
        assert f"| {row.what} | {row.limit} | {row.applies_to} |" in readme, row
