"""benchmarks/layer_errors.py on the shipped network and a residual one, so that the numbers it
reports (issue 14's per-layer diagnosis) keep meaning what they say."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from parasnn.conversion.stages import convert
from parasnn.io.checkpoint import save_snn
from parasnn.zoo.models import ActivationKind, ActivationSpec, ModelSpec, build_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import layer_errors  # noqa: E402

ASSET = Path(__file__).resolve().parents[1] / "src" / "parasnn" / "assets" / "fashion_mnist_vgg_small_qcfs.pt"


def test_parallel_is_exact_at_t_equal_l_and_serial_is_not(tmp_path):
    from parasnn.io.checkpoint import load_ann
    model, spec, _ = load_ann(ASSET)
    snn = tmp_path / "fspc.pt"
    save_snn(snn, convert(model), spec, method="fs-pc", from_relu=False)
    result = layer_errors.layer_errors(str(ASSET), str(snn), time_steps=4, images=64)
    assert result["images"] == 64
    rows = result["layers"]
    assert [row["layer"] for row in rows][-1] == "logits" and len(rows) == 8
    assert all(row["parallel"] == 0.0 for row in rows)  # FS-PC at T = L is the QCFS ANN, bit for bit
    assert rows[0]["serial"] == 0.0  # the first layer's current is constant in time: serial = parallel
    assert all(row["serial"] > 0 for row in rows[1:])
    assert result["accuracy"]["parallel"] == result["accuracy"]["ann"]
    assert not any(row["residual_input"] for row in rows)


def test_residual_sums_are_found():
    spec = ModelSpec(name="resnet20", input_shape=(1, 28, 28), num_classes=10, width=4,
                     activation=ActivationSpec(kind=ActivationKind.QCFS, levels=4, threshold=1.0))
    torch.manual_seed(0)
    network = convert(build_model(spec).eval())
    flags = layer_errors._residual_inputs(network)
    assert set(flags) == {path for path, _ in network.neurons()}
    # ResNet-20: a stem neuron, then 9 blocks of two neurons, the second after the residual add
    assert sum(flags.values()) == 9 and len(flags) == 19
