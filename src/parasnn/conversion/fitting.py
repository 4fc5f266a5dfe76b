"""The conversion stage that fits a neuron to every ``FITTED`` call site (a scalar function
such as GELU): the site's inputs are recorded on calibration data, then its rule's ``fit``
builds the spiking layer, which replaces the call (docs/maths.md §7)."""
from __future__ import annotations

import copy
import enum
from typing import Iterable

import torch
import torch.fx as fx
from torch import Tensor

from ..datasets.batches import model_inputs
from ..runtime.progress import progress
from .editing import call_site_name, replace_with_module, set_submodule
from .graph import ConversionError, carrying_nodes, classify, describe
from .network import device_of
from .rules import Role

__all__ = ["FitScope", "fitted_sites", "record_site_inputs", "fit_sites", "SAMPLES_PER_SITE"]

class FitScope(str, enum.Enum):
    """``network``: one fit per function (and T) over the inputs of all its call sites,
    pooled — a handful of fits for a whole transformer; ``site``: one fit per call site
    over its own inputs — closer where layers see very different ranges, slower."""

    NETWORK = "network"
    SITE = "site"


SAMPLES_PER_SITE = 1 << 16  # values kept per site: enough for the fit's quantiles, small in memory


def fitted_sites(gm: fx.GraphModule) -> list[fx.Node]:
    """Nodes claimed by a ``FITTED`` rule, in graph order."""
    dependent = carrying_nodes(gm)
    return [node for node in gm.graph.nodes if getattr(classify(gm, node, dependent), "role", None) is Role.FITTED]


class _Recorder(fx.Interpreter):
    """Runs the graph and keeps a seeded random sample of each site's first input."""

    def __init__(self, gm: fx.GraphModule, sites: set[str], samples: dict[str, list[Tensor]], generator):
        super().__init__(gm)
        self.sites, self.samples, self.generator = sites, samples, generator

    def run_node(self, node):
        if node.name in self.sites:
            values = self.map_nodes_to_values(node.args[0], node).detach().flatten()
            keep = min(values.numel(), SAMPLES_PER_SITE)
            index = torch.randperm(values.numel(), generator=self.generator)[:keep].to(values.device)
            self.samples.setdefault(node.name, []).append(values[index].float().cpu())
        return super().run_node(node)


def record_site_inputs(gm: fx.GraphModule, sites: list[fx.Node], batches: Iterable, *, seed: int = 0
                       ) -> dict[str, Tensor]:
    """A random sample (seeded) of the inputs each site sees on ``batches``:
    ``{node name: (≤ SAMPLES_PER_SITE,)}``."""
    samples: dict[str, list[Tensor]] = {}
    generator = torch.Generator().manual_seed(seed)
    recorder = _Recorder(gm, {node.name for node in sites}, samples, generator)
    device = device_of(gm)
    with torch.no_grad():
        for batch in progress(batches, description="recording function inputs"):
            recorder.run(*(x.to(device) for x in model_inputs(batch)))
    return {name: _at_most(parts, generator) for name, parts in samples.items()}


def _at_most(parts: list[Tensor], generator: torch.Generator) -> Tensor:
    """The values of ``parts`` together, a seeded random ``SAMPLES_PER_SITE`` of them when more."""
    values = torch.cat(parts)
    if values.numel() > SAMPLES_PER_SITE:
        values = values[torch.randperm(values.numel(), generator=generator)[:SAMPLES_PER_SITE]]
    return values


def fit_sites(gm: fx.GraphModule, calibration_data: Iterable | None, config, *,
              placeholders: bool = False) -> fx.GraphModule:
    """Replace every fitted site by the layer its rule fits (in place on ``gm``); with
    ``placeholders``, by the layer's skeleton (``Rule.skeleton``: no data, no fit)."""
    sites = fitted_sites(gm)
    if not sites:
        return gm
    if placeholders:
        calibration_data = None
    samples = record_site_inputs(gm, sites, calibration_data) if calibration_data is not None else {}
    dependent = carrying_nodes(gm)
    rules = {node: classify(gm, node, dependent) for node in sites}
    if config.fit_scope is FitScope.NETWORK:
        samples = _pooled(gm, rules, samples)
    layers: dict = {}
    for node in progress(sites, description="fitting multi-basis neurons"):
        rule = rules[node]
        key = _group(gm, node, rule) if config.fit_scope is FitScope.NETWORK else node
        try:
            if key not in layers:
                if placeholders and rule.skeleton is None:
                    raise ValueError("this fitted rule has no skeleton, so a saved network cannot be rebuilt "
                                     "without data; register it with skeleton=")
                layers[key] = (rule.skeleton(gm, node, config) if placeholders
                               else rule.fit(gm, node, samples.get(node.name), config))
            layer = copy.deepcopy(layers[key])
        except (TypeError, ValueError) as error:
            raise ConversionError(f"{describe(gm, node)} ({rule.name}): {error}") from error
        if node.op == "call_module":  # the module keeps its path; the neuron takes its place
            set_submodule(gm, node.target, layer)
            node.args, node.kwargs = (node.args[0],), {}
        else:  # a function or method call: a new module named after where it was called
            name = call_site_name(gm, node)
            replace_with_module(gm, node, name, layer, (node.args[0],))
    gm.graph.lint()
    gm.recompile()
    return gm


def _group(gm, node, rule):
    return (rule.name, rule.fit_group(gm, node) if rule.fit_group is not None else node.name)


def _pooled(gm, rules: dict, samples: dict[str, Tensor]) -> dict[str, Tensor]:
    """Each site's samples replaced by the pooled samples of its group (seeded subsample)."""
    groups: dict = {}
    for node, rule in rules.items():
        if node.name in samples:
            groups.setdefault(_group(gm, node, rule), []).append(samples[node.name])
    generator = torch.Generator().manual_seed(0)
    pooled = {key: _at_most(parts, generator) for key, parts in groups.items()}
    return {node.name: pooled[_group(gm, node, rule)] for node, rule in rules.items() if node.name in samples}
