"""Inference engines behind one interface.

``get_engine(name)`` returns an :class:`~graphchallenge.engines.base.Engine`;
``"auto"`` picks the fastest engine that can run here (GPU, then the CPU
engine, then the reference). Engines are imported only when asked for, so
the package imports on machines without numba or CuPy.

>>> from graphchallenge.engines import get_engine
>>> get_engine("reference").name
'reference'
"""

import importlib
import logging

from ..errors import EngineUnavailable
from .base import Engine, InferenceResult
from .exactness import recheck

__all__ = ["Engine", "InferenceResult", "recheck", "ENGINE_NAMES", "AUTO_ORDER", "availability",
           "available_engines", "resolve", "get_engine"]

log = logging.getLogger(__name__)

# name -> (module, class); "auto" tries them in AUTO_ORDER.
_REGISTRY = {
    "reference": ("reference", "ReferenceEngine"),
    "cpu": ("cpu", "CpuEngine"),
    "gpu": ("gpu", "GpuEngine"),
    "gpu-cusparse": ("gpu", "CusparseEngine"),
    "graphblas": ("graphblas", "GraphblasEngine"),
}
AUTO_ORDER = ("gpu", "cpu", "reference")
ENGINE_NAMES = tuple(_REGISTRY)


def _engine_class(name):
    module_name, class_name = _REGISTRY[name]
    try:
        module = importlib.import_module(f".{module_name}", __name__)
    except ModuleNotFoundError as exc:
        if exc.name == f"{__name__}.{module_name}":
            return None
        raise
    return getattr(module, class_name, None)


def availability(name):
    """``(available, reason)`` for the engine called ``name``."""
    if name not in _REGISTRY:
        return False, f"unknown engine {name!r}"
    cls = _engine_class(name)
    if cls is None:
        return False, "not part of this installation"
    return cls.availability()


def available_engines():
    """``{name: (available, reason)}`` for every engine, in registry order."""
    return {name: availability(name) for name in _REGISTRY}


def resolve(name="auto"):
    """The concrete engine name ``name`` stands for (``auto`` -> the best available)."""
    if name == "auto":
        for candidate in AUTO_ORDER:
            if availability(candidate)[0]:
                return candidate
        return "reference"
    if name not in _REGISTRY:
        raise EngineUnavailable(f"unknown engine {name!r}; choose one of auto, "
                                f"{', '.join(ENGINE_NAMES)}")
    available, reason = availability(name)
    if not available:
        raise EngineUnavailable(f"engine {name!r} cannot run here: {reason}")
    return name


def get_engine(name="auto", **options):
    """An engine instance; ``options`` go to its constructor (e.g. ``device=0``).

    Raises
    ------
    EngineUnavailable
        Unknown name, or the engine's library or device is missing.
    """
    name = resolve(name)
    if not name.startswith("gpu") and options.pop("device", None) is not None:
        log.warning("--device applies to the GPU engines only; engine %s ignores it", name)
    return _engine_class(name)(**options)
