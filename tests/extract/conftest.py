"""Fixtures for extraction tests: EPIC-style frame folders made from the real mmaction2 media,
and tiny recipes (small crops) that keep the backbones fast on a 2-core CPU."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from avda.cache import Status, open_cache
from avda.extract import sampling


@pytest.fixture
def one_thread():
    """Heavy tests share 2 cores with other work: one intra-op thread keeps them predictable."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def every_frame_in_order(path: Path) -> np.ndarray:
    """The reference: PyAV (not avda) decoding every frame of ``path`` in order, rgb24."""
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def tiny(name: str, **changes) -> sampling.Recipe:
    """A registered recipe with small frames (64 px), same placement and clip layout."""
    values = {**sampling.get(name).to_dict(), "resize_shorter": 64, "crop_size": 64, **changes}
    values["name"] = f"{name}-tiny"
    return sampling.Recipe.from_dict(values)


def sigkill_mid_extraction(
    manifest: Path, videos: Path, out: Path, *, modalities: str, batch_size: int, least: int
) -> list[str]:
    """A real SIGKILL of `avda extract` (the demo recipe, no decoding workers, chunks of 2 rows)
    of ``manifest`` into ``out`` once ``least`` rgb rows and not all are done; a run that ends
    first (a fast machine) is started again, 3 tries. The command, to run it again."""
    total = len(pd.read_csv(manifest))
    command = [sys.executable, "-m", "avda.cli", "extract", "--manifest", str(manifest),
               "--videos", str(videos), "-o", str(out), "--recipe", "demo",
               "--modalities", modalities, "--workers", "0", "--chunk-rows", "2",
               "--batch-size", str(batch_size), "--quiet"]  # fmt: skip
    for _ in range(3):
        shutil.rmtree(out, ignore_errors=True)
        errors = out.with_name(out.name + ".stderr")  # what a run that ended first said
        with open(errors, "wb") as stderr:
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.time() + 120
        try:
            while time.time() < deadline and process.poll() is None:
                try:
                    done = int(np.sum(open_cache(out).status("rgb") == Status.DONE))
                except Exception:  # the store or modality is not created yet
                    done = 0
                if least <= done < total:
                    process.send_signal(signal.SIGKILL)
                    process.wait()
                    return command
                time.sleep(0.02)
        finally:
            process.kill()
            process.wait()
    said = errors.read_text(errors="replace").strip().splitlines()[-5:]
    raise AssertionError(
        f"extraction ended (exit {process.returncode}) before it could be killed (3 tries); "
        "its last lines:\n" + "\n".join(said)
    )


@pytest.fixture
def epic_folders(tmp_path: Path, media: Path) -> tuple[Path, Path, pd.DataFrame]:
    """``rgb/P01/P01_01/frame_%010d.jpg`` (10 real frames) and ``flow/P01_01/{u,v}/...``
    (5 real TV-L1 pairs: EPIC-55 half-rate flow), plus a one-segment manifest."""
    source = media / "frames" / "mmaction2_imgs"
    rgb = tmp_path / "rgb" / "P01" / "P01_01"
    rgb.mkdir(parents=True)
    for i in range(1, 11):
        shutil.copy(source / f"img_{i:05d}.jpg", rgb / f"frame_{i:010d}.jpg")
    flow = tmp_path / "flow" / "P01_01"
    for component, prefix in (("u", "x"), ("v", "y")):
        (flow / component).mkdir(parents=True)
        for i in range(1, 6):
            shutil.copy(source / f"{prefix}_{i:05d}.jpg", flow / component / f"frame_{i:010d}.jpg")
    manifest = pd.DataFrame(
        {
            "uid": ["P01_01_0", "P01_01_1"],
            "video_id": ["P01_01", "P01_01"],
            "participant_id": ["P01", "P01"],
            "domain": ["D1", "D1"],
            "split": ["train", "test"],
            "start_sec": [1 / 60, 4 / 60],
            "stop_sec": [9 / 60, 6 / 60],
            "start_frame": [2, 5],
            "stop_frame": [10, 7],
            "fps": [60.0, 60.0],
        }
    )
    return tmp_path / "rgb", tmp_path / "flow", manifest
