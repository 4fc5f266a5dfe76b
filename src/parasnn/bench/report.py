"""Benchmark reports: the Markdown tables (milliseconds and MiB) and the plots against T and
against batch size, written next to the JSON by :func:`write_report`."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

from ..io.files import atomic_path
from .results import ANN_QCFS, ANN_RELU, PARASNN_ENGINES, ConfigResult, Measurement, Skip, goal_checks

__all__ = ["markdown_report", "write_report"]


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
