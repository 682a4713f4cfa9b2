"""The splice, checked to the row: every row of the result is the row the spec says it is."""

import pytest
import torch

from lib_magicnaming.constants import CHUNK_ROWS, CLIP_L_WIDTH, ID_TOKENS, SDXL_CONTEXT_WIDTH
from lib_magicnaming.errors import SpliceError
from lib_magicnaming.splice import (
    PREPEND_KEPT_TEXT_TOKENS,
    Placement,
    SpliceReport,
    apply_strengths,
    fit_f_id,
    place_identities,
    prepend_identity,
)

VECTOR_WIDTH = 2816
ITEM_OFFSET = 200.0


def make_crossattn(batch: int | None, chunks: int, width: int = SDXL_CONTEXT_WIDTH, dtype=torch.float32):
    """Row r of item b holds r + 200 * b in every column: every row of every item is distinct."""
    rows = CHUNK_ROWS * chunks
    items = 1 if batch is None else batch
    values = torch.arange(rows, dtype=torch.float64).reshape(1, rows, 1) + ITEM_OFFSET * torch.arange(
        items, dtype=torch.float64
    ).reshape(items, 1, 1)
    crossattn = values.expand(items, rows, width).to(dtype).contiguous()
    return crossattn[0] if batch is None else crossattn


def make_f_id(seed: int = 0) -> torch.Tensor:
    """F_ID row j holds -(j+1) in CLIP-L columns and -(j+1) - 0.5 in bigG columns (plus small noise)."""
    rows = -torch.arange(1, ID_TOKENS + 1, dtype=torch.float32).reshape(-1, 1)
    f_id = rows.expand(ID_TOKENS, SDXL_CONTEXT_WIDTH).clone()
    f_id[:, CLIP_L_WIDTH:] -= 0.5
    generator = torch.Generator().manual_seed(seed)
    return f_id + 0.01 * torch.rand(f_id.shape, generator=generator)


def make_cond(batch, chunks, *, as_dict, width=SDXL_CONTEXT_WIDTH, dtype=torch.float32):
    crossattn = make_crossattn(batch, chunks, width, dtype)
    if not as_dict:
        return crossattn
    vector_shape = (VECTOR_WIDTH,) if batch is None else (batch, VECTOR_WIDTH)
    vector = torch.arange(VECTOR_WIDTH, dtype=dtype).expand(vector_shape).contiguous()
    return {"crossattn": crossattn, "vector": vector}


def crossattn_of(cond):
    return cond["crossattn"] if isinstance(cond, dict) else cond


def expected_from_labels(original: torch.Tensor, labels: list, f_ids: dict) -> torch.Tensor:
    """Expected crossattn: label i -> the item's original row i; ('F', name, j) -> that F_ID's row j."""
    batch = original if original.dim() == 3 else original.unsqueeze(0)
    width = batch.shape[2]
    rows = []
    for label in labels:
        if isinstance(label, int):
            rows.append(batch[:, label])
        else:
            _, name, j = label
            fitted = fit_f_id(f_ids[name], width, dtype=batch.dtype, device=batch.device)
            rows.append(fitted[j].expand(batch.shape[0], width))
    expected = torch.stack(rows, dim=1)
    return expected if original.dim() == 3 else expected[0]


def prepend_labels(chunks: int) -> list:
    chunk0 = [0] + [("F", "a", j) for j in range(ID_TOKENS)] + list(range(1, CHUNK_ROWS - ID_TOKENS))
    return chunk0 + list(range(CHUNK_ROWS, CHUNK_ROWS * chunks))


def snapshot(cond):
    if isinstance(cond, dict):
        return {key: value.clone() for key, value in cond.items()}
    return cond.clone()


def assert_same(left, right):
    if isinstance(left, dict):
        assert left.keys() == right.keys()
        for key in left:
            assert torch.equal(left[key], right[key]), key
    else:
        assert torch.equal(left, right)


def storages(cond):
    tensors = cond.values() if isinstance(cond, dict) else [cond]
    return {t.untyped_storage().data_ptr() for t in tensors}


SHAPES = [(None, 1), (None, 2), (1, 1), (3, 1), (2, 2)]


# ---------------------------------------------------------------- prepend (Name Prepending)


@pytest.mark.parametrize(("batch", "chunks"), SHAPES)
@pytest.mark.parametrize("as_dict", [True, False])
@pytest.mark.parametrize("width", [SDXL_CONTEXT_WIDTH, 1280])
def test_prepend_every_row(batch, chunks, as_dict, width):
    cond = make_cond(batch, chunks, as_dict=as_dict, width=width)
    before = snapshot(cond)
    f_id = make_f_id()
    result, report = prepend_identity(cond, f_id)

    expected = expected_from_labels(crossattn_of(cond), prepend_labels(chunks), {"a": f_id})
    out = crossattn_of(result)
    assert out.shape == crossattn_of(cond).shape
    assert torch.equal(out, expected)
    assert report == SpliceReport(0, [])
    if as_dict:
        assert isinstance(result, dict) and result.keys() == cond.keys()
        assert torch.equal(result["vector"], cond["vector"])
    else:
        assert isinstance(result, torch.Tensor)
    assert_same(cond, before)
    assert not storages(result) & storages(cond)


def test_prepend_row_values_spelled_out():
    """The same rule as the label test, written as the numbers a reader can check by eye."""
    cond = make_crossattn(2, 1)
    out = prepend_identity(cond, make_f_id())[0]
    first_column = out[:, :, 0]
    assert first_column[0, 0] == 0 and first_column[1, 0] == ITEM_OFFSET
    assert torch.allclose(first_column[:, 1:9], -torch.arange(1.0, 9.0).expand(2, 8), atol=0.011)
    assert torch.equal(first_column[0, 9:], torch.arange(1.0, 69.0))
    assert torch.equal(first_column[1, 9:], torch.arange(1.0, 69.0) + ITEM_OFFSET)


def test_refiner_width_takes_the_big_g_half():
    f_id = make_f_id()
    out = prepend_identity(make_crossattn(None, 1, width=1280), f_id)[0]
    assert torch.equal(out[1:9], f_id[:, CLIP_L_WIDTH:])
    assert torch.all(out[1:9] < -0.49)  # bigG columns were made -(j+1)-0.5; CLIP-L ones are > -(j+1)-0.01


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dtype_kept_and_rows_bit_exact_at_strength_one(dtype):
    cond = make_cond(2, 1, as_dict=True, dtype=dtype)
    f_id = torch.randn(ID_TOKENS, SDXL_CONTEXT_WIDTH, generator=torch.Generator().manual_seed(3))
    result, _ = prepend_identity(cond, f_id, strength=1.0)
    assert result["crossattn"].dtype == dtype and result["vector"].dtype == dtype
    assert result["crossattn"].device == cond["crossattn"].device
    assert torch.equal(result["crossattn"][:, 1:9], f_id.to(dtype).expand(2, -1, -1))
    assert torch.equal(result["crossattn"][:, 9:], cond["crossattn"][:, 1:69])
    placed = place_identities(cond, [Placement(20, f_id)])
    assert placed["crossattn"].dtype == dtype
    assert torch.equal(placed["crossattn"][:, 20:28], f_id.to(dtype).expand(2, -1, -1))


def test_float64_f_id_into_float16_conditioning():
    f_id = make_f_id().double()
    out = prepend_identity(make_crossattn(None, 1, dtype=torch.float16), f_id)[0]
    assert out.dtype == torch.float16 and torch.equal(out[1:9], f_id.half())


@pytest.mark.parametrize(
    ("count", "dropped"), [(None, 0), (0, 0), (30, 0), (PREPEND_KEPT_TEXT_TOKENS, 0), (69, 1), (75, 7)]
)
def test_prepend_reports_prompt_tokens_pushed_out(count, dropped):
    _, report = prepend_identity(make_crossattn(None, 1), make_f_id(), chunk0_token_count=count)
    assert report.dropped_text_tokens == dropped
    if dropped:
        assert len(report.warnings) == 1
        assert f"last {dropped} of its {count} prompt tokens were dropped" in report.warnings[0]
    else:
        assert report.warnings == []


@pytest.mark.parametrize("count", [-1, 76, 1.5, True, "3"])
def test_prepend_rejects_impossible_token_counts(count):
    with pytest.raises(SpliceError, match="chunk0_token_count"):
        prepend_identity(make_crossattn(None, 1), make_f_id(), chunk0_token_count=count)


# ---------------------------------------------------------------- strength


def reference_strength(strength_one: torch.Tensor, multipliers: torch.Tensor) -> torch.Tensor:
    """Emphasis as the WebUI does it, spelled out with loops: per item, per chunk, per encoder's columns."""
    z = strength_one.double().clone()
    halves = (
        [slice(0, CLIP_L_WIDTH), slice(CLIP_L_WIDTH, None)]
        if z.shape[2] == SDXL_CONTEXT_WIDTH
        else [slice(None)]
    )
    for item in range(z.shape[0]):
        for start in range(0, z.shape[1], CHUNK_ROWS):
            rows = slice(start, start + CHUNK_ROWS)
            if bool((multipliers[rows] == 1).all()):
                continue
            for columns in halves:
                part = z[item, rows, columns]
                original_mean = part.mean()
                part = part * multipliers[rows].double().reshape(-1, 1)
                new_mean = part.mean()
                z[item, rows, columns] = part * (original_mean / new_mean)
    return z


@pytest.mark.parametrize("strength", [0.0, 0.3, 0.8, 1.5, 2.0])
@pytest.mark.parametrize(("batch", "chunks"), [(None, 1), (2, 2)])
def test_prepend_strength_scales_rows_and_restores_each_encoders_mean(strength, batch, chunks):
    cond = make_crossattn(batch, chunks) + 1.0  # every mean well away from zero
    f_id = make_f_id() * 3.0
    strength_one = prepend_identity(cond, f_id)[0]
    out = prepend_identity(cond, f_id, strength=strength)[0]

    one3 = strength_one if strength_one.dim() == 3 else strength_one.unsqueeze(0)
    out3 = out if out.dim() == 3 else out.unsqueeze(0)
    multipliers = torch.ones(one3.shape[1])
    multipliers[1:9] = strength
    assert torch.allclose(out3.double(), reference_strength(one3, multipliers), rtol=1e-5, atol=1e-4)
    for columns in (slice(0, CLIP_L_WIDTH), slice(CLIP_L_WIDTH, None)):
        restored = out3[:, :CHUNK_ROWS, columns].double().mean(dim=(1, 2))
        original = one3[:, :CHUNK_ROWS, columns].double().mean(dim=(1, 2))
        assert torch.allclose(restored, original, rtol=1e-5)
    assert torch.equal(out3[:, CHUNK_ROWS:], one3[:, CHUNK_ROWS:])  # other chunks bit for bit
    if strength == 0.0:
        assert torch.equal(out3[:, 1:9], torch.zeros_like(out3[:, 1:9]))


def test_strength_zero_rescales_the_rest_of_the_chunk_by_one_factor_per_encoder():
    cond = make_crossattn(None, 1) + 1.0
    f_id = make_f_id() * 3.0
    one = prepend_identity(cond, f_id)[0].double()
    zero = prepend_identity(cond, f_id, strength=0.0)[0].double()
    others = [0, *range(9, CHUNK_ROWS)]
    for columns in (slice(0, CLIP_L_WIDTH), slice(CLIP_L_WIDTH, None)):
        ratio = zero[others, columns] / one[others, columns]
        assert torch.allclose(ratio, ratio[0, 0].expand_as(ratio), rtol=1e-6)
        # F_ID rows were negative, so silencing them raises the mean: the rest is scaled down
        assert ratio[0, 0] < 1


def test_strength_guard_when_new_mean_is_zero():
    cond = torch.zeros(CHUNK_ROWS, SDXL_CONTEXT_WIDTH)
    out = prepend_identity(cond, make_f_id(), strength=0.0)[0]
    assert torch.isfinite(out).all()
    assert torch.equal(out, torch.zeros_like(out))


def test_strength_guard_when_restoring_would_flip_the_sign():
    cond = -torch.ones(CHUNK_ROWS, SDXL_CONTEXT_WIDTH)  # text rows negative
    f_id = torch.full((ID_TOKENS, SDXL_CONTEXT_WIDTH), 100.0)  # the identity makes the chunk's mean positive
    one = prepend_identity(cond, f_id)[0]
    # strength 0.5: the new mean stays positive, so it is restored
    half = prepend_identity(cond, f_id, strength=0.5)[0]
    assert torch.allclose(half.double().mean(), one.double().mean(), rtol=1e-5)
    # strength 0: the new mean turns negative; restoring would flip every row, so the rows are only scaled
    zero = prepend_identity(cond, f_id, strength=0.0)[0]
    expected = one.clone()
    expected[1:9] = 0.0
    assert torch.equal(zero, expected)


def test_apply_strengths_all_ones_is_bit_exact_copy():
    z = torch.randn(2, 2 * CHUNK_ROWS, SDXL_CONTEXT_WIDTH, dtype=torch.float16)
    out = apply_strengths(z, torch.ones(2 * CHUNK_ROWS))
    assert torch.equal(out, z) and out.data_ptr() != z.data_ptr()


@pytest.mark.parametrize("strength", [-0.1, 2.01, float("nan"), float("inf"), "x", None, 10**400])
def test_bad_strengths_are_refused(strength):
    with pytest.raises(SpliceError, match="strength"):
        prepend_identity(make_crossattn(None, 1), make_f_id(), strength=strength)
    with pytest.raises(SpliceError, match="strength"):
        place_identities(make_crossattn(None, 1), [Placement(5, make_f_id(), strength)])


# ---------------------------------------------------------------- in place


def place_labels(chunks: int, placements: dict) -> list:
    labels = list(range(CHUNK_ROWS * chunks))
    for name, row in placements.items():
        for j in range(ID_TOKENS):
            labels[row + j] = ("F", name, j)
    return labels


@pytest.mark.parametrize(("batch", "chunks"), SHAPES)
@pytest.mark.parametrize("as_dict", [True, False])
@pytest.mark.parametrize("width", [SDXL_CONTEXT_WIDTH, 1280])
def test_place_identities_every_row(batch, chunks, as_dict, width):
    cond = make_cond(batch, chunks, as_dict=as_dict, width=width)
    before = snapshot(cond)
    f_ids = {"a": make_f_id(1), "b": make_f_id(2) - 10, "c": make_f_id(3) - 20}
    rows = {"a": 1, "b": 68} if chunks == 1 else {"a": 1, "b": 40, "c": CHUNK_ROWS + 68}
    result = place_identities(cond, [Placement(row, f_ids[name]) for name, row in rows.items()])
    expected = expected_from_labels(crossattn_of(cond), place_labels(chunks, rows), f_ids)
    assert torch.equal(crossattn_of(result), expected)
    if as_dict:
        assert torch.equal(result["vector"], cond["vector"])
    assert_same(cond, before)
    assert not storages(result) & storages(cond)


def test_place_with_strengths_shares_the_chunks_mean_restoration():
    cond = make_crossattn(2, 2) + 1.0
    a, b, c = make_f_id(1) * 2, make_f_id(2) * 3, make_f_id(3)
    placements = [Placement(3, a, 0.5), Placement(30, b, 1.7), Placement(CHUNK_ROWS + 10, c, 1.0)]
    out = place_identities(cond, placements)
    one = place_identities(cond, [Placement(p.row, p.f_id) for p in placements])
    multipliers = torch.ones(2 * CHUNK_ROWS)
    multipliers[3:11] = 0.5
    multipliers[30:38] = 1.7
    assert torch.allclose(out.double(), reference_strength(one, multipliers), rtol=1e-5, atol=1e-4)
    assert torch.equal(out[:, CHUNK_ROWS:], one[:, CHUNK_ROWS:])  # chunk 1: strength 1 only, bit for bit
    assert torch.equal(out[:, CHUNK_ROWS + 10 : CHUNK_ROWS + 18], c.expand(2, -1, -1))


def test_place_nothing_returns_an_equal_copy():
    cond = make_cond(2, 1, as_dict=True)
    result = place_identities(cond, [])
    assert_same(result, cond)
    assert not storages(result) & storages(cond)


@pytest.mark.parametrize(
    ("chunks", "row"),
    [(1, 0), (1, -1), (1, 69), (1, 70), (1, 76), (1, 77), (1, 200)]
    + [(2, CHUNK_ROWS), (2, CHUNK_ROWS + 69), (2, 150)],
)
def test_place_rows_outside_a_chunks_token_rows_are_refused(chunks, row):
    with pytest.raises(SpliceError, match=f"rows {row}\\.\\.{row + ID_TOKENS - 1}"):
        place_identities(make_crossattn(None, chunks), [Placement(row, make_f_id())])


def test_place_row_must_be_an_int():
    with pytest.raises(SpliceError, match="must be an int"):
        place_identities(make_crossattn(None, 1), [Placement(1.0, make_f_id())])  # type: ignore[arg-type]


def test_overlapping_identities_are_refused():
    with pytest.raises(SpliceError, match="overlap"):
        place_identities(make_crossattn(None, 1), [Placement(5, make_f_id()), Placement(12, make_f_id())])
    place_identities(make_crossattn(None, 1), [Placement(5, make_f_id()), Placement(13, make_f_id())])


# ---------------------------------------------------------------- shapes we refuse


@pytest.mark.parametrize(
    ("f_id", "says"),
    [
        (torch.zeros(ID_TOKENS, 1280), r"shape \(8, 2048\); got \(8, 1280\)"),
        (torch.zeros(7, SDXL_CONTEXT_WIDTH), r"got \(7, 2048\)"),
        (torch.zeros(1, ID_TOKENS, SDXL_CONTEXT_WIDTH), r"got \(1, 8, 2048\)"),
        (torch.full((ID_TOKENS, SDXL_CONTEXT_WIDTH), float("nan")), "finite"),
        (torch.zeros(ID_TOKENS, SDXL_CONTEXT_WIDTH, dtype=torch.int64), "floating-point"),
        ([[0.0] * SDXL_CONTEXT_WIDTH] * ID_TOKENS, "got list"),
    ],
)
def test_bad_identity_embeddings_are_refused(f_id, says):
    with pytest.raises(SpliceError, match=says):
        prepend_identity(make_crossattn(None, 1), f_id)
    with pytest.raises(SpliceError, match=says):
        place_identities(make_crossattn(None, 1), [Placement(1, f_id)])


@pytest.mark.parametrize(
    ("cond", "says"),
    [
        (torch.zeros(CHUNK_ROWS, 1024), r"width 1024 \(shape \(77, 1024\)\)"),
        (torch.zeros(2, CHUNK_ROWS, 768), "width 768"),
        (torch.zeros(76, SDXL_CONTEXT_WIDTH), "76 rows"),
        (torch.zeros(0, SDXL_CONTEXT_WIDTH), "0 rows"),
        (torch.zeros(1, 1, CHUNK_ROWS, SDXL_CONTEXT_WIDTH), r"got shape \(1, 1, 77, 2048\)"),
        (torch.zeros(SDXL_CONTEXT_WIDTH), r"got shape \(2048,\)"),
        (torch.zeros(CHUNK_ROWS, SDXL_CONTEXT_WIDTH, dtype=torch.int32), "floating point"),
        ({"vector": torch.zeros(VECTOR_WIDTH)}, "no 'crossattn' entry"),
        ({"crossattn": [1, 2]}, "is a list, not a tensor"),
        ([1, 2, 3], "not list"),
    ],
)
def test_conditioning_we_cannot_splice_into_is_refused(cond, says):
    with pytest.raises(SpliceError, match=says):
        prepend_identity(cond, make_f_id())
    with pytest.raises(SpliceError, match=says):
        place_identities(cond, [Placement(1, make_f_id())])


def test_fit_f_id_names_the_width():
    with pytest.raises(SpliceError, match="width 1024"):
        fit_f_id(make_f_id(), 1024, dtype=torch.float32, device=torch.device("cpu"))


def test_other_dict_entries_are_copied_not_shared():
    cond = make_cond(1, 1, as_dict=True)
    cond["extra"] = "kept"
    result, _ = prepend_identity(cond, make_f_id())
    assert result["extra"] == "kept"
    result["vector"].add_(1)
    assert torch.equal(cond["vector"], make_cond(1, 1, as_dict=True)["vector"])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_cuda_device_and_dtype_kept(dtype):
    cond = make_cond(2, 2, as_dict=True, dtype=dtype)
    cuda_cond = {key: value.cuda() for key, value in cond.items()}
    f_id = make_f_id()  # on the CPU: moved to the conditioning's device
    result, _ = prepend_identity(cuda_cond, f_id, strength=0.7)
    assert result["crossattn"].device.type == "cuda" and result["crossattn"].dtype == dtype
    cpu_result, _ = prepend_identity(cond, f_id, strength=0.7)
    on_gpu, on_cpu = result["crossattn"].cpu().float(), cpu_result["crossattn"].float()
    assert torch.allclose(on_gpu, on_cpu, rtol=1e-2, atol=1e-2)
    placed = place_identities(cuda_cond, [Placement(CHUNK_ROWS + 1, f_id, 1.0)])
    written = placed["crossattn"][:, CHUNK_ROWS + 1 : CHUNK_ROWS + 9].cpu()
    assert torch.equal(written, f_id.to(dtype).expand(2, -1, -1))
