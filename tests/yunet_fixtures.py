"""A tiny ONNX model with YuNet 2023mar's input and outputs, for ``cv2.FaceDetectorYN``'s real loading and
decoding path (imported explicitly, not via conftest).

YuNet 2023mar (opencv_zoo ``face_detection_yunet_2023mar.onnx``) takes one ``input`` of declared shape
(1, 3, 640, 640) (OpenCV runs it at the actual input size) and has twelve outputs, three strides each of
``cls_S`` (1, N, 1), ``obj_S`` (1, N, 1), ``bbox_S`` (1, N, 4) and ``kps_S`` (1, N, 10) with N = (640 / S)^2
at the declared size. OpenCV 4.8+ asks for exactly these names and decodes them (modules/objdetect/src/
face_detect.cpp): for the cell (row r, column c) of stride S, score = sqrt(clamp(cls) * clamp(obj)),
centre = ((c + bbox0) * S, (r + bbox1) * S), size = (exp(bbox2) * S, exp(bbox3) * S), landmark k =
((kps[2k] + c) * S, (kps[2k + 1] + r) * S).

The model here computes every output from the input's shape: a stride-S average pool of the input gives
the grid, cumulative sums of ones give each cell's column and row, and a face is a one-hot bump at its cell
(relu(1 - |col - c|) * relu(1 - |row - r|)) times its constant values. So it runs at any input size, as
the real one does, and "detects" the faces it was built with at known places (stride 32 cells).
"""

from __future__ import annotations

import hashlib
import http.server
import math
import threading
from pathlib import Path

import numpy as np

YUNET_STRIDES = (8, 16, 32)
YUNET_KINDS = (("cls", 1), ("obj", 1), ("bbox", 4), ("kps", 10))
DECLARED_SIZE = 640
FACE_STRIDE = 32


def yunet_output_names() -> list[str]:
    """cls_8, cls_16, cls_32, obj_8, ... kps_32: the names cv2.FaceDetectorYN asks the network for."""
    return [f"{kind}_{stride}" for kind, _ in YUNET_KINDS for stride in YUNET_STRIDES]


def landmarks_in(box: tuple[float, float, float, float]) -> list[tuple[float, float]]:
    """Five plausible landmarks inside a face box: eyes, nose tip, mouth corners (image-left first)."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    relative = [(0.32, 0.4), (0.68, 0.4), (0.5, 0.58), (0.36, 0.78), (0.64, 0.78)]
    return [(x1 + fx * w, y1 + fy * h) for fx, fy in relative]


def _face_values(box, score):
    """Per kind, the values at the face's cell: (cell column, cell row, {kind: values})."""
    x1, y1, x2, y2 = box
    s = FACE_STRIDE
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    col, row = int(cx // s), int(cy // s)
    points = [v for x, y in landmarks_in(box) for v in (x / s - col, y / s - row)]
    values = {
        "cls": [score],
        "obj": [score],
        "bbox": [cx / s - col, cy / s - row, math.log((x2 - x1) / s), math.log((y2 - y1) / s)],
        "kps": points,
    }
    return col, row, values



def _graph_builder():
    """(nodes, initializers, const, node) for building a small ONNX graph, with the constants both YuNet
    stand-ins use (zero, one, the width and height axes) already made."""
    from onnx import helper, numpy_helper

    nodes, initializers = [], []

    def const(name, value, dtype=np.float32):
        initializers.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def node(op, inputs, output, **attrs):
        nodes.append(helper.make_node(op, inputs, [output], **attrs))
        return output

    const("zero", 0.0)
    const("one", 1.0)
    const("axis_w", 3, np.int64)
    const("axis_h", 2, np.int64)
    return nodes, initializers, const, node

def write_yunet_onnx(path, faces, *, only_at_width: int | None = None) -> Path:
    """Write the tiny YuNet-signature model to ``path``.

    ``faces``: (x1, y1, x2, y2, score) in detector-input pixels, at most one per 32 px cell.
    ``only_at_width``: the faces are there only when the input is this wide (rounded up to 32, as OpenCV
    pads it), to test detection retried at a smaller size.
    """
    nodes, initializers, const, node = _graph_builder()
    cells, used = [], set()
    for x1, y1, x2, y2, score in faces:
        col, row, values = _face_values((x1, y1, x2, y2), score)
        assert (col, row) not in used, "one face per 32 px cell"
        used.add((col, row))
        cells.append((col, row, values))
    outputs = {}
    for stride in YUNET_STRIDES:
        pooled = node("AveragePool", ["input"], f"pool{stride}", kernel_shape=[stride, stride],
                      strides=[stride, stride])
        grey = node("ReduceMean", [pooled], f"grey{stride}", axes=[1], keepdims=1)  # (1, 1, h, w)
        zeros = node("Mul", [grey, "zero"], f"zeros{stride}")
        ones = node("Add", [zeros, "one"], f"ones{stride}")
        column = node("CumSum", [ones, "axis_w"], f"col{stride}")  # 1-based column of each cell
        row_index = node("CumSum", [ones, "axis_h"], f"row{stride}")
        gate = "one"
        if only_at_width is not None:
            columns = node("ReduceMax", [column], f"cols{stride}", keepdims=1)
            wanted = const(f"wanted{stride}", math.ceil(only_at_width / stride))
            gap = node("Abs", [node("Sub", [columns, wanted], f"colgap{stride}")], f"abscolgap{stride}")
            gate = node("Relu", [node("Sub", ["one", gap], f"ungap{stride}")], f"gate{stride}")
        bumps = []
        for index, (col, row, values) in enumerate(cells if stride == FACE_STRIDE else []):
            tag = f"{stride}_{index}"
            parts = []
            for axis, grid, at in (("c", column, col), ("r", row_index, row)):
                offset = node("Sub", [grid, const(f"at{axis}{tag}", at + 1)], f"off{axis}{tag}")
                near = node("Sub", ["one", node("Abs", [offset], f"abs{axis}{tag}")], f"near{axis}{tag}")
                parts.append(node("Relu", [near], f"bump{axis}{tag}"))
            bump = node("Mul", [node("Mul", parts, f"bump{tag}"), gate], f"gated{tag}")
            bumps.append((bump, values))
        for kind, channels in YUNET_KINDS:
            name = f"{kind}_{stride}"
            no_values = const(f"zeros_{name}", np.zeros((1, channels, 1, 1)))
            total = node("Mul", [zeros, no_values], f"base_{name}")
            for index, (bump, values) in enumerate(bumps):
                face_values = np.asarray(values[kind]).reshape(1, channels, 1, 1)
                column_values = const(f"v_{name}_{index}", face_values)
                term = node("Mul", [bump, column_values], f"term_{name}_{index}")
                total = node("Add", [total, term], f"sum_{name}_{index}")
            moved = node("Transpose", [total], f"nhwc_{name}", perm=[0, 2, 3, 1])
            shape = const(f"shape_{name}", [1, -1, channels], np.int64)
            outputs[name] = (node("Reshape", [moved, shape], name), channels, stride)
    return _save_yunet_graph(path, nodes, initializers, outputs, "tiny_yunet_2023mar")


def _save_yunet_graph(path, nodes, initializers, outputs: dict, graph_name: str) -> Path:
    """Write a graph with YuNet 2023mar's declared input and outputs (``outputs``: name -> (node output,
    channels, stride)), checked by ONNX's checker."""
    import onnx
    from onnx import TensorProto, helper

    declared = [
        helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, (DECLARED_SIZE // stride) ** 2, channels])
        for name, (_, channels, stride) in ((n, outputs[n]) for n in yunet_output_names())
    ]
    graph = helper.make_graph(
        nodes,
        graph_name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, DECLARED_SIZE, DECLARED_SIZE])],
        declared,
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


DARK_LEVEL = 19.2
""":func:`write_centred_yunet_onnx` finds no face in images whose mean pixel value (0-255) is below this."""


def write_centred_yunet_onnx(path, box: tuple[float, float, float, float], *,
                             dark_level: float = DARK_LEVEL) -> Path:
    """A tiny YuNet-signature model that finds one face at ``box`` (x1, y1, x2, y2 as fractions of the
    image's sides) in any image whose sides are multiples of 32, and none in a nearly black one.

    Every stride-32 cell decodes to the same box and landmarks (:func:`landmarks_in`): its offsets are
    computed from the cell's column and row and the grid's size, so OpenCV's NMS keeps one face. The score
    of every cell is sigmoid(mean pixel value - ``dark_level``); strides 8 and 16 find nothing.
    """
    nodes, initializers, const, node = _graph_builder()
    outputs = {}
    for stride in YUNET_STRIDES:
        pooled = node("AveragePool", ["input"], f"pool{stride}", kernel_shape=[stride, stride],
                      strides=[stride, stride])
        grey = node("ReduceMean", [pooled], f"grey{stride}", axes=[1], keepdims=1)  # (1, 1, h, w)
        zeros = node("Mul", [grey, "zero"], f"zeros{stride}")
        if stride == FACE_STRIDE:
            values = _centred_face_values(node, const, grey, zeros, box, dark_level)
        else:
            values = {kind: [zeros] * channels for kind, channels in YUNET_KINDS}
        for kind, channels in YUNET_KINDS:
            name = f"{kind}_{stride}"
            parts = values[kind]
            stacked = node("Concat", parts, f"nchw_{name}", axis=1) if channels > 1 else parts[0]
            moved = node("Transpose", [stacked], f"nhwc_{name}", perm=[0, 2, 3, 1])
            shape = const(f"shape_{name}", [1, -1, channels], np.int64)
            outputs[name] = (node("Reshape", [moved, shape], name), channels, stride)
    return _save_yunet_graph(path, nodes, initializers, outputs, "tiny_centred_yunet_2023mar")


def _centred_face_values(node, const, grey, zeros, box, dark_level) -> dict[str, list[str]]:
    """Per output kind, one (1, 1, h, w) map per channel that decodes to the face at ``box`` in every
    stride-32 cell: offset = fraction x grid side - cell index; size = log(fraction x grid side)."""
    ones = node("Add", [zeros, "one"], "ones")
    column = node("Sub", [node("CumSum", [ones, "axis_w"], "col1"), "one"], "col")  # 0-based
    row = node("Sub", [node("CumSum", [ones, "axis_h"], "row1"), "one"], "row")
    grid = {
        0: (column, node("ReduceMax", [node("Add", [column, "one"], "colp")], "cols", keepdims=1)),
        1: (row, node("ReduceMax", [node("Add", [row, "one"], "rowp")], "rows", keepdims=1)),
    }

    def offset(fraction, axis, tag):
        index, cells = grid[axis]
        at = node("Mul", [cells, const(f"f_{tag}", fraction)], f"at_{tag}")
        return node("Sub", [at, index], f"off_{tag}")

    def log_size(fraction, axis, tag):
        scaled = node("Mul", [grid[axis][1], const(f"s_{tag}", fraction)], f"scaled_{tag}")
        return node("Add", [zeros, node("Log", [scaled], f"log_{tag}")], f"size_{tag}")

    x1, y1, x2, y2 = box
    brightness = node("ReduceMean", [grey], "brightness", axes=[2, 3], keepdims=1)
    above = node("Sub", [brightness, const("dark_level", dark_level)], "above_dark")
    score = node("Add", [zeros, node("Sigmoid", [above], "gate")], "score")
    return {
        "cls": [score],
        "obj": [score],
        "bbox": [
            offset((x1 + x2) / 2, 0, "cx"),
            offset((y1 + y2) / 2, 1, "cy"),
            log_size(x2 - x1, 0, "w"),
            log_size(y2 - y1, 1, "h"),
        ],
        "kps": [
            offset(v, axis, f"k{k}{axis}")
            for k, point in enumerate(landmarks_in(box))
            for axis, v in enumerate(point)
        ],
    }


def first_scale(image_size: tuple[int, int]) -> tuple[float, float]:
    """The (x, y) factors the YuNet detector's first try scales a photo by: longest side to at most 640
    px, never enlarged, each side rounded to whole pixels."""
    width, height = image_size
    scale = min(1.0, 640 / max(width, height))
    return max(1, round(width * scale)) / width, max(1, round(height * scale)) / height


def yunet_for_photo(path, image_boxes, image_size, **kwargs) -> Path:
    """A tiny YuNet model that finds ``image_boxes`` ((x1, y1, x2, y2, score), photo pixels) in a photo of
    ``image_size`` at the detector's first try."""
    sx, sy = first_scale(image_size)
    det_boxes = [(x1 * sx, y1 * sy, x2 * sx, y2 * sy, s) for x1, y1, x2, y2, s in image_boxes]
    return write_yunet_onnx(path, det_boxes, **kwargs)


def pin_for(path, url: str = "http://127.0.0.1:9/never"):
    """A PinnedFile of YuNet's name whose size and SHA-256 are those of ``path`` (a tiny test model)."""
    from lib_magicnaming.detector_files import YUNET_2023MAR, PinnedFile

    data = Path(path).read_bytes()
    return PinnedFile(
        name=YUNET_2023MAR.name, size=len(data), sha256=hashlib.sha256(data).hexdigest(), url=url,
        aliases=YUNET_2023MAR.aliases, description="a tiny YuNet-signature test model",
    )


class FileServer:
    """A one-file HTTP server on 127.0.0.1: ``body`` is sent for every GET; ``announce`` overrides the
    Content-Length sent ("omit": none); ``cut_after`` closes the connection after that many bytes."""

    def __init__(self, body: bytes):
        self.body, self.announce, self.cut_after, self.requests = body, None, None, 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                server.requests += 1
                if self.path != "/yunet.onnx":
                    self.send_error(404)
                    return
                self.send_response(200)
                length = server.announce if server.announce is not None else len(server.body)
                if length != "omit":  # without it, the end of the body is the end of the connection
                    self.send_header("Content-Length", str(length))
                self.end_headers()
                data = server.body if server.cut_after is None else server.body[: server.cut_after]
                self.wfile.write(data)
                self.wfile.flush()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/yunet.onnx") -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
