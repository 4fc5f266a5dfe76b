"""Small edits of a traced graph module that every conversion stage makes: fresh attribute
names, replacing a node or a submodule by a new layer."""
from __future__ import annotations

import torch.fx as fx
from torch import nn

__all__ = ["fresh_name", "has_path", "set_submodule", "replace_with_module", "module_path", "call_site_name"]


def has_path(root: nn.Module, path: str) -> bool:
    """Whether ``path`` (dotted) names any attribute of ``root`` — a module, parameter or other."""
    parent_path, _, leaf = path.rpartition(".")
    try:
        parent = root.get_submodule(parent_path) if parent_path else root
    except AttributeError:
        return False
    return hasattr(parent, leaf)


def fresh_name(root: nn.Module, base: str) -> str:
    """``base``, or ``base_1``, ``base_2``, … : the first that names nothing in ``root``."""
    name, index = base, 1
    while has_path(root, name):
        name, index = f"{base}_{index}", index + 1
    return name


def module_path(node: fx.Node) -> str:
    """The module a node was traced inside, e.g. ``layer1.0`` (``""`` at the top level)."""
    stack = node.meta.get("nn_module_stack") or {}
    # Keys are module paths, innermost last; a module called twice appears as "path@1".
    return str(next(reversed(stack))).split("@")[0] if stack else ""


def call_site_name(root: nn.Module, node: fx.Node) -> str:
    """A fresh attribute name for the layer that replaces a function or method call: the
    node's name under the module it was called in (``layer1.0.gelu``), so reports and
    state dicts say where it came from."""
    owner = module_path(node)
    return fresh_name(root, f"{owner}.{node.name}" if owner else node.name)


def set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    """Replace the submodule at dotted ``path`` of ``root`` by ``module``."""
    parent_path, _, leaf = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, leaf, module)


def replace_with_module(gm: fx.GraphModule, node: fx.Node, name: str, module: nn.Module, args: tuple,
                        kwargs: dict | None = None) -> fx.Node:
    """Add ``module`` as ``name`` and replace ``node`` by a call of it on ``args``."""
    gm.add_submodule(name, module)
    with gm.graph.inserting_before(node):
        new = gm.graph.call_module(name, args, kwargs or {})
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)
    return new
