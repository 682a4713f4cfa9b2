"""Identity files and the identity library: format, validation, hostile names, operations, concurrency."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
import multiprocessing
import os
import struct
import tempfile
import threading
import time as time_module
from pathlib import Path

import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from lib_magicnaming import atomic as atomic_module
from lib_magicnaming import identity_file as identity_file_module
from lib_magicnaming import identity_library as identity_library_module
from lib_magicnaming.constants import ID_TOKENS, SDXL_CONTEXT_WIDTH, SHORT_HASH_CHARS
from lib_magicnaming.errors import IdentityError, IdentityExists, IdentityNotFound
from lib_magicnaming.identity import Identity, embedding_hash
from lib_magicnaming.identity_file import (
    FORMAT_NAME,
    THUMBNAIL_MAX_SIDE,
    encode_identity_file,
    read_identity_file,
    read_identity_info,
    thumbnail_rgb,
    write_identity_file,
)
from lib_magicnaming.identity_library import IdentityLibrary, identities_dir

SAMPLED = {"kind": "sampled", "encoder_hash": "0123456789", "seed": 7, "scale": 1.0}


def random_embedding(seed: int, scale: float = 0.5) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(ID_TOKENS, SDXL_CONTEXT_WIDTH, generator=generator) * scale


def make_identity(name: str = "alice", seed: int = 0, **changes) -> Identity:
    fields = {"name": name, "embedding": random_embedding(seed), "origin": dict(SAMPLED)}
    fields.update(changes)
    return Identity(**fields)


@pytest.fixture
def library(tmp_path: Path) -> IdentityLibrary:
    return IdentityLibrary(tmp_path / "identities")


def folder_files(library: IdentityLibrary) -> list[str]:
    return sorted(os.listdir(library.folder)) if library.folder.exists() else []


def read_bytes_as_file(data: bytes, name: str = "the-identity-file.safetensors") -> Identity:
    """The codec reads files: put ``data`` in a file called ``name`` and read it."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        return read_identity_file(path)


# ------------------------------------------------------------------------------------------------ hashing


def test_embedding_hash_is_sha256_of_float32_little_endian_bytes():
    embedding = random_embedding(1)
    expected = hashlib.sha256(embedding.numpy().astype("<f4").tobytes()).hexdigest()[:SHORT_HASH_CHARS]
    assert embedding_hash(embedding) == expected
    assert len(expected) == SHORT_HASH_CHARS


def test_embedding_hash_compares_values_after_cast_to_float32():
    half = random_embedding(2).half()
    assert embedding_hash(half) == embedding_hash(half.float())
    assert embedding_hash(half.double()) == embedding_hash(half.float())
    assert embedding_hash(random_embedding(2)) != embedding_hash(half)  # float16 rounding changes the values


# ---------------------------------------------------------------------------------------------- round trips


def test_float16_round_trip_keeps_everything_and_hash_is_of_stored_values(library):
    original = make_identity("Alice", seed=3, created="2025-01-31T12:00:00Z")
    info = library.save(original)
    loaded = library.load("alice")

    assert loaded.name == "Alice" and loaded.origin == SAMPLED and loaded.created == "2025-01-31T12:00:00Z"
    assert loaded.embedding.dtype == torch.float32
    assert torch.equal(loaded.embedding, original.embedding.half().float())
    assert info.dtype == "float16"
    assert info.short_hash == loaded.short_hash == embedding_hash(original.embedding.half())
    assert library.list()[0].short_hash == loaded.short_hash
    assert info.short_hash != original.short_hash  # the in-memory values were not yet rounded


def test_float32_round_trip_is_exact(library):
    original = make_identity("bob", seed=4)
    info = library.save(original, dtype=torch.float32)
    loaded = library.load("BOB")
    assert torch.equal(loaded.embedding, original.embedding)
    assert info.dtype == "float32" and info.short_hash == original.short_hash == loaded.short_hash


def test_saving_a_loaded_float16_identity_again_keeps_its_hash(library, tmp_path):
    info = library.save(make_identity("carol", seed=5))
    other = IdentityLibrary(tmp_path / "other")
    assert other.save(library.load("carol")).short_hash == info.short_hash


def test_the_same_identity_is_always_the_same_bytes(library, tmp_path):
    """safetensors' own writer orders the metadata as its hash map happens to; identity files do not."""
    identity = make_identity("dora", seed=6, thumbnail=Image.new("RGB", (8, 8), "red"))
    encoded = {encode_identity_file(identity) for _ in range(20)}
    assert len(encoded) == 1
    library.save(identity)
    assert (library.folder / "dora.safetensors").read_bytes() == encoded.pop()
    header_length = struct.unpack("<Q", (library.folder / "dora.safetensors").read_bytes()[:8])[0]
    assert (8 + header_length) % 8 == 0  # the tensor data stays 8-byte aligned
    assert torch.equal(library.load("dora").embedding, identity.embedding.half().float())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64, torch.float16])
def test_any_float_dtype_is_accepted_in_memory_as_float32(dtype):
    identity = make_identity(embedding=random_embedding(6).to(dtype))
    assert identity.embedding.dtype == torch.float32


def test_identity_copies_its_embedding(library):
    embedding = random_embedding(7)
    identity = make_identity(embedding=embedding)
    embedding.zero_()
    assert identity.embedding.abs().sum() > 0


def test_values_beyond_float16_range_need_float32(library):
    embedding = random_embedding(8)
    embedding[0, 0] = 1e6
    identity = make_identity("big", embedding=embedding)
    with pytest.raises(IdentityError, match="beyond .*range; save it as float32"):
        library.save(identity)
    assert folder_files(library) == []
    assert library.save(identity, dtype=torch.float32).dtype == "float32"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.int8, torch.float64])
def test_only_float16_and_float32_storage(library, dtype):
    with pytest.raises(IdentityError, match="float16 or float32"):
        library.save(make_identity(), dtype=dtype)


# ------------------------------------------------------------------------------------- in-memory validation


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"embedding": torch.zeros(ID_TOKENS, 768)}, r"shape \[8, 768\]; expected \[8, 2048\]"),
        ({"embedding": torch.zeros(1, ID_TOKENS, SDXL_CONTEXT_WIDTH)}, r"shape \[1, 8, 2048\]"),
        ({"embedding": torch.zeros(ID_TOKENS, SDXL_CONTEXT_WIDTH, dtype=torch.int64)}, "floating dtype"),
        ({"embedding": np.zeros((ID_TOKENS, SDXL_CONTEXT_WIDTH))}, "not a torch tensor"),
        ({"embedding": torch.full((ID_TOKENS, SDXL_CONTEXT_WIDTH), float("nan"))}, "NaN or infinite"),
        ({"embedding": torch.full((ID_TOKENS, SDXL_CONTEXT_WIDTH), float("inf"))}, "NaN or infinite"),
        ({"origin": {"kind": "dreamt"}}, "origin kind is 'dreamt'"),
        ({"origin": ["photos"]}, "must be a JSON object"),
        ({"origin": {"kind": "imported", "when": object()}}, "not plain JSON"),
        ({"origin": {"kind": "imported", "weight": float("nan")}}, "not plain JSON"),
        ({"created": "yesterday"}, "not ISO 8601"),
        ({"created": "2025-01-31T12:00:00"}, "not in UTC"),
        ({"created": "2025-01-31T12:00:00+05:00"}, "not in UTC"),
        ({"name": "no spaces"}, "contains ' '"),
        ({"thumbnail": np.zeros((4, 4, 3), dtype=np.uint8)}, "not a PIL image"),
    ],
)
def test_identity_rejects_bad_fields(changes, message):
    with pytest.raises(IdentityError, match=message):
        make_identity(**changes)


def test_saving_needs_the_origin_details_of_its_kind(library):
    identity = make_identity(origin={"kind": "photos", "encoder_hash": "abc"})
    with pytest.raises(IdentityError, match="'photos' lacks photo_hashes"):
        library.save(identity)


def test_every_origin_kind_round_trips(library):
    origins = [
        {
            "kind": "photos",
            "encoder_hash": "e" * 10,
            "photo_hashes": [hashlib.sha256(b"a").hexdigest(), hashlib.sha256(b"b").hexdigest()],
        },
        {"kind": "names", "names": [["Albert Einstein", 0.6], ["Marie Curie", 0.4]]},
        {
            "kind": "mix",
            "identities": [["alice", "0123456789", 0.5], ["bob", "abcdef0123", 0.5]],
            "method": "slerp",
        },
        dict(SAMPLED),
        {"kind": "imported"},
    ]
    for index, origin in enumerate(origins):
        library.save(make_identity(f"id{index}", seed=index, origin=origin))
    assert [info.origin for info in library.list()] == origins
    assert library.load("id2").origin == origins[2]


# ------------------------------------------------------------------------------------------------ thumbnail


IMAGE_MODES = ["RGB", "RGBA", "LA", "L", "1", "P", "PA", "I", "I;16", "F", "CMYK", "YCbCr"]


@pytest.mark.parametrize("mode", IMAGE_MODES)
def test_thumbnail_of_any_mode_is_stored_as_small_rgb(library, mode):
    image = Image.new(mode, (1000, 500))
    library.save(make_identity(thumbnail=image))
    thumbnail = library.load("alice").thumbnail
    assert thumbnail.mode == "RGB" and thumbnail.size == (THUMBNAIL_MAX_SIDE, THUMBNAIL_MAX_SIDE // 2)
    assert image.size == (1000, 500)  # the caller's image is untouched


def test_thumbnail_keeps_colours_and_puts_transparency_on_white(library):
    image = Image.new("RGBA", (64, 32), (200, 10, 20, 255))
    image.paste((0, 0, 0, 0), (0, 0, 32, 32))
    library.save(make_identity(thumbnail=image))
    thumbnail = library.load("alice").thumbnail
    assert thumbnail.size == (64, 32)  # small images are not enlarged
    assert thumbnail.getpixel((5, 5)) == (255, 255, 255)
    assert thumbnail.getpixel((50, 5)) == (200, 10, 20)


def test_sixteen_bit_thumbnail_uses_its_range():
    gradient = np.tile(np.linspace(1000, 60000, 100).astype(np.uint16), (20, 1))
    stored = thumbnail_rgb(Image.fromarray(gradient))
    row = np.asarray(stored)[10, :, 0]
    assert row[0] < 10 and row[-1] > 245 and np.all(np.diff(row.astype(int)) >= -1)


def test_float_thumbnail_with_nan_is_stored():
    values = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    values[0, 0] = np.nan
    stored = thumbnail_rgb(Image.fromarray(values, mode="F"))
    assert stored.mode == "RGB" and np.asarray(stored)[7, 7, 0] == 255


def test_identity_without_thumbnail(library):
    info = library.save(make_identity())
    assert info.has_thumbnail is False and library.load("alice").thumbnail is None


def test_thumbnail_is_listed(library):
    assert library.save(make_identity(thumbnail=Image.new("RGB", (10, 10)))).has_thumbnail is True
    assert library.list()[0].has_thumbnail is True


# ------------------------------------------------------------------------------------ file validation paths


def identity_file_parts(seed: int = 0, name: str = "alice") -> tuple[dict, dict]:
    """The tensors and metadata of a valid identity file, to corrupt one field at a time."""
    data = encode_identity_file(make_identity(name, seed=seed, thumbnail=Image.new("RGB", (8, 8))))
    (length,) = struct.unpack("<Q", data[:8])
    metadata = json.loads(data[8 : 8 + length])["__metadata__"]
    return dict(safetensors.torch.load(data)), metadata


def with_metadata(**changes):
    def build() -> bytes:
        tensors, metadata = identity_file_parts()
        metadata.update(changes)
        return safetensors.torch.save(tensors, metadata={k: v for k, v in metadata.items() if v is not None})

    return build


def with_tensors(**changes):
    def build() -> bytes:
        tensors, metadata = identity_file_parts()
        tensors.update(changes)
        if tensors.get("embedding") is not None:
            metadata["short_hash"] = embedding_hash(tensors["embedding"])
        return safetensors.torch.save({k: v for k, v in tensors.items() if v is not None}, metadata=metadata)

    return build


def truncated() -> bytes:
    return encode_identity_file(make_identity())[:-100]


def nan_embedding() -> bytes:
    embedding = random_embedding(0).half()
    embedding[3, 5] = float("nan")
    return with_tensors(embedding=embedding)()


def inf_embedding() -> bytes:
    embedding = random_embedding(0).half()
    embedding[0, 0] = float("inf")
    return with_tensors(embedding=embedding)()


def damaged_values() -> bytes:
    tensors, metadata = identity_file_parts()
    tensors["embedding"] = tensors["embedding"] + 1
    return safetensors.torch.save(tensors, metadata=metadata)


def lora_like() -> bytes:
    return safetensors.torch.save({"lora_up.weight": torch.zeros(4, 4)}, metadata={"ss_network_dim": "4"})


def sd15_identity() -> bytes:
    tensors, metadata = identity_file_parts()
    tensors["embedding"] = torch.zeros(ID_TOKENS, 768, dtype=torch.float16)
    metadata.update(base_model_family="sd15", short_hash=embedding_hash(tensors["embedding"]))
    return safetensors.torch.save(tensors, metadata=metadata)


BAD_FILES = {
    "wrong format": (with_metadata(format="magicnaming-encoder"), "format is 'magicnaming-encoder'"),
    "newer version": (with_metadata(format_version="2"), "version 2; this version reads 1 .*newer"),
    "version not a number": (with_metadata(format_version="one"), "format version 'one'"),
    "other family": (with_metadata(base_model_family="sd15"), "base model family 'sd15'.* 'sdxl'"),
    "other family and shape": (sd15_identity, "base model family 'sd15'"),
    "wrong shape": (
        with_tensors(embedding=torch.zeros(ID_TOKENS, 768, dtype=torch.float16)),
        r"shape \[8, 768\]; expected \[8, 2048\]",
    ),
    "too many tokens": (
        with_tensors(embedding=torch.zeros(16, SDXL_CONTEXT_WIDTH, dtype=torch.float16)),
        r"shape \[16, 2048\]",
    ),
    "integer embedding": (
        with_tensors(embedding=torch.zeros(ID_TOKENS, SDXL_CONTEXT_WIDTH, dtype=torch.int16)),
        "stores its embedding as I16",
    ),
    "no embedding": (with_tensors(embedding=None), "no 'embedding' tensor"),
    "NaN": (nan_embedding, "NaN or infinite"),
    "inf": (inf_embedding, "NaN or infinite"),
    "hash mismatch": (damaged_values, "damaged: its embedding hashes to"),
    "malformed hash": (with_metadata(short_hash="xyz"), "malformed short hash"),
    "bad thumbnail": (with_tensors(thumbnail=torch.zeros(300, 300, 3, dtype=torch.uint8)), "thumbnail of U8"),
    "grey thumbnail": (with_tensors(thumbnail=torch.zeros(8, 8, dtype=torch.uint8)), "thumbnail of U8"),
    "bad name inside": (with_metadata(name="../evil"), "unusable identity name"),
    "reserved name inside": (with_metadata(name="con"), "reserved device name"),
    "origin not JSON": (with_metadata(origin="{"), "origin that is not JSON"),
    "unknown origin kind": (with_metadata(origin='{"kind": "magic"}'), "origin kind is 'magic'"),
    "bad created": (with_metadata(created="soon"), "not ISO 8601"),
    "no format": (with_metadata(format=None), "format is None"),
    "no metadata": (lambda: safetensors.torch.save(identity_file_parts()[0]), "has no metadata"),
    "a LoRA": (lora_like, "is not a MagicNaming identity file"),
    "truncated": (truncated, "truncated"),
    "empty": (lambda: b"", "too short"),
    "a few bytes": (lambda: b"\x01\x02\x03", "too short"),
    "a PNG": (lambda: b"\x89PNG\r\n\x1a\n" + bytes(200), "header claims|not a safetensors"),
    "text": (lambda: b"hello, this is a text file, not an identity" * 3, "header claims|not a safetensors"),
    "header not JSON": (lambda: struct.pack("<Q", 10) + b"not json!!" + bytes(10), "header is not JSON"),
    "header a list": (lambda: struct.pack("<Q", 2) + b"[]", "not a JSON object"),
    "header nested deeply": (lambda: struct.pack("<Q", 200_000) + b"[" * 100_000 + b"]" * 100_000, "JSON"),
    "origin nested deeply": (with_metadata(origin="[" * 100_000 + "]" * 100_000), "origin that is not JSON"),
    "version not ASCII digits": (with_metadata(format_version="\u00b2"), "format version '\u00b2'"),
}
VALUE_PROBLEMS = {"NaN", "inf", "hash mismatch"}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_identity_files_give_clear_errors_everywhere(library, tmp_path, case):
    build, message = BAD_FILES[case]
    data = build()
    outside = tmp_path / "incoming.safetensors"
    outside.write_bytes(data)
    library.folder.mkdir()
    inside = library.folder / "alice.safetensors"
    inside.write_bytes(data)

    with pytest.raises(IdentityError, match=message):
        read_identity_file(outside)
    with pytest.raises(IdentityError, match=message):
        library.load("alice")
    with pytest.raises(IdentityError, match=message):
        library.import_file(outside, name="bob")
    assert not (library.folder / "bob.safetensors").exists()

    scan = library.scan()
    if case in VALUE_PROBLEMS:  # listing reads headers only; bad values show when the identity is loaded
        assert [info.path for info in scan.identities] == [inside] and scan.problems == []
    else:
        assert scan.identities == []
        assert [problem.path for problem in scan.problems] == [inside]


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_give_identity_errors_only(data):
    with pytest.raises(IdentityError):
        read_bytes_as_file(data)


@settings(max_examples=150, deadline=None)
@given(key=st.sampled_from(["embedding", "thumbnail", "__metadata__", "extra"]), value=JSON_VALUES)
def test_any_header_entry_gives_an_identity_error_or_a_valid_identity(key, value):
    data = encode_identity_file(make_identity())
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    header[key] = value
    text = json.dumps(header).encode()
    mutated = struct.pack("<Q", len(text)) + text + data[8 + length :]
    try:
        identity = read_bytes_as_file(mutated)
    except IdentityError:
        return
    assert key == "extra"  # only an unknown extra entry may be ignored
    assert identity.embedding.shape == (ID_TOKENS, SDXL_CONTEXT_WIDTH)


def test_reading_a_missing_file_is_an_identity_error(tmp_path):
    with pytest.raises(IdentityError, match="no identity file at"):
        read_identity_file(tmp_path / "nowhere.safetensors")


def test_a_directory_is_not_an_identity_file(tmp_path):
    with pytest.raises(IdentityError, match="cannot read"):
        read_identity_info(tmp_path)


def test_huge_file_is_refused_before_loading(library, tmp_path):
    data = safetensors.torch.save({"weight": torch.zeros(2048, 1024)}, metadata={"format": "pt"})
    path = tmp_path / "model.safetensors"
    path.write_bytes(data)
    with pytest.raises(IdentityError, match="format is 'pt'"):
        read_identity_file(path)


def test_reading_names_its_source():
    with pytest.raises(IdentityError, match="upload.safetensors is truncated"):
        read_bytes_as_file(truncated(), "upload.safetensors")


# ---------------------------------------------------------------------------------------------------- list


def test_list_sorts_by_key_and_skips_foreign_files_with_a_warning(library, caplog):
    for name in ["bob", "Alice", "carol"]:
        library.save(make_identity(name))
    (library.folder / "notes.txt").write_text("not an identity")
    (library.folder / "desktop.ini").write_bytes(b"\x00\x01")
    (library.folder / "lora.safetensors").write_bytes(lora_like())
    (library.folder / ".tmp-abc.part").write_bytes(b"half written")
    with caplog.at_level(logging.WARNING, logger="magicnaming"):
        infos = library.list()
    assert [info.name for info in infos] == ["Alice", "bob", "carol"]
    assert [info.key for info in infos] == ["alice", "bob", "carol"]
    assert all(info.path == library.folder / f"{info.key}.safetensors" for info in infos)
    assert "lora.safetensors" in caplog.text and "not a MagicNaming identity file" in caplog.text
    assert [p.path.name for p in library.scan().problems] == ["lora.safetensors"]


def test_a_file_whose_name_does_not_match_its_identity_is_a_problem(library):
    library.save(make_identity("alice"))
    os.replace(library.folder / "alice.safetensors", library.folder / "alice (1).safetensors")
    scan = library.scan()
    assert scan.identities == []
    assert "file name should be alice.safetensors" in scan.problems[0].message


def test_a_file_deleted_during_listing_is_not_a_problem(library, monkeypatch):
    library.save(make_identity("alice"))
    library.save(make_identity("bob"))
    real_read_info = identity_library_module.read_identity_info

    def delete_bob_first(path):
        (library.folder / "bob.safetensors").unlink(missing_ok=True)
        return real_read_info(path)

    monkeypatch.setattr(identity_library_module, "read_identity_info", delete_bob_first)
    scan = library.scan()
    assert [info.name for info in scan.identities] == ["alice"] and scan.problems == []


def test_list_of_a_missing_folder_is_empty(tmp_path):
    assert IdentityLibrary(tmp_path / "not-yet").list() == []


def test_a_folder_that_is_a_file_is_an_identity_error(tmp_path):
    (tmp_path / "identities").write_text("oops")
    with pytest.raises(IdentityError, match="cannot read the identity folder"):
        IdentityLibrary(tmp_path / "identities").list()


def test_list_reads_only_headers_of_a_thousand_files(library, monkeypatch):
    count = 1000
    library.folder.mkdir()
    embeddings = torch.randn(count, ID_TOKENS, SDXL_CONTEXT_WIDTH, generator=torch.Generator().manual_seed(0))
    expected_hashes = {}
    for index in range(count):
        identity = Identity(f"person-{index:04d}", embeddings[index], dict(SAMPLED))
        data = encode_identity_file(identity)
        (library.folder / f"{identity.key}.safetensors").write_bytes(data)
        expected_hashes[identity.name] = embedding_hash(identity.embedding.half())
    file_size = len(data)

    def refuse(*args, **kwargs):
        raise AssertionError("list() must not load tensors")

    monkeypatch.setattr(safetensors.torch, "load", refuse)
    monkeypatch.setattr(safetensors.torch, "load_file", refuse)
    real_safe_open = identity_file_module.safe_open
    headers_read = []

    class HeaderOnlySlice:
        """A tensor's entry in the header: its dtype and shape, never its values."""

        def __init__(self, piece):
            self.piece = piece

        def get_shape(self):
            return self.piece.get_shape()

        def get_dtype(self):
            return self.piece.get_dtype()

        def __getitem__(self, index):
            refuse()

    class HeaderOnlyFile:
        def __init__(self, *args, **kwargs):
            self.handle = real_safe_open(*args, **kwargs)

        def __enter__(self):
            self.handle.__enter__()
            headers_read.append(1)
            return self

        def __exit__(self, *exc):
            return self.handle.__exit__(*exc)

        def metadata(self):
            return self.handle.metadata()

        def keys(self):
            return self.handle.keys()

        def get_slice(self, key):
            return HeaderOnlySlice(self.handle.get_slice(key))

        def get_tensor(self, key):
            refuse()

    monkeypatch.setattr(identity_file_module, "safe_open", HeaderOnlyFile)
    bytes_read = []
    real_open = open

    class CountingFile:
        def __init__(self, file):
            self.file = file

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def fileno(self):
            return self.file.fileno()

        def read(self, size=-1):
            chunk = self.file.read(size)
            bytes_read.append(len(chunk))
            return chunk

    counting_open = lambda *args, **kwargs: CountingFile(real_open(*args, **kwargs))  # noqa: E731
    monkeypatch.setattr(identity_file_module, "open", counting_open, raising=False)

    infos = library.list()

    assert len(infos) == count
    assert {info.name: info.short_hash for info in infos} == expected_hashes
    assert len(headers_read) == count  # safetensors read each header; no tensor values were asked for
    tensor_bytes = ID_TOKENS * SDXL_CONTEXT_WIDTH * 2
    assert sum(bytes_read) <= count * (file_size - tensor_bytes)


# ------------------------------------------------------------------------------------------- hostile names

HOSTILE_NAMES = [
    "../x",
    "..",
    "../../etc/passwd",
    "/etc/passwd",
    "C:\\Windows\\x",
    "a/b",
    "a\\b",
    "a\x00b",
    "",
    ".hidden",
    "x" * 65,
    "x" * 4000,
    "con",
    "CON",
    "nul",
    "Nul.txt",
    "prn",
    "aux",
    "com1",
    "COM9",
    "lpt1",
    "lpt9.safetensors",
    "conin$",
    "alice.",
    "alice..",
    "alice ",
    " alice",
    "alice\n",
    "\u0430lice",  # Cyrillic a
    "\uff41lice",  # fullwidth a
    "ali\u200bce",  # zero-width space
    "e\u0301",  # combining accent
    "\u212aelvin",  # Kelvin sign K
    "alice:stream",
    "alice*",
    "alice?",
    'ali"ce',
    "<alice>",
    "ali|ce",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_names_never_reach_the_file_system(library, tmp_path, name):
    library.save(make_identity("ok"))
    incoming = tmp_path / "incoming.safetensors"
    incoming.write_bytes(encode_identity_file(make_identity("fine")))
    before = sorted(str(p) for p in tmp_path.rglob("*"))

    operations = [
        lambda: library.path_for(name),
        lambda: library.exists(name),
        lambda: library.get_info(name),
        lambda: library.load(name),
        lambda: library.delete(name),
        lambda: library.rename("ok", name),
        lambda: library.rename(name, "other"),
        lambda: library.import_file(incoming, name=name),
        lambda: library.export_file(name, tmp_path),
        lambda: library.save(dataclasses.replace(make_identity("ok"), name=name)),
    ]
    for operation in operations:
        with pytest.raises(IdentityError):
            operation()
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
    assert library.load("ok").name == "ok"


def test_a_link_leading_out_of_the_folder_is_refused(library, tmp_path):
    library.save(make_identity("ok"))
    target = tmp_path / "elsewhere.safetensors"
    target.write_bytes(encode_identity_file(make_identity("evil")))
    (library.folder / "evil.safetensors").symlink_to(target)
    with pytest.raises(IdentityError, match="outside the identity folder"):
        library.load("evil")
    scan = library.scan()
    assert [info.name for info in scan.identities] == ["ok"]
    assert [problem.path.name for problem in scan.problems] == ["evil.safetensors"]


# ---------------------------------------------------------------------------------------- file operations


def test_save_refuses_to_overwrite_in_any_case(library):
    library.save(make_identity("alice", seed=1))
    with pytest.raises(IdentityExists, match="already exists") as caught:
        library.save(make_identity("ALICE", seed=2))
    assert caught.value.name == "ALICE"
    assert library.load("alice").name == "alice"
    assert torch.equal(library.load("alice").embedding, random_embedding(1).half().float())
    assert folder_files(library) == ["alice.safetensors"]  # no temp file left behind


def test_save_overwrites_when_asked(library):
    library.save(make_identity("alice", seed=1))
    info = library.save(make_identity("Alice", seed=2), overwrite=True)
    assert library.load("alice").name == "Alice" and library.load("alice").short_hash == info.short_hash
    assert folder_files(library) == ["alice.safetensors"]


def test_get_info_and_exists(library):
    assert not library.exists("alice")
    with pytest.raises(IdentityNotFound) as caught:
        library.get_info("alice")
    assert caught.value.name == "alice"
    saved = library.save(make_identity("Alice"))
    assert library.exists("ALICE") and library.get_info("aLiCe") == saved


def test_load_missing_is_not_found(library):
    with pytest.raises(IdentityNotFound, match="no identity named 'zed'"):
        library.load("zed")


def test_load_by_hash(library):
    library.save(make_identity("alice", seed=1))
    bob = library.save(make_identity("bob", seed=2))
    assert library.load_by_hash(bob.short_hash).name == "bob"
    assert library.load_by_hash(bob.short_hash.upper()).name == "bob"
    with pytest.raises(IdentityNotFound):
        library.load_by_hash("0" * SHORT_HASH_CHARS)
    for malformed in ["abc", "g" * SHORT_HASH_CHARS, "", None]:
        with pytest.raises(IdentityError, match="not a short identity hash"):
            library.load_by_hash(malformed)


def test_rename_to_a_new_name_keeps_embedding_precision_and_hash(library):
    saved = library.save(make_identity("alice", seed=1), dtype=torch.float32)
    renamed = library.rename("ALICE", "bob")
    assert renamed.name == "bob" and renamed.dtype == "float32" and renamed.short_hash == saved.short_hash
    assert folder_files(library) == ["bob.safetensors"]
    assert library.load("bob").origin == SAMPLED and library.load("bob").created == saved.created


def test_rename_changing_only_case(library):
    library.save(make_identity("alice", seed=1))
    renamed = library.rename("alice", "Alice")
    assert renamed.name == "Alice" and [info.name for info in library.list()] == ["Alice"]
    assert folder_files(library) == ["alice.safetensors"]


def test_rename_refuses_an_existing_name_and_missing_source(library):
    library.save(make_identity("alice", seed=1))
    library.save(make_identity("bob", seed=2))
    with pytest.raises(IdentityExists):
        library.rename("alice", "BOB")
    assert [info.name for info in library.list()] == ["alice", "bob"]
    with pytest.raises(IdentityNotFound):
        library.rename("zed", "yan")


def test_rename_that_cannot_remove_the_old_file_says_so(library, monkeypatch):
    library.save(make_identity("alice", seed=1))
    real_unlink = Path.unlink

    def unlink(path, missing_ok=False):
        if path.name == "alice.safetensors":
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    with pytest.raises(IdentityError, match="copied to 'bob', but .*alice.safetensors could not be removed"):
        library.rename("alice", "bob")
    assert folder_files(library) == ["alice.safetensors", "bob.safetensors"]


def test_delete(library):
    library.save(make_identity("alice"))
    library.delete("ALICE")
    assert library.list() == [] and folder_files(library) == []
    with pytest.raises(IdentityNotFound):
        library.delete("alice")


def test_import_validates_renames_and_refuses_overwrite(library, tmp_path):
    incoming = tmp_path / "Downloaded Identity (1).safetensors"
    write_identity_file(make_identity("Zoe", seed=9), incoming, torch.float32)

    info = library.import_file(incoming)
    assert info.name == "Zoe" and info.dtype == "float32" and info.path.name == "zoe.safetensors"
    assert info.short_hash == embedding_hash(random_embedding(9))
    with pytest.raises(IdentityExists):
        library.import_file(incoming)
    again = library.import_file(incoming, name="zoe-2")
    assert again.name == "zoe-2" and again.short_hash == info.short_hash
    assert library.import_file(incoming, overwrite=True).name == "Zoe"
    assert [i.name for i in library.list()] == ["Zoe", "zoe-2"]


def test_export_to_folder_and_file_and_back(library, tmp_path):
    saved = library.save(make_identity("Alice", seed=1, thumbnail=Image.new("RGB", (300, 200), "red")))
    exports = tmp_path / "exports"
    exports.mkdir()

    into_folder = library.export_file("alice", exports)
    assert into_folder == exports / "alice.safetensors"
    assert into_folder.read_bytes() == saved.path.read_bytes()
    as_file = library.export_file("alice", exports / "for-bob.safetensors")
    assert read_identity_file(as_file).short_hash == saved.short_hash

    with pytest.raises(IdentityExists):
        library.export_file("alice", exports)
    library.export_file("alice", exports, overwrite=True)
    with pytest.raises(IdentityNotFound):
        library.export_file("zed", exports)

    other = IdentityLibrary(tmp_path / "friend")
    imported = other.import_file(as_file)
    assert imported.short_hash == saved.short_hash and other.load("alice").thumbnail.size == (128, 85)
    assert sorted(os.listdir(exports)) == ["alice.safetensors", "for-bob.safetensors"]


def test_unwritable_destinations_are_identity_errors(library, tmp_path):
    library.save(make_identity("alice"))
    with pytest.raises(IdentityError, match="cannot write"):
        library.export_file("alice", tmp_path / "missing-folder" / "alice.safetensors")
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(IdentityError, match="cannot create the identity folder"):
        IdentityLibrary(tmp_path / "a-file" / "identities").save(make_identity())


def test_write_identity_file_refuses_overwrite_when_asked(tmp_path):
    path = tmp_path / "x.safetensors"
    write_identity_file(make_identity("x", seed=1), path)
    with pytest.raises(IdentityExists):
        write_identity_file(make_identity("x", seed=2), path, overwrite=False)
    write_identity_file(make_identity("x", seed=2), path)
    assert read_identity_file(path).short_hash == embedding_hash(random_embedding(2).half())
    assert os.listdir(tmp_path) == ["x.safetensors"]


def test_file_is_safetensors_with_the_documented_fields(library):
    info = library.save(make_identity("Alice", thumbnail=Image.new("RGB", (16, 16))))
    with safetensors.safe_open(str(info.path), framework="pt") as file:
        metadata = file.metadata()
        assert set(file.keys()) == {"embedding", "thumbnail"}
        assert file.get_tensor("embedding").dtype == torch.float16
        assert list(file.get_tensor("thumbnail").shape) == [16, 16, 3]
    assert metadata["format"] == FORMAT_NAME and metadata["format_version"] == "1"
    assert metadata["base_model_family"] == "sdxl" and metadata["name"] == "Alice"
    assert json.loads(metadata["origin"]) == SAMPLED and metadata["short_hash"] == info.short_hash
    assert metadata["created"].endswith("Z")


def test_default_folder_is_under_models():
    assert identities_dir("/webui/models/magicnaming") == Path("/webui/models/magicnaming/identities")


# ------------------------------------------------------------------------------------------------ concurrency


def save_outcome(library: IdentityLibrary, identity: Identity) -> str:
    try:
        library.save(identity)
    except IdentityExists:
        return "exists"
    return "saved"


def run_threads(count: int, work) -> list[str]:
    barrier = threading.Barrier(count)
    results: list[str] = [""] * count

    def worker(index: int) -> None:
        barrier.wait()
        results[index] = work(index)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_threads_saving_different_names_all_land(library):
    results = run_threads(8, lambda i: save_outcome(library, make_identity(f"person-{i}", seed=i)))
    assert results == ["saved"] * 8
    assert {info.name: info.short_hash for info in library.list()} == {
        f"person-{i}": embedding_hash(random_embedding(i).half()) for i in range(8)
    }


@pytest.mark.parametrize("hard_links", [True, False], ids=["link", "lock-file fallback"])
def test_threads_saving_one_name_exactly_one_wins(library, monkeypatch, hard_links):
    if not hard_links:

        def no_links(source, target):
            raise OSError(errno.EPERM, "hard links not supported here")

        monkeypatch.setattr(os, "link", no_links)
    library.folder.mkdir()
    results = run_threads(8, lambda i: save_outcome(library, make_identity("Same", seed=i)))
    assert sorted(results) == ["exists"] * 7 + ["saved"]
    winner = results.index("saved")
    assert library.load("same").short_hash == embedding_hash(random_embedding(winner).half())
    assert folder_files(library) == ["same.safetensors"]


def process_saves(folder: str, index: int, barrier, results) -> None:
    library = IdentityLibrary(folder)
    barrier.wait()
    shared = save_outcome(library, make_identity("shared", seed=100 + index))
    own = save_outcome(library, make_identity(f"own-{index}", seed=index))
    results.put((index, shared, own))


def test_processes_saving_at_once_lose_nothing(library):
    count = 3
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(count)
    results = context.Queue()
    folder = str(library.folder)
    processes = [
        context.Process(target=process_saves, args=(folder, i, barrier, results)) for i in range(count)
    ]
    for process in processes:
        process.start()
    outcomes = sorted(results.get(timeout=120) for _ in range(count))
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0

    assert [own for _, _, own in outcomes] == ["saved"] * count
    shared = [result for _, result, _ in outcomes]
    assert sorted(shared) == ["exists"] * (count - 1) + ["saved"]
    winner = shared.index("saved")
    assert library.load("shared").short_hash == embedding_hash(random_embedding(100 + winner).half())
    own_files = [f"own-{i}.safetensors" for i in range(count)]
    assert folder_files(library) == own_files + ["shared.safetensors"]


# ------------------------------------------------------------------------- lock file (no hard links) fallback


def test_a_lock_left_by_a_crash_is_taken(tmp_path):
    lock = tmp_path / "x.lock"
    lock.write_bytes(b"")
    os.utime(lock, (1, 1))  # written long ago
    atomic_module._take_lock(lock)
    assert lock.exists()


class ScriptedClock:
    """Stands in for the time module: monotonic time moves only when the waiter sleeps, by the script."""

    def __init__(self, on_sleep):
        self.now, self.sleeps, self.on_sleep = 0.0, 0, on_sleep
        self.time = time_module.time

    def monotonic(self):
        return self.now

    def sleep(self, _seconds):
        self.sleeps += 1
        self.on_sleep(self)


def test_a_waiter_never_removes_a_lock_another_writer_has_just_taken(tmp_path, monkeypatch):
    lock = tmp_path / "x.lock"
    lock.write_bytes(b"first holder")
    seen_second = []

    def script(clock):
        if clock.sleeps == 1:  # the first holder finishes after a long wait; a second writer takes the lock
            clock.now += 10 * atomic_module._STALE_LOCK_SECONDS
            lock.unlink()
            lock.write_bytes(b"second holder")
            os.utime(lock, ns=(time_module.time_ns() + 10**9,) * 2)  # a new lock file, whatever the inode
        else:  # the second holder must still hold its lock now; it finishes
            seen_second.append(lock.read_bytes())
            lock.unlink()

    monkeypatch.setattr(atomic_module, "time", ScriptedClock(script))
    atomic_module._take_lock(lock)
    assert seen_second == [b"second holder"]
    assert lock.read_bytes() == b""  # ours


def test_a_lock_seen_unchanged_for_the_stale_time_is_taken_even_if_its_clock_is_ahead(tmp_path, monkeypatch):
    lock = tmp_path / "x.lock"
    lock.write_bytes(b"")
    os.utime(lock, ns=(time_module.time_ns() + 3600 * 10**9,) * 2)  # a network share's clock an hour ahead

    def script(clock):
        clock.now += atomic_module._STALE_LOCK_SECONDS / 2

    clock = ScriptedClock(script)
    monkeypatch.setattr(atomic_module, "time", clock)
    atomic_module._take_lock(lock)
    assert clock.sleeps >= 2 and lock.read_bytes() == b""  # it waited, then took the lock
