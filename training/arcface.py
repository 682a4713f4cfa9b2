"""The face-recognition model both stages use: an ArcFace-signature ONNX model run with onnxruntime.

``faces`` embeds its crops with it for the identity-consistency filter; ``likeness`` embeds references and
generated faces for face similarity. ``--recognition-model FILE`` (any model of ArcFace's signature, e.g.
insightface's ``w600k_r50.onnx``) or ``pack`` (the recognition model of ``--pack`` under
``--insightface-root``) — :func:`load_recognition_model`.

The model is run as insightface runs it (model_zoo/arcface_onnx.py ``ArcFaceONNX.get_feat``): RGB crops
resized to the model's input side, normalised as (x - 127.5) / 127.5, or raw pixels when the graph's first
nodes are named Sub and Mul (MXNet exports normalise inside). Which files count as recognition models is
insightface's routing rule (model_zoo/model_zoo.py): one input N x 3 x S x S with S >= 112 a multiple of 16
(192, the landmark models' side, excepted) and one N x D output. Embeddings are L2-normalised; insightface
itself is not needed.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from lib_magicnaming.insightface_detector import onnx_providers
from training.common import TrainingError

logger = logging.getLogger("magicnaming")

ARCFACE_SIZE = 112
"""The input side of ArcFace models (insightface's packs, the standard protocol's aligned crops)."""
LANDMARK_MODEL_SIDE = 192
"""insightface routes square 192 px models to its landmark detector, not to ArcFace."""
PACK_MODEL_HINTS = ("w600k", "arcface", "glint", "r50", "r100")
"""Pack files tried first as the recognition model."""
DEFAULT_BATCH = 32
"""Crops per onnxruntime call when the model's batch dimension is not fixed."""


def uses_raw_pixels(path: Path) -> bool:
    """insightface's rule: graphs whose first 8 nodes include Sub and Mul normalise inside (MXNet)."""
    try:
        import onnx
    except ImportError:
        logger.warning("MagicNaming: onnx is not installed, so %s is assumed to take normalised pixels "
                       "(pip install onnx to check, as insightface does)", path.name)
        return False
    nodes = onnx.load(str(path), load_external_data=False).graph.node[:8]
    sub = any(n.name.startswith(("Sub", "_minus")) for n in nodes)
    mul = any(n.name.startswith(("Mul", "_mul")) for n in nodes)
    return sub and mul


def signature_problem(session) -> str | None:
    """Why an onnxruntime session is not an ArcFace-signature model (insightface's routing), or None."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    shape = list(inputs[0].shape) if inputs else []
    side = shape[2] if len(shape) == 4 else None
    square = len(shape) == 4 and shape[1] == 3 and isinstance(side, int) and shape[3] == side
    if len(inputs) != 1 or not square or side < ARCFACE_SIZE or side % 16 or side == LANDMARK_MODEL_SIDE:
        return (
            f"its input is {[list(i.shape) for i in inputs]}, not one N x 3 x S x S with S >= {ARCFACE_SIZE} "
            "a multiple of 16"
        )
    if len(outputs) != 1 or len(outputs[0].shape) != 2:
        return f"its outputs are {[list(o.shape) for o in outputs]}, not one N x D embedding"
    return None


class ArcFaceModel:
    """An ArcFace-signature ONNX model: RGB face crops -> L2-normalised embeddings."""

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
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self.input_size = int(model_input.shape[2])
        batch = model_input.shape[0]
        self.batch = DEFAULT_BATCH if not isinstance(batch, int) or batch <= 0 else batch
        self.mean, self.std = (0.0, 1.0) if uses_raw_pixels(self.path) else (127.5, 127.5)
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
        """(N, D) float64 L2-normalised embeddings of RGB face crops (resized to the input side if needed)."""
        if not crops:
            return np.zeros((0, 0))
        pixels = np.stack([self._pixels(crop) for crop in crops])
        blobs = ((pixels - self.mean) / self.std).transpose(0, 3, 1, 2)
        parts = [
            self.session.run(None, {self.input_name: blobs[i : i + self.batch]})[0]
            for i in range(0, len(blobs), self.batch)
        ]
        feats = np.concatenate(parts).astype(np.float64).reshape(len(crops), -1)
        return feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)

    def _pixels(self, crop: Image.Image) -> np.ndarray:
        pixels = np.asarray(crop.convert("RGB"))
        if pixels.shape[:2] != (self.input_size, self.input_size):
            import cv2

            pixels = cv2.resize(pixels, (self.input_size, self.input_size))  # bilinear
        return pixels.astype(np.float32)


def load_recognition_model(args: argparse.Namespace, *, use_cuda: bool) -> ArcFaceModel:
    """``--recognition-model``: an ArcFace-signature ONNX file, or ``pack``: the recognition model of
    ``--pack`` under ``--insightface-root``."""
    if args.recognition_model == "pack":
        if not args.insightface_root:
            raise TrainingError("--recognition-model pack needs --insightface-root (holding models/<pack>)")
        return ArcFaceModel.from_pack(args.insightface_root, args.pack, use_cuda=use_cuda)
    return ArcFaceModel(args.recognition_model, use_cuda=use_cuda)


def reference_centre(embeddings: np.ndarray) -> np.ndarray:
    """The normalised mean of (N, D) normalised embeddings: an identity's reference."""
    centre = embeddings.mean(axis=0)
    return centre / max(float(np.linalg.norm(centre)), 1e-12)


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
