"""Deprecated module paths of parasnn ≤ 0.1 (a flat package), kept importable.

``import parasnn.convert`` and ``from parasnn.calibrate import CalibrationConfig`` still work
and warn once; the modules now live in sub-packages (see docs/architecture.md).
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

__all__ = ["MOVED_MODULES", "install"]

MOVED_MODULES: dict[str, str] = {
    "graph": "conversion.graph", "convert": "conversion.stages", "network": "conversion.network",
    "methods": "conversion.methods", "simulate": "simulation.forms", "calibrate": "calibration.pipeline",
    "ablate": "evaluation.ablation", "evaluate": "evaluation.accuracy", "energy": "evaluation.energy",
    "plots": "evaluation.plots", "bench": "bench.measure", "pascal": "methods.pascal", "pmsm": "methods.pmsm",
    "adaptive_levels": "methods.adaptive_levels", "train": "training.train", "data": "datasets.data",
    "models": "zoo.models", "checkpoint": "io.checkpoint", "files": "io.files", "cli_bench": "cli.bench",
    "cli_calibrate": "cli.calibrate", "cli_pmsm": "cli.pmsm", "arguments": "cli.arguments",
    "distributed": "runtime.distributed", "progress": "runtime.progress",
}


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        warnings.warn(f"{spec.name} moved to {self.target}; import it from there", DeprecationWarning, stacklevel=3)
        return importlib.import_module(self.target)

    def exec_module(self, module):
        pass  # the target module is already executed


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        package, _, leaf = fullname.rpartition(".")
        if package != "parasnn" or leaf not in MOVED_MODULES:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(f"parasnn.{MOVED_MODULES[leaf]}"))


def install() -> None:
    """Make the old module paths importable (idempotent)."""
    if not any(isinstance(finder, _AliasFinder) for finder in sys.meta_path):
        sys.meta_path.append(_AliasFinder())
