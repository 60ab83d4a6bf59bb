"""The README's Quickstart on real media with stereo and 5.1 audio: manifest -> validate ->
``extract --recipe mmsada --modalities rgb,audio`` (RGB K=5, audio K=1) -> every head ->
``evaluate``, all through the CLI. Slow (I3D at 224 px on the CPU): ``pytest -m slow``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from avda import cli
from avda.cache import Status, open_cache
from avda.train import heads

pytestmark = pytest.mark.slow

VIDEOS = {  # file, usable seconds, domain
    "test": ("test.avi", 6.4, "D1"),  # MP3 stereo
    "bigbuckbunny": ("bigbuckbunny.mp4", 5.2, "D2"),  # AAC 5.1
}


def _cli(*args: str) -> None:
    assert cli.main(list(args)) == 0, args


def test_quickstart_runs_every_head_on_real_stereo_media(tmp_path, media):
    videos = tmp_path / "videos"
    videos.mkdir()
    rows = []
    for video_id, (name, seconds, domain) in VIDEOS.items():
        (videos / name).symlink_to(media / "video" / name)
        for k in range(int(seconds // 1.2)):
            rows.append(
                {
                    "uid": f"{video_id}_{k}",
                    "video_id": video_id,
                    "video_path": name,
                    "domain": domain,
                    "split": "test" if k % 3 == 2 else "train",
                    "start_sec": round(k * 1.2, 2),
                    "stop_sec": round(k * 1.2 + 1.1, 2),
                    "verb_class": k % 2,
                }
            )
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    _cli("manifest", "validate", str(manifest), "--videos", str(videos))
    cache = tmp_path / "cache" / "i3d.zarr"
    _cli(
        *("extract", "--backbone", "i3d", "--modalities", "rgb,audio", "--recipe", "mmsada"),
        *("--manifest", str(manifest), "--videos", str(videos), "-o", str(cache)),
        *("--workers", "0", "-q"),
    )
    store = open_cache(cache)
    for modality, clips in (("rgb", 5), ("audio", 1)):
        assert store.modality_info(modality)["num_clips"] == clips
        assert (store.status(modality) == Status.DONE).all()
        assert np.isfinite(store.features(modality)[:]).all()
    _cli("cache", "info", str(cache))
    run_dirs = []
    for head in sorted(heads.HEADS.names()):
        out = tmp_path / "runs" / head
        _cli(
            *("train", "--head", head, "--cache", str(cache), "--source", "D1"),
            *("--target", "D2", "-o", str(out), "--epochs", "2", "-q"),
        )
        run_dirs.append(str(out))
    _cli("evaluate", *run_dirs, "-o", str(tmp_path / "results"))
    table = pd.read_csv(tmp_path / "results.csv")
    assert len(table) == len(run_dirs)
    assert table["target_test/verb/top1"].notna().all()
