"""A checkpoint's own name space: the names list, its statistics computed once and cached in a validated
file, sampling from it, and the nearest listed names. The text encoders here are a deterministic function of
the text (tests/webuiapp_doubles.py); test_webui_sampling.py runs the same through the WebUI stand-in's toy
SDXL."""

from __future__ import annotations

import json
import logging
import struct

import pytest
import torch
from webuiapp_doubles import text_encoding

from lib_magicnaming import namespace_cache
from lib_magicnaming.errors import NamespaceError, NamespaceFileError
from lib_magicnaming.identity import Identity
from lib_magicnaming.identity_file import encode_identity_file
from lib_magicnaming.names_list import SHIPPED_NAMES_LIST, parse_names, read_names_list
from lib_magicnaming.namespace import (
    encode_names_f_id,
    fit_namespace_stats,
    mix_embeddings,
    namespace_stats_from_embeddings,
)
from lib_magicnaming.namespace_cache import (
    ENCODE_BATCH,
    NamespaceCache,
    SourceCheckpoint,
    compute_checkpoint_namespace,
    encode_namespace_file,
    read_namespace_file,
)
from lib_magicnaming.nearest import NameIndex

NAMES = [f"Person {chr(65 + i)} {chr(97 + j)}" for i in range(6) for j in range(6)]  # 36 names
CHECKPOINT = SourceCheckpoint("0123456789", "toy-sdxl")
OTHER_CHECKPOINT = SourceCheckpoint("abcdefabcd", "other-sdxl")


class CountingEncoder:
    """Texts -> (N, 77, 2048) like the WebUI's crossattn; records each batch."""

    def __init__(self):
        self.batches: list[list[str]] = []

    def __call__(self, texts):
        self.batches.append(list(texts))
        return torch.stack([text_encoding(text) for text in texts])

    @property
    def names_encoded(self) -> int:
        return sum(len(batch) for batch in self.batches)


@pytest.fixture(autouse=True)
def fresh_memo():
    """Every test starts with nothing read: files are read from disk, as after a restart."""
    namespace_cache.forget_loaded_files()


@pytest.fixture()
def names_list():
    return parse_names("\n".join(["# a list", "", *NAMES]), "test list")


@pytest.fixture()
def measured(names_list):
    return compute_checkpoint_namespace(CountingEncoder(), names_list, CHECKPOINT)


# ---------------------------------------------------------------------------------------------- names list


def test_shipped_list_reads_with_a_stable_hash():
    shipped = read_names_list()
    assert len(shipped.names) >= 1000 and shipped.label == "(shipped list)"
    assert read_names_list(SHIPPED_NAMES_LIST).sha256 == shipped.sha256
    assert "Albert Einstein" in shipped.names and not any(name.startswith("#") for name in shipped.names)


def test_list_hash_ignores_comments_blanks_and_repeats_but_not_order():
    plain = parse_names("Ada\nBob\nCyd\n", "a")
    decorated = parse_names("# people\n\n  Ada \nBob\nAda\n# more\nCyd\n", "b")
    assert decorated.names == ("Ada", "Bob", "Cyd") and decorated.sha256 == plain.sha256
    assert parse_names("Bob\nAda\nCyd\n", "c").sha256 != plain.sha256
    assert len(plain.short_hash) == 10


def test_bad_lists_are_refused_naming_the_file_not_its_folder(tmp_path):
    with pytest.raises(NamespaceError, match="holds 1 name"):
        parse_names("# only\nAda\n", "mine")
    latin1 = tmp_path / "people.txt"
    latin1.write_bytes("Zoë\nAda\n".encode("latin-1"))
    with pytest.raises(NamespaceError, match="'people.txt' is not UTF-8") as error:
        read_names_list(latin1)
    assert str(tmp_path) not in str(error.value)
    with pytest.raises(NamespaceError, match="'missing.txt' does not exist"):
        read_names_list(tmp_path / "missing.txt")


# -------------------------------------------------------------------------------------------- computing


def test_names_are_encoded_in_batches_as_from_names_and_fitted_as_export_does(names_list):
    encoder, progress = CountingEncoder(), []
    measured = compute_checkpoint_namespace(
        encoder, names_list, CHECKPOINT, progress=lambda fraction, desc: progress.append((fraction, desc))
    )
    assert [len(batch) for batch in encoder.batches] == [ENCODE_BATCH, ENCODE_BATCH, 36 - 2 * ENCODE_BATCH]
    assert [text for batch in encoder.batches for text in batch] == NAMES
    assert [fraction for fraction, _ in progress] == [16 / 36, 32 / 36, 1.0]
    assert progress[-1][1] == "Encoding listed names: 36 / 36"
    expected = encode_names_f_id(text_encoding_batch, NAMES)  # the path of identities from names
    torch.testing.assert_close(measured.f_ids, expected.half().float(), rtol=0, atol=0)
    reference = fit_namespace_stats(expected, namespace_cache.NAMESPACE_RANK)
    torch.testing.assert_close(measured.stats.basis, reference.basis, rtol=0, atol=0)
    torch.testing.assert_close(measured.stats.scales, reference.scales, rtol=0, atol=0)
    assert measured.stats.rank == 35 and measured.names == tuple(NAMES)
    assert (measured.checkpoint_hash, measured.names_list_hash) == (CHECKPOINT.short_hash, names_list.sha256)


def text_encoding_batch(texts):
    return torch.stack([text_encoding(text) for text in texts])


def test_the_gram_fit_gives_the_svds_directions_with_a_fixed_sign():
    embeddings = torch.randn(30, 8, 2048, generator=torch.Generator().manual_seed(5))
    stats = namespace_stats_from_embeddings(embeddings, rank=10)
    centred = (embeddings - embeddings.mean(dim=0)).reshape(30, -1).double()
    _, singular, vh = torch.linalg.svd(centred, full_matrices=False)
    torch.testing.assert_close(stats.scales.double(), singular[:10] / 29**0.5, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats.basis.double().abs(), vh[:10].abs(), rtol=0, atol=1e-5)
    largest = stats.basis.abs().argmax(dim=1, keepdim=True)
    assert bool((stats.basis.gather(1, largest) > 0).all())


# ------------------------------------------------------------------------------------------ the cache


def test_computed_once_then_read_from_its_file(tmp_path, names_list):
    cache = NamespaceCache(tmp_path / "namespace")
    assert cache.load(CHECKPOINT, names_list) is None
    encoder = CountingEncoder()
    path = cache.save(compute_checkpoint_namespace(encoder, names_list, CHECKPOINT))
    assert path == tmp_path / "namespace" / f"0123456789-{names_list.short_hash}.safetensors"

    namespace_cache.forget_loaded_files()  # as after a restart: nothing in memory
    again = NamespaceCache(tmp_path / "namespace").load(CHECKPOINT, names_list)
    assert again is not None and again.names == tuple(NAMES) and encoder.names_encoded == 36
    assert again.sample(7, 0.8).equal(compute_checkpoint_namespace(CountingEncoder(), names_list,
                                                                   CHECKPOINT).sample(7, 0.8))
    other_list = parse_names("\n".join(NAMES[:20]), "shorter")
    assert cache.load(OTHER_CHECKPOINT, names_list) is None and cache.load(CHECKPOINT, other_list) is None


def test_the_file_round_trips_exactly(tmp_path, measured):
    path = tmp_path / "n.safetensors"
    path.write_bytes(encode_namespace_file(measured))
    read = read_namespace_file(path)
    for key in ("mean", "basis", "scales"):
        assert getattr(read.stats, key).equal(getattr(measured.stats, key))
    assert read.f_ids.equal(measured.f_ids) and read.names == measured.names
    described = (read.checkpoint_title, read.created, read.seconds)
    assert described == (measured.checkpoint_title, measured.created, measured.seconds)


def _flip_tensor_byte(data: bytes) -> bytes:
    (header,) = struct.unpack("<Q", data[:8])
    position = 8 + header + 100
    return data[:position] + bytes([data[position] ^ 0xFF]) + data[position + 1 :]


def _edit_metadata(data: bytes, key: str, value: str) -> bytes:
    (header_length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_length])
    header["__metadata__"][key] = value
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data[8 + header_length :]


DAMAGE = {
    "truncated": (lambda data: data[: len(data) // 2], "truncated"),
    "a flipped byte": (_flip_tensor_byte, "content hash"),
    "names edited": (lambda data: _edit_metadata(data, "names", json.dumps(NAMES[::-1])), "names-list hash"),
    "a newer version": (lambda data: _edit_metadata(data, "format_version", "2"), "format version '2'"),
    "an identity file": (
        lambda data: encode_identity_file(Identity("x", torch.zeros(8, 2048), {"kind": "imported"})),
        "not a name-space file",
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_file_is_refused_deleted_and_computed_again(tmp_path, names_list, measured, damage, caplog):
    damaged, problem = DAMAGE[damage]
    cache = NamespaceCache(tmp_path)
    path = cache.save(measured)
    path.write_bytes(damaged(path.read_bytes()))
    with pytest.raises(NamespaceFileError, match=problem):
        read_namespace_file(path)
    namespace_cache.forget_loaded_files()
    with caplog.at_level(logging.WARNING, logger="magicnaming"):
        assert cache.load(CHECKPOINT, names_list) is None
    assert "refused the name-space file" in caplog.text and not path.exists()
    encoder = CountingEncoder()
    cache.save(compute_checkpoint_namespace(encoder, names_list, CHECKPOINT))
    assert encoder.names_encoded == 36 and cache.load(CHECKPOINT, names_list) is not None


def test_a_file_under_another_checkpoints_name_is_refused(tmp_path, names_list, measured):
    cache = NamespaceCache(tmp_path)
    path = cache.save(measured)
    path.rename(cache.path_for(OTHER_CHECKPOINT, names_list))
    assert cache.load(OTHER_CHECKPOINT, names_list) is None
    assert not cache.path_for(OTHER_CHECKPOINT, names_list).exists()


# --------------------------------------------------------------------------------- sampling and nearest


def test_same_seed_and_source_give_the_same_person(measured):
    first = measured.sample(42, 1.0)
    assert first.shape == (8, 2048) and first.equal(measured.sample(42, 1.0))
    assert not first.equal(measured.sample(43, 1.0))
    assert measured.sample(42, 0.0).equal(measured.stats.mean)
    assert measured.sample_origin(42, 0.5) == {
        "kind": "sampled", "source": "checkpoint", "checkpoint_hash": "0123456789",
        "names_list_hash": measured.names_list_short_hash, "seed": 42, "scale": 0.5,
    }


def test_each_listed_names_own_f_id_is_nearest_to_itself(measured):
    for index, name in enumerate(NAMES):
        nearest = measured.nearest(measured.f_ids[index], count=3)
        assert nearest[0].name == name and nearest[0].cosine == pytest.approx(1.0, abs=1e-5)
        assert nearest[1].cosine < 0.9


def test_a_mix_is_nearest_to_its_larger_then_its_smaller_part(measured):
    mixed = mix_embeddings([measured.f_ids[3], measured.f_ids[20]], [0.7, 0.3])
    assert [item.name for item in measured.nearest(mixed, count=2)] == [NAMES[3], NAMES[20]]


def test_cosine_is_taken_from_the_names_mean():
    f_ids = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[1.0, 1.0]]]) + 10.0
    index = NameIndex(["a", "b", "c"], f_ids, f_ids.mean(dim=0))
    cosines = index.cosines(f_ids[0])
    assert cosines[0] == pytest.approx(1.0) and cosines[1] < 0  # uncentred, every pair would be ~1
