"""The graph cache's rules on the CPU: batch buckets, chunks, one capture per shape, the least recently used
graph dropped, eager fallback said once. Captures are stood in by a recorder (the CUDA tests in
test_encode.py capture real graphs)."""

from __future__ import annotations

import logging

import pytest
import torch

from lib_magicnaming.cuda_graphs import BATCH_BUCKETS, GraphedForward, bucket


def double(x: torch.Tensor) -> torch.Tensor:
    return x * 2 + 1


class RecordingCapture:
    """Stands in for CapturedForward: runs the function on the padded static shape, as a replay does."""

    made: list[tuple] = []

    def __init__(self, function, shape, dtype, device):
        RecordingCapture.made.append(shape)
        self.function, self.shape = function, shape

    def __call__(self, inputs):
        padded = torch.zeros(self.shape, dtype=inputs.dtype)
        padded[: inputs.shape[0]] = inputs
        return self.function(padded)[: inputs.shape[0]].clone()


@pytest.fixture()
def graphed():
    RecordingCapture.made = []
    graphs = GraphedForward(capture=RecordingCapture, capacity=2)
    graphs.graphable = lambda device: True
    return graphs


def test_buckets():
    assert [bucket(n) for n in (1, 2, 3, 4, 5, 8, 9, 100)] == [1, 2, 4, 4, 8, 8, 8, 8]
    assert BATCH_BUCKETS[-1] == 8


def test_batches_are_padded_to_buckets_and_chunked(graphed):
    x = torch.randn(11, 3)
    torch.testing.assert_close(graphed(double, x, torch.device("cpu")), double(x))
    assert RecordingCapture.made == [(8, 3), (4, 3)] and graphed.replays == 2
    graphed(double, x[:3], torch.device("cpu"))  # bucket 4 again: replayed, not captured
    assert graphed.captures == 2 and graphed.replays == 3
    graphed(double, x[:1], torch.device("cpu"))  # a third shape: the least recently used (8) goes
    assert len(graphed) == 2
    graphed(double, x[:8], torch.device("cpu"))
    assert RecordingCapture.made[-1] == (8, 3) and graphed.captures == 4
    graphed.clear()
    assert len(graphed) == 0


def test_a_failed_capture_runs_eagerly_from_then_on_and_says_so_once(caplog):
    attempts = []

    def failing_capture(function, shape, dtype, device):
        attempts.append(shape)
        raise RuntimeError("operation not permitted when stream is capturing")

    graphs = GraphedForward(capture=failing_capture)
    graphs.graphable = lambda device: True
    x = torch.randn(3, 4)
    with caplog.at_level(logging.INFO, logger="magicnaming"):
        for _ in range(3):
            torch.testing.assert_close(graphs(double, x, torch.device("cpu")), double(x))
    assert attempts == [(4, 4)] and graphs.captures == 0
    assert graphs.eager_reason.startswith("CUDA graph capture failed (RuntimeError: operation not permitted")
    (record,) = [r for r in caplog.records if r.name == "magicnaming"]
    assert record.levelno == logging.WARNING
    assert "runs eagerly: CUDA graph capture failed" in record.getMessage()


def test_graphs_turned_off_or_no_cuda_run_eagerly(caplog):
    x = torch.randn(2, 4)
    off = GraphedForward(enabled=False)
    off.graphable = lambda device: True
    with caplog.at_level(logging.INFO, logger="magicnaming"):
        torch.testing.assert_close(off(double, x, torch.device("cpu")), double(x))
        torch.testing.assert_close(GraphedForward()(double, x, torch.device("cpu")), double(x))
    messages = [r.getMessage() for r in caplog.records if r.name == "magicnaming"]
    assert messages == [
        "MagicNaming photo encoder on cpu runs eagerly: CUDA graphs are turned off for this encoder",
        "MagicNaming photo encoder on cpu runs eagerly: CUDA graphs need a CUDA device",
    ]
