"""The small vision transformer of parasnn.zoo.vit: shapes, exact fx trace, and that it learns."""
import pytest
import torch
from torch import nn

from parasnn.zoo.vit import VisionTransformer, vit_tiny


@pytest.mark.parametrize("shape, tokens", [((1, 28, 28), 16), ((3, 32, 32), 64)])
def test_vit_tiny_shapes_and_bit_equal_trace(shape, tokens):
    torch.manual_seed(0)
    model = vit_tiny(shape, num_classes=7).eval()
    assert model.position.shape == (1, tokens, 64)
    images = torch.randn(5, *shape)
    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        logits = model(images)
        assert logits.shape == (5, 7)
        assert torch.equal(traced(images), logits)
    called = [type(traced.get_submodule(node.target)) for node in traced.graph.nodes if node.op == "call_module"]
    assert called.count(nn.GELU) == 4 and called.count(nn.LayerNorm) == 9 and called.count(nn.Conv2d) == 1
    assert sum(node.target is torch.softmax for node in traced.graph.nodes) == 4


def test_vit_learns_a_small_batch():
    torch.manual_seed(0)
    model = vit_tiny((1, 28, 28), num_classes=2)
    images = torch.randn(8, 1, 28, 28)
    labels = (images[:, 0, :14].mean(dim=(1, 2)) > images[:, 0, 14:].mean(dim=(1, 2))).long()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        loss = nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_vit_rejects_sizes_the_patches_do_not_tile():
    with pytest.raises(ValueError, match="multiples of patch_size 7"):
        VisionTransformer((1, 30, 28), 10, patch_size=7)
