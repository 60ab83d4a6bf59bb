"""avda: audio-visual domain adaptation for action recognition.

Stage 1 (`avda.extract`) decodes video, flow and audio once and writes backbone features to a
chunked Zarr cache (`avda.cache`); stage 2 (`avda.train`, `avda.evaluate`) trains light
adaptation heads on the cached features.

The Python API (``docs/python_api.md``; imported on first use, so ``import avda`` is fast)::

    avda.extract(manifest, out, videos=..., modalities=["rgb", "audio"])  # -> ExtractResult
    avda.open_cache(path)                                                 # -> FeatureCache
    avda.train(head="dann", cache=..., source="D1", target="D2", out=...) # -> TrainResult
    avda.evaluate([run_or_folder, ...])                                   # -> DataFrame
    avda.predict(run, cache=None, domains=..., splits=...)                # -> Predictions
"""

from __future__ import annotations

import importlib
import importlib.util

__version__ = "0.1.0"

__all__ = ["__version__", "evaluate", "extract", "open_cache", "predict", "train"]


def __getattr__(name: str) -> object:
    if name == "open_cache":
        from avda.api import open_cache

        return open_cache
    if name == "predict":
        from avda.api import predict

        return predict
    if name in ("extract", "train", "evaluate"):  # callable packages (avda._callable)
        return importlib.import_module(f"avda.{name}")
    # the other modules on first use too, as the docs write them after `import avda`
    # (avda.weights.resolve, avda.sweep.run_sweep, avda.runs.read_predictions)
    if not name.startswith("_") and importlib.util.find_spec(f"avda.{name}") is not None:
        return importlib.import_module(f"avda.{name}")
    raise AttributeError(f"module 'avda' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
