"""VGG-style networks: CIFAR VGG-16 (Simonyan & Zisserman 2015, configuration D, with BN and
average pooling) and the small VGG for 28×28 grey images."""
from __future__ import annotations

from torch import Tensor, nn

from .spec import ActivationFactory, check_input_shape, initialise, register_architecture

__all__ = ["POOL", "VGG16_CONFIG", "VGG_SMALL_CONFIG", "VGG", "vgg16", "vgg_small"]

POOL = "A"  # marks a 2×2 average-pooling stage in a VGG configuration

# Simonyan & Zisserman (2015), configuration D, as used on CIFAR by QCFS (Bu et al., 2022) and
# FS-PC (Hao et al., 2025): channel counts for width 64, POOL = AvgPool2d(2).
VGG16_CONFIG: tuple[int | str, ...] = (64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL,
                                       512, 512, 512, POOL, 512, 512, 512, POOL)
# The small VGG for Fashion-MNIST, channel counts for width 32.
VGG_SMALL_CONFIG: tuple[int | str, ...] = (32, 32, POOL, 64, 64, POOL, 128, 128, POOL)


# --------------------------------------------------------------------------- VGG


class VGG(nn.Module):
    """VGG-style network: conv3×3-BN-activation blocks, 2×2 average pooling, MLP classifier.

    VGG is Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
    Recognition" (ICLR 2015). The CIFAR form used by the conversion literature — BatchNorm
    after every convolution, average instead of max pooling, a 4096-4096 classifier on the
    flattened features — follows QCFS (Bu et al., "Optimal ANN-SNN Conversion for
    High-accuracy and Low-latency Spiking Neural Networks", ICLR 2022) and FS-PC (Hao et al.,
    ICML 2025).

    The network is sized by its input: a pooling stage is skipped when it would shrink a
    spatial side below 1 (a 28×28 input keeps 4 of VGG-16's 5 poolings, 28→14→7→3→1), and
    the classifier's input features are computed from the resulting feature map.

    Args:
        config: channel counts and :data:`POOL` markers, in order.
        input_shape: ``(C, H, W)`` of one input image.
        num_classes: outputs of the last linear layer.
        hidden_features: widths of the hidden classifier layers; each is
            Linear → activation → Dropout.
        dropout: dropout probability after each hidden classifier activation.
        new_activation: returns a fresh activation module per call (default: ``nn.ReLU``).
    """

    def __init__(self, *, config: tuple[int | str, ...], input_shape: tuple[int, int, int],
                 num_classes: int, hidden_features: tuple[int, ...], dropout: float = 0.5,
                 new_activation: ActivationFactory | None = None):
        super().__init__()
        new_activation = new_activation or nn.ReLU
        channels, height, width = check_input_shape(input_shape)

        layers: list[nn.Module] = []
        for entry in config:
            if entry == POOL:
                if height // 2 < 1 or width // 2 < 1:
                    continue  # the input is too small for this stage: skip it
                layers.append(nn.AvgPool2d(2))
                height, width = height // 2, width // 2  # (B, C, H, W) -> (B, C, H/2, W/2), floored
            else:
                layers += [nn.Conv2d(channels, entry, kernel_size=3, padding=1, bias=False),
                           nn.BatchNorm2d(entry),
                           new_activation()]  # (B, C, H, W) -> (B, entry, H, W)
                channels = entry
        self.features = nn.Sequential(*layers)

        in_features = channels * height * width
        head: list[nn.Module] = [nn.Flatten()]  # (B, C, H, W) -> (B, C·H·W)
        for hidden in hidden_features:
            head += [nn.Linear(in_features, hidden), new_activation(), nn.Dropout(dropout)]
            in_features = hidden
        head.append(nn.Linear(in_features, num_classes))  # (B, hidden) -> (B, num_classes)
        self.classifier = nn.Sequential(*head)
        initialise(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        return self.classifier(x)


def _scaled_config(config: tuple[int | str, ...], *, base: int, width: int) -> tuple[int | str, ...]:
    # Channel counts in the configs are multiples of the first stage's width (base), so
    # scaling by width/base keeps integer ratios 1:2:4:8.
    return tuple(entry if entry == POOL else entry // base * width for entry in config)


def vgg16(*, input_shape: tuple[int, int, int], num_classes: int, width: int = 64,
          new_activation: ActivationFactory | None = None) -> VGG:
    """CIFAR VGG-16 (QCFS / FS-PC form), see :class:`VGG`.

    ``width`` is the first stage's channel count (default 64, stages 64-128-256-512-512);
    the two hidden classifier layers have ``64·width`` features (4096 at the default).
    Dropout 0.5 after each hidden activation, as in Simonyan & Zisserman.
    """
    return VGG(config=_scaled_config(VGG16_CONFIG, base=64, width=width), input_shape=input_shape,
               num_classes=num_classes, hidden_features=(64 * width, 64 * width), dropout=0.5,
               new_activation=new_activation)


def vgg_small(*, input_shape: tuple[int, int, int], num_classes: int, width: int = 32,
              new_activation: ActivationFactory | None = None) -> VGG:
    """Small VGG for 28×28 grey images (Fashion-MNIST), this project's own reduced VGG.

    [w, w, A, 2w, 2w, A, 4w, 4w, A] conv3×3-BN-activation blocks (A = AvgPool2d(2)), then
    Flatten → Linear(4w·3·3, 8w) → activation → Dropout(0.2) → Linear(8w, classes).
    ``width`` w defaults to 32 (about 0.58 M parameters, 29 M multiply-accumulates per
    28×28 image).
    """
    return VGG(config=_scaled_config(VGG_SMALL_CONFIG, base=32, width=width), input_shape=input_shape,
               num_classes=num_classes, hidden_features=(8 * width,), dropout=0.2,
               new_activation=new_activation)



def _vgg_sites(config: tuple[int | str, ...], *, hidden_layers: int) -> int:
    # One activation per convolution (a pooling stage skipped for small inputs has none)
    # plus one per hidden classifier layer.
    return sum(entry != POOL for entry in config) + hidden_layers


register_architecture("vgg16", vgg16, default_width=64, activation_sites=_vgg_sites(VGG16_CONFIG, hidden_layers=2))
register_architecture("vgg-small", vgg_small, default_width=32,
                      activation_sites=_vgg_sites(VGG_SMALL_CONFIG, hidden_layers=1))
