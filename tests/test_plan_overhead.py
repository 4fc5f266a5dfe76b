"""benchmarks/plan_overhead.py at a tiny size, so it cannot rot: its variants of the compiled
plan do the work they claim (the ReLU variant computes the ReLU network, the nested one the
fused network's output) and the report has every case."""
import sys
from pathlib import Path

import pytest
import torch

from parasnn.conversion.stages import convert
from parasnn.neurons import fused
from parasnn.simulation.compiled import fuse

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import plan_overhead  # noqa: E402


@pytest.fixture(scope="module")
def kernels():
    built = fused.cpu_kernels()
    assert built is not None, "the fused CPU kernels must build on the test machine (gcc + ninja)"
    return built


def test_plan_variants_compute_what_they_stand_for(kernels):
    model, relu = plan_overhead.networks("vgg-small", 0)
    network = convert(model)
    fast = fuse(network)
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = fast(x, time_steps=4)
        plan = next(reversed(fast._plans.values()))
        assert torch.equal(plan_overhead.nested_plan(plan, fast.graph_module)(4, x), expected)
        with_relu = plan_overhead.relu_plan(plan)
        assert not any("_forward" in getattr(node.target, "__name__", "") for node in with_relu.graph.nodes)
        torch.testing.assert_close(with_relu.forward(4, x), relu(x), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(with_relu.forward(4, x), expected)  # it is not the spiking network


def test_report_lists_every_case(kernels, capsys):
    assert plan_overhead.main(["--model", "vgg-small", "--rounds", "1", "--block-seconds", "0.001"]) == 0
    out = capsys.readouterr().out
    for case in ("ann-relu", "parallel-fused", "| plan |", "plan, relu_", "plan, nested", "checks", "torch.relu_",
                 "fused kernel (in place)", "nn.ReLU(inplace=True)"):
        assert case in out
