"""The compute device a command runs on: checked once, with a one-line error.

``resolve_device(None)`` is ``cuda`` when a GPU is visible, else ``cpu`` (the one place that
default is chosen); :func:`gpu_count` is how many CUDA devices are visible. A device asked for
that this machine does not have (``--device cuda`` without a GPU, ``cuda:3`` on a two-GPU
host, a misspelling) is a :class:`ConfigError` naming it and what to pass instead, before any
model or data is loaded.
"""

from __future__ import annotations

from avda.errors import ConfigError


def gpu_count() -> int:
    """The CUDA devices visible here (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_device(device: str | None, option: str = "--device") -> str:
    """``device`` checked against this machine (``None``: cuda when present, else cpu)."""
    import torch

    if device is None or str(device).strip() in ("", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    text = str(device).strip()
    try:
        parsed = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(
            f"{option} {text!r} is not a device; expected cpu, cuda or cuda:N"
        ) from None
    if parsed.type == "cpu":
        return text
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"{option} {text}: no CUDA GPU is visible here (torch.cuda.is_available() is "
                "False); use --device cpu, or leave --device out to use a GPU when there is one"
            )
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise ConfigError(
                f"{option} {text}: this machine has {count} CUDA device(s), cuda:0 to "
                f"cuda:{count - 1}"
            )
        return text
    if parsed.type == "mps":
        backend = getattr(torch.backends, "mps", None)
        if backend is None or not backend.is_available():
            raise ConfigError(f"{option} {text}: the Apple MPS backend is not available here")
        return text
    raise ConfigError(f"{option} {text!r}: avda runs on cpu or cuda (cuda:N)")
