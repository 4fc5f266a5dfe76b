"""The model zoo under its parasnn 0.1 module path: re-exports of :mod:`.spec`, :mod:`.vgg` and
:mod:`.resnet`. The ANNs this library trains and converts, described by a :class:`ModelSpec`.

A :class:`ModelSpec` names an architecture (one of :data:`MODEL_NAMES`), the input shape,
the number of classes, an optional base width and an :class:`ActivationSpec` — ReLU, or
QCFS with one quantization level L for every activation or one L per activation site.
:func:`build_model` turns a spec into a plain ``nn.Module``; a spec survives a JSON round
trip (:meth:`ModelSpec.to_dict` / :meth:`ModelSpec.from_dict`), so a checkpoint can carry
the recipe of its own network.

==============  =============================================  ===============  ===============
name            architecture                                   default width    activation sites
==============  =============================================  ===============  ===============
``vgg16``       CIFAR VGG-16 with BN and average pooling        64               13 + 2 = 15
``vgg-small``   6-conv VGG for 28×28 grey images               32               6 + 1 = 7
``resnet18``    CIFAR-style ResNet-18, BasicBlocks [2,2,2,2]     64               1 + 8·2 = 17
``resnet20``    CIFAR ResNet-20, BasicBlocks [3,3,3]             16               1 + 9·2 = 19
``resnet34``    CIFAR-style ResNet-34, BasicBlocks [3,4,6,3]     64               1 + 16·2 = 33
==============  =============================================  ===============  ===============

Conventions every architecture keeps, because the converter relies on them:

* every activation is its own module instance, created in forward order (the ``index``-th
  call of the activation factory is the ``index``-th activation the input passes through),
  so per-site quantization levels and per-layer thresholds mean what they say;
* activations, pooling and flattening are modules (no ``torch.nn.functional`` calls), and
  ``forward`` has no data-dependent Python control flow: ``torch.fx.symbolic_trace`` works;
* pooling is average pooling (a linear map, which a spiking network computes exactly on
  rates; max-pooling of spike rates is not);
* convolutions feeding a BatchNorm have no bias (the BN shift supersedes it).
"""
from __future__ import annotations

from .resnet import RESNET18_BLOCKS, RESNET20_BLOCKS, RESNET34_BLOCKS, BasicBlock, ResNet, resnet18, resnet20, resnet34
from .spec import (ActivationKind, ActivationSpec, ModelSpec, build_model, count_activation_sites, default_widths,
                   model_names)
from .vgg import POOL, VGG, VGG16_CONFIG, VGG_SMALL_CONFIG, vgg16, vgg_small

__all__ = [
    "ActivationKind", "ActivationSpec", "ModelSpec", "MODEL_NAMES", "DEFAULT_WIDTHS",
    "build_model", "count_activation_sites",
    "VGG", "BasicBlock", "ResNet",
    "VGG16_CONFIG", "VGG_SMALL_CONFIG", "POOL", "vgg16", "vgg_small",
    "RESNET18_BLOCKS", "RESNET20_BLOCKS", "RESNET34_BLOCKS", "resnet18", "resnet20", "resnet34",
]

# The architectures registered when this module was imported (see parasnn.zoo.spec.model_names()).
MODEL_NAMES: tuple[str, ...] = model_names()
DEFAULT_WIDTHS: dict[str, int] = default_widths()
