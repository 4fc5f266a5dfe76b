"""What a benchmark measures and how results are kept: engine names, :class:`Case` (one
engine at one T), :class:`Measurement`, :class:`Skip`, :class:`ConfigResult` (one
configuration), paired ratios (:class:`RatioSpec`) summarised by median and IQR
(:class:`Summary`), and the goals they are checked against. Units: seconds and bytes."""
from __future__ import annotations

import dataclasses
import statistics
from typing import Any, Callable, Sequence

__all__ = ["ANN_QCFS", "ANN_RELU", "PARALLEL", "TRAINS", "SERIAL", "PARASNN_ENGINES", "Summary", "summarize", "Case",
           "Skip", "Measurement", "RatioSpec", "PARASNN_RATIOS", "ConfigResult", "GOALS", "goal_checks"]

# Engine names used in the JSON, tables and plots.
ANN_QCFS, ANN_RELU = "ann", "ann-relu"
PARALLEL, TRAINS, SERIAL = "parallel", "parallel+trains", "serial"
PARASNN_ENGINES = (ANN_QCFS, ANN_RELU, PARALLEL, TRAINS, SERIAL)


# --------------------------------------------------------------------------- statistics


@dataclasses.dataclass(frozen=True)
class Summary:
    """Median and quartiles of repeated values (seconds, or a dimensionless ratio)."""

    median: float
    q1: float
    q3: float
    count: int

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    def to_dict(self) -> dict:
        return {"median": self.median, "q1": self.q1, "q3": self.q3, "iqr": self.iqr, "count": self.count}


def summarize(values: Sequence[float]) -> Summary:
    """Median and quartiles (inclusive method; a single value is its own quartiles)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("summarize: no values")
    if len(values) == 1:
        return Summary(values[0], values[0], values[0], 1)
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return Summary(median, q1, q3, len(values))



@dataclasses.dataclass
class Case:
    """One engine at one T. ``run()`` processes one batch (no autograd graph is needed: it
    is called under ``torch.no_grad()``). ``time_steps`` is ``None`` for engines that do
    not depend on T (the ANNs). ``grows_with_time``: cost expected to grow with T, so
    larger T are skipped once the extrapolated cost passes the caps."""

    engine: str
    time_steps: int | None
    run: Callable[[], Any]
    grows_with_time: bool = False


@dataclasses.dataclass
class Skip:
    """A case that was not measured, and why."""

    engine: str
    time_steps: int | None
    reason: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Measurement:
    """A measured case: seconds per run in every round, and peak memory of one run."""

    engine: str
    time_steps: int | None
    rounds: list[float]  # seconds per run, one value per round (block mean)
    runs_per_block: int
    peak_bytes: int

    @property
    def seconds(self) -> Summary:
        return summarize(self.rounds)

    def to_dict(self) -> dict:
        return {"engine": self.engine, "time_steps": self.time_steps, "seconds": self.seconds.to_dict(),
                "rounds": self.rounds, "runs_per_block": self.runs_per_block, "peak_bytes": self.peak_bytes}


@dataclasses.dataclass(frozen=True)
class RatioSpec:
    """``numerator / denominator`` of two engines, each at the row's T (or its only
    measurement for engines that do not depend on T)."""

    numerator: str
    denominator: str

    @property
    def name(self) -> str:
        return f"{self.numerator}/{self.denominator}"


PARASNN_RATIOS = (RatioSpec(PARALLEL, ANN_QCFS), RatioSpec(PARALLEL, ANN_RELU), RatioSpec(SERIAL, PARALLEL),
                  RatioSpec(TRAINS, PARALLEL))


@dataclasses.dataclass
class ConfigResult:
    """Everything measured for one configuration (model, input, batch, device, threads)."""

    config: dict
    measurements: list[Measurement]
    skipped: list[Skip]
    ratio_specs: tuple[RatioSpec, ...] = PARASNN_RATIOS
    engine_order: tuple[str, ...] = ()  # engines in the order the caller listed them

    def find(self, engine: str, time_steps: int | None) -> Measurement | None:
        for m in self.measurements:
            if m.engine == engine and (m.time_steps is None or m.time_steps == time_steps):
                return m
        return None

    def engines(self) -> list[str]:
        seen: list[str] = [e for e in self.engine_order
                           if any(m.engine == e for m in self.measurements) or any(s.engine == e for s in self.skipped)]
        for m in self.measurements:
            if m.engine not in seen:
                seen.append(m.engine)
        for s in self.skipped:
            if s.engine not in seen:
                seen.append(s.engine)
        return seen

    def time_steps(self) -> list[int]:
        values = {m.time_steps for m in self.measurements} | {s.time_steps for s in self.skipped}
        return sorted(t for t in values if t is not None)

    def ratio(self, spec: RatioSpec, time_steps: int) -> Summary | None:
        """Per-round (paired) time ratio, or ``None`` if either side was not measured."""
        top, bottom = self.find(spec.numerator, time_steps), self.find(spec.denominator, time_steps)
        if top is None or bottom is None:
            return None
        return summarize([a / b for a, b in zip(top.rounds, bottom.rounds)])

    def memory_ratio(self, spec: RatioSpec, time_steps: int) -> float | None:
        top, bottom = self.find(spec.numerator, time_steps), self.find(spec.denominator, time_steps)
        if top is None or bottom is None or bottom.peak_bytes == 0:
            return None
        return top.peak_bytes / bottom.peak_bytes

    def to_dict(self) -> dict:
        ratios = []
        for spec in self.ratio_specs:
            for t in self.time_steps():
                value = self.ratio(spec, t)
                if value is not None:
                    ratios.append({"name": spec.name, "numerator": spec.numerator, "denominator": spec.denominator,
                                   "time_steps": t, **value.to_dict(), "memory": self.memory_ratio(spec, t)})
        return {"config": self.config, "measurements": [m.to_dict() for m in self.measurements],
                "skipped": [s.to_dict() for s in self.skipped], "ratios": ratios,
                "goals": goal_checks(self)}


# The goals, checked at every T: (ratio, kind, bound) where bound may depend on T.
GOALS = (
    ("parallel/ann time", RatioSpec(PARALLEL, ANN_QCFS), "time", lambda t: 1.1, "<="),
    ("serial/parallel time", RatioSpec(SERIAL, PARALLEL), "time", lambda t: 0.8 * t, ">="),
    ("parallel/ann memory", RatioSpec(PARALLEL, ANN_QCFS), "memory", lambda t: 1.2, "<="),
)


def goal_checks(result: ConfigResult) -> list[dict]:
    """Every goal at every T where both sides were measured: value, bound, met."""
    checks = []
    for name, spec, kind, bound, sense in GOALS:
        for t in result.time_steps():
            if kind == "time":
                summary = result.ratio(spec, t)
                value = summary.median if summary else None
            else:
                value = result.memory_ratio(spec, t)
            if value is None:
                continue
            limit = bound(t)
            met = value <= limit if sense == "<=" else value >= limit
            checks.append({"goal": name, "time_steps": t, "value": value, "bound": f"{sense} {limit:g}", "met": met})
    return checks


# --------------------------------------------------------------------------- reports
