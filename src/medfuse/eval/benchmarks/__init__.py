"""Benchmark loaders: one module per benchmark, found by name through a registry.

>>> from medfuse.eval.benchmarks import get_benchmark
>>> get_benchmark("medqa").task_type
'multiple_choice'

Adding a benchmark means adding one module here whose `Benchmark` subclass is decorated
with `@register`; every module of this package is imported on first use of the registry.
"""

from __future__ import annotations

import importlib
import pkgutil

from medfuse.errors import MedfuseError
from medfuse.eval.benchmarks.base import _REGISTRY, TASK_TYPES, Benchmark, EvalItem, register

__all__ = ["Benchmark", "EvalItem", "TASK_TYPES", "register", "get_benchmark", "list_benchmarks"]

_loaded = False


def _import_all() -> None:
    global _loaded
    if _loaded:
        return
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base" and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
    _loaded = True


def list_benchmarks() -> list[type[Benchmark]]:
    """Every registered benchmark class, sorted by task type then name."""
    _import_all()
    return sorted(_REGISTRY.values(), key=lambda c: (TASK_TYPES.index(c.task_type), c.name))


def get_benchmark(name: str) -> Benchmark:
    """A fresh loader for the benchmark called `name` (case-insensitive, '_' = '-')."""
    _import_all()
    key = name.strip().lower().replace("_", "-")
    if key not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY))
        raise MedfuseError(f"unknown benchmark '{name}' (known: {known}; see `medfuse eval list`)")
    return _REGISTRY[key]()
