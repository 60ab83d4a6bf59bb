"""avda: audio-visual domain adaptation for action recognition.

Stage 1 (`avda.extract`) decodes video, flow and audio once and writes backbone features to a
chunked Zarr cache (`avda.cache`); stage 2 (`avda.train`, `avda.evaluate`) trains light
adaptation heads on the cached features.
"""

__version__ = "0.1.0"
