"""Face similarity for the likeness stage: find the face, align it, embed it with an ArcFace-style model.

* Finding faces: :func:`find_face` is the ONE place the stage detects faces. The detector is the
  extension's, chosen by the options the ``faces`` stage takes too (:mod:`training.detector_options`: YuNet
  by default, an insightface pack by choice); the same object makes the identities, through
  ``IdentityEncoder``. ``find_face`` takes the largest face of an image, as the extension's face capture
  does; with ``assume_cropped`` the whole image is the face (drawn or pre-cropped data).
* Alignment to the 112 x 112 input: where the detector gives the five landmarks (eyes, nose tip, mouth
  corners; YuNet and the insightface packs' SCRFD both do), the similarity transform (least squares,
  Umeyama) onto ArcFace's template (insightface's ``arcface_dst``,
  python-package/insightface/utils/face_align.py) — the standard ArcFace protocol. Where it gives a box only,
  the square around the box with :data:`BOX_MARGIN` each side (about the template's framing).
* The model: any ONNX with ArcFace's signature (one input N x 3 x 112 x 112 float, one output N x D, e.g.
  insightface's ``w600k_r50.onnx``), run with onnxruntime; RGB input normalised as insightface's
  ``ArcFaceONNX`` does it (model_zoo/arcface_onnx.py: (x - 127.5) / 127.5, or raw pixels when the graph's
  first nodes are named Sub and Mul, as MXNet exports are). ``--recognition-model pack`` takes the pack's
  model, found by insightface's routing rule (model_zoo.py: a square input of at least 112 px, a multiple
  of 16, and a single output).
* Scores: embeddings are L2-normalised; an image's face similarity is its cosine with the normalised mean of
  the person's reference embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from lib_magicnaming.face import CropConfig, center_square, cut_square, square_around
from training.common import TrainingError

ARCFACE_SIZE = 112
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)
"""Where ArcFace models expect the left eye, right eye, nose tip, left and right mouth corner (112 px)."""
BOX_MARGIN = 0.1
"""Without landmarks: the square around the detector's box, this share of its side added each side."""
PACK_MODEL_HINTS = ("w600k", "arcface", "glint", "r50", "r100")
"""Pack files tried first as the recognition model."""


@dataclass(frozen=True)
class FoundFace:
    """The face an image's likeness is measured on. ``box`` None: the whole image is the face."""

    box: tuple[float, float, float, float] | None
    landmarks: np.ndarray | None
    faces_found: int | None


def find_face(image: Image.Image, detector, assume_cropped: bool) -> FoundFace | None:
    """The largest face of ``image`` by the extension's detector, or None when it finds none.

    The one place this stage detects faces: a detector is anything with ``detect(image)`` -> faces largest
    first, each with ``box`` and, where the detector gives them, ``landmarks`` (5 x 2).
    """
    if assume_cropped:
        return FoundFace(None, None, None)
    faces = detector.detect(image)
    if not faces:
        return None
    face = faces[0]
    landmarks = getattr(face, "landmarks", None)
    points = None if landmarks is None else np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    return FoundFace(tuple(float(v) for v in face.box), points, len(faces))


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 2 x 3 rotation + uniform scale + shift taking ``source`` points closest to ``target`` (Umeyama)."""
    src, dst = np.asarray(source, np.float64), np.asarray(target, np.float64)
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    u, s, vt = np.linalg.svd(dst_c.T @ src_c / len(src))
    d = np.diag([1.0, float(np.sign(np.linalg.det(u) * np.linalg.det(vt))) or 1.0])
    rotation = u @ d @ vt
    scale = float((s * np.diag(d)).sum() / max((src_c**2).sum() / len(src), 1e-12))
    shift = dst_mean - scale * rotation @ src_mean
    return np.hstack([scale * rotation, shift[:, None]])


def recognition_crop(image: Image.Image, face: FoundFace) -> Image.Image:
    """The 112 x 112 RGB input of ``face``: landmark-aligned, else the box's square, else the centre."""
    if face.landmarks is not None:
        import cv2

        matrix = similarity_transform(face.landmarks, ARCFACE_TEMPLATE)
        pixels = cv2.warpAffine(np.asarray(image.convert("RGB")), matrix, (ARCFACE_SIZE, ARCFACE_SIZE))
        return Image.fromarray(pixels)
    crop = CropConfig(size=ARCFACE_SIZE, margin=BOX_MARGIN, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    square = (
        center_square(image.size) if face.box is None else square_around(face.box, BOX_MARGIN, image.size)
    )
    return cut_square(image, square, crop.validate())


def _uses_raw_pixels(path: Path) -> bool:
    """insightface's rule: graphs whose first 8 nodes include Sub and Mul normalise inside (MXNet)."""
    try:
        import onnx
    except ImportError:
        return False
    nodes = onnx.load(str(path), load_external_data=False).graph.node[:8]
    sub = any(n.name.startswith(("Sub", "_minus")) for n in nodes)
    mul = any(n.name.startswith(("Mul", "_mul")) for n in nodes)
    return sub and mul


def onnx_providers(use_cuda: bool) -> list[str]:
    """CUDA first when wanted and onnxruntime has it, CPU always."""
    import onnxruntime

    if use_cuda and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def signature_problem(session) -> str | None:
    """Why an onnxruntime session is not an ArcFace-signature model, or None when it is."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    shape = list(inputs[0].shape) if inputs else []
    if len(inputs) != 1 or len(shape) != 4 or shape[1:] != [3, ARCFACE_SIZE, ARCFACE_SIZE]:
        return (
            f"its input is {[list(i.shape) for i in inputs]}, not one N x 3 x {ARCFACE_SIZE} x {ARCFACE_SIZE}"
        )
    if len(outputs) != 1 or len(outputs[0].shape) != 2:
        return f"its outputs are {[list(o.shape) for o in outputs]}, not one N x D embedding"
    return None


class ArcFaceModel:
    """An ArcFace-signature ONNX model: 112 x 112 RGB face crops -> L2-normalised embeddings."""

    def __init__(self, path: str | Path, *, use_cuda: bool = False):
        import onnxruntime

        self.path = Path(path)
        if not self.path.is_file():
            raise TrainingError(f"face-recognition model not found: {self.path}")
        try:
            self.session = onnxruntime.InferenceSession(str(self.path), providers=onnx_providers(use_cuda))
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own kinds for a bad file
            raise TrainingError(f"{self.path} is not a loadable ONNX model ({exc})") from exc
        problem = signature_problem(self.session)
        if problem:
            raise TrainingError(f"{self.path} is not an ArcFace-style face-recognition model: {problem}")
        self.input_name = self.session.get_inputs()[0].name
        batch = self.session.get_inputs()[0].shape[0]
        self.batch = 32 if not isinstance(batch, int) or batch <= 0 else batch
        self.mean, self.std = (0.0, 1.0) if _uses_raw_pixels(self.path) else (127.5, 127.5)
        self.provider = self.session.get_providers()[0]

    @classmethod
    def from_pack(cls, insightface_root: str | Path, pack: str, *, use_cuda: bool = False) -> ArcFaceModel:
        """The pack's recognition model (e.g. buffalo_l's w600k_r50.onnx), by insightface's routing rule."""
        folder = Path(insightface_root) / "models" / pack
        candidates = sorted(
            folder.glob("*.onnx"),
            key=lambda p: (not any(h in p.name.lower() for h in PACK_MODEL_HINTS), p.name),
        )
        for path in candidates:
            try:
                return cls(path, use_cuda=use_cuda)
            except TrainingError:
                continue
        raise TrainingError(f"the insightface pack {folder} holds no face-recognition (ArcFace) model")

    def embed(self, crops: list[Image.Image]) -> np.ndarray:
        """(N, D) float64 L2-normalised embeddings of 112 x 112 RGB crops."""
        if not crops:
            return np.zeros((0, 0))
        pixels = np.stack([np.asarray(c.convert("RGB"), dtype=np.float32) for c in crops])
        blobs = ((pixels - self.mean) / self.std).transpose(0, 3, 1, 2)
        parts = [
            self.session.run(None, {self.input_name: blobs[i : i + self.batch]})[0]
            for i in range(0, len(blobs), self.batch)
        ]
        feats = np.concatenate(parts).astype(np.float64).reshape(len(crops), -1)
        return feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)


def reference_centre(embeddings: np.ndarray) -> np.ndarray:
    """The normalised mean of (N, D) normalised reference embeddings."""
    centre = embeddings.mean(axis=0)
    return centre / max(float(np.linalg.norm(centre)), 1e-12)


def leave_one_out(embeddings: np.ndarray) -> list[float]:
    """Each reference's cosine with the normalised mean of the OTHER references (the face model's ceiling)."""
    if len(embeddings) < 2:
        return []
    return [
        float(embeddings[i] @ reference_centre(np.delete(embeddings, i, axis=0)))
        for i in range(len(embeddings))
    ]


def write_tiny_recognition_onnx(path: str | Path, seed: int = 0, width: int = 512) -> Path:
    """A tiny model with ArcFace's signature (N x 3 x 112 x 112 -> N x 512): demo and tests, not faces.

    The "embedding" is a fixed random projection of the crop's 8 x 8 grid of mean colours (in -1..1).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    grid = 8
    rng = np.random.default_rng(seed)
    projection = rng.standard_normal((3 * grid * grid, width)).astype(np.float32)
    kernel = ARCFACE_SIZE // grid
    nodes = [
        helper.make_node(
            "AveragePool", ["input.1"], ["cells"], kernel_shape=[kernel, kernel], strides=[kernel] * 2
        ),
        helper.make_node("Flatten", ["cells"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "projection"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_arcface_signature",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["N", 3, ARCFACE_SIZE, ARCFACE_SIZE])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", width])],
        [numpy_helper.from_array(projection, "projection")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(target))
    return target
