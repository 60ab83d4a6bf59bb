"""Dask pieces shared by sharded extraction and sweeps (both run on Dask distributed)."""

from __future__ import annotations

from typing import Any

from avda.errors import ConfigError


def connect(address: str) -> Any:
    """A ``distributed.Client`` of the scheduler at ``address``; one-line errors when it cannot
    be reached or the address is malformed."""
    from distributed import Client

    try:
        return Client(address, timeout="30s")
    except (OSError, TimeoutError) as exc:
        raise ConfigError(
            f"--scheduler {address}: cannot connect ({exc}); is a Dask scheduler running there "
            "and reachable from this machine?"
        ) from None
    except ValueError as exc:
        raise ConfigError(
            f"--scheduler {address!r}: {exc}; expected an address such as tcp://host:8786"
        ) from None


__all__ = ["connect"]
