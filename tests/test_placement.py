"""Weight placement: a CPU master never written back, one device copy made and dropped, pinned masters in one
page-aligned registered buffer. The "device" here is torch's meta device (a real device copy with no data);
the CUDA tests in test_encode.py run the same code against a GPU."""

from __future__ import annotations

import gc

import pytest
import torch
from torch import nn

from lib_magicnaming import placement as placement_module
from lib_magicnaming.placement import PAGE_BYTES, TENSOR_ALIGN_BYTES, PinnedHostBuffer, WeightPlacement


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = nn.Linear(5, 3)
        self.second = nn.Linear(5, 3)
        self.second.weight = self.first.weight  # one parameter in two places
        self.norm = nn.BatchNorm1d(3)  # buffers: running_mean, running_var, num_batches_tracked (int64)
        self.half = nn.Linear(3, 7).half()


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_a_device_copy_is_made_and_dropped_and_the_master_is_never_written_back():
    module = Tied()
    before = snapshot(module)
    pointers = {k: v.data_ptr() for k, v in module.state_dict().items()}
    placement = WeightPlacement(module)
    placement.to_device("meta")
    assert placement.device == torch.device("meta")
    assert all(t.device.type == "meta" for t in [*module.parameters(), *module.buffers()])
    assert module.second.weight is module.first.weight  # still tied on the device
    placement.to_device("meta")  # already there: nothing happens
    placement.drop_device_copy()
    assert placement.device is None
    after = module.state_dict()
    assert {k: v.data_ptr() for k, v in after.items()} == pointers  # the very same master tensors again
    for key, tensor in before.items():
        assert torch.equal(after[key], tensor) and after[key].dtype == tensor.dtype


def test_masters_must_start_on_the_cpu():
    with pytest.raises(ValueError, match="on the CPU"):
        WeightPlacement(nn.Linear(2, 2, device="meta"))


def test_moving_for_good_forgets_the_masters():
    module = nn.Linear(4, 4)
    placement = WeightPlacement(module)
    placement.move_for_good("meta")
    assert module.weight.device.type == "meta"
    placement.drop_device_copy()  # nothing to go back to any more
    assert module.weight.device.type == "meta" and placement.nbytes == 0


@pytest.fixture()
def registrations(monkeypatch):
    """Record cudaHostRegister/Unregister calls instead of making them (no GPU here)."""
    calls = []
    module = placement_module
    monkeypatch.setattr(module, "_register_host_memory", lambda p, n: calls.append(("register", p, n)))
    monkeypatch.setattr(module, "_unregister_host_memory", lambda p: calls.append(("unregister", p)))
    return calls


def test_pinned_masters_are_views_of_one_page_aligned_registered_buffer(registrations):
    module = Tied()
    before = snapshot(module)
    placement = WeightPlacement(module, pin=True)
    assert placement.pinned
    ((kind, pointer, size),) = registrations
    assert kind == "register" and pointer % PAGE_BYTES == 0 and size % PAGE_BYTES == 0
    assert size >= placement.nbytes
    tensors = [*module.parameters(), *module.buffers()]
    for tensor in tensors:
        assert pointer <= tensor.data_ptr() < pointer + size
        assert (tensor.data_ptr() - pointer) % TENSOR_ALIGN_BYTES == 0
    for key, value in module.state_dict().items():
        assert torch.equal(value, before[key]) and value.dtype == before[key].dtype
    placement.to_device("meta")
    placement.drop_device_copy()
    assert all(pointer <= t.data_ptr() < pointer + size for t in module.parameters())
    placement.release()
    placement.release()
    assert registrations[1:] == [("unregister", pointer)] and not placement.pinned
    assert torch.equal(module.first.weight, before["first.weight"])  # the memory itself is still there


def test_a_pinned_buffer_is_unregistered_when_collected(registrations):
    buffer = PinnedHostBuffer(10)
    pointer = buffer.bytes.data_ptr()
    del buffer
    gc.collect()
    assert registrations == [("register", pointer, PAGE_BYTES), ("unregister", pointer)]
