"""The /magicnaming/v1 REST routes through FastAPI's TestClient: success paths, every 4xx, --api-auth."""

from __future__ import annotations

import base64
import io

import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from webuiapp_doubles import make_services, no_encoder, random_identity, text_encoding

from lib_magicnaming.errors import EncoderError
from lib_magicnaming.identity_library import IdentityLibrary
from lib_magicnaming.webui.api import PREFIX, ApiLimits, build_router

pytestmark = pytest.mark.ui_stack


@pytest.fixture()
def library(tmp_path):
    return IdentityLibrary(tmp_path / "identities")


def make_client(library, *, encoder=no_encoder, api_auth=None, limits=ApiLimits(), encode_texts=None):
    services, calls, lock = make_services(library, encoder=encoder, encode_texts=encode_texts)
    app = FastAPI()
    app.include_router(build_router(services, api_auth=api_auth, limits=limits))
    client = TestClient(app)
    client.encode_calls = calls
    client.lock = lock
    return client


def png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


# ------------------------------------------------------------------------------------------ read / delete


def test_list_get_delete(library):
    thumb = Image.new("RGB", (32, 40), (200, 10, 10))
    library.save(random_identity("Alice", 1, thumb))
    library.save(random_identity("bob", 2))
    client = make_client(library)

    listed = client.get(f"{PREFIX}/identities").json()["identities"]
    assert [item["name"] for item in listed] == ["Alice", "bob"]
    assert listed[0]["short_hash"] == library.load("alice").short_hash
    assert "path" not in listed[0]

    one = client.get(f"{PREFIX}/identities/ALICE")
    assert one.status_code == 200
    body = one.json()
    assert body["name"] == "Alice" and body["origin"] == {"kind": "imported"}
    image = Image.open(io.BytesIO(base64.b64decode(body["thumbnail"])))
    assert image.size == (32, 40) and image.getpixel((0, 0)) == (200, 10, 10)
    assert client.get(f"{PREFIX}/identities/bob").json()["thumbnail"] is None

    assert client.delete(f"{PREFIX}/identities/bob").json() == {"deleted": "bob"}
    assert not library.exists("bob")


@pytest.mark.parametrize("method", ["get", "delete"])
def test_unknown_identity_is_404(library, method):
    response = getattr(make_client(library), method)(f"{PREFIX}/identities/nobody")
    assert response.status_code == 404
    assert "nobody" in response.json()["detail"]


def test_bad_name_in_path_is_400(library):
    response = make_client(library).get(f"{PREFIX}/identities/.hidden")
    assert response.status_code == 400
    assert ".hidden" in response.json()["detail"]


def test_encoder_status(library):
    body = make_client(library).get(f"{PREFIX}/encoder").json()
    assert body["ready"] is False and body["loaded"] is False
    assert body["missing"] == ["no checkpoint in /x/encoder"]


# ------------------------------------------------------------------------------------------------ names


def test_create_from_names_saves_the_weighted_name_embedding(library):
    client = make_client(library)
    response = client.post(
        f"{PREFIX}/identities/from-names",
        json={"name": "carol", "names": [{"name": "Ada Lovelace", "weight": 3}, {"name": "Alan Turing"}]},
    )
    assert response.status_code == 201, response.text
    assert response.json()["identity"]["origin"] == {
        "kind": "names", "names": [["Ada Lovelace", 3.0], ["Alan Turing", 1.0]]
    }
    expected = 0.75 * text_encoding("Ada Lovelace")[1:9] + 0.25 * text_encoding("Alan Turing")[1:9]
    saved = library.load("carol").embedding
    torch.testing.assert_close(saved, expected, rtol=1e-3, atol=2e-3)
    assert client.lock.entered == 1  # the text encoders ran under the queue lock


def test_names_without_sdxl_model_is_503(library):
    def no_model(texts):
        raise EncoderError("identities from names need an SDXL checkpoint loaded in the WebUI: load one")

    response = make_client(library, encode_texts=no_model).post(
        f"{PREFIX}/identities/from-names", json={"name": "carol", "names": [{"name": "x"}]}
    )
    assert response.status_code == 503 and "SDXL checkpoint" in response.json()["detail"]


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"name": "bad name!", "names": [{"name": "x"}]}, 400, "bad name!"),
        ({"name": "carol", "names": []}, 400, "at least one name"),
        ({"name": "carol", "names": [{"name": "x", "weight": -1}]}, 400, "weight"),
        ({"name": "carol", "names": [{"name": "x"}], "method": "cubic"}, 400, "cubic"),
        ({"name": "carol"}, 422, "names"),
    ],
)
def test_bad_names_requests(library, body, status, fragment):
    response = make_client(library).post(f"{PREFIX}/identities/from-names", json=body)
    assert response.status_code == status, response.text
    assert fragment in str(response.json()["detail"])


def test_duplicate_is_409_and_overwrite_replaces(library):
    library.save(random_identity("carol", 5))
    client = make_client(library)
    body = {"name": "Carol", "names": [{"name": "x"}]}
    response = client.post(f"{PREFIX}/identities/from-names", json=body)
    assert response.status_code == 409 and "carol" in response.json()["detail"].lower()
    assert client.encode_calls == []  # refused before any GPU work
    response = client.post(f"{PREFIX}/identities/from-names", json={**body, "overwrite": True})
    assert response.status_code == 201
    assert library.load("carol").origin["kind"] == "names"


# -------------------------------------------------------------------------------------------------- mix


def test_mix_of_saved_identities(library):
    alice = library.save(random_identity("alice", 1))
    bob = library.save(random_identity("bob", 2))
    client = make_client(library)
    response = client.post(
        f"{PREFIX}/identities/mix",
        json={"name": "ab", "identities": [{"name": "alice", "weight": 1}, {"name": "bob", "weight": 3}]},
    )
    assert response.status_code == 201, response.text
    origin = response.json()["identity"]["origin"]
    assert origin == {"kind": "mix", "method": "linear",
                      "identities": [["alice", alice.short_hash, 1.0], ["bob", bob.short_hash, 3.0]]}
    expected = 0.25 * library.load("alice").embedding + 0.75 * library.load("bob").embedding
    torch.testing.assert_close(library.load("ab").embedding, expected, rtol=1e-3, atol=2e-3)


def test_mix_with_unknown_identity_is_404(library):
    library.save(random_identity("alice", 1))
    response = make_client(library).post(
        f"{PREFIX}/identities/mix", json={"name": "ab", "identities": [{"name": "alice"}, {"name": "zed"}]}
    )
    assert response.status_code == 404 and "zed" in response.json()["detail"]
    assert not library.exists("ab")


def test_mix_limits(library):
    client = make_client(library, limits=ApiLimits(max_mix_items=2))
    items = [{"name": f"i{n}"} for n in range(3)]
    response = client.post(f"{PREFIX}/identities/mix", json={"name": "m", "identities": items})
    assert response.status_code == 413
    response = client.post(f"{PREFIX}/identities/mix", json={"name": "m", "identities": []})
    assert response.status_code == 400


# ----------------------------------------------------------------------------------------------- photos


@pytest.mark.parametrize(
    ("photo", "status", "fragment"),
    [
        ("not base64 at all!", 400, "not valid base64"),
        (base64.b64encode(b"plain text").decode(), 400, "photo 1: the uploaded photo is not an image"),
        ("data:image/png,rawbytes", 400, "not base64-encoded"),
        ("", 400, "empty"),
    ],
)
def test_bad_photos_are_400_before_the_encoder_is_needed(library, photo, status, fragment):
    response = make_client(library).post(
        f"{PREFIX}/identities/from-photos", json={"name": "dora", "photos": [photo]}
    )
    assert response.status_code == status, response.text
    assert fragment in response.json()["detail"]


def test_photos_without_encoder_is_503_naming_the_folder(library):
    photo = png_base64(Image.new("RGB", (64, 64), (90, 90, 90)))
    response = make_client(library).post(
        f"{PREFIX}/identities/from-photos", json={"name": "dora", "photos": [photo]}
    )
    assert response.status_code == 503 and "/x/encoder" in response.json()["detail"]


def test_photo_limits(library):
    limits = ApiLimits(max_photos=2, max_photo_bytes=1000, max_request_bytes=9000)
    client = make_client(library, limits=limits)
    small = png_base64(Image.new("RGB", (8, 8)))
    response = client.post(f"{PREFIX}/identities/from-photos", json={"name": "d", "photos": [small] * 3})
    assert response.status_code == 413 and "at most 2 photos" in response.json()["detail"]
    noise = Image.frombytes("RGB", (40, 40), torch.randint(0, 256, (40 * 40 * 3,), dtype=torch.uint8).numpy())
    body = {"name": "d", "photos": [png_base64(noise)]}
    response = client.post(f"{PREFIX}/identities/from-photos", json=body)
    assert response.status_code == 413 and response.json()["detail"] == "photo 1: larger than 1000 bytes"
    response = client.post(f"{PREFIX}/identities/from-photos", json={"name": "d", "photos": ["A" * 10000]})
    assert response.status_code == 413 and "request body" in response.json()["detail"]
    response = client.post(f"{PREFIX}/identities/from-photos", json={"name": "d", "photos": []})
    assert response.status_code == 400


# ------------------------------------------------------------------------------------------------- auth


@pytest.mark.parametrize(
    ("method", "path"),
    [("get", "/identities"), ("get", "/identities/alice"), ("delete", "/identities/alice"),
     ("get", "/encoder"), ("post", "/identities/from-names"), ("post", "/identities/from-photos"),
     ("post", "/identities/mix"), ("post", "/identities/sample")],
)
def test_api_auth_guards_every_route(library, method, path):
    library.save(random_identity("alice", 1))
    client = make_client(library, api_auth="user:secret,other:pass:word")
    response = getattr(client, method)(PREFIX + path)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Basic"
    wrong = getattr(client, method)(PREFIX + path, auth=("user", "nope"))
    assert wrong.status_code == 401 and wrong.json()["detail"] == "Incorrect username or password"
    assert library.exists("alice")


def test_api_auth_accepts_each_listed_user(library):
    library.save(random_identity("alice", 1))
    client = make_client(library, api_auth="user:secret,other:pass2")
    for credentials in (("user", "secret"), ("other", "pass2")):
        response = client.get(f"{PREFIX}/identities", auth=credentials)
        assert response.status_code == 200
        assert [item["name"] for item in response.json()["identities"]] == ["alice"]
    assert client.get(f"{PREFIX}/identities", auth=("other", "secret")).status_code == 401


def test_without_api_auth_no_credentials_needed(library):
    assert make_client(library).get(f"{PREFIX}/identities").status_code == 200


def test_sample_creates_an_identity_and_a_bad_scale_is_400(library):
    class SamplingEncoder:
        def make_sampled_identity(self, name, seed, scale):
            return random_identity(name, seed)

    client = make_client(library, encoder=SamplingEncoder)
    body = {"name": "dreamt", "seed": 7, "scale": 0.5, "source": "encoder"}
    response = client.post(f"{PREFIX}/identities/sample", json=body)
    assert response.status_code == 201, response.text
    assert response.json()["identity"]["short_hash"] == library.get_info("dreamt").short_hash
    for scale in (-1.0, 1e400):  # 1e400 is inf in JSON
        body = {"name": "dreamt2", "seed": 7, "scale": scale, "source": "encoder"}
        response = client.post(f"{PREFIX}/identities/sample", json=body)
        assert response.status_code == 400 and "scale" in response.json()["detail"]
