"""Name-space math: F_ID rows of a name, weighted names, weights, linear and spherical mixes, averages."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lib_magicnaming.constants import CHUNK_ROWS, ID_TOKENS, SDXL_CONTEXT_WIDTH
from lib_magicnaming.errors import NamespaceError
from lib_magicnaming.namespace import (
    average_embeddings,
    encode_names_f_id,
    f_id_from_encoding,
    identity_from_names,
    mix_embeddings,
    normalise_weights,
    parse_weighted_names,
)

WIDTH = SDXL_CONTEXT_WIDTH


def text_code(text: str) -> float:
    return float(sum(ord(ch) for ch in text) % 97 + 1)


class RecordingEncoder:
    """Encodes a text to (77*chunks, W): row r holds code(text) * 1000 + r in every column."""

    def __init__(self, chunks: int = 1, as_dict: bool = False):
        self.chunks, self.as_dict, self.calls = chunks, as_dict, []

    def __call__(self, texts):
        self.calls.append(list(texts))
        rows = torch.arange(CHUNK_ROWS * self.chunks, dtype=torch.float32).reshape(1, -1, 1)
        codes = torch.tensor([text_code(t) * 1000 for t in texts]).reshape(-1, 1, 1)
        encoded = (codes + rows).expand(len(texts), -1, WIDTH).contiguous()
        return {"crossattn": encoded, "vector": torch.zeros(len(texts), 2816)} if self.as_dict else encoded


def expected_f_id(text: str) -> torch.Tensor:
    rows = torch.arange(1, 1 + ID_TOKENS, dtype=torch.float32).reshape(-1, 1)
    return (text_code(text) * 1000 + rows).expand(ID_TOKENS, WIDTH)


# ---------------------------------------------------------------- F_ID of a name


@pytest.mark.parametrize("shape", [(CHUNK_ROWS, WIDTH), (1, CHUNK_ROWS, WIDTH), (2 * CHUNK_ROWS, 1280)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_f_id_is_rows_one_to_eight(shape, dtype):
    encoding = torch.arange(math.prod(shape), dtype=torch.float64).reshape(shape).to(dtype)
    f_id = f_id_from_encoding(encoding)
    rows = encoding.reshape(-1, shape[-1])
    assert f_id.shape == (ID_TOKENS, shape[-1]) and f_id.dtype == dtype
    assert torch.equal(f_id, rows[1:9])
    f_id.add_(1)
    assert torch.equal(rows[1:9] + 1, f_id)  # the result is a copy: the encoding is unchanged


@pytest.mark.parametrize("shape", [(2, CHUNK_ROWS, WIDTH), (76, WIDTH), (0, WIDTH), (WIDTH,), (1, 1, 77, 8)])
def test_f_id_refuses_other_shapes(shape):
    with pytest.raises(NamespaceError, match="encoding must be"):
        f_id_from_encoding(torch.zeros(shape))


def test_encode_names_calls_once_and_takes_rows_one_to_eight():
    encoder = RecordingEncoder(chunks=2)
    f_ids = encode_names_f_id(encoder, ["  Keanu Reeves ", "Emma Stone"])
    assert encoder.calls == [["Keanu Reeves", "Emma Stone"]]
    assert f_ids.shape == (2, ID_TOKENS, WIDTH)
    assert torch.equal(f_ids[0], expected_f_id("Keanu Reeves"))
    assert torch.equal(f_ids[1], expected_f_id("Emma Stone"))


def test_encode_names_accepts_the_webui_dict():
    f_ids = encode_names_f_id(RecordingEncoder(as_dict=True), ["alice"])
    assert torch.equal(f_ids[0], expected_f_id("alice"))


@pytest.mark.parametrize("names", [[], ["alice", " "], ["alice", 3], "alice"])
def test_encode_names_refuses_bad_names(names):
    encoder = RecordingEncoder()
    with pytest.raises(NamespaceError):
        encode_names_f_id(encoder, names)
    assert encoder.calls == []


def test_encode_names_refuses_an_encoder_answer_of_the_wrong_shape():
    with pytest.raises(NamespaceError, match=r"must give \(2, 77\*k, width\); got \(1, 77, 2048\)"):
        encode_names_f_id(lambda texts: torch.zeros(1, CHUNK_ROWS, WIDTH), ["a", "b"])
    with pytest.raises(NamespaceError, match="got list"):
        encode_names_f_id(lambda texts: [], ["a"])


# ---------------------------------------------------------------- weighted names


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("alice", [("alice", 1.0)]),
        ("0.6 alice + 0.4 bob", [("alice", 0.6), ("bob", 0.4)]),
        ("0.6 Keanu Reeves + 0.4 Emma Stone", [("Keanu Reeves", 0.6), ("Emma Stone", 0.4)]),
        ("  Keanu   Reeves  ", [("Keanu   Reeves", 1.0)]),
        ("2*alice+bob", [("alice", 2.0), ("bob", 1.0)]),
        ("0.5 * alice + .5 bob", [("alice", 0.5), ("bob", 0.5)]),
        ("1e-1 a + 0 b", [("a", 0.1), ("b", 0.0)]),
        ('0.5 "50 Cent" + 0.5 Eminem', [("50 Cent", 0.5), ("Eminem", 0.5)]),
        ('"Bob + Alice"', [("Bob + Alice", 1.0)]),
        ("Nan Goldin + inf", [("Nan Goldin", 1.0), ("inf", 1.0)]),
        ("Zoë Saldaña", [("Zoë Saldaña", 1.0)]),
    ],
)
def test_parse_weighted_names(text, parsed):
    assert parse_weighted_names(text) == parsed


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "No names given"),
        ("   ", "No names given"),
        ("alice +", "Term 2 of 'alice +' is empty"),
        ("+ bob", "Term 1 of '+ bob' is empty"),
        ("0.6", "has weight 0.6 but no name"),
        ("0.6 + 0.4 bob", "has weight 0.6 but no name"),
        ("-0.5 alice + bob", "The weight of 'alice' in '-0.5 alice + bob' is -0.5"),
        ("1e999 alice", "must be finite numbers >= 0"),
        ('"alice', "Unterminated quote"),
        ('"alice" smith', "text after a quoted name"),
        ('al"ice"', "quote a whole name"),
        ('0.5 ""', "but no name"),
    ],
)
def test_parse_weighted_names_errors(text, says):
    with pytest.raises(NamespaceError) as caught:
        parse_weighted_names(text)
    assert says in str(caught.value)


word = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCXYZéß-.'", min_size=1, max_size=8)
free_names = st.lists(word, min_size=1, max_size=3).map(" ".join)
weights = st.floats(min_value=0, max_value=1e6, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(free_names, weights), min_size=1, max_size=5), st.booleans())
def test_property_weighted_names_round_trip(pairs, with_star):
    separator = " * " if with_star else " "
    text = " + ".join(f"{weight!r}{separator}{name}" for name, weight in pairs)
    assert parse_weighted_names(text) == [(name, weight) for name, weight in pairs]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_property_arbitrary_text_raises_only_namespace_error(text):
    try:
        parsed = parse_weighted_names(text)
    except NamespaceError:
        return
    assert parsed and all(name and weight >= 0 for name, weight in parsed)


# ---------------------------------------------------------------- weights


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ([3, 1], [0.75, 0.25]),
        ([0.2], [1.0]),
        ([0, 5, 0], [0.0, 1.0, 0.0]),
        ((1.0, 1.0), [0.5, 0.5]),
        ([1e308, 1e308], [0.5, 0.5]),  # their sum overflows float
        ([5e-324, 5e-324], [0.5, 0.5]),
    ],
)
def test_normalise_weights(raw, normalised):
    assert normalise_weights(raw) == normalised


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=1e308), min_size=1, max_size=10).filter(lambda w: any(w)))
def test_property_normalised_weights_sum_to_one(raw):
    normalised = normalise_weights(raw)
    assert math.isclose(math.fsum(normalised), 1.0, rel_tol=1e-12)
    assert all(0 <= w <= 1 for w in normalised)


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ([], "non-empty"),
        ("12", "non-empty list"),
        ([0, 0], "All weights are zero"),
        ([1, -0.5], "Weight 2 is -0.5; weights must be >= 0"),
        ([float("nan")], "Weight 1 is nan; weights must be finite"),
        ([1, float("inf")], "Weight 2 is inf"),
        ([1, 10**400], "weights must be finite"),
        ([1, "2"], "Weight 2 is '2'; weights must be numbers"),
        ([True], "must be numbers"),
    ],
)
def test_normalise_weights_errors(raw, says):
    with pytest.raises(NamespaceError) as caught:
        normalise_weights(raw)
    assert says in str(caught.value)


# ---------------------------------------------------------------- mixing


def random_embeddings(count: int, seed: int = 0, rows: int = ID_TOKENS, width: int = 64, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    # a shared component keeps directions within a hemisphere, as real name embeddings are
    shared = torch.randn(rows, width, generator=generator, dtype=torch.float64)
    noise = [torch.randn(rows, width, generator=generator, dtype=torch.float64) for _ in range(count)]
    return [(shared + item).to(dtype) for item in noise]


def test_linear_mix_is_the_weighted_sum():
    a, b, c = random_embeddings(3, dtype=torch.float64)
    mixed = mix_embeddings([a, b, c], [2, 1, 1], "linear")
    assert mixed.dtype == torch.float64
    assert torch.allclose(mixed, 0.5 * a + 0.25 * b + 0.25 * c, rtol=0, atol=1e-12)


def test_mix_of_half_precision_inputs_is_float32():
    a, b = random_embeddings(2, dtype=torch.float16)
    for method in ("linear", "slerp"):
        mixed = mix_embeddings([a, b], [1, 1], method)
        assert mixed.dtype == torch.float32
        assert torch.allclose(mixed, mix_embeddings([a.float(), b.float()], [1, 1], method), atol=1e-6)


def angle_between(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    cos = (x * y).sum(-1) / (x.norm(dim=-1) * y.norm(dim=-1))
    return torch.arccos(cos.clamp(-1, 1))


@pytest.mark.parametrize("t", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_slerp_of_two_moves_along_the_arc_and_interpolates_lengths(t):
    a, b = random_embeddings(2, dtype=torch.float64)
    mixed = mix_embeddings([a, b], [1 - t, t], "slerp")
    norms = (1 - t) * a.norm(dim=-1) + t * b.norm(dim=-1)
    assert torch.allclose(mixed.norm(dim=-1), norms, atol=1e-9)
    total = angle_between(a, b)
    assert torch.allclose(angle_between(a, mixed), t * total, atol=1e-7)
    assert torch.allclose(angle_between(mixed, b), (1 - t) * total, atol=1e-7)
    if t in (0.0, 1.0):
        assert torch.allclose(mixed, a if t == 0 else b, atol=1e-9)


def test_slerp_differs_from_linear_where_directions_differ():
    a, b = random_embeddings(2, dtype=torch.float64)
    slerp, linear = mix_embeddings([a, b], [1, 1], "slerp"), mix_embeddings([a, b], [1, 1], "linear")
    assert not torch.allclose(slerp, linear)


def test_slerp_handles_parallel_opposite_and_zero_rows():
    a = torch.randn(ID_TOKENS, 16, dtype=torch.float64)
    b = a.clone()
    b[0] = 3 * a[0]  # parallel: slerp equals the linear mix
    b[1] = -a[1]  # opposite: no unique arc, mixed linearly
    b[2] = 0  # zero row: no direction, mixed linearly
    b[3] = a[3] + 1e-12  # parallel to within rounding
    mixed = mix_embeddings([a, b], [0.3, 0.7], "slerp")
    linear = 0.3 * a + 0.7 * b
    assert torch.isfinite(mixed).all()
    assert torch.allclose(mixed[:4], linear[:4], atol=1e-9)
    assert torch.allclose(mixed[4:], a[4:], atol=1e-9)  # identical rows stay themselves


def test_spherical_mean_of_three_does_not_depend_on_order():
    a, b, c = random_embeddings(3, seed=1, dtype=torch.float64)
    first = mix_embeddings([a, b, c], [0.5, 0.3, 0.2], "slerp")
    second = mix_embeddings([c, a, b], [0.2, 0.5, 0.3], "slerp")
    assert torch.allclose(first, second, atol=1e-9)
    assert not torch.allclose(first, mix_embeddings([a, b, c], [0.5, 0.3, 0.2], "linear"), atol=1e-3)


def test_spherical_mean_reduces_to_slerp_and_to_an_input():
    a, b, c = random_embeddings(3, seed=2, dtype=torch.float64)
    three = mix_embeddings([a, b, c], [0.6, 0.4, 0.0], "slerp")
    assert torch.allclose(three, mix_embeddings([a, b], [0.6, 0.4], "slerp"), atol=1e-8)
    assert torch.allclose(mix_embeddings([a, b, c], [0, 1, 0], "slerp"), b, atol=1e-9)


def test_spherical_mean_is_a_stationary_point():
    """The weighted Karcher mean's defining property: the weighted sum of log maps to it is zero."""
    embeddings = random_embeddings(4, seed=3, dtype=torch.float64)
    weights = [0.1, 0.2, 0.3, 0.4]
    mixed = mix_embeddings(embeddings, weights, "slerp")
    mean = mixed / mixed.norm(dim=-1, keepdim=True)
    total = torch.zeros_like(mean)
    for embedding, weight in zip(embeddings, weights, strict=True):
        direction = embedding / embedding.norm(dim=-1, keepdim=True)
        cos = (direction * mean).sum(-1, keepdim=True)
        tangent = direction - cos * mean
        total += weight * torch.arccos(cos.clamp(-1, 1)) * tangent / tangent.norm(dim=-1, keepdim=True)
    assert total.abs().max() < 1e-9
    norms = sum(w * e.norm(dim=-1) for w, e in zip(weights, embeddings, strict=True))
    assert torch.allclose(mixed.norm(dim=-1), norms, atol=1e-9)


def test_spherical_mean_falls_back_to_linear_when_directions_cancel():
    a = torch.randn(ID_TOKENS, 8, dtype=torch.float64)
    mixed = mix_embeddings([a, -a, a], [0.25, 0.5, 0.25], "slerp")
    assert torch.isfinite(mixed).all()
    assert torch.allclose(mixed, torch.zeros_like(a), atol=1e-12)


@pytest.mark.parametrize(
    ("embeddings", "weights", "method", "says"),
    [
        ([torch.zeros(8, 4)], [1], "nearest", "Unknown mix method 'nearest'"),
        ([torch.zeros(8, 4), torch.zeros(8, 4)], [1], "linear", "2 embedding(s) need as many weights; got 1"),
        ([torch.zeros(8, 4), torch.zeros(8, 5)], [1, 1], "linear", "embedding 2 has shape (8, 5)"),
        ([torch.zeros(1, 8, 4)], [1], "linear", "has shape (1, 8, 4)"),
        ([torch.zeros(8, 4), torch.full((8, 4), float("nan"))], [1, 1], "slerp", "Embedding 2 holds NaN"),
        ([torch.zeros(8, 4, dtype=torch.int64)], [1], "linear", "not a floating-point tensor"),
        ([], [], "linear", "non-empty list"),
        ([torch.zeros(8, 4)], [-1], "linear", "must be >= 0"),
    ],
)
def test_mix_errors(embeddings, weights, method, says):
    with pytest.raises(NamespaceError) as caught:
        mix_embeddings(embeddings, weights, method)
    assert says in str(caught.value)


def test_mix_does_not_modify_inputs():
    a, b, c = random_embeddings(3)
    copies = [x.clone() for x in (a, b, c)]
    for method in ("linear", "slerp"):
        mix_embeddings([a, b, c], [1, 2, 3], method)
    assert all(torch.equal(x, y) for x, y in zip((a, b, c), copies, strict=True))


# ---------------------------------------------------------------- identities from names, averages


def test_identity_from_one_name_is_its_f_id():
    identity = identity_from_names(RecordingEncoder(), parse_weighted_names("Keanu Reeves"))
    assert identity.dtype == torch.float32 and torch.equal(identity, expected_f_id("Keanu Reeves"))


@pytest.mark.parametrize("method", ["linear", "slerp"])
def test_identity_from_weighted_names(method):
    encoder = RecordingEncoder()
    identity = identity_from_names(encoder, parse_weighted_names("3 Keanu Reeves + 1 Emma Stone"), method)
    a, b = expected_f_id("Keanu Reeves").double(), expected_f_id("Emma Stone").double()
    assert encoder.calls == [["Keanu Reeves", "Emma Stone"]]
    assert torch.allclose(identity.double(), mix_embeddings([a, b], [0.75, 0.25], method), atol=1e-3)
    if method == "linear":
        assert torch.allclose(identity.double(), 0.75 * a + 0.25 * b, atol=1e-3)


def test_identity_from_names_refuses_bad_weights_before_encoding():
    encoder = RecordingEncoder()
    with pytest.raises(NamespaceError, match="All weights are zero"):
        identity_from_names(encoder, [("alice", 0.0), ("bob", 0.0)])
    with pytest.raises(NamespaceError, match="at least one"):
        identity_from_names(encoder, [])
    assert encoder.calls == []


def test_average_embeddings_is_the_mean():
    embeddings = random_embeddings(5, seed=4, rows=ID_TOKENS, width=WIDTH, dtype=torch.float16)
    average = average_embeddings(embeddings)
    expected = torch.stack([e.double() for e in embeddings]).mean(0)
    assert average.shape == (ID_TOKENS, WIDTH) and average.dtype == torch.float32
    assert torch.allclose(average.double(), expected, atol=1e-6)
    assert torch.equal(average_embeddings(embeddings[:1]), embeddings[0].float())


@pytest.mark.parametrize(
    ("embeddings", "says"),
    [
        ([], "non-empty"),
        ([torch.zeros(8, 4), torch.zeros(8, 3)], "shape"),
        (torch.zeros(2, 8, 4), "non-empty list"),
    ],
)
def test_average_embeddings_errors(embeddings, says):
    with pytest.raises(NamespaceError, match=says):
        average_embeddings(embeddings)
