"""The benchmark code at a tiny size, so it cannot rot: memory accounting, interleaved timing
with skips and reasons, the baselines' agreement with parasnn, the reports, the
regeneration of docs/results.md, the accuracy-table registry and ``parasnn bench``. Real timings only in
``make bench``."""
import json
import sys
from pathlib import Path

import pytest
import torch

from parasnn.bench import measure as bench
from parasnn.io.checkpoint import save_ann
from parasnn.cli import main as cli_main
from parasnn.conversion.stages import convert
from parasnn.zoo.models import ActivationKind, ActivationSpec, ModelSpec, build_model
from parasnn.simulation.forms import serial_forward

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import ablation_seeds  # noqa: E402
import accuracy_table  # noqa: E402
import baselines  # noqa: E402
import merge_accuracy  # noqa: E402
import speed  # noqa: E402
import update_readme  # noqa: E402


def tiny_model(kind="qcfs", seed=0):
    spec = ModelSpec(name="vgg-small", input_shape=(1, 28, 28), num_classes=10, width=4,
                     activation=ActivationSpec(kind=kind, levels=4, threshold=1.0))
    torch.manual_seed(seed)
    return build_model(spec).eval(), spec


def test_peak_memory_counts_live_tensors_only():
    def run():
        a = torch.ones(256, 256)  # 256 KiB
        b = a * 2  # 512 KiB live
        del a
        b.add_(1)  # in place: no new storage
        view = b.view(-1)  # a view: no new storage
        c = view + 1  # 512 KiB live again (b and c)
        del b, view
        return c.sum()

    assert bench.peak_memory(run, device="cpu") == 2 * 256 * 256 * 4
    weights = torch.ones(1024, 1024)  # allocated before: never counted
    assert bench.peak_memory(lambda: weights.sum(), device="cpu") == 4


def test_summary_and_paired_ratio():
    summary = bench.summarize([4.0, 1.0, 3.0, 2.0, 5.0])
    assert (summary.median, summary.q1, summary.q3, summary.count) == (3.0, 2.0, 4.0, 5)
    result = bench.ConfigResult({}, [bench.Measurement("a", None, [1.0, 2.0, 4.0], 1, 10),
                                     bench.Measurement("b", 2, [2.0, 2.0, 2.0], 1, 30)], [],
                                (bench.RatioSpec("b", "a"),))
    ratio = result.ratio(bench.RatioSpec("b", "a"), 2)
    assert ratio.median == 1.0 and ratio.q1 == 0.75 and ratio.q3 == 1.5  # per round: 2, 1, 0.5
    assert result.memory_ratio(bench.RatioSpec("b", "a"), 2) == 3.0


def test_growing_engines_are_skipped_with_a_reason_and_parallel_never():
    model, _ = tiny_model()
    network = convert(model)
    x = torch.randn(2, 1, 28, 28)
    cases = bench.parasnn_cases(ann=model, relu_ann=bench.relu_twin(model), network=network, inputs=x,
                                time_steps=[1, 2, 4])
    result = bench.measure(cases, config={"model": "tiny", "batch_size": 2}, device="cpu", threads=1, rounds=2,
                           min_block_seconds=0.0, cap_seconds=1e-9, clock="cpu")
    skipped = {(s.engine, s.time_steps): s.reason for s in result.skipped}
    for engine in (bench.SERIAL, bench.TRAINS):
        assert result.find(engine, 1) is not None  # the first T is always measured
        for t in (2, 4):
            assert "cap" in skipped[(engine, t)] and "T=1" in skipped[(engine, t)]
        assert skipped[(engine, 2)] != skipped[(engine, 4)]  # each T its own estimate
    assert all(result.find(bench.PARALLEL, t) is not None for t in (1, 2, 4))
    assert all(len(m.rounds) == 2 for m in result.measurements)
    data = result.to_dict()
    assert {s["engine"] for s in data["skipped"]} == {bench.SERIAL, bench.TRAINS}
    assert all(s["reason"] for s in data["skipped"])
    assert data["config"]["clock"] == "cpu"
    with pytest.raises(ValueError, match="clock"):
        bench.measure(cases, config={}, device="cpu", threads=1, clock="sundial")


def test_baselines_agree_with_parasnn():
    model, _ = tiny_model()
    network = convert(model)
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        for t in (1, 3):
            folded = baselines.run_folded(baselines.folded_network(model, time_steps=t), x, time_steps=t)
            assert torch.allclose(folded, network(x, time_steps=t), atol=1e-5)


def _spikingjelly_missing() -> str | None:
    try:
        baselines.require_spikingjelly()
    except ImportError as error:
        return str(error)
    return None


@pytest.mark.skipif(_spikingjelly_missing() is not None, reason=str(_spikingjelly_missing()))
@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.script inside SpikingJelly
def test_spikingjelly_corrected_equals_serial_and_as_shipped_does_not():
    model, _ = tiny_model()
    network = convert(model)
    x = torch.randn(16, 1, 28, 28)
    corrected = baselines.spikingjelly_network(model, [(x, None)])
    shipped = baselines.spikingjelly_network(model, [(x, None)], qcfs_thresholds=False, half_threshold_start=False)
    with torch.no_grad():
        serial = serial_forward(network, x, time_steps=4)
        assert torch.allclose(baselines.run_spikingjelly(corrected, x, time_steps=4), serial, atol=1e-4)
        assert not torch.allclose(baselines.run_spikingjelly(shipped, x, time_steps=4), serial, atol=1e-2)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_speed_benchmark_writes_every_engine_ratio_and_plot(tmp_path):
    has_sj = True
    try:
        baselines.require_spikingjelly()
    except ImportError:
        has_sj = False
    speed.main(["--models", "vgg-small", "--width", "4", "--batch-sizes", "2", "--batch-sizes-for", "vgg-small=1,2",
                "--time-steps", "2", "--rounds", "2", "--min-block-seconds", "0", "--threads", "1",
                "--out", str(tmp_path)])
    report = json.loads((tmp_path / "speed.json").read_text())
    assert report["machine"]["threads"] == 1 and report["command"].startswith("python benchmarks/speed.py")
    assert [r["config"]["batch_size"] for r in report["results"]] == [1, 2]
    engines = {"ann", "ann-relu", "parallel", "parallel-fused", "parallel+trains", "serial", "folded"} | \
        ({"spikingjelly"} if has_sj
                                                                                       else set())
    for result in report["results"]:
        measured = {(m["engine"], m["time_steps"]) for m in result["measurements"]}
        assert {e for e, _ in measured} == engines
        assert all(m["peak_bytes"] > 0 and m["seconds"]["median"] > 0 for m in result["measurements"])
        ratios = {r["name"] for r in result["ratios"]}
        expected = {"parallel/ann", "parallel/ann-relu", "serial/parallel", "parallel+trains/parallel",
                    "folded/parallel", "parallel-fused/ann-relu", "parallel-fused/parallel",
                    "serial/parallel-fused"} | ({"spikingjelly/parallel", "spikingjelly/serial"} if has_sj else set())
        assert ratios == expected
        assert {g["goal"] for g in result["goals"]} == {"parallel/ann time", "serial/parallel time",
                                                        "parallel/ann memory"}
    markdown = (tmp_path / "speed.md").read_text()
    assert "parallel/ann" in markdown and "T=2" in markdown
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == ["vgg-small-b1-vs-T.png", "vgg-small-b2-vs-T.png", "vgg-small-vs-batch-T2.png"]


def test_readme_section_is_replaced_between_markers_only():
    text = f"# title\n\nintro\n{update_readme.START}\nold\n{update_readme.END}\nafter\n"
    new = update_readme.replace_section(text, "new\n")
    assert new == f"# title\n\nintro\n{update_readme.START}\nnew\n{update_readme.END}\nafter\n"
    assert update_readme.replace_section(new, "new\n") == new
    with pytest.raises(ValueError, match="markers"):
        update_readme.replace_section("# no markers\n", "x\n")
    assert update_readme.replace_section("# t\n", "x\n", append=True).endswith(
        f"{update_readme.START}\nx\n{update_readme.END}\n")



def test_results_page_is_regenerated_with_figures_next_to_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    speed_json = tmp_path / "speed.json"
    speed_json.write_text(json.dumps({"results": []}))
    source = tmp_path / "run" / "speed" / "plot.png"
    source.parent.mkdir(parents=True)
    source.write_bytes(b"not really a png")
    # The default target is docs/results.md; without it (and without --append) a clear error.
    assert update_readme.main(["--speed", str(speed_json)]) == 2
    results = tmp_path / "docs" / "results.md"
    results.parent.mkdir()
    results.write_text(f"# Results\n\nhand-written\n{update_readme.START}\nold\n{update_readme.END}\nnotes\n")
    assert update_readme.main(["--speed", str(speed_json), f"--figure={source}"]) == 0
    text = results.read_text()
    assert text.startswith("# Results\n\nhand-written\n") and text.endswith(f"{update_readme.END}\nnotes\n")
    assert "old" not in text and "](figures/run-speed-plot.png)" in text
    assert (tmp_path / "docs" / "figures" / "run-speed-plot.png").read_bytes() == b"not really a png"
    assert update_readme.main(["--speed", str(speed_json), f"--figure={source}", "--check"]) == 0

def _tiny_context(kind: str):
    model, spec = tiny_model(kind)
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(16, 1, 28, 28, generator=generator), torch.randint(0, 10, (16,), generator=generator))
               for _ in range(2)]
    return accuracy_table.Context("tiny", model, spec, batches, batches, torch.device("cpu"), reference=model)


@pytest.mark.parametrize("kind", ["qcfs", "relu", "signed"])
def test_accuracy_table_runs_every_registered_default_row(kind):
    context = _tiny_context(kind)
    table = accuracy_table.build_table(context, methods=accuracy_table.DEFAULT_METHODS, time_steps=[1, 4])
    rows = {(r["method"], r["time_steps"]): r for r in table["rows"]}
    assert set(rows) == {(m, t) for m in accuracy_table.DEFAULT_METHODS for t in (1, 4)}
    assert table["reference"]["accuracy"] == table["ann"]["accuracy"]  # the reference is the model itself here
    ran = {key for key, r in rows.items() if "skipped" not in r}
    for key, r in rows.items():
        applies = ActivationKind(kind) in accuracy_table.ROWS[key[0]].applies_to
        if not applies:
            assert r["skipped"].startswith("applies to"), key
        elif key == ("pascal", 1):  # PASCAL's timing is the layers' L: one cell, at T = L
            assert "own L" in r["skipped"]
        else:
            assert key in ran, (key, r.get("skipped"))
            assert 0 <= r["accuracy"] <= 1 and r["samples"] == 32
            assert r["loss"] == pytest.approx(table["ann"]["accuracy"] - r["accuracy"])
            assert r["firing_rate"] is not None and r["energy_ratio"] > 0
    if kind == "qcfs":
        # At T = L the parallel network is the QCFS ANN itself, and PASCAL's serial one too.
        assert rows[("fs-pc-parallel", 4)]["loss"] == 0
        assert rows[("pascal", 4)]["loss"] == 0 and "T_eff" in rows[("pascal", 4)]["note"]
        assert {m for m, _ in ran} == {"qcfs-serial", "fs-pc-parallel", "fs-pc-dagger", "full", "full-dagger",
                                       "full-distilled", "pascal"}
    elif kind == "relu":  # the rows of per-channel thresholds too
        assert {m for m, _ in ran} == {"qcfs-serial", "fs-pc-parallel", "fs-pc-channel", "fs-pc-dagger", "full",
                                       "full-dagger", "full-dagger-channel", "full-distilled"}
    else:  # PMSM equals its quantized ANN at T = 1
        assert rows[("pmsm-parallel", 1)]["loss"] == 0 and rows[("pmsm-serial", 1)]["loss"] == 0
        assert {m for m, _ in ran} == {"pmsm-parallel", "pmsm-serial"}
    markdown = accuracy_table.markdown_table(table)
    assert "T=4" in markdown and "full-precision ANN" in markdown
    assert all(f"| {m} |" in markdown for m, _ in ran)
    section = update_readme.results_section(accuracy={"tables": [table], "machine": {}, "command": "x"}, speed=None)
    assert "## Measured results" in section and next(iter(ran))[0] in section


def test_tables_of_separate_runs_merge_into_the_table_of_one_run(tmp_path):
    context = _tiny_context("relu")
    methods = ["fs-pc-parallel", "qcfs-serial", "fs-pc-channel"]
    whole = accuracy_table.build_table(context, methods=methods, time_steps=[1, 4])
    paths = []
    for steps in ([4], [1]):  # the later T first: the merge orders rows itself
        table = accuracy_table.build_table(context, methods=methods, time_steps=steps)
        paths.append(tmp_path / f"T{steps[0]}.json")
        paths[-1].write_text(json.dumps({"machine": {}, "command": f"run {steps}", "tables": [table], "missing": []}))
    assert merge_accuracy.main([*map(str, paths), "--out", str(tmp_path / "merged")]) == 0
    merged = json.loads((tmp_path / "merged" / "accuracy.json").read_text())
    (table,) = merged["tables"]
    order = list(accuracy_table.ROWS)
    key = lambda r: (order.index(r["method"]), r["time_steps"])  # noqa: E731
    strip = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731  (timings differ per run)
    assert [strip(r) for r in table["rows"]] == [strip(r) for r in sorted(whole["rows"], key=key)]
    assert merged["commands"] == ["run [4]", "run [1]"]
    assert (tmp_path / "merged" / "accuracy.md").read_text() == accuracy_table.markdown_table(table)
    # Runs of different networks (another ANN accuracy) are refused by name.
    other = json.loads(paths[0].read_text())
    other["tables"][0]["ann"] = {**other["tables"][0]["ann"], "accuracy": 0.5}
    paths[0].write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="tiny.*disagree on the ANN"):
        merge_accuracy.main([*map(str, paths), "--out", str(tmp_path / "refused")])


@pytest.mark.parametrize("kind", ["qcfs", "signed"])  # a signed network is converted with PMSM neurons
def test_parasnn_bench_command(tmp_path, kind):
    model, spec = tiny_model(kind)
    checkpoint = save_ann(tmp_path / "model.pt", model, spec)
    out = tmp_path / "bench"
    assert cli_main(["bench", str(checkpoint), "--time-steps", "2", "--batch-sizes", "2", "--rounds", "1",
                     "--min-block-seconds", "0", "--threads", "1", "--no-plots", "--out", str(out)]) == 0
    report = json.loads((out / "speed.json").read_text())
    (result,) = report["results"]
    assert {m["engine"] for m in result["measurements"]} == set(bench.PARASNN_ENGINES)
    assert result["config"]["checkpoint"] == str(checkpoint)


def _ablation(seed_accuracies: dict[tuple[int, str], float], discordant: dict | None = None) -> dict:
    """An ablation.json; ``discordant[(better, worse)] = [only better right, only worse right]``."""
    losses = {"baseline": 1.0, "spatial": 0.5, "temporal": 0.6, "full": 0.4}
    cells = [{"time_steps": t, "da": False, "variant": v, "accuracy": a, "test_loss": losses[v],
              **({"discordant": {w: discordant[(v, w)] for (b, w) in discordant if b == v}} if discordant else {})}
             for (t, v), a in seed_accuracies.items()]
    cells.append({"time_steps": 2, "da": True, "variant": "full", "accuracy": 0.0})  # † cells are not summarised
    return {"ann": {"accuracy": 0.9, "samples": 10000}, "cells": cells}


def test_ablation_paired_verdict_separates_ties_from_failures():
    accuracies = {(2, "baseline"): 0.5, (2, "spatial"): 0.8, (2, "temporal"): 0.8, (2, "full"): 0.8}
    # full vs temporal: −10 images of 10 000 with 190 discordant → −0.10 ± ~0.14 points: a tie;
    # −100 of 100 discordant → −1.00 ± 0: a failure.
    tie = {("full", "spatial"): [30, 10], ("full", "temporal"): [90, 100], ("spatial", "baseline"): [3000, 0],
           ("temporal", "baseline"): [3000, 0]}
    fail = dict(tie) | {("full", "temporal"): [0, 100]}
    for discordant, expected, verdict in ((tie, "tie", "yes, within noise"), (fail, "fails", "no")):
        summary = ablation_seeds.summarise({0: _ablation(accuracies, discordant),
                                            1: _ablation(accuracies, discordant)})
        paired = summary["rows"][0]["paired"]
        entry = paired["full-temporal"]
        assert entry["verdict"] == expected and entry["seed_error"] == 0
        assert entry["mean"] == pytest.approx((discordant[("full", "temporal")][0]
                                               - discordant[("full", "temporal")][1]) / 10000)
        assert paired["full-spatial"]["verdict"] == "holds" and paired["spatial-baseline"]["mean"] == 0.3
        assert ablation_seeds.paired_verdict(paired) == verdict
        assert f"| {verdict} |" in ablation_seeds.markdown(summary, title="t")
    # Without recorded counts (an older ablation.json) the paired table is left out.
    assert ablation_seeds.summarise({0: _ablation(accuracies)})["rows"][0]["paired"] is None


def test_ablation_summary_reports_mean_spread_and_the_promised_order():
    good = {(2, "baseline"): 0.5, (2, "spatial"): 0.8, (2, "temporal"): 0.82, (2, "full"): 0.85}
    bad = {(2, "baseline"): 0.5, (2, "spatial"): 0.8, (2, "temporal"): 0.9, (2, "full"): 0.85}  # full < temporal
    summary = ablation_seeds.summarise({0: _ablation(good), 1: _ablation(bad)})
    (row,) = summary["rows"]
    assert row["ordered_per_seed"] == [True, False]
    assert row["mean"]["temporal"] == pytest.approx(0.86) and row["stdev"]["baseline"] == 0
    assert row["ordered_on_mean"] is False  # 0.85 < 0.86
    text = ablation_seeds.markdown(summary, title="t")
    assert "seeds: 1/2" in text and "86.00 ± 5.66 (-4.00)" in text
    assert row["loss_ordered_on_mean"] is True and "| 2 | 1.0000 | 0.5000 | 0.6000 | 0.4000 | yes |" in text
    section = update_readme.results_section(accuracy=None, speed=None, includes=[text])
    assert "### t" in section


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").exists(),
                    reason="/usr/share/datasets/fashion-mnist is absent (sudo apt-get install dataset-fashion-mnist)")
def test_calibration_cost_parts_add_up_to_the_whole():
    import calibration_cost
    from parasnn.calibration.config import BiasConfig, CalibrationConfig

    config = CalibrationConfig(time_steps=2, statistics_size=128, bias=BiasConfig(validation_interval=2))
    result = calibration_cost.calibration_cost(time_steps=2, calibration_size=64, train_limit=2, training_size=192,
                                               config=config)
    parts = result["parts_in_epochs"]
    assert list(parts) == ["convert", "held-out fs-pc", "da", "held-out da", "bn", "bn statistics", "held-out bn",
                           "bias", "bias held-out", "held-out bias"]
    assert all(value >= 0 for value in parts.values())
    # the parts are the calibration, less only what lies between them (moving batches, building
    # the report); at this tiny size that remainder is not negligible, at a real one it is
    in_parts, whole = sum(parts.values()) * result["epoch"]["cpu_seconds"], result["calibrate"]["cpu_seconds"]
    assert 0.6 * whole <= in_parts <= 1.01 * whole + 0.02
    history = result["bias_validations"]
    assert [entry["step"] for entry in history] == [0, 2, 3] and all("accuracy" in entry for entry in history)
