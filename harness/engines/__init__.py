"""Engines, one module per backend; ``get_engine`` is the one place that picks one.

Keras reads its backend once, at import time, from ``KERAS_BACKEND``; ``select_backend`` sets it
before anything imports Keras, and ``get_engine`` refuses a backend Keras is not running.
"""

from __future__ import annotations

import os
import sys

from metabench.harness.engines.base import Engine, EngineError

BACKENDS = ("tensorflow", "jax")


def select_backend(name: str) -> None:
    """Make ``name`` the Keras backend of this process; call before Keras is first imported."""
    if name not in BACKENDS:
        raise EngineError(f"Received backend={name!r}; expected one of {list(BACKENDS)}.")
    if "keras" in sys.modules:
        import keras  # already loaded (checked above): importing it here costs nothing

        if keras.backend.backend() != name:
            raise EngineError(
                f"Keras was already imported with backend {keras.backend.backend()!r}; cannot switch to "
                f"{name!r} in the same process. Set KERAS_BACKEND={name} before starting Python."
            )
        return
    os.environ["KERAS_BACKEND"] = name


def get_engine(name: str, **options) -> Engine:
    """The engine for backend ``name`` (``"tensorflow"``, or ``"jax"`` with ``pip install -e ".[jax]"``)."""
    select_backend(name)
    # Deferred: each engine module imports its backend (TensorFlow or JAX); only the chosen one loads.
    if name == "tensorflow":
        try:
            from metabench.harness.engines.tensorflow import TensorFlowEngine
        except ImportError as error:
            raise EngineError(
                f"Received backend='tensorflow', but TensorFlow cannot be imported ({error}). Install it "
                "(pip install tensorflow) or run with --backend jax."
            ) from error
        return TensorFlowEngine(**options)
    try:
        from metabench.harness.engines.jax import JaxEngine
    except ImportError as error:
        raise EngineError(
            f"Received backend='jax', but JAX cannot be imported ({error}). Install it with "
            'pip install -e ".[jax]" or run with --backend tensorflow.'
        ) from error
    return JaxEngine(**options)


__all__ = ["BACKENDS", "Engine", "EngineError", "get_engine", "select_backend"]
