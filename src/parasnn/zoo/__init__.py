"""The model zoo: :mod:`.spec` (what a model is, and the registry of architectures), one module
per architecture family (:mod:`.vgg`, :mod:`.resnet`), each registering itself on import; a small
ViT (:mod:`.vit`) and a BERT encoder for the shipped all-MiniLM-L6-v2 weights (:mod:`.bert`)."""
from . import vgg, resnet, vit  # noqa: F401, I001 - registers the architectures, in the order of model_names()
from .spec import (ActivationKind, ActivationSpec, ModelSpec, build_model, count_activation_sites, model_names,
                   register_architecture)

__all__ = ["ActivationKind", "ActivationSpec", "ModelSpec", "build_model", "count_activation_sites", "model_names",
           "register_architecture"]
