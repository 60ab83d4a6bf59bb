"""A received run folder never runs code: avda reads its checkpoints with weights_only=True."""

from __future__ import annotations

import pickle

import pytest

from avda import runs
from avda.errors import RunError
from avda.train.loop import train
from tests.conftest import make_feature_cache


class _Payload:
    """Unpickling this creates a file: what a malicious checkpoint would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    cache = make_feature_cache(tmp_path / "c.zarr", per_class=4).path
    out = tmp_path / "run"
    common = {"cache": cache, "head": "source-only", "source": ["source"], "target": ["target"]}
    train(**common, out=out, overrides={"epochs": 2}, progress=False)
    (out / runs.STATUS).unlink()  # an unfinished run someone sent
    marker = tmp_path / "pwned"
    with open(out / runs.CHECKPOINT, "wb") as handle:
        pickle.dump({"epoch": 1, "model": _Payload(str(marker))}, handle, protocol=2)
    with pytest.raises(RunError, match="not a checkpoint avda wrote"):
        train(**common, out=out, overrides={"epochs": 2}, progress=False)
    assert not marker.exists()
    with pytest.raises(RunError):
        runs.load_checkpoint(out / runs.CHECKPOINT)
    assert not marker.exists()


def test_a_run_checkpoint_that_would_run_a_command_names_it(tmp_path):
    import os

    class Command:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    path = tmp_path / "last.pt"
    with open(path, "wb") as handle:
        pickle.dump({"epoch": 1, "model": Command()}, handle, protocol=2)
    with pytest.raises(RunError) as info:
        runs.load_checkpoint(path)
    assert "it would load GLOBAL posix.system (its module posix is blocked)" in str(info.value)
    assert not (tmp_path / "pwned").exists()
