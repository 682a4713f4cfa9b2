"""The warm encode at graph speed: towers + head captured in one CUDA graph per input shape, then replayed.

A single photo through ViT-bigG/14 and ViT-L/14 is about 1,500 small kernels; launched one by one from
Python the GPU waits on the CPU (35 ms on an H200), replayed from a graph it does not (about 6 ms).
:class:`GraphedForward` captures a function (``NameEncoder.forward``) the first time it sees a batch size
(rounded up to 1, 2, 4 or 8; larger batches run in chunks of 8), on a given dtype and device, and replays it
afterwards. The crop's pixels go through a pinned staging buffer into the graph's static input, and the
result back through a pinned output buffer: the host-to-device and device-to-host copies are part of every
call. Where a graph cannot be used (not CUDA, or capture fails) it runs the function eagerly and logs why
once on the ``magicnaming`` logger. Results equal eager ones within float16 rounding.

Capture uses ``capture_error_mode="thread_local"`` where torch has it, so the WebUI's own CUDA work in other
threads (a generation running while the API encodes a photo) is never disturbed by the capture.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable

import torch

from lib_magicnaming.lru import LRUCache

logger = logging.getLogger("magicnaming")

BATCH_BUCKETS = (1, 2, 4, 8)
"""Batch sizes captured; a batch is padded up to the next one; bigger batches run in chunks of the last."""
MAX_GRAPHS = 4
"""Graphs kept per encoder (least recently used dropped first): each holds its activations' memory."""
WARMUP_RUNS = 2


def bucket(batch: int) -> int:
    """The captured batch size that runs ``batch`` photos (at most the largest bucket)."""
    return next((size for size in BATCH_BUCKETS if size >= batch), BATCH_BUCKETS[-1])


class CapturedForward:
    """``function`` captured in one CUDA graph for a static input of ``shape`` on ``device``."""

    def __init__(self, function: Callable[[torch.Tensor], torch.Tensor], shape: tuple, dtype, device):
        self.static_in = torch.zeros(shape, dtype=dtype, device=device)
        self.staging = torch.zeros(shape, dtype=dtype, pin_memory=True)
        self.graph = torch.cuda.CUDAGraph()
        kwargs = {}
        if "capture_error_mode" in inspect.signature(torch.cuda.graph.__init__).parameters:
            kwargs["capture_error_mode"] = "thread_local"
        capture = torch.cuda.graph(self.graph, **kwargs)
        stream = getattr(capture, "capture_stream", None) or torch.cuda.Stream(device)
        # warm up on the capture stream itself: kernels are chosen and cuBLAS gets its workspace for that
        # stream before capture (no allocation happens inside the graph's pool for them)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for _ in range(WARMUP_RUNS):
                function(self.static_in)
        torch.cuda.current_stream(device).wait_stream(stream)
        with capture:
            self.static_out = function(self.static_in)
        self.host_out = torch.empty(self.static_out.shape, dtype=self.static_out.dtype, pin_memory=True)
        self.device = torch.device(device)

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        """``function(inputs)`` on the CPU, ``inputs`` (CPU) at most the captured batch (padded)."""
        count = inputs.shape[0]
        self.staging[:count].copy_(inputs)
        self.static_in.copy_(self.staging, non_blocking=True)
        self.graph.replay()
        self.host_out.copy_(self.static_out, non_blocking=True)
        torch.cuda.current_stream(self.device).synchronize()
        return self.host_out[:count].clone()


class GraphedForward:
    """Replays of a function from CUDA graphs per (batch bucket, dtype, device), eager where impossible.

    The function (the same one at every call until :meth:`clear`) must take a tensor on the device and return
    one there; its parameters must stay where they are while graphs exist (call :meth:`clear` before moving
    or freeing them).
    """

    def __init__(self, *, enabled: bool = True, capacity: int = MAX_GRAPHS,
                 capture: Callable[..., Callable] = CapturedForward):
        self._capture = capture
        self._graphs: LRUCache[tuple, CapturedForward] = LRUCache(capacity)
        self.eager_reason: str | None = None if enabled else "CUDA graphs are turned off for this encoder"
        self._logged = False
        self.captures = 0
        self.replays = 0

    @staticmethod
    def graphable(device: torch.device) -> bool:
        """Whether graphs can run on ``device`` (CUDA)."""
        return device.type == "cuda"

    def __len__(self) -> int:
        return len(self._graphs)

    def clear(self) -> None:
        """Drop every graph (their memory returns to torch's allocator)."""
        self._graphs = LRUCache(self._graphs.capacity)

    def _eager(self, function, inputs: torch.Tensor, device: torch.device, reason: str) -> torch.Tensor:
        if not self._logged:
            self._logged = True
            level = logging.WARNING if reason.startswith("CUDA graph capture failed") else logging.INFO
            logger.log(level, "MagicNaming photo encoder on %s runs eagerly: %s", device, reason)
        return function(inputs.to(device)).cpu()

    def __call__(self, function: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor,
                 device: torch.device) -> torch.Tensor:
        """``function`` on CPU ``inputs`` (batch first) computed on ``device``; the result on the CPU."""
        if not self.graphable(device):
            return self._eager(function, inputs, device, "CUDA graphs need a CUDA device")
        if self.eager_reason is not None:
            return self._eager(function, inputs, device, self.eager_reason)
        step = BATCH_BUCKETS[-1]
        chunks = [inputs[i : i + step] for i in range(0, inputs.shape[0], step)]
        parts = [self._replay(function, chunk, device) for chunk in chunks]
        if any(part is None for part in parts):
            return self._eager(function, inputs, device, self.eager_reason or "graph capture failed")
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _replay(self, function, inputs: torch.Tensor, device: torch.device) -> torch.Tensor | None:
        shape = (bucket(inputs.shape[0]), *inputs.shape[1:])
        key = (shape, inputs.dtype, str(device))
        graph = self._graphs.get(key)
        if graph is None:
            try:
                graph = self._capture(function, shape, inputs.dtype, device)
            except Exception as err:  # noqa: BLE001 - any capture failure: eager from now on, said once
                self.eager_reason = f"CUDA graph capture failed ({type(err).__name__}: {str(err)[:200]})"
                logger.debug("CUDA graph capture failed", exc_info=True)
                return None
            self.captures += 1
            self._graphs.put(key, graph)
        self.replays += 1
        return graph(inputs)
