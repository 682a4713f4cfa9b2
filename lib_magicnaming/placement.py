"""Where a frozen module's weights live: a CPU master that is never written back, and a device copy made for
use and dropped after it.

The towers and the head are frozen, so taking them off the GPU never needs a copy back: ``module.to("cpu")``
copies 4.4 GB of float16 tower weights from the GPU into new pageable host memory (3 s on an H200), then the
next use copies them up again. :class:`WeightPlacement` remembers each parameter's and buffer's CPU tensor
(the master); :meth:`~WeightPlacement.to_device` points the module at copies on the device and
:meth:`~WeightPlacement.drop_device_copy` points it back at the masters, so the device copies are freed as
soon as nothing else holds them. One copy per use, host to device.

``pin=True`` moves the masters into one page-locked host buffer (registered with ``cudaHostRegister``, exactly
the weights' size): host-to-device copies then run at the bus's full speed and asynchronously (4.4 GB in
79 ms instead of 551 ms on an H200), at the price of that much RAM the operating system cannot page out.
:meth:`~WeightPlacement.release` unregisters it; so does garbage collection of the placement.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass

import torch
from torch import nn

logger = logging.getLogger("magicnaming")

PAGE_BYTES = 4096
TENSOR_ALIGN_BYTES = 256
"""Each tensor of a pinned buffer starts at a multiple of this (what CUDA allocations guarantee)."""


@dataclass
class _Slot:
    """One parameter or buffer entry: who owns it, under which name, and its CPU master (the Parameter
    object itself for parameters). A tied parameter has one slot per owner, sharing one master."""

    owner: nn.Module
    name: str
    is_param: bool
    master: torch.Tensor


def _register_host_memory(pointer: int, size: int) -> None:
    """Page-lock ``size`` bytes at ``pointer`` for CUDA (cudaHostRegister); RuntimeError when refused."""
    code = torch.cuda.cudart().cudaHostRegister(pointer, size, 0)
    if int(code) != 0:
        raise RuntimeError(f"cudaHostRegister of {size:,} bytes failed with CUDA error {int(code)}")


def _unregister_host_memory(pointer: int) -> None:
    try:
        code = torch.cuda.cudart().cudaHostUnregister(pointer)
    except Exception:  # noqa: BLE001 - at interpreter exit CUDA may be gone; the OS unlocks the pages then
        logger.debug("cudaHostUnregister failed", exc_info=True)
        return
    if int(code) != 0:
        logger.warning("releasing pinned memory: cudaHostUnregister returned CUDA error %d", int(code))


class PinnedHostBuffer:
    """One page-aligned host buffer of ``size`` bytes, page-locked for CUDA until :meth:`release` (or garbage
    collection). The memory is allocated by torch's CPU allocator; only the registration is CUDA's, so
    tensors that view it stay valid (as ordinary pageable memory) after release."""

    def __init__(self, size: int):
        locked = -(-max(size, 1) // PAGE_BYTES) * PAGE_BYTES
        raw = torch.empty(locked + PAGE_BYTES, dtype=torch.uint8)
        start = -raw.data_ptr() % PAGE_BYTES
        self.bytes = raw[start : start + locked]
        self.size = size
        _register_host_memory(self.bytes.data_ptr(), locked)
        self._finalizer = weakref.finalize(self, _unregister_host_memory, self.bytes.data_ptr())

    @property
    def registered(self) -> bool:
        """Whether the buffer is still page-locked."""
        return self._finalizer.alive

    def release(self) -> None:
        """Unregister the buffer (idempotent); the memory itself goes when no tensor views it."""
        self._finalizer()


def _aligned(offset: int) -> int:
    return -(-offset // TENSOR_ALIGN_BYTES) * TENSOR_ALIGN_BYTES


class WeightPlacement:
    """The CPU masters of ``module``'s parameters and buffers, and at most one device copy of them.

    The module is pointed at one or the other by swapping the tensor objects it holds (parameters stay
    frozen, ``requires_grad=False``); tied parameters stay tied. Not thread-safe: its owner
    (``IdentityEncoder``) serialises every call with its lock.
    """

    def __init__(self, module: nn.Module, *, pin: bool = False):
        self.module = module
        self._slots: list[_Slot] = []
        for owner in module.modules():
            for table, is_param in ((owner._parameters, True), (owner._buffers, False)):
                self._slots += [_Slot(owner, n, is_param, t) for n, t in table.items() if t is not None]
        if any(slot.master.device.type != "cpu" for slot in self._slots):
            raise ValueError("a WeightPlacement's masters must be on the CPU")
        self.device: torch.device | None = None
        """Where the module's tensors point now: None for the masters, else the device of the copy."""
        self._pinned: PinnedHostBuffer | None = None
        self._offsets: dict[int, int] = {}
        if pin:
            self._pin()

    def _unique_masters(self) -> list[torch.Tensor]:
        unique: dict[int, torch.Tensor] = {}
        for slot in self._slots:
            unique.setdefault(id(slot.master), slot.master)
        return list(unique.values())

    @property
    def pinned(self) -> bool:
        """Whether the masters are in page-locked memory."""
        return self._pinned is not None and self._pinned.registered

    @property
    def nbytes(self) -> int:
        """Bytes of all masters."""
        return sum(t.numel() * t.element_size() for t in self._unique_masters())

    def _pin(self) -> None:
        slots_of: dict[int, list[_Slot]] = {}
        for slot in self._slots:
            slots_of.setdefault(id(slot.master), []).append(slot)
        offsets, end = [], 0
        for slots in slots_of.values():
            offsets.append(_aligned(end))
            end = offsets[-1] + slots[0].master.numel() * slots[0].master.element_size()
        buffer = PinnedHostBuffer(end)
        self._offsets = {}
        for slots, offset in zip(slots_of.values(), offsets, strict=True):
            master = slots[0].master
            pinned = _like(master, self._view(buffer.bytes, master, offset))
            pinned.data.copy_(master)
            for slot in slots:  # the unpinned tensor goes now: all weights are never held twice
                slot.master = pinned
                self._point(slot, pinned)
            self._offsets[id(pinned)] = offset
            del master
        self._pinned = buffer

    @staticmethod
    def _view(flat: torch.Tensor, like: torch.Tensor, offset: int) -> torch.Tensor:
        nbytes = like.numel() * like.element_size()
        return flat[offset : offset + nbytes].view(like.dtype).view(like.shape)

    @staticmethod
    def _point(slot: _Slot, tensor: torch.Tensor) -> None:
        table = slot.owner._parameters if slot.is_param else slot.owner._buffers
        table[slot.name] = tensor

    def _point_at(self, tensors: dict[int, torch.Tensor]) -> None:
        """Point every slot at ``tensors[id(its master)]``."""
        for slot in self._slots:
            self._point(slot, tensors[id(slot.master)])

    def to_device(self, device: torch.device | str) -> None:
        """Point the module at a copy of the masters on ``device`` (a no-op when already there).

        Pinned masters go up in one asynchronous copy of the whole buffer (ordered before later work on the
        current stream); pageable ones tensor by tensor.
        """
        device = torch.device(device)
        if self.device == device:
            return
        self.drop_device_copy()
        if device.type == "cpu":
            return
        masters = self._unique_masters()
        if self.pinned:
            flat = torch.empty(self._pinned.size, dtype=torch.uint8, device=device)
            flat.copy_(self._pinned.bytes[: self._pinned.size], non_blocking=True)
            copies = {id(m): self._view(flat, m, self._offsets[id(m)]) for m in masters}
        else:
            copies = {id(m): m.detach().to(device) for m in masters}
        self._point_at({id(m): _like(m, copies[id(m)]) for m in masters})
        self.device = device

    def drop_device_copy(self) -> None:
        """Point the module back at the CPU masters; the device copy is freed once nothing else holds it
        (nothing is copied back: the weights are frozen)."""
        if self.device is not None:
            self._point_at({id(slot.master): slot.master for slot in self._slots})
            self.device = None

    def move_for_good(self, device: torch.device | str) -> None:
        """Put the weights on ``device`` and let the masters go (the copy is then the only one)."""
        self.to_device(device)
        self.release(keep_device_copy=True)

    def release(self, *, keep_device_copy: bool = False) -> None:
        """Forget the masters and unregister pinned memory; unless ``keep_device_copy`` the module is left
        pointing at its masters' tensors (for its owner to drop)."""
        if not keep_device_copy:
            self.drop_device_copy()
        if self._pinned is not None:
            self._pinned.release()
            self._pinned = None
        self._slots = []
        self._offsets = {}


def _like(master: torch.Tensor, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` as the kind of object ``master`` is: a frozen Parameter for a parameter, else a tensor."""
    if isinstance(master, nn.Parameter):
        return nn.Parameter(tensor, requires_grad=False)
    return tensor
