"""The conversion stage that replaces every node claimed by an ``EXPANDED`` rule by its
decomposition (softmax, layer norm, attention, …), traced and inlined, until none is left."""
from __future__ import annotations

import torch.fx as fx

from .decompositions import inline_module
from .editing import fresh_name
from .graph import ConversionError, carrying_nodes, classify, describe
from .rules import Role

__all__ = ["expand_operations"]

_MAX_ROUNDS = 8  # a decomposition may contain operations that expand again (attention → softmax)


def expand_operations(gm: fx.GraphModule) -> fx.GraphModule:
    """Inline the decompositions (in place on ``gm``, a private copy) and return ``gm``."""
    for _ in range(_MAX_ROUNDS):
        dependent = carrying_nodes(gm)
        expanded = False
        for node in list(gm.graph.nodes):
            rule = classify(gm, node, dependent)
            if rule is None or rule.role is not Role.EXPANDED:
                continue
            try:
                module = rule.build(gm, node)
                inline_module(gm, node, module, prefix=fresh_name(gm, f"{node.name}_expanded"))
            except (TypeError, ValueError) as error:
                raise ConversionError(f"{describe(gm, node)} ({rule.name}): {error}") from error
            expanded = True
        if not expanded:
            break
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm
