"""Speed and memory of a spiking network against its ANN, measured in one process.

Every engine — the ANN, the parallel SNN, the parallel SNN with all spike trains
materialised, the serial simulation, and any baseline a caller adds (``benchmarks/`` adds
SpikingJelly and the FS-PC folded-time network) — is a :class:`Case`: a zero-argument
callable that runs one batch. :func:`measure` times all cases of one configuration
(model, batch, device, threads) **interleaved**: each round runs every case once, in a
seeded random order that changes from round to round, so a burst of load from other
processes hits all engines alike; a ratio is computed per round (paired) and summarised
by its median and interquartile range (IQR). Timing uses
:class:`torch.utils.benchmark.Timer` (it sets the thread count and synchronises CUDA) on
blocks of ``number`` runs sized to last at least ``min_block_seconds``.

Memory is the **peak of live tensor bytes allocated during one run** (activations,
temporaries and outputs; weights and the input are not counted), measured in a separate
run: on CUDA with ``torch.cuda.max_memory_allocated``, elsewhere with a
:class:`~torch.utils._python_dispatch.TorchDispatchMode` that adds up the storages the
operators allocate and subtracts them when they are freed.

Engines whose cost grows with T (serial, spike trains, SpikingJelly, folded) are measured in
increasing T; a T is **skipped with its reason recorded** when the time or memory of one
run, extrapolated linearly from the largest T measured, would exceed the caps.

Units: seconds and bytes in the JSON; milliseconds and MiB in the Markdown tables.
"""
from __future__ import annotations

import copy
import dataclasses
import datetime
import math
import os
import platform
import random
import statistics
import sys
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from ..io.files import atomic_path
from ..conversion.network import SpikingNetwork, synchronize
from ..neurons.base import ActivationQuantizer
from ..simulation.forms import serial_forward, spike_trains

__all__ = ["Case", "Skip", "Summary", "Measurement", "ConfigResult", "RatioSpec", "PARASNN_RATIOS", "GOALS",
           "summarize", "peak_memory", "measure", "CLOCKS", "relu_twin", "parasnn_cases", "machine_info", "goal_checks",
           "markdown_report", "write_report", "PARASNN_ENGINES", "keep_freed_cpu_memory"]

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


# --------------------------------------------------------------------------- memory


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


# --------------------------------------------------------------------------- timing


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


def _timed_once(run: Callable[[], Any], device: torch.device, clock: str = "wall") -> float:
    now = time.process_time if clock == "cpu" else time.perf_counter
    synchronize(device)
    start = now()
    result = run()
    synchronize(device)
    seconds = now() - start
    del result
    return seconds


def _no_grad(run: Callable[[], Any]) -> Callable[[], Any]:
    def wrapped():
        with torch.no_grad():
            return run()
    return wrapped


CLOCKS = ("wall", "cpu")


def measure(cases: Sequence[Case], *, config: dict, device: torch.device | str, threads: int, rounds: int = 5,
            min_block_seconds: float = 0.05, cap_seconds: float = 5.0, memory_cap_bytes: int = 4 << 30,
            ratio_specs: tuple[RatioSpec, ...] = PARASNN_RATIOS, clock: str = "wall",
            log: Callable[[str], None] | None = None) -> ConfigResult:
    """Time and measure the memory of ``cases`` (one configuration), interleaved.

    Args:
        cases: the engines at every T; cases of one engine are visited in increasing T.
        config: description stored with the result (model, batch, input shape, ...).
        device: where the cases run (for synchronisation and the memory method).
        threads: torch intra-op threads for every timing (``Timer(num_threads=...)``).
        rounds: timing rounds; each runs every measured case once (one block).
        min_block_seconds: a block repeats a case until it lasts at least this long.
        cap_seconds, memory_cap_bytes: an engine that grows with T is skipped at a T where
            one run, extrapolated linearly in T from its largest measured T, would take
            longer or need more memory than this.
        clock: ``"wall"`` (elapsed time, CUDA synchronised) or ``"cpu"`` (CPU time of this
            process, :func:`time.process_time`). On a CPU shared with other jobs, CPU time
            does not count the time slices other processes take; with ``threads=1`` it is
            the single thread's compute time. CPU devices only.
        log: receives one line per case (progress); ``None`` for silence.

    Returns:
        :class:`ConfigResult` with one :class:`Measurement` per measured case and one
        :class:`Skip` (with its reason) per skipped case.
    """
    from torch.utils import benchmark  # imported here: not needed by the rest of parasnn

    device = torch.device(device)
    if clock not in CLOCKS:
        raise ValueError(f"measure: clock must be one of {CLOCKS}, got {clock!r}")
    for name, value in (("rounds", rounds), ("threads", threads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"measure: {name} must be an integer >= 1, got {value!r}")
    if clock == "cpu" and device.type != "cpu":
        raise ValueError("measure: clock='cpu' measures CPU time; use clock='wall' on an accelerator")
    timer_options = {"timer": time.process_time} if clock == "cpu" else {}
    log = log or (lambda line: None)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ordered = sorted(enumerate(cases), key=lambda item: (item[1].engine, item[1].time_steps or 0, item[0]))
        measured: list[tuple[Case, float, int]] = []  # case, warm seconds, peak bytes
        skipped: list[Skip] = []
        last: dict[str, tuple[int, float, int]] = {}  # engine -> (T, seconds, bytes) of its largest measured T
        dead: dict[str, str] = {}  # engine -> why every larger T is skipped too
        for _, case in ordered:
            run = _no_grad(case.run)
            if case.engine in dead:
                skipped.append(Skip(case.engine, case.time_steps, dead[case.engine]))
                continue
            if case.grows_with_time and case.engine in last and case.time_steps:
                t0, s0, b0 = last[case.engine]
                scale = case.time_steps / t0
                if s0 * scale > cap_seconds:
                    # Not marked dead: every larger T gets its own (larger) estimate in its reason.
                    reason = (f"one run would take about {s0 * scale:.3g} s (cap {cap_seconds:g} s), extrapolated "
                              f"linearly from {s0:.3g} s at T={t0}")
                    skipped.append(Skip(case.engine, case.time_steps, reason))
                    log(f"  skip {case.engine} T={case.time_steps}: {reason}")
                    continue
                if b0 * scale > memory_cap_bytes:
                    reason = (f"one run would need about {b0 * scale / 2**30:.2f} GiB (cap "
                              f"{memory_cap_bytes / 2**30:.2f} GiB), extrapolated linearly from "
                              f"{b0 / 2**20:.1f} MiB at T={t0}")
                    skipped.append(Skip(case.engine, case.time_steps, reason))
                    log(f"  skip {case.engine} T={case.time_steps}: {reason}")
                    continue
            try:
                _timed_once(run, device, clock)  # first call: lazy initialisation, caches, JIT
                seconds = _timed_once(run, device, clock)
                peak = peak_memory(run, device=device)
            except (RuntimeError, MemoryError) as error:  # out of memory, or an engine that cannot run this case
                reason = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:200]}"
                skipped.append(Skip(case.engine, case.time_steps, reason))
                if case.grows_with_time:
                    dead[case.engine] = f"a smaller T failed ({reason})"
                log(f"  skip {case.engine} T={case.time_steps}: {reason}")
                continue
            if case.time_steps:
                last[case.engine] = (case.time_steps, seconds, peak)
            measured.append((case, seconds, peak))
            log(f"  {case.engine} T={case.time_steps}: {1e3 * seconds:.2f} ms/run, peak {peak / 2**20:.2f} MiB")

        blocks = [(case, max(1, math.ceil(min_block_seconds / max(seconds, 1e-9))), peak)
                  for case, seconds, peak in measured]
        timers = [benchmark.Timer(stmt="run()", globals={"run": _no_grad(case.run)}, num_threads=threads,
                                  **timer_options) for case, _, _ in blocks]
        times: list[list[float]] = [[] for _ in blocks]
        for round_index in range(rounds):
            # A new (seeded) order every round, so no engine always runs first, last, or
            # right after the same neighbour (caches, thermal state, bursts of load).
            order = list(range(len(blocks)))
            random.Random(round_index).shuffle(order)
            for index in order:
                number = blocks[index][1]
                times[index].append(timers[index].timeit(number).mean)
            log(f"  round {round_index + 1}/{rounds} done")
        measurements = [Measurement(case.engine, case.time_steps, times[i], number, peak)
                        for i, (case, number, peak) in enumerate(blocks)]
    finally:
        torch.set_num_threads(previous_threads)
    return ConfigResult(dict(config, device=str(device), threads=threads, rounds=rounds, clock=clock,
                             min_block_seconds=min_block_seconds, cap_seconds=cap_seconds,
                             memory_cap_bytes=memory_cap_bytes),
                        measurements, skipped, tuple(ratio_specs), tuple(dict.fromkeys(c.engine for c in cases)))


# --------------------------------------------------------------------------- parasnn engines


def relu_twin(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every quantized activation (QCFS and relatives) replaced by
    ``nn.ReLU``: the same weights and graph with the cheapest activation — the ANN users
    start from. Activations must be modules (as in every :mod:`parasnn.zoo.models` network)."""
    twin = copy.deepcopy(model)
    for name, module in list(twin.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, ActivationQuantizer):
                setattr(module, child_name, nn.ReLU())
    return twin.eval()


def parasnn_cases(*, ann: nn.Module, network: SpikingNetwork, inputs: Tensor, time_steps: Sequence[int],
                  relu_ann: nn.Module | None = None, serial: bool = True, trains: bool = True) -> list[Case]:
    """The parasnn engines on one input batch ``(B, ...)``: the ANN with its own activations
    (``ann``), optionally a ReLU ANN (``relu_ann``), and at every T the parallel network,
    the parallel network with the spike trains ``(T, B, ...)`` of every neuron layer
    materialised (:func:`parasnn.simulation.forms.spike_trains`), and the serial simulation."""
    cases = [Case(ANN_QCFS, None, lambda: ann(inputs))]
    if relu_ann is not None:
        cases.append(Case(ANN_RELU, None, lambda: relu_ann(inputs)))
    for t in time_steps:
        cases.append(Case(PARALLEL, t, lambda t=t: network(inputs, time_steps=t)))
        if trains:
            cases.append(Case(TRAINS, t, lambda t=t: spike_trains(network, inputs, time_steps=t), grows_with_time=True))
        if serial:
            cases.append(Case(SERIAL, t, lambda t=t: serial_forward(network, inputs, time_steps=t),
                              grows_with_time=True))
    return cases


# --------------------------------------------------------------------------- machine and goals


def machine_info(device: torch.device | str, threads: int) -> dict:
    """What the numbers were measured on (stored with every report)."""
    device = torch.device(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    info = {"platform": platform.platform(), "python": sys.version.split()[0], "torch": torch.__version__,
            "cpu": cpu, "cpu_count": os.cpu_count(), "threads": threads, "device": str(device),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    if hasattr(os, "getloadavg"):
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


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


def _title(config: dict) -> str:
    parts = [str(config.get("model", "model")), f"batch {config.get('batch_size', '?')}"]
    if "input_shape" in config:
        parts.append("×".join(str(s) for s in config["input_shape"]))
    parts.append(f"{config.get('device', '?')}, {config.get('threads', '?')} threads, "
                 f"{config.get('clock', 'wall')} clock")
    return ", ".join(parts)


def _time_cell(m: Measurement | None, skip: Skip | None) -> str:
    if m is not None:
        s = m.seconds
        return f"{1e3 * s.median:.3g} ({1e3 * s.iqr:.2g})"
    return "skipped" if skip is not None else "–"


def markdown_report(results: Sequence[ConfigResult], *, machine: dict | None = None, command: str | None = None,
                    notes: Iterable[str] = ()) -> str:
    """Markdown tables: per configuration, median time per run in ms with the IQR in
    brackets, paired time ratios (median [q1–q3]), peak memory in MiB and memory ratios;
    then the goal checks and every skipped case with its reason."""
    lines = ["## Speed and memory", ""]
    if machine:
        lines.append(f"Measured on {machine.get('cpu')} ({machine.get('cpu_count')} cores"
                     + (f", GPU {machine['gpu']}" if "gpu" in machine else "") +
                     f"), torch {machine.get('torch')}, {machine.get('date')}"
                     + (f", load average at start {machine['load_average']}" if "load_average" in machine else "")
                     + (f", malloc {machine['malloc']}" if "malloc" in machine else "") + ".")
    if command:
        lines.append(f"Command: `{command}`.")
    lines += [f"{note}" for note in notes]
    lines.append("")
    for result in results:
        steps = result.time_steps()
        header = "| | " + " | ".join(f"T={t}" for t in steps) + " |"
        rule = "|---|" + "---:|" * len(steps)
        lines += [f"### {_title(result.config)}", "", "Time per batch, ms: median (IQR).", "", header, rule]
        skips = {(s.engine, s.time_steps): s for s in result.skipped}
        for engine in result.engines():
            independent = result.find(engine, None)
            if independent is not None and independent.time_steps is None:
                cells = [_time_cell(independent, None)] * len(steps)
            else:
                cells = [_time_cell(next((m for m in result.measurements if m.engine == engine and m.time_steps == t),
                                         None), skips.get((engine, t))) for t in steps]
            lines.append(f"| {engine} | " + " | ".join(cells) + " |")
        lines += ["", "Time ratios, paired per round: median [q1–q3]; memory ratio after the slash.", "",
                  header, rule]
        for spec in result.ratio_specs:
            cells = []
            for t in steps:
                summary = result.ratio(spec, t)
                memory = result.memory_ratio(spec, t)
                if summary is None:
                    cells.append("–")
                else:
                    cells.append(f"{summary.median:.3g} [{summary.q1:.3g}–{summary.q3:.3g}]"
                                 + (f" / {memory:.3g}" if memory is not None else ""))
            if any(cell != "–" for cell in cells):
                lines.append(f"| {spec.name} | " + " | ".join(cells) + " |")
        lines += ["", "Peak memory per run, MiB (tensors allocated during the run).", "", header, rule]
        for engine in result.engines():
            cells = []
            for t in steps:
                m = result.find(engine, t)
                cells.append(f"{m.peak_bytes / 2**20:.3g}" if m is not None else
                             ("skipped" if (engine, t) in skips else "–"))
            lines.append(f"| {engine} | " + " | ".join(cells) + " |")
        checks = goal_checks(result)
        if checks:
            verdicts = []
            for name in dict.fromkeys(c["goal"] for c in checks):
                failed = [str(c["time_steps"]) for c in checks if c["goal"] == name and not c["met"]]
                bound = next(c["bound"] for c in checks if c["goal"] == name)
                verdicts.append(f"{name} {bound if 'serial' not in name else '>= 0.8·T'}: "
                                + ("met at every T" if not failed else "NOT met at T=" + ",".join(failed)))
            lines += ["", "Goals: " + "; ".join(verdicts) + "."]
        if result.skipped:
            lines += ["", "Skipped:"]
            lines += [f"- {s.engine} T={s.time_steps}: {s.reason}" for s in result.skipped]
        lines.append("")
    return "\n".join(lines)


def _plot_name(config: dict, suffix: str) -> str:
    model = str(config.get("model", "model")).replace("/", "-")
    return f"{model}-b{config.get('batch_size', 'x')}-{suffix}.png"


def _engine_style(engine: str, engines: Sequence[str]) -> dict:
    """One colour per engine, the same in every plot; ANNs dashed."""
    import matplotlib.pyplot as plt
    order = list(PARASNN_ENGINES) + [e for e in engines if e not in PARASNN_ENGINES]
    style = {"color": plt.get_cmap("tab10")(order.index(engine) % 10)}
    if engine in (ANN_QCFS, ANN_RELU):
        style["linestyle"] = "--" if engine == ANN_QCFS else ":"
    return style


def _plot_against_time(result: ConfigResult, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    steps = result.time_steps()
    for engine in result.engines():
        points = [(t, result.find(engine, t)) for t in steps]
        points = [(t, m) for t, m in points if m is not None]
        if not points:
            continue
        style = _engine_style(engine, result.engines())
        if points[0][1].time_steps is None:  # T-independent: a horizontal line
            m = points[0][1]
            left.axhline(1e3 * m.seconds.median, label=engine, **style)
            right.axhline(m.peak_bytes / 2**20, label=engine, **style)
            continue
        ts = [t for t, _ in points]
        medians = [1e3 * m.seconds.median for _, m in points]
        lower = [1e3 * (m.seconds.median - m.seconds.q1) for _, m in points]
        upper = [1e3 * (m.seconds.q3 - m.seconds.median) for _, m in points]
        left.errorbar(ts, medians, yerr=[lower, upper], marker="o", capsize=3, label=engine, **style)
        right.plot(ts, [m.peak_bytes / 2**20 for _, m in points], marker="o", label=engine, **style)
    _finish(figure, left, right, x_label="time steps T", title=_title(result.config), path=path)


def _plot_against_batch(results: Sequence[ConfigResult], time_steps: int, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    engines = list(dict.fromkeys(e for r in results for e in r.engines()))
    for engine in engines:
        points = [(r.config["batch_size"], r.find(engine, time_steps)) for r in results]
        points = sorted((b, m) for b, m in points if m is not None)
        if not points:
            continue
        style = _engine_style(engine, engines)
        left.plot([b for b, _ in points], [1e3 * m.seconds.median for _, m in points], marker="o", label=engine,
                  **style)
        right.plot([b for b, _ in points], [m.peak_bytes / 2**20 for _, m in points], marker="o", label=engine,
                   **style)
    _finish(figure, left, right, x_label="batch size",
            title=f"{results[0].config.get('model')}, T={time_steps}, {results[0].config.get('device')}", path=path)


def _finish(figure, left, right, *, x_label: str, title: str, path: Path) -> None:
    """Log-log axes for time (left) and peak memory (right), legend, title; written atomically."""
    import matplotlib.pyplot as plt
    for axis, label in ((left, "time per batch (ms)"), (right, "peak memory (MiB)")):
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel(x_label)
        axis.set_ylabel(label)
        axis.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=110, format="png")
    plt.close(figure)


def write_report(results: Sequence[ConfigResult], out_dir: str | Path, *, machine: dict, command: str,
                 notes: Sequence[str] = (), plots: bool = True, batch_plot_time_steps: int | None = None
                 ) -> dict[str, Path]:
    """Write ``speed.json``, ``speed.md`` and PNG plots (time and memory against T per
    configuration; against batch size per model where several batch sizes were measured)
    into ``out_dir``. Returns the written paths by kind. Plots need matplotlib
    (``pip install 'parasnn[plots]'``); ``plots=False`` skips them."""
    from ..io.files import write_json, write_text  # atomic writes

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"machine": machine, "command": command, "notes": list(notes),
               "results": [r.to_dict() for r in results]}
    paths: dict[str, Path] = {"json": out_dir / "speed.json", "markdown": out_dir / "speed.md"}
    write_json(paths["json"], payload)
    write_text(paths["markdown"], markdown_report(results, machine=machine, command=command, notes=notes) + "\n")
    if plots:
        try:
            import matplotlib  # noqa: F401
        except ImportError as error:
            raise ImportError("plots need matplotlib: pip install 'parasnn[plots]' (or pass plots=False)") from error
        for index, result in enumerate(results):
            path = out_dir / _plot_name(result.config, "vs-T")
            _plot_against_time(result, path)
            paths[f"plot-T-{index}"] = path
        by_model: dict[str, list[ConfigResult]] = {}
        for result in results:
            by_model.setdefault(str(result.config.get("model")), []).append(result)
        for model, group in by_model.items():
            if len({r.config.get("batch_size") for r in group}) < 2:
                continue
            common = set.intersection(*(set(r.time_steps()) for r in group))
            if not common:
                continue
            t = batch_plot_time_steps if batch_plot_time_steps in common else max(common)
            path = out_dir / f"{model.replace('/', '-')}-vs-batch-T{t}.png"
            _plot_against_batch(group, t, path)
            paths[f"plot-batch-{model}"] = path
    return paths

