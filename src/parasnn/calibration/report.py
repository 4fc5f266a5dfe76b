"""What calibration did: one :class:`StageReport` per stage, gathered in a :class:`CalibrationReport`."""
from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Any, Iterator

from .config import CalibrationConfig

__all__ = ["StageReport", "CalibrationReport", "timed"]


@contextlib.contextmanager
def timed(seconds: dict[str, dict[str, float]], part: str) -> Iterator[None]:
    """Adds the wall and CPU time of the ``with`` body to ``seconds[part]`` (``{"wall", "cpu"}``;
    CPU seconds are the process's, all threads together)."""
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        yield
    finally:
        spent = seconds.setdefault(part, {"wall": 0.0, "cpu": 0.0})
        spent["wall"] += time.perf_counter() - wall
        spent["cpu"] += time.process_time() - cpu


@dataclasses.dataclass
class StageReport:
    """What one stage did: ``stage``, steps taken, and numbers worth printing (the held-out
    result of what it returns is the pipeline's: :attr:`CalibrationReport.validation`)."""

    stage: str
    steps: int = 0
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "steps": self.steps, **self.details}


@dataclasses.dataclass
class CalibrationReport:
    """Reports of the stages that ran, the held-out loss / accuracy after each, and where the
    time went: ``seconds[part] = {"wall": …, "cpu": …}`` for the conversion (``"convert"``), each
    stage's learning (``"da"``, ``"bn"``, ``"bias"``; stage bias's early-stopping passes
    included) and each held-out pass of the pipeline (``"held-out fs-pc"``,
    ``"held-out da"``, …). CPU seconds are the process's, all threads together."""

    config: CalibrationConfig
    from_relu: bool
    stages: list[StageReport] = dataclasses.field(default_factory=list)
    validation: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    seconds: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "from_relu": self.from_relu,
                "stages": [s.to_dict() for s in self.stages], "validation": self.validation,
                "seconds": {part: {key: round(value, 3) for key, value in spent.items()}
                            for part, spent in self.seconds.items()}}
