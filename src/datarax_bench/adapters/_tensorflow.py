"""TensorFlow for the adapters that load it (tf.data, Datarax's TFDS source): kept off
accelerators, which JAX owns, and imported once per process."""

from __future__ import annotations

import os
from typing import Any

_STATE: dict[str, Any] = {}


def import_tensorflow():
    """TensorFlow with its GPUs hidden (before any op)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if "visible_gpus" not in _STATE:
        try:
            tf.config.set_visible_devices([], "GPU")
        except RuntimeError:
            # TF was initialised earlier in this process; record what it can see.
            pass
        _STATE["visible_gpus"] = len(tf.config.get_visible_devices("GPU"))
    return tf


def visible_gpus() -> int:
    """GPUs TensorFlow can see (0 unless it was initialised before `import_tensorflow`)."""
    return _STATE["visible_gpus"]
