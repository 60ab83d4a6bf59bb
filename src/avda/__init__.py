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

__version__ = "0.1.0"

__all__ = ["__version__", "evaluate", "extract", "open_cache", "predict", "train"]


def __getattr__(name: str) -> object:
    if name == "open_cache":
        from avda.api import open_cache

        return open_cache
    if name == "predict":
        from avda.api import predict

        return predict
    # avda.extract, avda.train, avda.evaluate (callable packages), avda.weights... on first use
    from avda._callable import submodule

    return submodule(__name__, name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
