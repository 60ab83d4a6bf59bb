"""The feature cache: a Zarr v3 store of per-segment features (docs/design.md).

The format is specified in docs/cache_schema.md.
"""

from avda.cache.schema import SCHEMA_VERSION, Status
from avda.cache.store import FeatureCache, create, open_cache

__all__ = ["SCHEMA_VERSION", "FeatureCache", "Status", "create", "open_cache"]
