"""Stage 1: decode media, run frozen backbones, write features into a Zarr cache."""
