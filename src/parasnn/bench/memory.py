"""Peak memory of one run: on CUDA ``torch.cuda.max_memory_allocated``, elsewhere a
:class:`~torch.utils._python_dispatch.TorchDispatchMode` that adds up the storages the operators
allocate and subtracts them when they are freed (activations, temporaries, outputs; weights and
the input are not counted)."""
from __future__ import annotations

import sys
import weakref
from typing import Any, Callable

import torch
from torch import Tensor

from ..conversion.network import synchronize

__all__ = ["peak_memory", "keep_freed_cpu_memory"]


def _aliases_an_input(func, index: int) -> bool:
    """Whether output ``index`` of ``func`` is a view of, or is, an input (views, in-place
    and out= variants): it allocates nothing."""
    returns = func._schema.returns
    return index < len(returns) and returns[index].alias_info is not None


class _LiveBytes(torch.utils._python_dispatch.TorchDispatchMode):
    """Adds up the storages allocated by operators while active; a storage is subtracted
    when it is freed (a weak-reference finaliser on its Python object, which PyTorch keeps
    alive exactly as long as the storage)."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._tracked: dict[int, int] = {}  # data pointer -> bytes, for storages alive now

    def _freed(self, pointer: int) -> None:
        self.live -= self._tracked.pop(pointer, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        outputs = output if isinstance(output, (tuple, list)) else (output,)
        for index, tensor in enumerate(outputs):
            if not isinstance(tensor, Tensor) or _aliases_an_input(func, index):
                continue
            try:
                storage = tensor.untyped_storage()
            except (RuntimeError, NotImplementedError):  # a tensor without a plain storage (opaque layouts)
                continue
            pointer, size = storage.data_ptr(), storage.nbytes()
            if size == 0 or pointer in self._tracked:
                continue
            self._tracked[pointer] = size
            self.live += size
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._freed, pointer)
        return output


def peak_memory(run: Callable[[], Any], *, device: torch.device) -> int:
    """Peak bytes of tensors allocated during ``run()`` and alive at the same time, above
    what was allocated before it (so weights and inputs are excluded). The result of
    ``run`` counts until the call returns."""
    device = torch.device(device)
    if device.type == "cuda":
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = run()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        del result
        return int(peak)
    mode = _LiveBytes()
    with mode:
        result = run()
    del result
    return int(mode.peak)


# --------------------------------------------------------------------------- allocator


def keep_freed_cpu_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse: no ``mmap`` for large blocks and no
    trimming of the heap (``mallopt(M_MMAP_MAX, 0)``, ``mallopt(M_TRIM_THRESHOLD, 1 GiB)``).

    Why: with the defaults, a CPU forward pass hands its large activation buffers back to
    the OS and page-faults them in again on the next pass; profiling showed this costs
    40 % of a ResNet-20 forward at batch 32, and more for a torch.fx graph (a converted
    network) because it frees every tensor as soon as it is dead. The same effect as
    ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1073741824`` in the environment, or a
    caching allocator (jemalloc, tcmalloc). Process-wide and not undone; affects every
    engine alike. Returns ``False`` where it does not apply (not Linux with glibc).
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # from <malloc.h>
    return mallopt(m_mmap_max, 0) == 1 and mallopt(m_trim_threshold, 1 << 30) == 1
