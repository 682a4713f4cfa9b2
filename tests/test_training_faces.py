"""Stage ``faces``: the extension's capture code and detectors (YuNet by default, an insightface pack by
choice), the detector recorded through features into the checkpoint, the ArcFace consistency filter, and
small identities."""

from __future__ import annotations

import json

import pandas as pd
from encoder_fixtures import install_pack
from training_fixtures import write_image_folder
from yunet_fixtures import write_yunet_onnx

from training.arcface import ArcFaceModel, write_tiny_recognition_onnx
from training.cli import main
from training.common import SkipReport
from training.faces import drop_small_identities


def _images(tmp_path):
    root = write_image_folder(
        tmp_path / "root",
        {
            "Ada_Lovelace": [0] * 8 + [5],  # the last one is somebody else
            "Alan Turing": [1] * 7,
            "Grace Hopper": [2] * 4,  # too few after filtering
        },
    )
    (root / "Ada_Lovelace" / "broken.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    out = tmp_path / "images.csv"
    assert main(["images", "--folder", str(root), "--out", str(out)]) == 0
    return out


def test_faces_assume_cropped_with_consistency_filter(tmp_path):
    model = write_tiny_recognition_onnx(tmp_path / "w600k_tiny.onnx")
    out = tmp_path / "faces"
    code = main(
        [
            "faces",
            "--images",
            str(_images(tmp_path)),
            "--out",
            str(out),
            "--assume-cropped",
            "--cpu",
            "--crop-size",
            "32",
            "--recognition-model",
            str(model),
            "--consistency-threshold",
            "0.8",
        ]
    )
    assert code == 0
    faces = pd.read_csv(out / "faces.csv")
    assert dict(faces["name"].value_counts()) == {"Ada Lovelace": 8, "Alan Turing": 7}
    assert not faces["source_path"].str.endswith("008.png").any()  # the impostor was dropped
    assert (faces["consistency"] >= 0.8).all()
    skipped = {
        s["item"].split("/")[-1]: s["reason"]
        for s in json.loads((out / "skipped.json").read_text())["skipped"]
    }
    assert skipped["broken.jpg"].endswith("is not an image file this program can read")
    assert skipped["008.png"].startswith("face does not match its identity")
    assert skipped["Grace Hopper"] == "only 4 usable face(s), need more than 5"
    report = json.loads((out / "faces.json").read_text())
    assert report["consistency"]["threshold"] == 0.8 and report["assume_cropped"] is True
    crop = faces["crop_path"].iloc[0]
    from PIL import Image

    assert Image.open(crop).size == (32, 32)


def test_recognition_model_separates_identities(tmp_path):
    from training_fixtures import draw_face

    crops = [draw_face(identity, variant, 64) for identity, variant in ((0, 0), (0, 1), (3, 0))]
    embeddings = ArcFaceModel(write_tiny_recognition_onnx(tmp_path / "r.onnx")).embed(crops)
    assert embeddings @ embeddings[0] @ [0, 1, -1] > 0.02  # same identity closer than a different one


def test_the_recognition_model_embeds_as_insightface_does(tmp_path):
    """The one ArcFace runner gives insightface's ArcFaceONNX.get_feat embeddings on the same crops (read as
    BGR and resized to the model's input, as the faces stage did through insightface's model zoo)."""
    import cv2
    import numpy as np
    from insightface.model_zoo import model_zoo
    from training_fixtures import draw_face

    path = write_tiny_recognition_onnx(tmp_path / "r.onnx")
    crops = [draw_face(identity, variant, 64) for identity, variant in ((0, 0), (1, 1), (2, 0))]
    insightface_model = model_zoo.get_model(str(path), providers=["CPUExecutionProvider"])
    bgr = [cv2.resize(np.asarray(crop)[:, :, ::-1], insightface_model.input_size) for crop in crops]
    expected = np.asarray(insightface_model.get_feat(bgr), dtype=np.float64).reshape(len(crops), -1)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(ArcFaceModel(path).embed(crops), expected, atol=1e-5)


def test_faces_with_the_extensions_detector(tmp_path):
    pack_root = tmp_path / "insightface"
    pack_dir = install_pack(pack_root, [(16, 12, 48, 52, 0.9)], (64, 64))
    write_tiny_recognition_onnx(pack_dir / "w600k_r50.onnx")
    out = tmp_path / "faces"
    code = main(
        [
            "faces",
            "--images",
            str(_images(tmp_path)),
            "--out",
            str(out),
            "--detector",
            "insightface",
            "--insightface-root",
            str(pack_root),
            "--cpu",
            "--crop-size",
            "32",
            "--recognition-model",
            "pack",
            "--consistency-threshold",
            "0.8",
            "--drop-at-most",
            "4",
        ]
    )
    assert code == 0
    faces = pd.read_csv(out / "faces.csv")
    assert faces["score"].between(0.85, 0.95).all()
    assert set(faces["name"]) == {"Ada Lovelace", "Alan Turing"}
    report = json.loads((out / "faces.json").read_text())
    assert report["detector"]["name"] == "insightface:buffalo_l"
    assert report["crop"]["detector"] == "insightface:buffalo_l" and report["crop"]["rule"] == "box-square"
    assert report["consistency"]["model"].endswith("w600k_r50.onnx")
    assert not faces["source_path"].str.endswith("Ada_Lovelace/008.png").any()


def test_missing_detector_and_small_identities_are_clear(tmp_path, capsys):
    images = str(_images(tmp_path))
    code = main(["faces", "--images", images, "--out", str(tmp_path / "f")])
    err = capsys.readouterr().err
    assert code == 2 and "the YuNet face detector needs its file: --models-dir" in err
    code = main(["faces", "--images", images, "--out", str(tmp_path / "f"), "--models-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "face_detection_yunet_2023mar.onnx" in err and str(tmp_path / "detectors") in err
    code = main(["faces", "--images", images, "--out", str(tmp_path / "f"), "--detector", "insightface"])
    assert code == 2 and "--detector insightface needs --insightface-root" in capsys.readouterr().err
    argv = ["faces", "--images", images, "--out", str(tmp_path / "f"), "--assume-cropped"]
    assert main([*argv, "--recognition-model", str(tmp_path / "arc.onnx")]) == 2
    assert f"face-recognition model not found: {tmp_path / 'arc.onnx'}" in capsys.readouterr().err
    assert main([*argv, "--recognition-model", "pack"]) == 2
    assert "--recognition-model pack needs --insightface-root" in capsys.readouterr().err
    assert not (tmp_path / "f" / "crops").exists()  # refused before any crop was made
    report = SkipReport("faces")
    kept = drop_small_identities(pd.DataFrame({"name": ["a"] * 6 + ["b"] * 5}), 5, report)
    assert set(kept["name"]) == {"a"} and report.skipped[0]["item"] == "b"


def test_faces_with_yunet_by_default_record_the_detector_for_the_features(tmp_path):
    """YuNet (a tiny model of its signature) finds the drawn 64 x 64 faces; faces.json records that the
    crops came from yunet-2023mar with the box-square rule, and the features stage takes that (with the
    margin) into the crop it records (the demo test follows it into the checkpoint)."""
    from lib_magicnaming.face import CropConfig
    from training.faces import recorded_crop
    from training.features import crop_as_captured

    model = write_yunet_onnx(tmp_path / "yunet.onnx", [(14.0, 10.0, 50.0, 54.0, 0.9)])
    out = tmp_path / "faces"
    argv = ["faces", "--images", str(_images(tmp_path)), "--out", str(out), "--yunet-file", str(model),
            "--crop-size", "32", "--drop-at-most", "4"]
    assert main(argv) == 0
    faces = pd.read_csv(out / "faces.csv")
    assert set(faces["name"]) == {"Ada Lovelace", "Alan Turing"} and faces["score"].between(0.85, 0.95).all()
    report = json.loads((out / "faces.json").read_text())
    assert report["detector"]["name"] == "yunet-2023mar"
    assert report["detector"]["provider"].startswith("OpenCV")
    assert recorded_crop(out / "faces.csv")["detector"] == "yunet-2023mar"
    carried = crop_as_captured(CropConfig(size=224, margin=0.5), out / "faces.csv")
    assert (carried.detector, carried.rule, carried.margin, carried.size) == (
        "yunet-2023mar", "box-square", 0.25, 224
    )
    assert crop_as_captured(CropConfig(), tmp_path / "elsewhere" / "faces.csv") == CropConfig()
