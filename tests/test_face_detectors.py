"""Face detectors through their real loaders: YuNet through cv2.FaceDetectorYN with a tiny model of YuNet
2023mar's signature, insightface through its model zoo with a tiny SCRFD-signature pack; the same face box
gives the same crop whichever found it; auto picks YuNet, then an installed pack."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import insightface
import numpy as np
import onnx
import pytest
from encoder_fixtures import install_pack
from PIL import Image
from skimage import data as skdata
from yunet_fixtures import (
    DECLARED_SIZE,
    landmarks_in,
    pin_for,
    write_yunet_onnx,
    yunet_for_photo,
    yunet_output_names,
)

from lib_magicnaming.errors import DetectorUnavailable, EncoderError, FaceError
from lib_magicnaming.face import CropConfig, capture_face
from lib_magicnaming.face_detectors import AutoDetector, make_detector, validate_detector_choice
from lib_magicnaming.insightface_detector import InsightFaceDetector
from lib_magicnaming.yunet_detector import YUNET_NAME, YuNetDetector, yunet_scales

SAMPLE_IMAGES = Path(insightface.__file__).parent / "data" / "images"
ROOT = Path(__file__).resolve().parents[1]
ASTRONAUT_FACE = (180.0, 60.0, 260.0, 170.0)


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.fromarray(skdata.astronaut())


@pytest.fixture(scope="module")
def group_photo() -> Image.Image:
    return Image.open(SAMPLE_IMAGES / "t1.jpg").convert("RGB")  # 1280 x 886


def yunet(tmp_path, image_boxes, image_size, **kwargs) -> YuNetDetector:
    model = yunet_for_photo(tmp_path / "yunet" / "tiny.onnx", image_boxes, image_size, **kwargs)
    return YuNetDetector(model_path=model)


def test_the_tiny_model_has_yunet_2023mar_signature(tmp_path):
    model = onnx.load(str(write_yunet_onnx(tmp_path / "m.onnx", [])))
    (graph_input,) = model.graph.input
    dims = [d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    assert graph_input.name == "input" and dims == [1, 3, DECLARED_SIZE, DECLARED_SIZE]
    outputs = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output}
    assert list(outputs) == yunet_output_names()
    assert outputs["cls_8"] == [1, 6400, 1] and outputs["obj_16"] == [1, 1600, 1]
    assert outputs["bbox_32"] == [1, 400, 4] and outputs["kps_8"] == [1, 6400, 10]


def test_cv2_refuses_a_model_without_every_yunet_output(tmp_path):
    model = onnx.load(str(write_yunet_onnx(tmp_path / "m.onnx", [])))
    for output in list(model.graph.output):
        if output.name.startswith("kps_"):
            model.graph.output.remove(output)
    onnx.save(model, str(tmp_path / "no-kps.onnx"))
    with pytest.raises(DetectorUnavailable, match="OpenCV cannot load the YuNet model no-kps.onnx"):
        YuNetDetector(model_path=tmp_path / "no-kps.onnx").load()
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(DetectorUnavailable, match="OpenCV cannot load the YuNet model junk.onnx"):
        YuNetDetector(model_path=tmp_path / "junk.onnx").load()


def test_yunet_finds_the_face_with_its_landmarks(tmp_path, astronaut):
    detector = yunet(tmp_path, [(*ASTRONAUT_FACE, 0.9)], astronaut.size)
    (face,) = detector.detect(astronaut)
    np.testing.assert_allclose(face.box, ASTRONAUT_FACE, atol=0.01)  # (x, y, w, h) -> corners
    np.testing.assert_allclose(face.landmarks, landmarks_in(ASTRONAUT_FACE), atol=0.01)
    assert face.score == pytest.approx(0.9, abs=1e-4)
    assert detector.name == YUNET_NAME and detector.provider.startswith("OpenCV 4.")


def test_yunet_maps_boxes_back_from_a_downscaled_photo(tmp_path, group_photo):
    small, large = (300.0, 200.0, 400.0, 330.0), (700.0, 300.0, 900.0, 560.0)
    detector = yunet(tmp_path, [(*small, 0.95), (*large, 0.8)], group_photo.size)
    assert yunet_scales(group_photo.size) == [0.5, 0.25, 0.125]
    faces = detector.detect(group_photo)
    assert [f.score for f in faces] == pytest.approx([0.8, 0.95], abs=1e-4)  # largest first
    np.testing.assert_allclose(faces[0].box, large, atol=0.05)
    np.testing.assert_allclose(faces[1].box, small, atol=0.05)


def test_yunet_tries_a_smaller_size_when_it_finds_nothing(tmp_path, astronaut):
    # the model sees its face only in a 320-wide input: the 512 px photo is tried as is, then at 320
    face_at_320 = tuple(v * 320 / 512 for v in ASTRONAUT_FACE)
    model = write_yunet_onnx(tmp_path / "m.onnx", [(*face_at_320, 0.9)], only_at_width=320)
    (face,) = YuNetDetector(model_path=model).detect(astronaut)
    np.testing.assert_allclose(face.box, ASTRONAUT_FACE, atol=0.05)
    assert yunet_scales((100, 80)) == [1.0] and yunet_scales((2000, 500))[0] == pytest.approx(0.32)


@pytest.mark.parametrize("margin", [0.0, 0.25, 0.6])
def test_the_same_face_box_gives_the_same_crop_from_either_detector(tmp_path, group_photo, margin):
    box = (702.0, 318.0, 868.0, 520.0)
    pack_root = tmp_path / "insightface"
    install_pack(pack_root, [(*box, 0.9)], group_photo.size)
    from_pack = capture_face(group_photo, InsightFaceDetector(pack_root), CropConfig(margin=margin))
    from_yunet = capture_face(group_photo, yunet(tmp_path, [(*box, 0.9)], group_photo.size),
                              CropConfig(margin=margin))
    np.testing.assert_allclose(from_pack.box, box, atol=1.0)  # SCRFD's stride-32 anchors, fp32
    np.testing.assert_allclose(from_yunet.box, box, atol=0.05)
    assert np.abs(np.subtract(from_pack.crop_box, from_yunet.crop_box)).max() <= 1
    side = from_yunet.crop_box[2] - from_yunet.crop_box[0]
    assert side == from_yunet.crop_box[3] - from_yunet.crop_box[1] == round(202 * (1 + 2 * margin))
    assert (from_pack.detector, from_yunet.detector) == ("insightface:buffalo_l", YUNET_NAME)
    assert from_yunet.landmarks is not None and from_pack.landmarks is not None
    difference = np.abs(np.asarray(from_pack.image, np.int16) - np.asarray(from_yunet.image, np.int16))
    assert difference.mean() < 3.0


def test_insightface_keeps_the_packs_landmarks(tmp_path, astronaut):
    install_pack(tmp_path, [(*ASTRONAUT_FACE, 0.9)], astronaut.size)
    (face,) = InsightFaceDetector(tmp_path).detect(astronaut)
    assert face.landmarks is not None and len(face.landmarks) == 5
    install_pack(tmp_path, [(*ASTRONAUT_FACE, 0.9)], astronaut.size, kps=False, pack="nokps")
    (face,) = InsightFaceDetector(tmp_path, pack="nokps").detect(astronaut)
    assert face.landmarks is None


def test_auto_takes_yunet_when_its_file_is_there(tmp_path, astronaut):
    model = yunet_for_photo(tmp_path / "detectors" / "face_detection_yunet_2023mar.onnx",
                            [(*ASTRONAUT_FACE, 0.9)], astronaut.size)
    install_pack(tmp_path / "insightface", [(10.0, 10.0, 90.0, 90.0, 0.9)], astronaut.size)
    detector = AutoDetector(
        YuNetDetector(tmp_path / "detectors", spec=pin_for(model), allow_download=False),
        InsightFaceDetector(tmp_path / "insightface"),
    )
    assert detector.name is None and detector.describe().startswith(f"{YUNET_NAME} (file present")
    crop = capture_face(astronaut, detector)
    assert crop.detector == YUNET_NAME and detector.name == YUNET_NAME
    np.testing.assert_allclose(crop.box, ASTRONAUT_FACE, atol=0.05)


def test_auto_falls_back_to_an_installed_pack_when_yunet_cannot_be_had(tmp_path, astronaut):
    install_pack(tmp_path / "insightface", [(*ASTRONAUT_FACE, 0.9)], astronaut.size)
    offline = YuNetDetector(tmp_path / "detectors", spec=pin_for(__file__, url="http://127.0.0.1:9/x"))
    detector = AutoDetector(offline, InsightFaceDetector(tmp_path / "insightface"))
    crop = capture_face(astronaut, detector)
    assert crop.detector == "insightface:buffalo_l" and crop.provider == "CPUExecutionProvider"
    assert detector.describe() == "insightface:buffalo_l on CPUExecutionProvider"


def test_auto_without_yunet_or_pack_says_where_the_file_goes(tmp_path, astronaut):
    detector = make_detector("auto", detectors_dir=tmp_path / "detectors", allow_download=False,
                             insightface_root=tmp_path / "insightface")
    assert detector.describe().startswith("none: The face detector file face_detection_yunet_2023mar.onnx")
    with pytest.raises(DetectorUnavailable) as info:
        capture_face(astronaut, detector)
    message = str(info.value)
    assert "face_detection_yunet_2023mar.onnx" in message and str(tmp_path / "detectors") in message
    assert "https://github.com/opencv/opencv_zoo/raw/" in message and "downloading it is off" in message
    assert isinstance(info.value, FaceError) and isinstance(info.value, EncoderError)


def test_make_detector_follows_the_setting(tmp_path):
    assert isinstance(make_detector("yunet", detectors_dir=tmp_path), YuNetDetector)
    chosen = make_detector("insightface", detectors_dir=tmp_path, insightface_root=tmp_path,
                           pack="antelopev2")
    assert isinstance(chosen, InsightFaceDetector) and chosen.name == "insightface:antelopev2"
    assert isinstance(make_detector(" Auto ", detectors_dir=tmp_path), AutoDetector)
    for bad in ("retinaface", "", None):
        with pytest.raises(EncoderError, match="face detector must be one of auto, yunet, insightface"):
            validate_detector_choice(bad)


def test_old_opencv_is_named(tmp_path, monkeypatch):
    import cv2

    monkeypatch.setattr(cv2, "__version__", "4.7.0")
    detector = YuNetDetector(model_path=write_yunet_onnx(tmp_path / "m.onnx", []))
    assert "OpenCV 4.7 is too old for YuNet 2023mar" in detector.describe()
    with pytest.raises(DetectorUnavailable, match=r"needs OpenCV 4\.8 or newer"):
        detector.load()


def test_insightface_not_installed_says_what_to_do(tmp_path, monkeypatch, astronaut):
    from lib_magicnaming import insightface_detector

    install_pack(tmp_path, [(*ASTRONAUT_FACE, 0.9)], astronaut.size)
    monkeypatch.setattr(insightface_detector, "insightface_installed", lambda: False)
    detector = InsightFaceDetector(tmp_path)
    assert detector.describe().startswith("none: insightface (with onnxruntime) is not installed")
    with pytest.raises(DetectorUnavailable, match="MAGICNAMING_INSTALL_INSIGHTFACE=1"):
        detector.load()


DEFAULT_DETECTOR_NEEDS_ONLY_CV2 = """
import json, sys

BLOCKED = ("insightface", "onnxruntime", "onnx")
for name in BLOCKED:  # what Python sees when a package is not installed: import fails, find_spec is None
    sys.modules[name] = None

from PIL import Image
from lib_magicnaming.face import capture_face
from lib_magicnaming.face_detectors import make_detector

args = json.loads(sys.argv[1])
detector = make_detector("auto", detectors_dir=args["folder"], allow_download=False)
detector.yunet.spec = detector.yunet.spec.__class__(**args["pin"])
crop = capture_face(Image.open(args["photo"]), detector)
print(json.dumps({"detector": crop.detector, "box": crop.box,
                  "loaded": sorted(m for m in BLOCKED if sys.modules.get(m) is not None)}))
"""


def test_the_default_detector_needs_only_opencv(tmp_path, astronaut):
    """A WebUI where install.py installed nothing: no insightface, onnxruntime or onnx can be imported, and
    the default ('auto') detector still finds the face with the YuNet file present."""
    model = yunet_for_photo(tmp_path / "detectors" / "face_detection_yunet_2023mar.onnx",
                            [(*ASTRONAUT_FACE, 0.9)], astronaut.size)
    astronaut.save(tmp_path / "astronaut.png")
    pin = pin_for(model)
    args = {"folder": str(tmp_path / "detectors"), "photo": str(tmp_path / "astronaut.png"),
            "pin": {k: getattr(pin, k) for k in pin.__dataclass_fields__}}
    result = subprocess.run([sys.executable, "-c", DEFAULT_DETECTOR_NEEDS_ONLY_CV2, json.dumps(args)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["detector"] == YUNET_NAME and report["loaded"] == []
    np.testing.assert_allclose(report["box"], ASTRONAUT_FACE, atol=0.05)
