"""Photos -> identity on CPU with tiny towers; caching, averaging, sampling, device policy."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import insightface
import pytest
import torch
from encoder_fixtures import install_pack, write_tiny_checkpoint
from PIL import Image
from skimage import data as skdata

from lib_magicnaming.constants import ID_TOKENS, SDXL_CONTEXT_WIDTH
from lib_magicnaming.encode import IdentityEncoder, photo_hash
from lib_magicnaming.errors import EncoderError, FaceError
from lib_magicnaming.face import capture_face, pixels_from_crop
from lib_magicnaming.identity_library import IdentityLibrary

SAMPLE_IMAGES = Path(insightface.__file__).parent / "data" / "images"


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    return path, write_tiny_checkpoint(path)


@pytest.fixture(scope="module")
def astronaut_png() -> bytes:
    return png_bytes(Image.fromarray(skdata.astronaut()))


@pytest.fixture(scope="module")
def faces_png() -> list[bytes]:
    people = skdata.lfw_subset()[:3]  # 25 x 25 grey face crops, enlarged past the 32 px minimum
    return [
        png_bytes(Image.fromarray((p * 255).astype("uint8")).convert("RGB").resize((64, 64), Image.BICUBIC))
        for p in people
    ]


def make_encoder(checkpoint, **kwargs) -> IdentityEncoder:
    return IdentityEncoder(checkpoint[0], device="cpu", **kwargs)


def test_loading_is_lazy(checkpoint):
    encoder = make_encoder(checkpoint)
    assert not encoder.is_loaded and encoder._checkpoint is None
    assert encoder.encoder_hash == checkpoint[1]
    assert not encoder.is_loaded
    assert encoder.dtype == torch.float32


def test_one_photo_through_the_detector(tmp_path, checkpoint, astronaut_png):
    install_pack(tmp_path, [(180.0, 60.0, 260.0, 170.0, 0.9)], (512, 512))
    encoder = make_encoder(checkpoint, insightface_root=tmp_path)
    result = encoder.encode_photos([astronaut_png])
    assert result.embedding.shape == (ID_TOKENS, SDXL_CONTEXT_WIDTH)
    assert result.embedding.dtype == torch.float32 and result.embedding.device.type == "cpu"
    (report,) = result.per_photo
    assert report.face_found and report.faces_found == 1 and report.distance_from_mean == 0.0
    assert report.photo_hash == hashlib.sha256(astronaut_png).hexdigest()
    assert report.crop.provider == "CPUExecutionProvider"
    # the embedding is the model's output for exactly this crop
    crop = capture_face(astronaut_png, encoder.detector, encoder.checkpoint.config.crop)
    model = encoder.checkpoint.build_model()
    expected = model(pixels_from_crop(crop.image, encoder.checkpoint.config.crop)[None])[0]
    torch.testing.assert_close(result.embedding, expected.detach(), rtol=1e-4, atol=1e-4)


def test_several_photos_average_and_report_distances(checkpoint, faces_png):
    encoder = make_encoder(checkpoint)
    result = encoder.encode_photos(faces_png, assume_cropped=True)
    singles = [encoder.encode_photos([p], assume_cropped=True).embedding for p in faces_png]
    torch.testing.assert_close(result.embedding, torch.stack(singles).mean(dim=0), rtol=1e-5, atol=1e-5)
    for report, single in zip(result.per_photo, singles, strict=True):
        assert report.distance_from_mean == pytest.approx(float((single - result.embedding).norm()), rel=1e-4)
        assert report.distance_from_mean > 0
        assert report.crop.assumed_cropped
    assert result.photo_hashes == [hashlib.sha256(p).hexdigest() for p in faces_png]
    assert encoder.stats.tower_batches == 1  # all three went through in one batch; singles were cached


def test_reencoding_the_same_photo_is_free(checkpoint, faces_png):
    encoder = make_encoder(checkpoint)
    first = encoder.encode_photos(faces_png[:1], assume_cropped=True)
    assert (encoder.stats.tower_batches, encoder.stats.photos_encoded) == (1, 1)
    again = encoder.encode_photos([bytes(faces_png[0])], assume_cropped=True)
    assert (encoder.stats.tower_batches, encoder.stats.photos_encoded) == (1, 1)
    assert again.per_photo[0].cached and encoder.stats.cache_hits == 1
    torch.testing.assert_close(again.embedding, first.embedding, rtol=0, atol=0)
    again.embedding.add_(1.0)  # results are new tensors: the cache is not affected
    torch.testing.assert_close(
        encoder.encode_photos(faces_png[:1], assume_cropped=True).embedding, first.embedding, rtol=0, atol=0
    )
    encoder.encode_photos(faces_png[1:2], assume_cropped=True)
    assert encoder.stats.photos_encoded == 2


def test_cache_is_bounded_lru(checkpoint, faces_png):
    encoder = make_encoder(checkpoint, cache_size=2)
    for photo in faces_png:  # a, b, c: a is evicted
        encoder.encode_photos([photo], assume_cropped=True)
    encoder.encode_photos([faces_png[2]], assume_cropped=True)
    assert encoder.stats.photos_encoded == 3
    encoder.encode_photos([faces_png[0]], assume_cropped=True)
    assert encoder.stats.photos_encoded == 4
    assert len(encoder._cache) == 2


def test_cache_is_per_encoder(checkpoint, faces_png):
    first, second = make_encoder(checkpoint), make_encoder(checkpoint)
    first.encode_photos(faces_png[:1], assume_cropped=True)
    second.encode_photos(faces_png[:1], assume_cropped=True)
    assert first.stats.photos_encoded == second.stats.photos_encoded == 1


def test_pil_and_path_inputs(tmp_path, checkpoint, faces_png):
    encoder = make_encoder(checkpoint)
    path = tmp_path / "face.png"
    path.write_bytes(faces_png[0])
    from_path = encoder.encode_photos([path], assume_cropped=True)
    assert from_path.photo_hashes == [hashlib.sha256(faces_png[0]).hexdigest()]
    image = Image.open(io.BytesIO(faces_png[0])).convert("RGB")
    from_pil = encoder.encode_photos([image], assume_cropped=True)
    assert from_pil.photo_hashes == [photo_hash(image)]
    torch.testing.assert_close(from_pil.embedding, from_path.embedding, rtol=1e-5, atol=1e-5)


def test_failures_name_the_photo(tmp_path, checkpoint, astronaut_png, faces_png):
    encoder = make_encoder(checkpoint)
    with pytest.raises(FaceError, match="photo 1: No face detector is configured"):
        encoder.encode_photos([astronaut_png])
    with pytest.raises(FaceError, match="photo 2: the uploaded photo is not an image file"):
        encoder.encode_photos([faces_png[0], b"junk"], assume_cropped=True)
    result = encoder.encode_photos([b"junk", faces_png[0]], assume_cropped=True, skip_failed=True)
    bad, good = result.per_photo
    assert not bad.face_found and bad.error.startswith("photo 1:") and bad.distance_from_mean is None
    assert good.face_found and result.photo_hashes == [good.photo_hash]
    with pytest.raises(FaceError, match="none of the photos had a usable face"):
        encoder.encode_photos([b"junk"], assume_cropped=True, skip_failed=True)
    with pytest.raises(FaceError, match="no photos given"):
        encoder.encode_photos([])


def test_no_face_in_photo(tmp_path, checkpoint, astronaut_png):
    install_pack(tmp_path, [], (512, 512))
    encoder = make_encoder(checkpoint, insightface_root=tmp_path)
    with pytest.raises(FaceError, match="photo 1: no face found"):
        encoder.encode_photos([astronaut_png])
    assert encoder.stats.tower_batches == 0


def test_identity_from_photos_saves_through_the_library(tmp_path, checkpoint, faces_png):
    encoder = make_encoder(checkpoint)
    identity, result = encoder.make_identity_from_photos("Ada", faces_png[:2], assume_cropped=True)
    assert identity.origin == {
        "kind": "photos",
        "encoder_hash": checkpoint[1],
        "photo_hashes": [hashlib.sha256(p).hexdigest() for p in faces_png[:2]],
    }
    assert identity.thumbnail is not None
    library = IdentityLibrary(tmp_path / "identities")
    library.save(identity, dtype=torch.float32)
    loaded = library.load("ada")
    torch.testing.assert_close(loaded.embedding, result.embedding)
    assert loaded.origin["encoder_hash"] == checkpoint[1]


def test_sampling_is_seeded_and_recorded(checkpoint):
    encoder = make_encoder(checkpoint)
    first = encoder.sample_identity(42)
    torch.testing.assert_close(make_encoder(checkpoint).sample_identity(42), first, rtol=0, atol=0)
    assert not torch.equal(encoder.sample_identity(43), first)
    assert not encoder.is_loaded  # sampling needs no towers
    identity = encoder.make_sampled_identity("Nobody", 42, 0.5)
    assert identity.origin == {"kind": "sampled", "encoder_hash": checkpoint[1], "seed": 42, "scale": 0.5}
    torch.testing.assert_close(identity.embedding, encoder.sample_identity(42, 0.5))


def test_sampling_without_statistics(tmp_path):
    path = tmp_path / "nostats.safetensors"
    write_tiny_checkpoint(path, with_stats=False)
    with pytest.raises(EncoderError, match="no name-space statistics"):
        IdentityEncoder(path, device="cpu").sample_identity(1)


def test_bad_checkpoint_is_reported_when_first_needed(tmp_path):
    encoder = IdentityEncoder(tmp_path / "missing.safetensors", device="cpu")
    with pytest.raises(EncoderError, match="encoder checkpoint not found"):
        encoder.encode_photos([b"x"], assume_cropped=True)


def test_lowvram_never_keeps_towers_loaded(checkpoint):
    encoder = make_encoder(checkpoint, keep_loaded=True, lowvram=True)
    assert not encoder.keep_loaded
    assert make_encoder(checkpoint, keep_loaded=True).keep_loaded


def test_the_encoder_keeps_its_cpu_master_until_unloaded(checkpoint, faces_png):
    """Built once, the weights stay in CPU memory while the encoder lives (on a GPU only a copy of them goes
    up for each call); only unload(), for the encoder's owner, frees them."""
    encoder = make_encoder(checkpoint)
    encoder.encode_photos(faces_png[:1], assume_cropped=True)
    assert encoder.is_loaded and encoder.weights_device == "cpu" and encoder.stats.loads == 1
    encoder.encode_photos(faces_png[1:2], assume_cropped=True)
    assert encoder.stats.loads == 1 and encoder.stats.tower_batches == 2  # no rebuild per call
    encoder.unload()
    assert not encoder.is_loaded and encoder.weights_device is None
    encoder.encode_photos(faces_png[2:3], assume_cropped=True)
    assert encoder.is_loaded and encoder.stats.loads == 2

    never_kept = make_encoder(checkpoint, keep_loaded=True, lowvram=True)
    never_kept.encode_photos(faces_png[:1], assume_cropped=True)
    assert not never_kept.keep_loaded and never_kept.weights_device == "cpu"


def test_a_failed_call_drops_the_device_copy_and_keeps_the_master(checkpoint, faces_png, monkeypatch):
    encoder = make_encoder(checkpoint)
    dropped = []
    monkeypatch.setattr(encoder, "_drop_device_copy", lambda: dropped.append(True))

    def fail(model, pixels):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(encoder, "_run_model", fail)
    with pytest.raises(RuntimeError, match="out of memory"):
        encoder.encode_photos(faces_png[:1], assume_cropped=True)
    assert dropped == [True] and encoder.is_loaded and encoder.stats.loads == 1


def test_pinned_memory_is_for_cuda_masters_only(checkpoint):
    assert not make_encoder(checkpoint, pin_memory=True).pin_memory  # CPU: there is no copy to speed up
    assert IdentityEncoder(checkpoint[0], device="cuda", pin_memory=True).pin_memory
    assert not IdentityEncoder(checkpoint[0], device="cuda", pin_memory=True, keep_loaded=True).pin_memory


def test_on_the_cpu_the_warm_encode_runs_eagerly_and_says_so_once(checkpoint, faces_png, caplog):
    encoder = make_encoder(checkpoint, keep_loaded=True)
    pixels = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with caplog.at_level("INFO", logger="magicnaming"):
        first = encoder.embed_pixels(pixels)
        second = encoder.embed_pixels(pixels[:1])
    with torch.no_grad():
        reference = encoder.load()(pixels)
    torch.testing.assert_close(first, reference)
    torch.testing.assert_close(second, reference[:1])
    said = [r.getMessage() for r in caplog.records if "runs eagerly" in r.getMessage()]
    assert said == ["MagicNaming photo encoder on cpu runs eagerly: CUDA graphs need a CUDA device"]
    assert encoder.graphs.captures == 0 and len(encoder.graphs) == 0


def test_lowvram_tower_by_tower_features_equal_the_whole_model(checkpoint):
    """The --lowvram path (one tower on the GPU at a time) computes what NameEncoder.features does; its
    device moves only happen on CUDA, the arithmetic is checked here."""
    encoder = make_encoder(checkpoint, lowvram=True)
    model = encoder.load()
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        tower_by_tower = encoder._features_one_tower_at_a_time(model, pixels)
        torch.testing.assert_close(tower_by_tower, model.features(pixels))


def cuda_baseline() -> tuple[int, int]:
    """GPU memory allocated and reserved once torch itself is warm: cuBLAS and cuBLASLt keep a workspace
    per stream from their first product (32 MiB + 1 MiB on an H200), on this thread's stream and on the
    stream CUDA graphs are captured on. Taken after warm-up products on both, so what follows measures the
    encoder."""
    capture_stream = torch.cuda.graph(torch.cuda.CUDAGraph()).capture_stream
    for stream in (torch.cuda.current_stream(), capture_stream):
        with torch.cuda.stream(stream):
            for dtype in (torch.float16, torch.float32):
                a = torch.randn(64, 64, device="cuda", dtype=dtype)
                (a @ a + torch.nn.functional.linear(a, a, a[0])).sum().item()
    del a
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    return torch.cuda.memory_allocated(), torch.cuda.memory_reserved()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fp16_matches_cpu_and_frees_the_gpu(checkpoint, faces_png):
    """Offloaded (the default), one tower at a time (--lowvram) and with a pinned master: float16 on the GPU
    equals float32 on the CPU, the master stays on the CPU and the GPU holds nothing of it after each call."""
    cpu = make_encoder(checkpoint).encode_photos(faces_png, assume_cropped=True).embedding
    before, reserved = cuda_baseline()
    for options in ({}, {"lowvram": True}, {"pin_memory": True}):
        encoder = IdentityEncoder(checkpoint[0], device="cuda", cache_size=0, **options)
        assert encoder.dtype == torch.float16
        for _ in range(2):  # no photo cache: the second call encodes again, from the master kept in RAM
            result = encoder.encode_photos(faces_png, assume_cropped=True)
            assert result.dtype == "float16" and result.device == "cuda"
            torch.testing.assert_close(result.embedding, cpu, rtol=2e-2, atol=2e-2)
            params = list(encoder.load().parameters())
            assert encoder.weights_device == "cpu" and all(p.device.type == "cpu" for p in params)
            assert all(p.is_pinned() for p in params) == bool(options.get("pin_memory")), options
            assert torch.cuda.memory_allocated() == before, options
            assert torch.cuda.memory_reserved() == reserved, f"{options}: cached blocks not given back"
        encoder.unload()
        assert not any(p.is_pinned() for p in params), "unload unregisters the pinned master"
    kept = IdentityEncoder(checkpoint[0], device="cuda", keep_loaded=True)
    kept.encode_photos(faces_png[:1], assume_cropped=True)
    assert kept.weights_device == "cuda" and all(p.device.type == "cuda" for p in kept.load().parameters())
    kept.unload()
    del kept
    assert torch.cuda.memory_allocated() == before
    assert torch.cuda.memory_reserved() == reserved


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_replays_equal_eager_and_unload_frees_them(checkpoint):
    before, reserved = cuda_baseline()
    graphed = IdentityEncoder(checkpoint[0], device="cuda", keep_loaded=True)
    eager = IdentityEncoder(checkpoint[0], device="cuda", keep_loaded=True, cuda_graphs=False)
    generator = torch.Generator().manual_seed(5)
    for count in (1, 3, 1, 11):  # 3 runs in the graph of 4; 11 in chunks of 8 and (3 -> 4)
        pixels = torch.randn(count, 3, 224, 224, generator=generator)
        torch.testing.assert_close(graphed.embed_pixels(pixels), eager.embed_pixels(pixels), rtol=1e-2,
                                   atol=1e-2)
    stats = graphed.graphs
    assert stats.eager_reason is None and stats.captures == 3 and stats.replays == 5 and len(stats) == 3
    assert eager.graphs.captures == 0
    repeat = torch.randn(2, 3, 224, 224, generator=generator)
    assert torch.equal(graphed.embed_pixels(repeat), graphed.embed_pixels(repeat))
    graphed.unload()
    eager.unload()
    assert len(graphed.graphs) == 0
    assert torch.cuda.memory_allocated() == before
    assert torch.cuda.memory_reserved() == reserved


def test_dtype_override_runs_towers_in_bfloat16(checkpoint, faces_png):
    reference = make_encoder(checkpoint).encode_photos(faces_png[:1], assume_cropped=True).embedding
    encoder = make_encoder(checkpoint, dtype=torch.bfloat16)
    result = encoder.encode_photos(faces_png[:1], assume_cropped=True)
    assert result.dtype == "bfloat16" and result.embedding.dtype == torch.float32
    assert {p.dtype for p in encoder.load().towers.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in encoder.load().head.parameters()} == {torch.float32}
    torch.testing.assert_close(result.embedding, reference, rtol=0.1, atol=0.1)
    assert not torch.equal(result.embedding, reference)


def test_a_face_found_by_another_detector_than_the_training_crops_gets_a_note(tmp_path, astronaut_png):
    from yunet_fixtures import yunet_for_photo

    from lib_magicnaming.insightface_detector import InsightFaceDetector
    from lib_magicnaming.yunet_detector import YuNetDetector

    path = tmp_path / "trained-on-yunet.safetensors"
    write_tiny_checkpoint(path, detector="yunet-2023mar")
    face = (180.0, 60.0, 260.0, 170.0, 0.9)
    yunet = YuNetDetector(model_path=yunet_for_photo(tmp_path / "yunet.onnx", [face], (512, 512)))
    (same,) = IdentityEncoder(path, device="cpu", detector=yunet).encode_photos([astronaut_png]).per_photo
    assert same.notes == [] and same.crop.detector == "yunet-2023mar"
    install_pack(tmp_path / "insightface", [face], (512, 512))
    pack = InsightFaceDetector(tmp_path / "insightface")
    (other,) = IdentityEncoder(path, device="cpu", detector=pack).encode_photos([astronaut_png]).per_photo
    assert other.notes == [
        "this encoder was trained on crops found by yunet-2023mar; this face was found by "
        "insightface:buffalo_l, so its crop may frame the face a little differently than the encoder expects"
    ]
    plain = IdentityEncoder(path, device="cpu")
    (given,) = plain.encode_photos([astronaut_png], assume_cropped=True).per_photo
    assert "this photo was used as given" in given.notes[-1]


def test_a_detector_that_cannot_run_is_one_setup_error_before_any_photo(tmp_path, checkpoint, astronaut_png):
    from lib_magicnaming.errors import DetectorUnavailable
    from lib_magicnaming.yunet_detector import YuNetDetector

    encoder = make_encoder(checkpoint, detector=YuNetDetector(tmp_path / "detectors", allow_download=False))
    with pytest.raises(DetectorUnavailable, match="face_detection_yunet_2023mar.onnx") as info:
        encoder.encode_photos([astronaut_png, astronaut_png], skip_failed=True)
    assert not str(info.value).startswith("photo 1") and encoder.stats.tower_batches == 0
    assert isinstance(info.value, EncoderError)  # the API answers 503 (setup), not 422 (photo)
