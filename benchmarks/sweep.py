"""Wall time of a sweep: a serial loop vs ``avda sweep`` on a Dask LocalCluster, side by side.

The full version is the MM-SADA grid: 2 heads (source-only, DANN) x the 6 EPIC-55 pairs
(D1->D2 ... D3->D2) x 3 seeds = 36 runs, on a synthetic cache of domains D1, D2, D3 (class
clusters; each domain shifted). Both modes train the same runs with the same seeds:

- ``serial``: :func:`avda.sweep.run.run_serial`, one run after another in this process,
  with PyTorch's default threads (every core inside each run), then with one thread;
- ``dask``: :func:`avda.sweep.run.run_sweep` on a ``LocalCluster`` of ``--workers`` worker
  processes (default: one per core), one run per worker at a time, ``cores / workers`` PyTorch
  threads each; timed with and without starting the cluster (workers import PyTorch once).

It prints the wall times, runs per minute, the speed-up over the default serial loop, the load
average around the measurement (the machine may be shared: PyTorch's intra-op threads slow
down a lot when the cores are busy), and the largest difference of a run's target top-1
between the modes (the same runs must give the same numbers).

    python benchmarks/sweep.py --quick          # 2 heads x 2 pairs x 1 seed, small runs
    python benchmarks/sweep.py                  # 2 heads x 6 pairs x 3 seeds
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from distributed import LocalCluster

from avda import cache as cache_lib
from avda import dask_support
from avda.cache import Status
from avda.sweep import run as sweep

DOMAINS = ("D1", "D2", "D3")


def synthetic_cache(
    path: Path, *, per_class: int, num_classes: int = 8, clips: int = 5, features: int = 128
) -> Path:
    """Domains D1-D3 (train and test splits), modalities rgb and audio; each domain shifted."""
    rng = np.random.default_rng(0)
    rows = []
    for domain in DOMAINS:
        for split, count in (("train", per_class), ("test", max(1, per_class // 2))):
            for c in range(num_classes):
                for i in range(count):
                    rows.append(
                        {
                            "uid": f"{domain}-{split}-{c}-{i}",
                            "video_id": f"{domain}-v{c}",
                            "domain": domain,
                            "split": split,
                            "start_sec": 0.0,
                            "stop_sec": 1.0,
                            "verb_class": c,
                        }
                    )
    segments = pd.DataFrame(rows)
    store = cache_lib.create(path, segments, manifest_sha256="0" * 64, recipe={"name": "bench"})
    labels = segments["verb_class"].to_numpy()
    domain_index = segments["domain"].map({d: i for i, d in enumerate(DOMAINS)}).to_numpy()
    for modality in ("rgb", "audio"):
        centres = rng.normal(0, 1.5, (num_classes, features))
        shifts = rng.normal(0, 1.0, (len(DOMAINS), features))
        x = centres[labels][:, None, :] + shifts[domain_index][:, None, :]
        x = x + rng.normal(0, 1, (len(segments), clips, features))  # (N, K, D)
        info = {"backbone": "synthetic", "weights": None, "weights_sha256": None, "input_spec": {}}
        store.add_modality(modality, num_clips=clips, num_features=features, info=info)
        n = len(segments)
        store.write(modality, np.arange(n), x, np.full(n, int(Status.DONE)), [""] * n)
    return path


def make_spec(cache: Path, *, quick: bool, workers: int | None) -> sweep.SweepSpec:
    epochs = 4 if quick else 10
    config = {"epochs": epochs, "hidden_dim": 256, "batch_size": 32}
    return sweep.parse_spec(
        {
            "cache": str(cache),
            "heads": [{"name": "source-only", **config}, {"name": "dann", **config}],
            "settings": ["D1-D2", "D2-D3"] if quick else ["epic55-mmsada"],
            "seeds": 1 if quick else 3,
            "cluster": {"kind": "local", **({"workers": workers} if workers else {})},
        },
        source="benchmarks/sweep.py",
    )


def target_top1(summary: sweep.SweepSummary) -> dict[str, float]:
    return {
        name: outcome.metrics.get("target_test/verb/top1", float("nan"))
        for name, outcome in summary.outcomes.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 heads x 2 pairs x 1 seed")
    parser.add_argument("--workers", type=int, default=None, help="LocalCluster workers")
    parser.add_argument("--per-class", type=int, default=None, help="training segments/class")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("distributed").setLevel(logging.WARNING)
    per_class = args.per_class or (16 if args.quick else 48)
    with tempfile.TemporaryDirectory(prefix="avda-bench-sweep-") as folder:
        root = Path(folder)
        cache = synthetic_cache(root / "epic55.zarr", per_class=per_class)
        spec = make_spec(cache, quick=args.quick, workers=args.workers)
        tasks = len(sweep.plan(spec, root))
        workers = sweep.local_workers(spec.cluster)
        cores = dask_support.available_cores()
        load_before = os.getloadavg()[0]
        serial = {}
        for threads in (cores, 1):
            torch.set_num_threads(threads)
            began = time.perf_counter()
            summary = sweep.run_serial(spec, out=root / f"serial-{threads}")
            serial[threads] = (summary, time.perf_counter() - began)
        torch.set_num_threads(cores)
        began = time.perf_counter()
        with LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster:
            start_seconds = time.perf_counter() - began
            began = time.perf_counter()
            distributed = sweep.run_sweep(
                spec, out=root / "dask", scheduler=cluster.scheduler_address, progress=False
            )
            dask_seconds = time.perf_counter() - began
        load_after = os.getloadavg()[0]
    summaries = [summary for summary, _ in serial.values()] + [distributed]
    if any(summary.failed for summary in summaries):
        print(*(summary.text() for summary in summaries), sep="\n", file=sys.stderr)
        return 1
    reference = target_top1(serial[cores][0])
    difference = max(
        abs(reference[name] - other[name])
        for other in map(target_top1, summaries)
        for name in reference
    )
    print(
        f"{tasks} runs ({len(spec.heads)} heads x {len(spec.settings)} settings x "
        f"{len(spec.seeds)} seeds), {per_class} training segments per class and domain, "
        f"{cores} cores, load average {load_before:.1f} before, {load_after:.1f} after"
    )
    baseline = serial[cores][1]
    print(f"{'mode':<46}{'wall s':>8}{'runs/min':>10}{'speed-up':>10}")
    rows = (
        (f"serial loop, {cores} PyTorch threads (default)", baseline),
        ("serial loop, 1 PyTorch thread", serial[1][1]),
        (f"dask LocalCluster, {workers} workers, incl. start", start_seconds + dask_seconds),
        (f"dask LocalCluster, {workers} workers, running", dask_seconds),
    )
    for name, seconds in rows:
        rate = 60 * tasks / seconds
        print(f"{name:<46}{seconds:>8.1f}{rate:>10.1f}{baseline / seconds:>9.2f}x")
    print(f"cluster start (scheduler + {workers} worker processes): {start_seconds:.1f} s")
    print(f"largest |target top-1 difference| between the modes: {100 * difference:.2f} points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
