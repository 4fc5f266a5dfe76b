"""Speed and memory of a spiking network against its ANN, measured in one process (this module:
timing; :mod:`.memory`: peak memory; :mod:`.results`: what is kept; :mod:`.report`: Markdown and
plots — all re-exported here under their parasnn 0.1 names).

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
import datetime
import math
import os
import platform
import random
import sys
import time
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from ..conversion.network import SpikingNetwork, synchronize
from ..neurons.base import ActivationQuantizer
from ..simulation.forms import serial_forward, spike_trains
from .memory import keep_freed_cpu_memory, peak_memory
from .report import markdown_report, write_report
from .results import (ANN_QCFS, ANN_RELU, GOALS, PARALLEL, PARASNN_ENGINES, PARASNN_RATIOS, SERIAL, TRAINS, Case,
                      ConfigResult, Measurement, RatioSpec, Skip, Summary, goal_checks, summarize)

__all__ = ["Case", "Skip", "Summary", "Measurement", "ConfigResult", "RatioSpec", "PARASNN_RATIOS", "GOALS",
           "summarize", "peak_memory", "measure", "CLOCKS", "relu_twin", "parasnn_cases", "machine_info", "goal_checks",
           "markdown_report", "write_report", "PARASNN_ENGINES", "keep_freed_cpu_memory"]


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


def parasnn_cases(*, ann: nn.Module, network: SpikingNetwork, inputs: Tensor | tuple[Tensor, ...],
                  time_steps: Sequence[int], relu_ann: nn.Module | None = None, serial: bool = True,
                  trains: bool = True) -> list[Case]:
    """The parasnn engines on one input batch ``(B, ...)`` (or a tuple of the model's inputs,
    e.g. a transformer's ``(ids, mask)``): the ANN with its own activations (``ann``),
    optionally a ReLU ANN (``relu_ann``), and at every T the parallel network, the parallel
    network with the spike trains ``(T, B, ...)`` of every neuron layer materialised
    (:func:`parasnn.simulation.forms.spike_trains`), and the serial simulation."""
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    cases = [Case(ANN_QCFS, None, lambda: ann(*inputs))]
    if relu_ann is not None:
        cases.append(Case(ANN_RELU, None, lambda: relu_ann(*inputs)))
    for t in time_steps:
        cases.append(Case(PARALLEL, t, lambda t=t: network(*inputs, time_steps=t)))
        if trains:
            cases.append(Case(TRAINS, t, lambda t=t: spike_trains(network, *inputs, time_steps=t),
                              grows_with_time=True))
        if serial:
            cases.append(Case(SERIAL, t, lambda t=t: serial_forward(network, *inputs, time_steps=t),
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
