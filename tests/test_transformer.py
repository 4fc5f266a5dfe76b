"""Transformers and modern CNNs convert: fitted multi-basis neurons, products of
activations, decompositions of softmax, layer norm and attention (docs/maths.md §7)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from parasnn import convert, parallel_forward, serial_forward
from parasnn.conversion.decompositions import (DecomposedAttention, DecomposedEinsum, DecomposedLayerNorm,
                                               DecomposedLayerNormFunction, DecomposedMultiheadAttention,
                                               DecomposedSoftmax)
from parasnn.conversion.expand import expand_operations
from parasnn.conversion.graph import check_convertible, trace
from parasnn.conversion.stages import ConversionConfig
from parasnn.neurons.function_neuron import FunctionNeuron
from parasnn.neurons.product_layer import SpikingProduct
from parasnn.neurons.qcfs import QCFS
from parasnn.simulation.forms import serial_simulation


@pytest.fixture(autouse=True)
def fit_cache(tmp_path_factory, monkeypatch):
    """One fit cache for this module's tests (fits are reused, as users' are)."""
    monkeypatch.setenv("PARASNN_CACHE", str(tmp_path_factory.getbasetemp() / "parasnn-cache"))


def test_decompositions_compute_what_the_operations_compute():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 8)
    torch.testing.assert_close(DecomposedSoftmax(-1)(x), torch.softmax(x, -1))
    norm = nn.LayerNorm(8)
    nn.init.normal_(norm.weight), nn.init.normal_(norm.bias)
    torch.testing.assert_close(DecomposedLayerNorm(norm)(x), norm(x))
    for batch_first in (True, False):
        attention = nn.MultiheadAttention(8, 2, batch_first=batch_first).eval()
        y = x if batch_first else x.transpose(0, 1)
        padding = torch.zeros(3, 5, dtype=torch.bool)
        padding[0, -2:] = True
        expected = attention(y, y, y, key_padding_mask=padding, need_weights=False)[0]
        got = DecomposedMultiheadAttention(attention)(y, y, y, key_padding_mask=padding, need_weights=False)[0]
        torch.testing.assert_close(got, expected)
    q, k, v = torch.randn(3, 2, 5, 4), torch.randn(3, 2, 5, 4), torch.randn(3, 2, 5, 4)
    torch.testing.assert_close(DecomposedAttention()(q, k, v), F.scaled_dot_product_attention(q, k, v))
    torch.testing.assert_close(DecomposedAttention(is_causal=True)(q, k, v),
                               F.scaled_dot_product_attention(q, k, v, is_causal=True))


@pytest.mark.parametrize("equation,left,right", [
    ("B G H I D, B G H J D -> B G H I J", (2, 3, 2, 5, 4), (2, 3, 2, 6, 4)),  # MaxViT's q·kᵀ
    ("BGHIJ,BGHJD->BGHID", (2, 3, 2, 5, 6), (2, 3, 2, 6, 4)),  # and ·v
    ("ij,jk->ik", (3, 4), (4, 5)), ("bij,bkj->bki", (2, 3, 4), (2, 5, 4)),
    ("ijx,jk->ki", (3, 4, 2), (4, 5)),  # x summed out first
    ("i,j->ij", (3,), (4,)), ("ij,ij->i", (3, 4), (3, 4))])
def test_einsum_of_two_operands_decomposes_into_one_matrix_product(equation, left, right):
    torch.manual_seed(0)
    a, b = torch.randn(left), torch.randn(right)
    torch.testing.assert_close(DecomposedEinsum()(equation, a, b), torch.einsum(equation, a, b))
    with pytest.raises(ValueError, match="diagonal"):
        DecomposedEinsum()("ii,ij->j", torch.randn(3, 3), torch.randn(3, 4))


def test_layer_norm_function_decomposes():
    torch.manual_seed(0)
    x, weight, bias = torch.randn(2, 5, 6, 7), torch.randn(6, 7), torch.randn(6, 7)
    torch.testing.assert_close(DecomposedLayerNormFunction()(x, [6, 7], weight, bias, 1e-6),
                               F.layer_norm(x, [6, 7], weight, bias, 1e-6))
    torch.testing.assert_close(DecomposedLayerNormFunction()(x, [7]), F.layer_norm(x, [7]))


class TwoSpikingOperands(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(6, 8)
        self.q1, self.q2 = QCFS(levels=4, threshold=1.0), QCFS(levels=4, threshold=1.0)

    def forward(self, x):  # (B, 6) -> (B, 2, 2): a bmm of two activations
        a, b = self.q1(self.fc1(x)).view(-1, 2, 4), self.q2(self.fc2(x)).view(-1, 4, 2)
        return torch.bmm(a, b) + a[:, :, :2] * b[:, :2, :]


def test_products_of_two_spiking_tensors_equal_the_products_of_their_values():
    torch.manual_seed(1)
    model = TwoSpikingOperands().eval()
    x = torch.randn(5, 6)
    network = convert(model)
    products = [m for m in network.graph_module.modules() if isinstance(m, SpikingProduct)]
    assert len(products) == 2
    assert torch.equal(parallel_forward(network, x, time_steps=4), model(x))  # T = L: exact
    for steps in (2, 4, 7):
        torch.testing.assert_close(serial_forward(network, x, time_steps=steps),
                                   parallel_forward(network, x, time_steps=steps), rtol=1e-5, atol=1e-6)


class TinyTransformer(nn.Module):
    """One pre-norm block: attention (explicit products and softmax), a GELU MLP."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.embed = nn.Linear(4, width)
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))
        self.head = nn.Linear(width, 3)

    def forward(self, x):  # (B, L, 4)
        h = self.embed(x)
        q, k, v = self.qkv(self.norm1(h)).chunk(3, dim=-1)
        attention = torch.softmax(q @ k.transpose(-2, -1) * q.size(-1) ** -0.5, dim=-1)
        h = h + attention @ v
        h = h + self.mlp(self.norm2(h))
        return self.head(h.mean(1))


def _error(network, model, x, steps):
    return float((parallel_forward(network, x, time_steps=steps) - model(x)).abs().mean())


def test_a_tiny_transformer_converts_and_its_output_converges_to_the_ann():
    torch.manual_seed(0)
    model = TinyTransformer().eval()
    data = [torch.randn(16, 5, 4)]
    x = torch.randn(8, 5, 4)
    coarse = convert(model, calibration_data=data, config=ConversionConfig(bases=1, function_time_steps=(2,)))
    fine = convert(model, calibration_data=data, config=ConversionConfig(bases=4, function_time_steps=(8,)))
    kinds = [m.function.value for m in fine.graph_module.modules() if isinstance(m, FunctionNeuron)]
    assert sorted(set(kinds)) == ["exp", "gelu", "reciprocal", "rsqrt"]
    assert sum(isinstance(m, SpikingProduct) for m in fine.graph_module.modules()) >= 4  # q·kᵀ, ·v, squares, scaling
    scale = float(model(x).abs().mean())
    assert _error(fine, model, x, 8) < _error(coarse, model, x, 2)
    assert _error(fine, model, x, 8) < 0.05 * scale
    with pytest.raises(ValueError, match="fitted for T in \\[8\\]"):
        parallel_forward(fine, x, time_steps=4)
    # serial: causal, equal to the parallel form at T up to rounding; the neurons' spikes are counted
    result = serial_simulation(fine, x, time_steps=8)
    torch.testing.assert_close(result.output, parallel_forward(fine, x, time_steps=8), rtol=1e-3, atol=1e-4)
    assert any(float(count.sum()) > 0 for count in result.spike_counts.values())


@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "vit_b_16", "swin_t",
                                  "convnext_tiny", "maxvit_t"])
def test_torchvision_networks_have_a_rule_for_every_operation(name):
    models = pytest.importorskip("torchvision.models")
    model = getattr(models, name)().eval()
    graph = expand_operations(trace(model))
    check_convertible(graph, model_name=name)  # raises, listing what no rule claims


def test_mobilenet_v2_converts_with_relu6_sites():
    models = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    model = models.mobilenet_v2(width_mult=0.25).eval()
    x = torch.randn(2, 3, 64, 64)
    network = convert(model, calibration_data=[x])
    assert len(list(network.neurons())) == 35  # every ReLU6 is a neuron
    assert parallel_forward(network, x, time_steps=8).shape == (2, 1000)


def test_a_converted_transformer_saves_and_loads_bit_exactly_in_a_fresh_process(tmp_path):
    import os
    import subprocess
    import sys

    import parasnn
    torch.manual_seed(0)
    model = TinyTransformer().eval()
    network = convert(model, calibration_data=[torch.randn(8, 5, 4)],
                      config=ConversionConfig(bases=2, function_time_steps=(4,)))
    x = torch.randn(3, 5, 4)
    torch.save({"x": x, "expected": parallel_forward(network, x, time_steps=4)}, tmp_path / "io.pt")
    parasnn.save(network, tmp_path / "snn")
    check = (f"import torch, parasnn; data = torch.load({str(tmp_path / 'io.pt')!r}); "
             f"net = parasnn.load({str(tmp_path / 'snn')!r}); "
             "assert torch.equal(parasnn.parallel_forward(net, data['x'], time_steps=4), data['expected'])")
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert result.returncode == 0, result.stderr[-2000:]
