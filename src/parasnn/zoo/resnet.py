"""CIFAR-style residual networks of BasicBlocks: ResNet-18, ResNet-20, ResNet-34."""
from __future__ import annotations

from torch import Tensor, nn

from .spec import ActivationFactory, check_input_shape, initialise, register_architecture

__all__ = ["RESNET20_BLOCKS", "RESNET18_BLOCKS", "RESNET34_BLOCKS", "BasicBlock", "ResNet", "resnet18", "resnet20",
           "resnet34"]

RESNET20_BLOCKS = (3, 3, 3)
RESNET18_BLOCKS = (2, 2, 2, 2)
RESNET34_BLOCKS = (3, 4, 6, 3)


# --------------------------------------------------------------------------- ResNet


class BasicBlock(nn.Module):
    """ResNet basic block (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016):
    conv3×3-BN-act-conv3×3-BN, plus the shortcut, then act.

    The shortcut is the identity when the shape is kept and otherwise the paper's option B,
    a projection ``conv1×1(stride)-BN``. The activation after the addition is its own module.
    """

    def __init__(self, *, in_channels: int, out_channels: int, stride: int,
                 new_activation: ActivationFactory | None = None):
        super().__init__()
        new_activation = new_activation or nn.ReLU
        # (B, in, H, W) -> (B, out, H/stride, W/stride)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.act1 = new_activation()
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = nn.Identity()
        self.act2 = new_activation()  # created after act1: forward order

    def forward(self, x: Tensor) -> Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet of :class:`BasicBlock` stages (He et al., CVPR 2016).

    Stem conv3×3 (stride 1, no max-pool) - BN - act; stage ``i`` has ``blocks_per_stage[i]``
    blocks of ``widths[i]`` channels, the first block of every stage but the first
    downsampling by stride 2; then global average pooling, Flatten, Linear.

    Args:
        blocks_per_stage: e.g. ``(3, 3, 3)`` for ResNet-20, ``(2, 2, 2, 2)`` for ResNet-18.
        widths: channels per stage; the stem has ``widths[0]``.
        input_shape: ``(C, H, W)`` of one input image (C sets the stem's input channels).
        num_classes: outputs of the last linear layer.
        new_activation: returns a fresh activation module per call (default: ``nn.ReLU``).
    """

    def __init__(self, *, blocks_per_stage: tuple[int, ...], widths: tuple[int, ...],
                 input_shape: tuple[int, int, int], num_classes: int,
                 new_activation: ActivationFactory | None = None):
        super().__init__()
        if len(blocks_per_stage) != len(widths):
            raise ValueError(f"ResNet: {len(blocks_per_stage)} stages but {len(widths)} widths")
        new_activation = new_activation or nn.ReLU
        in_channels, _, _ = check_input_shape(input_shape)

        self.stem = nn.Sequential(  # (B, C, H, W) -> (B, widths[0], H, W)
            nn.Conv2d(in_channels, widths[0], kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            new_activation(),
        )
        stages: list[nn.Module] = []
        channels = widths[0]
        for index, (blocks, stage_width) in enumerate(zip(blocks_per_stage, widths)):
            stride = 1 if index == 0 else 2  # (B, C, H, W) -> (B, stage_width, H/2, W/2) from stage 2 on
            stage = []
            for block in range(blocks):
                stage.append(BasicBlock(in_channels=channels, out_channels=stage_width,
                                        stride=stride if block == 0 else 1, new_activation=new_activation))
                channels = stage_width
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)  # (B, C, H, W) -> (B, C, 1, 1)
        self.flatten = nn.Flatten()          # (B, C, 1, 1) -> (B, C)
        self.fc = nn.Linear(channels, num_classes)
        initialise(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = self.stages(x)
        x = self.flatten(self.pool(x))
        return self.fc(x)


def resnet20(*, input_shape: tuple[int, int, int], num_classes: int, width: int = 16,
             new_activation: ActivationFactory | None = None) -> ResNet:
    """CIFAR ResNet-20 (He et al. 2016, §4.2, n = 3) with option-B shortcuts; stages
    ``width``, ``2·width``, ``4·width`` channels (default 16-32-64)."""
    return ResNet(blocks_per_stage=RESNET20_BLOCKS, widths=(width, 2 * width, 4 * width),
                  input_shape=input_shape, num_classes=num_classes, new_activation=new_activation)


def resnet18(*, input_shape: tuple[int, int, int], num_classes: int, width: int = 64,
             new_activation: ActivationFactory | None = None) -> ResNet:
    """ResNet-18 (He et al. 2016, Table 1) in the CIFAR form: 3×3 stride-1 stem, no
    max-pool; stages ``width·(1, 2, 4, 8)`` channels (default 64-128-256-512)."""
    return ResNet(blocks_per_stage=RESNET18_BLOCKS, widths=(width, 2 * width, 4 * width, 8 * width),
                  input_shape=input_shape, num_classes=num_classes, new_activation=new_activation)


def resnet34(*, input_shape: tuple[int, int, int], num_classes: int, width: int = 64,
             new_activation: ActivationFactory | None = None) -> ResNet:
    """ResNet-34 (He et al. 2016, Table 1) in the CIFAR form: 3×3 stride-1 stem, no
    max-pool; stages ``width·(1, 2, 4, 8)`` channels (default 64-128-256-512)."""
    return ResNet(blocks_per_stage=RESNET34_BLOCKS, widths=(width, 2 * width, 4 * width, 8 * width),
                  input_shape=input_shape, num_classes=num_classes, new_activation=new_activation)



def _resnet_sites(blocks_per_stage: tuple[int, ...]) -> int:
    return 1 + 2 * sum(blocks_per_stage)  # the stem's, then two per BasicBlock


register_architecture("resnet18", resnet18, default_width=64, activation_sites=_resnet_sites(RESNET18_BLOCKS))
register_architecture("resnet20", resnet20, default_width=16, activation_sites=_resnet_sites(RESNET20_BLOCKS))
register_architecture("resnet34", resnet34, default_width=64, activation_sites=_resnet_sites(RESNET34_BLOCKS))
