"""Face capture (the crop rule, bad photos) through insightface's real loading path, with a tiny
SCRFD-signature detector; YuNet's path is in test_face_detectors.py."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import insightface
import numpy as np
import pytest
import torch
from encoder_fixtures import install_pack
from open_clip.constants import OPENAI_DATASET_MEAN
from PIL import Image
from skimage import data as skdata

from lib_magicnaming.errors import DetectorUnavailable, FaceError
from lib_magicnaming.face import (
    MIN_CROP_PIXELS,
    CropConfig,
    capture_face,
    detector_note,
    load_image,
    pixels_from_crop,
    square_around,
)
from lib_magicnaming.insightface_detector import InsightFaceDetector as FaceDetector

SAMPLE_IMAGES = Path(insightface.__file__).parent / "data" / "images"


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.fromarray(skdata.astronaut())


@pytest.fixture(scope="module")
def group_photo() -> Image.Image:
    return Image.open(SAMPLE_IMAGES / "t1.jpg").convert("RGB")


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def contains(outer, inner, tolerance=1.0):
    return (
        outer[0] <= inner[0] + tolerance
        and outer[1] <= inner[1] + tolerance
        and outer[2] >= inner[2] - tolerance
        and outer[3] >= inner[3] - tolerance
    )


def test_single_face_crop_geometry(tmp_path, astronaut):
    face = (180.0, 60.0, 260.0, 170.0)  # the astronaut's head, roughly
    install_pack(tmp_path, [(*face, 0.9)], astronaut.size)
    detector = FaceDetector(tmp_path)
    crop = capture_face(astronaut, detector, CropConfig(margin=0.25))
    assert detector.provider == "CPUExecutionProvider"
    assert crop.provider == "CPUExecutionProvider"
    assert crop.faces_found == 1 and crop.notes == []
    np.testing.assert_allclose(crop.box, face, atol=1.0)
    assert crop.score == pytest.approx(0.9, abs=1e-4)
    left, top, right, bottom = crop.crop_box
    assert right - left == bottom - top == round(110 * 1.5)  # max side 110 plus 25 % each side
    margin = 0.25 * 110
    assert contains(crop.crop_box, (face[0] - margin, face[1] - margin, face[2] + margin, face[3] + margin))
    assert crop.image.size == (224, 224)
    expected = astronaut.crop(crop.crop_box).resize((224, 224), Image.BICUBIC)
    assert np.abs(np.asarray(crop.image, np.int16) - np.asarray(expected, np.int16)).max() <= 1


def test_several_faces_take_the_largest_and_say_so(tmp_path, group_photo):
    small, large = (100.0, 100.0, 160.0, 170.0), (600.0, 200.0, 760.0, 390.0)
    install_pack(tmp_path, [(*small, 0.95), (*large, 0.8)], group_photo.size)
    crop = capture_face(jpeg_bytes(group_photo), FaceDetector(tmp_path), CropConfig(margin=0.2))
    assert crop.faces_found == 2
    assert crop.notes == ["2 faces found; used the largest"]
    np.testing.assert_allclose(crop.box, large, atol=2.0)
    assert contains(crop.crop_box, large)
    side = crop.crop_box[2] - crop.crop_box[0]
    assert side == crop.crop_box[3] - crop.crop_box[1] == round(190 * 1.4)


def test_face_at_the_edge_keeps_a_square_inside_the_photo(tmp_path, group_photo):
    face = (0.0, 10.0, 80.0, 100.0)
    install_pack(tmp_path, [(*face, 0.9)], group_photo.size)
    crop = capture_face(group_photo, FaceDetector(tmp_path), CropConfig(margin=0.25))
    left, top, right, bottom = crop.crop_box
    assert left == 0 and top == 0 and right - left == bottom - top == round(90 * 1.5)
    assert contains(crop.crop_box, face)


def test_pack_without_keypoints_works_too(tmp_path, astronaut):
    install_pack(tmp_path, [(100.0, 100.0, 200.0, 200.0, 0.7)], astronaut.size, kps=False, pack="mine")
    crop = capture_face(astronaut, FaceDetector(tmp_path, pack="mine"))
    np.testing.assert_allclose(crop.box, (100.0, 100.0, 200.0, 200.0), atol=1.0)


def test_no_face(tmp_path, astronaut):
    install_pack(tmp_path, [(100.0, 100.0, 200.0, 200.0, 0.2)], astronaut.size)  # below det_thresh 0.5
    with pytest.raises(FaceError, match=r"no face found in the photo \(512 x 512\)"):
        capture_face(astronaut, FaceDetector(tmp_path))


def test_missing_pack_explains_where_to_put_it(tmp_path, astronaut):
    detector = FaceDetector(tmp_path / "insightface", pack="buffalo_l")
    assert not detector.is_installed()
    with pytest.raises(DetectorUnavailable) as info:
        capture_face(astronaut, detector)
    message = str(info.value)
    assert str(tmp_path / "insightface" / "models" / "buffalo_l") in message
    assert "face crop already (skip detection)" in message
    with pytest.raises(FaceError, match="No face detector is configured"):
        capture_face(astronaut, None)


def test_pack_without_detector(tmp_path, astronaut):
    pack = tmp_path / "models" / "buffalo_l"
    pack.mkdir(parents=True)
    (pack / "det_10g.onnx").write_bytes(b"not onnx")
    with pytest.raises(FaceError, match="insightface cannot load"):
        capture_face(astronaut, FaceDetector(tmp_path))


def test_bad_pack_names_are_refused(tmp_path):
    for name in ("", "..", "a/b"):
        with pytest.raises(FaceError, match="bad insightface pack name"):
            FaceDetector(tmp_path, pack=name)


def test_a_face_crop_under_the_minimum_is_refused(tmp_path, astronaut):
    with pytest.raises(FaceError, match=r"the photo is 1 x 1 pixels; its face crop would be 1 x 1 "
                                         "pixels, under "
                                        r"the 32 x 32 minimum"):
        capture_face(Image.new("RGB", (1, 1)), None, assume_cropped=True)
    lfw = Image.fromarray((skdata.lfw_subset()[0] * 255).astype("uint8"))  # a real 25 x 25 face crop
    with pytest.raises(FaceError, match="25 x 25 pixels, under the 32 x 32 minimum"):
        capture_face(lfw, None, assume_cropped=True)
    crop = capture_face(Image.new("RGB", (MIN_CROP_PIXELS, 200)), None, assume_cropped=True)
    assert crop.crop_box == (0, 84, 32, 116)
    install_pack(tmp_path, [(300.0, 300.0, 320.0, 320.0, 0.9)], astronaut.size)  # 20 px face: 30 px crop
    with pytest.raises(FaceError, match=r"the face in the photo \(512 x 512\) is too small: its face crop "
                                        r"would be 30 x 30 pixels"):
        capture_face(astronaut, FaceDetector(tmp_path), CropConfig(margin=0.25))


def test_detector_note_says_when_the_encoder_was_trained_on_other_crops():
    assert detector_note(None, "yunet-2023mar") is None  # a checkpoint that records no detector
    assert detector_note("yunet-2023mar", "yunet-2023mar") is None
    note = detector_note("insightface:buffalo_l", "yunet-2023mar")
    assert "trained on crops found by insightface:buffalo_l; this face was found by yunet-2023mar" in note
    assert "this photo was used as given" in detector_note("yunet-2023mar", "none")
    assert "trained on photos used as face crops (no detector)" in detector_note("none", "yunet-2023mar")


def test_assume_cropped_uses_the_centre_square(group_photo):
    crop = capture_face(group_photo, None, CropConfig(size=64), assume_cropped=True)
    assert crop.assumed_cropped and crop.box is None and crop.faces_found is None
    width, height = group_photo.size
    assert crop.crop_box == ((width - height) // 2, 0, (width - height) // 2 + height, height)
    assert crop.image.size == (64, 64)


def test_pixels_are_clip_normalised(astronaut):
    crop = CropConfig()
    grey = Image.new("RGB", (224, 224), tuple(int(round(255 * m)) for m in OPENAI_DATASET_MEAN))
    assert pixels_from_crop(grey, crop).abs().max() < 0.01
    pixels = pixels_from_crop(astronaut, crop)
    assert pixels.shape == (3, 224, 224) and pixels.dtype == torch.float32
    white = pixels_from_crop(Image.new("RGB", (224, 224), (255, 255, 255)), crop)
    expected = (1 - torch.tensor(OPENAI_DATASET_MEAN)) / torch.tensor(crop.std)
    torch.testing.assert_close(white[:, 0, 0], expected)


def test_square_overhangs_only_when_larger_than_the_photo():
    assert square_around((0, 0, 100, 100), 0.5, (120, 300)) == (-50, 0, 150, 200)
    assert square_around((10, 10, 30, 30), 0.0, (100, 100)) == (10, 10, 30, 30)


def test_crop_config_validation():
    with pytest.raises(FaceError, match="crop margin must be a number in 0..2"):
        CropConfig(margin=-1).validate()
    with pytest.raises(FaceError, match="crop std must be positive"):
        CropConfig(std=(0.1, 0.0, 0.1)).validate()
    assert CropConfig.from_dict(CropConfig(size=112).to_dict()) == CropConfig(size=112).validate()
    with pytest.raises(FaceError, match=r"crop config is missing field\(s\) \['margin'\]"):
        CropConfig.from_dict({k: v for k, v in CropConfig().to_dict().items() if k != "margin"})
    with pytest.raises(FaceError, match="crop mean must be three numbers"):
        CropConfig(mean=(True, 0.5, 0.5)).validate()


def test_crop_config_records_the_rule_and_the_detector():
    recorded = CropConfig(detector="yunet-2023mar").to_dict()
    assert recorded["rule"] == "box-square" and recorded["detector"] == "yunet-2023mar"
    assert CropConfig.from_dict(recorded).detector == "yunet-2023mar"
    written_before = {k: v for k, v in recorded.items() if k not in ("rule", "detector")}
    old = CropConfig.from_dict(written_before)  # checkpoints from before the fields existed still load
    assert (old.rule, old.detector) == ("box-square", None)
    with pytest.raises(FaceError, match="crop rule 'landmarks-v9' is unknown to this MagicNaming"):
        CropConfig.from_dict({**recorded, "rule": "landmarks-v9"})
    with pytest.raises(FaceError, match="crop detector must be a detector name or null"):
        CropConfig.from_dict({**recorded, "detector": 3})


# --- bad images ----------------------------------------------------------------------------------------


def test_load_image_accepts_bytes_paths_and_pil(tmp_path, astronaut):
    path = tmp_path / "a.png"
    path.write_bytes(png_bytes(astronaut))
    for source in (png_bytes(astronaut), path, str(path), astronaut.convert("RGBA")):
        image = load_image(source)
        assert image.mode == "RGB" and image.size == (512, 512)


def test_random_bytes_are_not_an_image():
    noise = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    with pytest.raises(FaceError, match="is not an image file"):
        load_image(noise)


def test_truncated_jpeg(astronaut):
    data = jpeg_bytes(astronaut)
    with pytest.raises(FaceError, match="damaged or truncated"):
        load_image(data[: len(data) // 2])


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares a huge size and carries almost no data (a decompression bomb's header)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))


@pytest.mark.parametrize("side", [9_000, 60_000])  # over our limit; over PIL's own bomb error threshold
def test_decompression_bombs_are_refused(side):
    with pytest.raises(FaceError, match="decompression bomb guard"):
        load_image(png_header(side, side))


def test_missing_file_and_wrong_type(tmp_path):
    with pytest.raises(FaceError, match="cannot read photo"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(FaceError, match="must be bytes, a file path or a PIL image"):
        load_image(12)
