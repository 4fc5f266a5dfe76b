"""What calibration did: one :class:`StageReport` per stage, gathered in a :class:`CalibrationReport`."""
from __future__ import annotations

import dataclasses
from typing import Any

from .config import CalibrationConfig

__all__ = ["StageReport", "CalibrationReport"]


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
    """Reports of the stages that ran and the held-out loss / accuracy after each."""

    config: CalibrationConfig
    from_relu: bool
    stages: list[StageReport] = dataclasses.field(default_factory=list)
    validation: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "from_relu": self.from_relu,
                "stages": [s.to_dict() for s in self.stages], "validation": self.validation}
