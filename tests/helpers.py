"""Helpers shared by several test modules (importable because pytest puts ``tests/`` on the path)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from parasnn.datasets.data import make_loader


class LargestTensor(TorchDispatchMode):
    """Records the element count of the largest tensor any operation produces while active:
    a ``(T, ...)`` copy of an activation would show up as a T-fold larger tensor."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(tensor, torch.Tensor):
                self.largest = max(self.largest, tensor.numel())
        return out


def train_briefly(model: nn.Module, dataset, *, epochs: int = 4) -> nn.Module:
    """A few epochs of seeded SGD on ``dataset`` (a small model on digits learns enough in
    four); returns ``model`` in eval mode."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for epoch in range(epochs):
        model.train()
        for x, y in make_loader(dataset, batch_size=32, shuffle=True, seed=epoch):
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def without_clock(report):
    """A report's ``to_dict()`` less every ``"seconds"`` entry (how long a part took is the one
    number two runs of the same calibration need not share)."""
    if isinstance(report, dict):
        return {key: without_clock(value) for key, value in report.items() if key != "seconds"}
    if isinstance(report, list):
        return [without_clock(value) for value in report]
    return report
