"""Files and store fingerprints shared by the adversarial store tests (no zarr I/O at import
time: ``kill_every_write.py`` forks after importing this)."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pandas as pd

K, D = 3, 4


def annotations(path: Path, ids: list[str]) -> Path:
    """An annotation CSV giving ``ids`` (domain / split / verb_class filled in)."""
    pd.DataFrame(
        {
            "uid": ids,
            "video_id": [f"v{i % 3}" for i in range(len(ids))],
            "domain": ["source"] * len(ids),
            "split": ["train"] * len(ids),
            "start_sec": np.arange(len(ids), dtype=float),
            "stop_sec": np.arange(len(ids), dtype=float) + 1.5,
            "verb_class": [i % 2 for i in range(len(ids))],
        }
    ).to_csv(path, index=False)
    return path


def feature_pickle(path: Path, ids: list[str], modalities=("RGB", "Audio"), *, seed=0, **arrays):
    """An EPIC-100 UDA feature pickle; ``arrays`` (e.g. ``RGB=...``) replace generated ones."""
    rng = np.random.default_rng(seed)
    features = {m: rng.normal(size=(len(ids), K, D)).astype(np.float32) for m in modalities}
    features.update(arrays)
    with open(path, "wb") as handle:
        pickle.dump({"features": features, "narration_ids": list(ids)}, handle, protocol=4)
    return path


def files(folder: Path) -> dict[str, Path]:
    """``base.pkl`` (6 rows: rgb, audio), ``new.pkl`` (5 rows: rgb, flow: a new modality, no
    audio) and ``ann.csv`` with all 11 ids."""
    base_ids = [f"b{i}" for i in range(6)]
    new_ids = [f"n{i}" for i in range(5)]
    return {
        "ann": annotations(folder / "ann.csv", base_ids + new_ids),
        "base": feature_pickle(folder / "base.pkl", base_ids, ("RGB", "Audio"), seed=1),
        "new": feature_pickle(folder / "new.pkl", new_ids, ("RGB", "Flow"), seed=2),
    }


def snapshot(path: Path) -> dict[str, str]:
    """Every file of a store and the sha256 of its bytes (byte-for-byte comparison)."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(path).rglob("*"))
        if p.is_file()
    }


def fingerprint(path: Path, *, physical: bool = True) -> dict:
    """What a reader of the store sees: rows, segments, every modality's features / status /
    errors, the provenance (creation time and the random ``cache_id`` left out) and,
    ``physical``, every array's shape."""
    from avda.cache import open_cache

    store = open_cache(path)
    N = store.num_segments
    prov = store.provenance
    prov.pop("created", None)
    prov.pop("cache_id", None)  # random per store: two clean imports differ in it too
    imports = [{k: v for k, v in e.items() if k != "imported"} for e in prov.pop("imports", [])]
    found = {
        "num_segments": N,
        "segments": store.segments.astype(str).to_dict("list"),
        "provenance": prov,
        "imports": imports,
    }
    for modality in store.modalities:
        features = np.asarray(store.features(modality)[:N], dtype=np.float32)
        found[f"features/{modality}"] = hashlib.sha256(features.tobytes()).hexdigest()
        found[f"status/{modality}"] = store.status(modality)[:N].tolist()
        found[f"errors/{modality}"] = [str(e) for e in store.errors(modality)[:N]]
    if physical:
        found["shapes"] = {name: list(a.shape) for name, a in store.arrays().items()}
    return found


def differences(a: dict, b: dict) -> list[str]:
    return [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def probe_held_when_deleted(monkeypatch, lock: Path) -> list[bool]:
    """Record, each time ``lock`` is deleted (``Path.unlink``), whether a lock was still held
    on it then (another open file cannot take it): a holder must delete its lock file before it
    lets go, else a waiter locks the file then deleted while a third locks a new one."""
    import fcntl
    import os

    held_then: list[bool] = []
    real_unlink = Path.unlink

    def unlink(self, *args, **kwargs):
        if self == lock:
            fd = os.open(self, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held_then.append(False)
            except BlockingIOError:
                held_then.append(True)
            finally:
                os.close(fd)
        return real_unlink(self, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", unlink)
    return held_then
