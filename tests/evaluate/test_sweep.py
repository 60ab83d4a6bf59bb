"""``avda sweep``: spec validation, planning, dask-jobqueue job scripts, and real sweeps on a
LocalCluster of 2 worker processes (one of them killed mid-run)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from tests.conftest import make_feature_cache, without_audio

from avda import runs
from avda.errors import ConfigError
from avda.sweep import run as sweep


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sweep") / "features.zarr"
    make_feature_cache(path, shift=1.0)
    return path


@pytest.fixture(scope="module")
def three_domain_cache(tmp_path_factory) -> Path:
    """A cache of domains D1, D2, D3 (segment table only: enough to validate and plan)."""
    from avda import cache as cache_lib

    path = tmp_path_factory.mktemp("mmsada") / "epic55.zarr"
    segments = pd.DataFrame(
        [
            {
                "uid": f"{d}-{i}",
                "video_id": f"{d}v",
                "domain": d,
                "split": "train",
                "start_sec": 0.0,
                "stop_sec": 1.0,
                "verb_class": i % 2,
            }
            for d in ("D1", "D2", "D3")
            for i in range(4)
        ]
    )
    cache_lib.create(path, segments, manifest_sha256="0" * 64, recipe={"name": "synthetic"})
    return path


def write_spec(folder: Path, spec: dict) -> Path:
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# ------------------------------------------------------------------------------ the spec
def test_spec_problems_are_reported_all_at_once_with_paths_and_lines(tmp_path, cache):
    path = tmp_path / "sweep.yaml"
    path.write_text(
        f"cache: {cache}\n"
        "heads:\n"
        "  - source-only\n"
        "  - name: dan\n"
        "  - name: dann\n"
        "    lr: fast\n"
        "    hiden_dim: 3\n"
        "settings: [source->target, source->D9]\n"
        "seeds: [0, one]\n"
        "sedes: 3\n"
        "cluster: {kind: kubernetes, memory: lots, walltime: soon}\n"
    )
    with pytest.raises(ConfigError) as caught:
        sweep.load_spec(path)
    message = str(caught.value)
    expected = [
        f"{path}:4: heads[1].name: unknown head 'dan'; did you mean 'dann'?",
        f"{path}:6: heads[2].lr: expected a number, got 'fast'",
        f"{path}:7: heads[2].hiden_dim: unknown dann key 'hiden_dim'; did you mean 'hidden_dim'?",
        f"{path}:8: settings[1]: unknown domain 'D9'",
        f"{path}:9: seeds[1]: expected an integer, got 'one'",
        f"{path}:10: sedes: unknown key 'sedes'; did you mean 'seeds'?",
        f"{path}:11: cluster.kind: expected one of local, slurm, pbs, got 'kubernetes'",
        f"{path}:11: cluster.memory: expected a size such as 16GB, got 'lots'",
        f"{path}:11: cluster.walltime: expected HH:MM:SS",
    ]
    for line in expected:
        assert line in message, f"missing {line!r} in:\n{message}"
    assert "9 problems" in message


def test_spec_missing_parts_and_bad_cache(tmp_path):
    with pytest.raises(ConfigError) as caught:
        sweep.parse_spec({"cache": str(tmp_path / "none.zarr")}, source="s.yaml")
    message = str(caught.value)
    assert "s.yaml: cache: cache" in message and "does not exist" in message
    assert "s.yaml: heads: expected a list of heads" in message
    assert "s.yaml: settings: expected a list of settings" in message
    with pytest.raises(ConfigError, match="exactly one of cache"):
        sweep.parse_spec({"cache": "a", "caches": {"b": "c"}, "heads": ["dann"]})


def test_plan_expands_groups_heads_and_seeds(tmp_path, three_domain_cache):
    spec = sweep.load_spec(
        write_spec(
            tmp_path,
            {
                "cache": str(three_domain_cache),
                "heads": ["source-only", {"name": "dann", "label": "DANN", "lr": 0.0005}],
                "settings": ["epic55-mmsada", "D1,D2->D3", {"source": "D3", "target": ["D1"]}],
                "seeds": 3,
                "out": "runs",
            },
        )
    )
    assert spec.out == tmp_path / "runs"
    assert [s.name for s in spec.settings] == [
        "D1-D2",
        "D1-D3",
        "D2-D1",
        "D2-D3",
        "D3-D1",
        "D3-D2",
        "D1,D2-D3",
    ]
    tasks = sweep.plan(spec, spec.out)
    assert len(tasks) == 2 * 7 * 3
    first, last = tasks[0], tasks[-1]
    assert first.name == "source-only/D1-D2/seed0" and first.overrides == {}
    assert last.name == "DANN/D1,D2-D3/seed2" and last.method == "DANN"
    assert last.head == "dann" and last.overrides == {"lr": 0.0005}
    assert last.source == ("D1", "D2") and last.target == ("D3",)
    assert len({t.run for t in tasks}) == len(tasks)


def test_usage_errors_come_before_any_work(tmp_path, three_domain_cache):
    """They name run_sweep's keywords: it said --scheduler, --cluster and --queue-timeout,
    options a Python caller never typed (`avda sweep`'s, tests/test_cli_errors.py)."""
    spec = sweep.parse_spec(
        {"cache": str(three_domain_cache), "heads": ["dann"], "settings": ["D1-D2"]}
    )
    with pytest.raises(ConfigError, match=r"^give either scheduler ADDRESS or cluster KIND, not"):
        sweep.run_sweep(spec, out=tmp_path, scheduler="tcp://127.0.0.1:1", cluster="local")
    with pytest.raises(ConfigError, match=r"^cluster must be one of local, slurm, pbs, got 'k"):
        sweep.run_sweep(spec, out=tmp_path, cluster="kubernetes")
    with pytest.raises(ConfigError, match=r"^queue_timeout bounds .*: leave queue_timeout out, or"):
        sweep.run_sweep(spec, out=tmp_path, cluster="local", queue_timeout=5)
    # out="r.zarr": refused as avda sweep --out r.zarr is (it made a folder of runs so named)
    with pytest.raises(ConfigError) as caught:
        sweep.run_sweep(spec, out=tmp_path / "r.zarr", cluster="kubernetes")
    assert str(caught.value) == (f"out {tmp_path / 'r.zarr'} is named as a Zarr cache; avda "
        f"writes a folder of runs there: give the folder's path: {tmp_path / 'r'}")  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        sweep.run_sweep(spec)
    # the spec made in Python: its key, and run_sweep's keyword (it said "give out DIR or out:
    # in the spec")
    assert str(caught.value) == "no output folder: give out=DIR or put 'out: DIR' in the spec"
    assert not any(tmp_path.iterdir())
    path = write_spec(tmp_path, {"cache": str(three_domain_cache), "heads": ["dann"],
                                 "settings": ["D1-D2"]})  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        sweep.run_sweep(path)  # the spec's file named (`avda sweep`'s words: test_cli_errors)
    assert str(caught.value) == f"no output folder: give out=DIR or put 'out: DIR' in {path}"
    assert [p.name for p in tmp_path.iterdir()] == ["sweep.yaml"]


def test_check_names_the_caches_not_there_yet_as_resolved_under_the_spec(tmp_path, capsys):
    """A spec's relative cache is under its folder (examples/../features = features/), not
    the shell's; --check said only '24 run(s) on caches that do not exist yet', so a cache
    written to ../features from the spec's parent folder went unnoticed until the sweep."""
    from avda import cli

    (tmp_path / "examples").mkdir()
    data = {"cache": "../features/c.zarr", "heads": ["dann"], "settings": ["D1-D2"],
            "seeds": [0, 1]}  # fmt: skip
    code = cli.main(["sweep", str(write_spec(tmp_path / "examples", data)), "--check"])
    out = capsys.readouterr().out
    where = (tmp_path / "features" / "c.zarr").resolve()
    assert code == 0 and f"not checked: 2 run(s) on caches that do not exist yet: {where} " in out


def test_a_published_key_that_is_no_setting_of_the_spec_is_a_spec_problem(tmp_path, capsys):
    """A typo in a published cell's key (sourc->target) dropped its number from the table
    without a word; the loader and --check name the key, the row and what it could be."""
    from avda import cli

    rows = {
        "dann": {"sourc->target": 40.0, "source->target": 41.0, "Mean": 41.0},
        # a column, a metric column and a paper's setting the spec does not run: kept
        "source-only": {"source→target": 30.0, "verb top-1": 30.0, "D1-D2": 30.0},
        "adabn": {"Mena": 20.0},
    }
    data = {
        "cache": "nowhere.zarr",
        "heads": ["dann", "source-only", "adabn"],
        "settings": ["source->target"],
        "published": {"source": "Table 1", "rows": rows},
    }
    with pytest.raises(ConfigError) as caught:
        sweep.load_spec(write_spec(tmp_path, data), open_caches=False)
    message = str(caught.value)
    assert (
        "published.rows.dann.sourc->target: unknown setting or column 'sourc->target'; did you "
        "mean 'source-target'? valid: Mean, source-target, source→target (row 'dann': its "
        "number would be left out of the table)"
    ) in message
    assert "published.rows.adabn.Mena: unknown setting or column 'Mena'" in message
    assert "source-only" not in message and "2 problems" in message
    code = cli.main(["sweep", str(tmp_path / "sweep.yaml"), "--check"])
    assert code == 1 and "unknown setting or column 'sourc->target'" in capsys.readouterr().err
    del rows["dann"]["sourc->target"], rows["adabn"]
    spec = sweep.load_spec(write_spec(tmp_path, data), open_caches=False)
    assert set(spec.published["rows"]) == {"dann", "source-only"}
    # the set the numbers were measured on: one of avda's evaluation sets
    data["published"]["set"] = "target_tset"
    with pytest.raises(ConfigError, match="published.set: unknown set 'target_tset'; did you "
                       "mean 'target_test'"):  # fmt: skip
        sweep.load_spec(write_spec(tmp_path, data), open_caches=False)
    data["published"]["set"] = "target_test"
    spec = sweep.load_spec(write_spec(tmp_path, data), open_caches=False)
    assert spec.published["set"] == "target_test"


def test_a_published_paper_setting_in_place_of_one_the_spec_runs_is_a_spec_problem(
    tmp_path, three_domain_cache
):
    """A paper's setting the spec does not run is kept (it makes the published mean
    comparable), but typed for one the spec runs (D3-D1 for D1-D3) its number was left out of
    the table without a word: a row with such a setting that lacks one of the spec's is named,
    with the spec's settings it could be."""
    rows = {
        "dann": {"D1-D2": 40.0, "D3-D1": 41.0},
        # every setting of the spec and more of the paper's, or the spec's given as null: kept
        "source-only": {"D1-D2": 30.0, "D1→D3": 31.0, "D2-D1": 33.0, "D3-D2": 34.0},
        "adabn": {"D1-D2": 20.0, "D2-D3": 21.0, "D1-D3": None},
        "mmd": {"Mean": 25.0},  # only the paper's mean
    }
    data = {
        "cache": str(three_domain_cache),
        "heads": ["dann", "source-only", "adabn", "mmd"],
        "settings": ["D1-D2", "D1-D3"],
        "published": {"source": "Table 1", "rows": rows},
    }
    with pytest.raises(ConfigError) as caught:
        sweep.load_spec(write_spec(tmp_path, data))
    message = str(caught.value)
    assert "1 problem in the sweep spec" in message
    assert (
        "published.rows.dann.D3-D1: 'D3-D1' is a setting the spec does not run (its number "
        "counts only in the published Mean), and row 'dann' has no number for the spec's "
        "D1-D3: a typo of one of them? (where the paper reports none, write it with null: "
        "D1-D3: null)"
    ) in message
    rows["dann"]["D1-D3"] = None
    assert sweep.load_spec(write_spec(tmp_path, data)).published["rows"]["dann"]["D3-D1"] == 41.0


def test_a_published_metric_column_no_table_of_the_spec_has_is_a_spec_problem(
    tmp_path, three_domain_cache
):
    """The words after a setting (or alone) must name a metric column of the table: EPIC-100's
    where the table can be epic100, a protocol's metrics where it scores several. A typo
    (``vreb top-1``) dropped the number from the table without a word."""

    def problems(protocol, cells, cache="nowhere.zarr", heads=("source-only",)):
        data = {
            "cache": cache,
            "heads": list(heads),
            "published": {"source": "T", "rows": {"x": cells}},
        }
        if protocol:
            data["protocol"] = protocol
        else:
            data["settings"] = ["D1-D2"]
        with pytest.raises(ConfigError) as caught:
            sweep.load_spec(write_spec(tmp_path, data), open_caches=False)
        return str(caught.value)

    message = problems("ta3n-epic100", {"verb top-1": 40.0, "vreb top-1": 20.0})
    assert (
        "1 problem" in message
        and (
            "published.rows.x.vreb top-1: unknown metric column 'vreb top-1'; did you mean "
            "'verb top-1'? valid: action top-1, action top-5, noun top-1, noun top-5, verb top-1, "
            "verb top-5 (EPIC-100's columns; row 'x': its number would be left out of the table)"
        )
        in message
    )
    message = problems(
        "audio-adaptive-charadesego",
        {"charades-ego mAP-authors": 26.3, "charades-ego mAP-autors": 26.0, "Mean mAP-presnt": 1},
    )
    assert "2 problems" in message
    assert (
        "published.rows.x.charades-ego mAP-autors: unknown metric column 'mAP-autors'; did you "
        "mean 'mAP-authors'? valid: action top-1, action top-5, mAP-authors, mAP-present, noun "
        "top-1, noun top-5, verb top-1, verb top-5 (EPIC-100's columns and protocol "
        "audio-adaptive-charadesego's metrics; row 'x'"
    ) in message
    assert "unknown metric column 'mAP-presnt'; did you mean 'mAP-present'?" in message
    # a cache whose segments have no noun labels: its table is never EPIC-100's
    message = problems(None, {"D1-D2": 30.0, "verb top-1": 30.0}, cache=str(three_domain_cache))
    assert (
        "published.rows.x.verb top-1: 'verb top-1' is no metric column: the table has one "
        "number per setting (write the setting alone; row 'x'"
    ) in message


def test_duplicate_labels_are_rejected(three_domain_cache):
    with pytest.raises(ConfigError, match=r"heads\[1\]\.label: label 'dann' is already used"):
        sweep.parse_spec(
            {"cache": str(three_domain_cache), "heads": ["dann", "dann"], "settings": ["D1-D2"]}
        )


def test_slurm_and_pbs_job_scripts_carry_the_spec_resources(tmp_path, three_domain_cache):
    spec = sweep.load_spec(
        write_spec(
            tmp_path,
            {
                "cache": str(three_domain_cache),
                "heads": ["dann"],
                "settings": ["D1-D2"],
                "cluster": {
                    "kind": "slurm",
                    "workers": 4,
                    "cores": 8,
                    "memory": "32GB",
                    "processes": 2,
                    "gpus": 2,
                    "walltime": "02:00:00",
                    "queue": "gpu",
                    "account": "vision",
                    "job_script_prologue": ["source /opt/avda/.venv/bin/activate"],
                    "log_directory": "logs",
                    "local_directory": "/scratch/avda",
                },
            },
        )
    )
    # relative to the spec file, as its cache and out are; absolute ones stay as they are
    spec_folder = tmp_path  # write_spec puts the spec there
    assert spec.cluster.log_directory == str(spec_folder / "logs")
    assert spec.cluster.local_directory == "/scratch/avda"
    slurm = sweep.make_jobqueue_cluster(spec.cluster)
    try:
        script = slurm.job_script()
    finally:
        slurm.close()
    for line in (
        "#SBATCH -p gpu",
        "#SBATCH -A vision",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=30G",  # dask-jobqueue writes 32 GB as 30 GiB
        "#SBATCH -t 02:00:00",
        "#SBATCH --gres=gpu:2",
        "source /opt/avda/.venv/bin/activate",
        "--nworkers 2",
        "--resources train=1",
    ):
        assert line in script, f"{line!r} not in\n{script}"
    pbs = sweep.make_jobqueue_cluster(spec.cluster, "pbs")
    try:
        script = pbs.job_script()
    finally:
        pbs.close()
    assert "#PBS -l select=1:ncpus=8:mem=32GB:ngpus=2" in script
    assert "#PBS -l walltime=02:00:00" in script and "#PBS -q gpu" in script
    with pytest.raises(ConfigError, match="needs cluster.cores and cluster.memory"):
        sweep.make_jobqueue_cluster(sweep.ClusterSpec(kind="slurm"))


# ------------------------------------------------------------------------------ real sweeps
def _kill_a_worker_mid_run(cluster, out: Path, epochs: int, stop: threading.Event) -> dict:
    """SIGKILL the worker process training a run that has a checkpoint but is far from done.

    Reads the in-process scheduler's state (no second client): which worker each task is on.
    """
    killed: dict = {}
    while not stop.is_set() and not killed:
        pids = {
            nanny.worker_address: nanny.process.pid
            for nanny in cluster.workers.values()
            if nanny.process is not None and nanny.process.pid
        }
        for key, state in list(cluster.scheduler.tasks.items()):
            worker = state.processing_on
            run = out / str(key).removeprefix("avda-train-")
            if worker is None or worker.address not in pids:
                continue
            done = len(runs.read_metrics(run))
            if (run / runs.CHECKPOINT).exists() and 1 <= done <= epochs - 4:
                os.kill(pids[worker.address], signal.SIGKILL)
                killed.update(pid=pids[worker.address], run=run, epochs_done=done)
                break
        time.sleep(0.02)
    return killed


def test_sweep_survives_a_killed_worker_and_resumes_its_run(tmp_path, cache):
    from distributed import LocalCluster

    epochs = 10
    spec = sweep.parse_spec(
        {
            "cache": str(cache),
            "heads": [
                {"name": "source-only", "epochs": epochs, "hidden_dim": 32},
                {"name": "dann", "epochs": epochs, "hidden_dim": 32},
            ],
            "settings": ["source->target"],
            "seeds": [0, 1],
            "retries": 1,
        }
    )
    out = tmp_path / "runs"
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as cluster:
        killed: dict = {}
        stop = threading.Event()
        killer = threading.Thread(
            target=lambda: killed.update(_kill_a_worker_mid_run(cluster, out, epochs, stop))
        )
        killer.start()
        try:
            summary = sweep.run_sweep(
                spec, out=out, scheduler=cluster.scheduler_address, progress=False
            )
        finally:
            stop.set()
            killer.join()
    assert killed, "no task was caught mid-run: the runs ended before a worker could be killed"
    assert summary.ok, summary.text()
    assert len(summary.completed) == 4 and not summary.failed
    name = str(killed["run"].relative_to(out))
    outcome = summary.outcomes[name]
    assert outcome.resumed_from_epoch >= 1, summary.text()
    assert f"resumed {name} from epoch" in summary.text()
    carried_on = sum(1 for o in summary.completed if o.resumed_from_epoch)
    assert f"4 trained ({carried_on} of them resumed)" in summary.text(), summary.text()
    for task in summary.tasks:
        assert runs.is_complete(task.run)
        assert [r["epoch"] for r in runs.read_metrics(task.run)] == list(range(1, epochs + 1))
    index = json.loads((out / sweep.INDEX).read_text())
    assert {e["status"] for e in index["runs"]} == {"complete"}
    assert not (out / sweep.FAILURES).exists()


def test_sweep_on_its_own_local_cluster_reports_failures_and_skips_finished_runs(
    tmp_path, cache, monkeypatch
):
    spec_data = {
        "cache": str(cache),
        "heads": [
            {"name": "source-only", "epochs": 2, "hidden_dim": 16},
            # valid field by field, but the head refuses the combination when it is built
            {
                "name": "dann",
                "label": "dann-mid",
                "fusion": "mid",
                "discriminator": "per-modality",
                "epochs": 2,
            },
        ],
        "settings": ["source->target"],
        "seeds": [0],
        "out": "runs",
        "cluster": {"kind": "local", "workers": 2},
    }
    summary = sweep.run_sweep(sweep.load_spec(write_spec(tmp_path, spec_data)), progress=False)
    assert not summary.ok
    assert [o.name for o in summary.completed] == ["source-only/source-target/seed0"]
    assert [o.name for o in summary.failed] == ["dann-mid/source-target/seed0"]
    assert "per-modality needs fusion=late" in summary.failed[0].error
    failures = pd.read_csv(tmp_path / "runs" / sweep.FAILURES)
    assert failures["method"].tolist() == ["dann-mid"]
    assert "ConfigError" in failures["error"][0]
    # the run's warnings came back from its worker in the spec's words (a head's epochs: 2)
    kept = (tmp_path / "runs" / sweep.WARNINGS).read_text()
    assert "(leave epochs unset to train the recipe's amount)" in kept and "--" not in kept

    # Again: the finished run is skipped without starting a cluster; a changed config is refused.
    spec_data["heads"] = [spec_data["heads"][0]]
    began = time.perf_counter()
    again = sweep.run_sweep(sweep.load_spec(write_spec(tmp_path, spec_data)), progress=False)
    assert again.ok and [o.status for o in again.outcomes.values()] == ["skipped"]
    assert time.perf_counter() - began < 5
    # ... anywhere: a finished sweep reruns (its summary, its index) where SLURM's sbatch is
    # not (a laptop), though its workers would need it
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    slurm = sweep.run_sweep(
        sweep.load_spec(write_spec(tmp_path, spec_data)), cluster="slurm", progress=False
    )
    assert slurm.ok and [o.status for o in slurm.outcomes.values()] == ["skipped"]
    monkeypatch.undo()
    spec_data["heads"][0]["hidden_dim"] = 8
    changed = sweep.run_sweep(sweep.load_spec(write_spec(tmp_path, spec_data)), progress=False)
    assert "another head config" in changed.failed[0].error
    assert "head_config.hidden_dim: the run's 16 -> 8" in changed.failed[0].error
    # A run finished with other tasks (e.g. before its protocol sized the classes) is not this
    # task's run either, though its head config is the spec's.
    spec_data["heads"][0]["hidden_dim"] = 16
    run = tmp_path / "runs/source-only/source-target/seed0"
    config = runs.read_config(run)
    config["tasks"][0]["num_classes"] += 3
    runs.write_config(run, config)
    widths = sweep.run_sweep(sweep.load_spec(write_spec(tmp_path, spec_data)), progress=False)
    assert [o.status for o in widths.outcomes.values()] == ["failed"], widths.text()
    assert "another tasks" in widths.failed[0].error
    metrics = json.loads((tmp_path / "runs/source-only/source-target/seed0/run.json").read_text())
    assert set(metrics["metrics"]) >= {"target_test/verb/top1"}
    assert np.isfinite(metrics["metrics"]["target_test/verb/top1"])


def test_a_refused_resume_is_not_reported_as_resumed(tmp_path, cache):
    """An interrupted run, rerun with another config: train refuses it (its epochs stand) and
    the summary says it failed, not that it resumed from its checkpoint."""
    spec_data = {
        "cache": str(cache),
        "heads": [{"name": "source-only", "epochs": 3, "hidden_dim": 16}],
        "settings": ["source->target"],
        "seeds": [0],
        "out": "runs",
        "cluster": {"kind": "local", "workers": 1},
    }
    first = sweep.run_sweep(sweep.load_spec(write_spec(tmp_path, spec_data)), progress=False)
    assert first.ok
    run = tmp_path / "runs/source-only/source-target/seed0"
    (run / runs.STATUS).unlink()  # as if killed after its last epoch's metrics line...
    import torch

    state = torch.load(run / runs.CHECKPOINT, weights_only=True)
    state["epoch"] = 1  # ...with its checkpoint of epoch 1 (checkpoints are not every epoch)
    torch.save(state, run / runs.CHECKPOINT)
    spec_data["heads"][0]["epochs"] = 2
    again = sweep.run_sweep(sweep.load_spec(write_spec(tmp_path, spec_data)), progress=False)
    (outcome,) = again.failed
    assert "another configuration" in outcome.error and "epochs" in outcome.error
    assert outcome.resumed_from_epoch == 0 and "resumed" not in again.text()
    assert [r["epoch"] for r in runs.read_metrics(run)] == [1, 2, 3]


def test_tasks_carry_absolute_paths_for_workers_elsewhere(tmp_path, cache, monkeypatch):
    """A worker of the user's own cluster runs in its own directory: a relative cache or run
    path there named another place (the runs failed "cache does not exist", or were written in
    the worker's directory while the sweep said complete)."""
    monkeypatch.chdir(tmp_path)
    spec = sweep.load_spec(write_spec(tmp_path, {
        "cache": str(cache), "heads": ["source-only"], "settings": ["source->target"],
        "seeds": [0], "out": "runs"}))  # fmt: skip
    (task,) = sweep.plan(spec, "runs")
    assert task.run.is_absolute() and task.run == tmp_path / "runs" / task.name
    assert Path(task.cache).is_absolute()


def test_a_run_the_scheduler_lost_is_complete_if_its_worker_finished_it(tmp_path):
    """A killed scheduler: its futures end cancelled, with no exception ("NoneType: None");
    a run its worker finished is complete, another says to run the command again."""

    class Lost:
        status = "cancelled"

        def exception(self):
            raise AssertionError("not asked of a cancelled future")

    done = tmp_path / "done"
    done.mkdir()
    (done / runs.STATUS).write_text(json.dumps({"status": "complete", "metrics": {"m": 0.5}}))
    task = sweep.SweepTask(name="x", run=done, cache=tmp_path, cache_name="c", head="dann",
                           method="dann", setting="a-b", source=("a",), target=("b",), seed=0,
                           overrides={})  # fmt: skip
    finished = sweep._outcome(Lost(), task)
    assert finished.status == "complete" and finished.metrics == {"m": 0.5}
    lost = sweep._outcome(Lost(), dataclasses.replace(task, run=tmp_path / "other"))
    assert lost.status == "failed" and "the Dask scheduler lost this run" in lost.error
    assert "run the same command again" in lost.error


def test_a_worker_without_avda_is_named_with_the_fix():
    class Client:
        def scheduler_info(self):
            return {"workers": {"tcp://w1": {"host": "h", "nthreads": 1},
                                "tcp://w2": {"host": "h", "nthreads": 1}}}  # fmt: skip

        def run(self, function, on_error="raise"):
            assert on_error == "return"
            return {"tcp://w1": 4, "tcp://w2": ModuleNotFoundError("No module named 'avda'")}

    expected = r"Dask worker tcp://w2 cannot run avda \(ModuleNotFoundError: No module named"
    with pytest.raises(ConfigError, match=expected + r" 'avda'\); install avda"):
        sweep.scheduler_torch_threads(Client())


def test_a_second_sweep_into_the_same_folder_is_refused(tmp_path, cache):
    from avda.cache.lock import SweepBusyError, sweep_lock

    spec = sweep.load_spec(write_spec(tmp_path, {
        "cache": str(cache), "heads": ["source-only"], "settings": ["source->target"],
        "seeds": [0], "out": "runs"}))  # fmt: skip
    with sweep_lock(tmp_path / "runs"):
        with pytest.raises(SweepBusyError, match=r"sweep output .*runs is being written by pid "
                           rf"{os.getpid()} .*\(avda sweep\)"):  # fmt: skip
            sweep.run_sweep(spec, progress=False)
    assert not (tmp_path / "runs" / sweep.INDEX).exists()


def test_a_lost_schedulers_reconnect_traceback_is_not_printed(caplog):
    """A killed scheduler: the client logged a 40-line traceback (its reconnect loop cancelled
    at close) and "Failed to reconnect" below the sweep's own report of the lost runs."""
    import asyncio

    from avda.dask_support import quiet_lost_scheduler_logs

    quiet_lost_scheduler_logs()
    client = logging.getLogger("distributed.client")
    with caplog.at_level(logging.WARNING):
        try:
            raise asyncio.CancelledError
        except asyncio.CancelledError:
            client.exception("")
        client.error("Failed to reconnect to scheduler after 30.00 seconds, closing client")
        try:
            raise OSError("disk full")
        except OSError:
            client.exception("another error")
    assert [r.getMessage() for r in caplog.records] == ["another error"]


def test_an_interrupted_sweep_indexes_the_runs_it_finished(tmp_path, cache, monkeypatch):
    # After Ctrl-C, sweep.json listed every run of the sweep as "pending", the finished ones too
    spec_data = {
        "cache": str(cache),
        "heads": [{"name": "source-only", "epochs": 1, "hidden_dim": 8}],
        "settings": ["source->target"],
        "seeds": [0, 1],
        "out": "runs",
        "cluster": {"kind": "local", "workers": 1},
    }
    real = sweep._outcome
    seen = []

    def interrupted_at_the_second(future, task):
        seen.append(task.name)
        if len(seen) == 2:  # the second run finished on its worker; the user presses Ctrl-C
            future.result()
            raise KeyboardInterrupt
        return real(future, task)

    monkeypatch.setattr(sweep, "_outcome", interrupted_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(sweep.load_spec(write_spec(tmp_path, spec_data)), progress=False)
    index = json.loads((tmp_path / "runs" / sweep.INDEX).read_text())
    assert {e["run"]: e["status"] for e in index["runs"]} == {
        "source-only/source-target/seed0": "complete",
        "source-only/source-target/seed1": "complete",
    }


def test_a_second_spec_into_the_same_folder_keeps_the_first_specs_runs_in_the_table(
    tmp_path, cache
):
    # sweep.json was replaced by the second spec's runs: `avda evaluate OUT` then dropped the
    # first spec's finished runs from its table without a word
    from avda.evaluate import aggregate

    specs = {}
    for name, head in (("first", "source-only"), ("second", "dann")):
        (tmp_path / name).mkdir()
        specs[name] = sweep.load_spec(write_spec(tmp_path / name, {
            "cache": str(cache), "heads": [{"name": head, "epochs": 1, "hidden_dim": 8}],
            "settings": ["source->target"], "seeds": [0], "out": str(tmp_path / "runs"),
        }))  # fmt: skip
        assert sweep.run_serial(specs[name], out=tmp_path / "runs").ok
    index = json.loads((tmp_path / "runs" / sweep.INDEX).read_text())
    assert [(e["method"], e["status"]) for e in index["runs"]] == [
        ("source-only", "complete"),
        ("dann", "complete"),
    ]
    assert [run.parts[-3] for run in aggregate.find_runs([tmp_path / "runs"])] == [
        "source-only",
        "dann",
    ]
    # the first spec again: its run is listed once (after the runs of the other spec)
    assert sweep.run_serial(specs["first"], out=tmp_path / "runs").skipped
    index = json.loads((tmp_path / "runs" / sweep.INDEX).read_text())
    assert [e["method"] for e in index["runs"]] == ["dann", "source-only"]


def test_a_second_spec_keeps_the_first_specs_failures_listed(tmp_path, cache):
    # sweep-failures.csv was rewritten from the second spec's runs alone (and deleted when they
    # all passed), while sweep.json kept the first spec's failed entries pointing at it
    specs = {}
    heads = {
        "first": {"name": "dann", "label": "broken", "discriminator": "per-modality",
                  "fusion": "mid", "epochs": 1},
        "second": {"name": "source-only", "epochs": 1, "hidden_dim": 8},
    }  # fmt: skip
    for name, head in heads.items():
        (tmp_path / name).mkdir()
        specs[name] = sweep.load_spec(write_spec(tmp_path / name, {
            "cache": str(cache), "heads": [head], "settings": ["source->target"],
            "seeds": [0], "out": str(tmp_path / "runs")}))  # fmt: skip
    assert not sweep.run_serial(specs["first"], out=tmp_path / "runs").ok
    assert sweep.run_serial(specs["second"], out=tmp_path / "runs").ok
    listed = pd.read_csv(tmp_path / "runs" / sweep.FAILURES)
    assert listed["method"].tolist() == ["broken"]
    assert "per-modality" in listed["error"].iloc[0]


def test_a_sweeps_warnings_and_failure_records_name_the_specs_keys(tmp_path, caplog):
    """What the runs of a spec log and record named `avda train`'s options: 'leave --epochs
    unset' for a head's ``epochs:``, '--set modalities=[rgb]' for its field (the spec's key
    is ``modalities: [rgb]``), in its warnings, the failure records (summary, sweep.json,
    sweep-failures.csv) and --check's problems (the CLI's words: tests/test_api.py)."""
    from avda.sweep.spec import spec_words

    without_audio(make_feature_cache(tmp_path / "c.zarr", per_class=4))
    spec = sweep.parse_spec({
        "cache": str(tmp_path / "c.zarr"), "settings": ["source->target"], "seeds": [0],
        "heads": [{"name": "source-only", "epochs": 1, "hidden_dim": 8},
                  {"name": "rna", "epochs": 1, "modalities": ["rgb"]}],
    }, source="spec")  # fmt: skip
    problems, _ = sweep.task_problems(spec)
    assert problems == ["rna/source-target: rna needs at least two modalities (it aligns the "
                        "ratio of their feature norms), got ['rgb']; select more with "
                        "modalities: [rgb,audio]"]  # fmt: skip
    with caplog.at_level("WARNING"):
        summary = sweep.run_serial(spec, out=tmp_path / "runs")
    assert "(leave epochs unset to train the recipe's amount)" in caplog.text
    assert "their audio features are zeros; modalities: [rgb] leaves audio out" in caplog.text
    assert "--" not in caplog.text
    (failed,) = summary.failed
    assert failed.error.endswith("select more with modalities: [rgb,audio]"), failed.error
    listed = pd.read_csv(tmp_path / "runs" / sweep.FAILURES)["error"].tolist()
    index = json.loads((tmp_path / "runs" / sweep.INDEX).read_text())["runs"]
    assert listed == [failed.error] == [e["error"] for e in index if e["status"] == "failed"]
    # on a Dask worker the warnings are kept for sweep-warnings.log, in the same words
    with sweep.collect_warnings(on=True) as kept:
        sweep.run_task(dataclasses.replace(summary.tasks[0], run=tmp_path / "again"))
    assert any("leave epochs unset" in w for w in kept) and not any("--" in w for w in kept)
    # a hint that sets several fields names each as the head's key
    hint = "(--set batch_size=N --set target_batch_size=N); remove that --set"
    assert spec_words(hint) == "(batch_size: N, target_batch_size: N); remove that head field"
    assert spec_words("device 'tpu' (--device 'tpu')") == "device 'tpu' (device: 'tpu')"


def test_a_path_in_a_failure_record_is_left_as_it_is():
    """A folder named like an option in an unquoted path (/data/--set/c.zarr) is no option:
    the failure record said '/data/head field/c.zarr'; options beside it, and two options
    joined by a slash (--domain/--split), are still the spec's keys."""
    from avda.sweep.spec import spec_words

    error = (
        "cache /data/--set/c.zarr does not exist (runs/--epochs/x, in runs/--o/, "
        "(/x/--seed)); run with --epochs 3 and --domain/--split"
    )
    outcome = sweep.TaskOutcome("dann/a-b/seed0", "failed", error=error)
    assert outcome.error == (
        "cache /data/--set/c.zarr does not exist (runs/--epochs/x, in runs/--o/, "
        "(/x/--seed)); run with epochs 3 and --domain/--split"
    )
    assert spec_words("--epochs/--seed, or --device") == "epochs/seeds, or device"


_HOLD = """
import pickle, sys, time
from avda.cache.lock import run_lock
from avda.sweep import run as sweep
task = pickle.loads(bytes.fromhex(sys.argv[1]))
if sys.argv[2] == "train":  # the lost worker trains the run to its end
    print(sweep.run_task(task).status, flush=True)
else:  # it holds the folder for a while, then ends (killed, past its walltime)
    with run_lock(task.run, what="avda train"):
        time.sleep(float(sys.argv[2]))
"""


@pytest.mark.parametrize("holder", ["train", "4", "gives up"])
def test_a_run_folder_another_worker_trains_is_waited_for_not_failed(
    tmp_path, cache, caplog, holder
):
    """A worker the sweep lost (network split) still trains the run when its task runs on
    another worker: the run lock stops the second one, which used to fail the run (busy
    folder) although it would finish. The task waits, naming the holder, then finds the run
    complete (skipped) or trains it; each epoch is trained once. Past its bound it fails in one
    line naming the holder and the wait."""
    import pickle
    import subprocess
    import sys

    from avda.cache.lock import training_holder

    spec = sweep.parse_spec({
        "cache": str(cache), "heads": [{"name": "source-only", "epochs": 4, "hidden_dim": 16}],
        "settings": ["source->target"], "seeds": [0]})  # fmt: skip
    (task,) = sweep.plan(spec, tmp_path / "runs")
    src = Path(__file__).resolve().parents[2] / "src"
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    hold = "8" if holder == "gives up" else holder
    other = subprocess.Popen(
        [sys.executable, "-c", _HOLD, pickle.dumps(task).hex(), hold],
        env=env, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while training_holder(task.run) is None:  # the other worker has the folder
            assert other.poll() is None and time.monotonic() < deadline, "it never took the lock"
            time.sleep(0.05)
        caplog.set_level(logging.INFO, logger="avda.sweep.run")
        waiting = dataclasses.replace(task, busy_wait=2.0 if holder == "gives up" else 60.0)
        outcome = sweep.run_task(waiting)
    finally:
        said, _ = other.communicate(timeout=120)
    wanted = {"train": "skipped", "4": "complete", "gives up": "failed"}[holder]
    assert outcome.status == wanted, outcome
    named = [r.message for r in caplog.records if f"pid {other.pid} on host" in r.message]
    assert named and "is being trained by" in named[0], caplog.text
    if holder == "gives up":
        assert outcome.error.startswith("RunBusyError: waited 2 s for it: run ")
        assert f"pid {other.pid}" in outcome.error and "\n" not in outcome.error
        return
    if holder == "train":
        assert said.strip() == "complete"
    assert [m["epoch"] for m in runs.read_metrics(task.run)] == [1, 2, 3, 4]
    assert runs.is_complete(task.run)


def test_run_sweep_takes_the_spec_as_a_dict(three_domain_cache, tmp_path):
    """From Python (a notebook) the spec is a dict as well as a YAML file; a dict was refused
    with os.fspath's TypeError."""
    data = {"cache": str(three_domain_cache), "heads": ["dan"], "settings": ["D1-D2"]}
    with pytest.raises(ConfigError, match=r"(?s)^spec: 1 problem.*heads\[0\]: unknown head 'dan'"):
        sweep.run_sweep(data, out=tmp_path)
    data["heads"] = ["source-only"]
    with pytest.raises(ConfigError, match="kubernetes"):  # parsed: on to the usage errors
        sweep.run_sweep(data, out=tmp_path, cluster="kubernetes")


def test_a_sweep_summary_shows_its_one_line_not_every_task(tmp_path):
    """A notebook echoing run_sweep's result printed every task's and outcome's fields."""
    task = sweep.SweepTask(
        name="dann/s-t/seed0", run=tmp_path / "r", cache=tmp_path / "c.zarr", cache_name="c",
        head="dann", method="dann", setting="s-t", source=("s",), target=("t",), seed=0,
        overrides={},
    )  # fmt: skip
    outcome = sweep.TaskOutcome(name=task.name, status="complete", seconds=1.0)
    summary = sweep.SweepSummary(tmp_path, [task], {task.name: outcome}, seconds=2.0)
    assert repr(summary) == (
        f"SweepSummary(1 runs in {tmp_path}: 1 trained, 0 already complete, 0 failed (2.0 s))"
    )


def test_evaluate_of_a_sweep_stopped_before_any_run_is_one_line(
    tmp_path, cache, monkeypatch, capsys
):
    # A sweep killed before any run made its folder (its index lists every run pending):
    # `avda evaluate OUT` warned 'not trained yet' for each and then said 'holds no avda run'
    from avda import cli

    spec_data = {
        "cache": str(cache),
        "heads": [{"name": "source-only", "epochs": 1, "hidden_dim": 8}],
        "settings": ["source->target"],
        "seeds": [0, 1],
        "out": "runs",
        "cluster": {"kind": "local", "workers": 1},
    }
    spec = write_spec(tmp_path, spec_data)

    def stopped(client):  # Ctrl-C once the index is written, before any run is submitted
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep, "dashboard_link", stopped)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(sweep.load_spec(spec), progress=False)
    out = tmp_path / "runs"
    index = json.loads((out / sweep.INDEX).read_text())
    assert [e["status"] for e in index["runs"]] == ["pending", "pending"]
    assert not (out / "source-only").exists()
    capsys.readouterr()
    assert cli.main(["evaluate", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"error: {out}: its sweep has no finished run yet (2 pending, none started): run the "
        f"same sweep again to train them (avda sweep {spec} --out {out}), then evaluate"
    ]


def test_a_run_whose_full_disk_names_no_file_names_its_run_folder(tmp_path, monkeypatch):
    # a write's ENOSPC (a Zarr chunk, a library's file) names no file: the failure said only
    # 'no space left on device; free some space ...', not which run's folder filled the disk
    import errno

    from avda.train import loop

    def full(**kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(loop, "train", full)
    task = sweep.SweepTask(
        name="so/s-t/seed0", run=tmp_path / "so" / "s-t" / "seed0", cache=tmp_path / "c.zarr",
        cache_name="c", head="source-only", method="so", setting="s-t", source=("s",),
        target=("t",), seed=0, overrides={},
    )  # fmt: skip
    outcome = sweep._run_task(task)
    assert (outcome.status, outcome.error) == (
        "failed",
        f"no space left on device writing {task.run}; free some space and run the command again",
    )


def test_published_rows_of_a_set_a_mixed_table_scores_for_some_runs_say_so(tmp_path, monkeypatch):
    """A table whose runs were scored on target_test and target_val (a mix, warned about)
    scores the published set for some of its runs: the note said it did not score it."""
    from avda.evaluate import aggregate

    published = {"source": "Table 1", "set": "target_test", "rows": {"ta3n": {"D1->D2": 40.0}}}
    monkeypatch.setattr(aggregate, "_published_entries", lambda infos: [published])
    table = aggregate.AggregateTable(
        title="t", methods=["dann"], columns=["D1→D2"], values={("dann", "D1→D2"): [30.0]},
        seeds={("dann", "D1→D2"): [0]}, sets=["target_test", "target_val"],
    )  # fmt: skip
    aggregate._add_published(table, [])
    assert table.methods == ["dann", "ta3n [published, target_test]"]
    measured = [note for note in table.notes if "rows were measured on" in note]
    assert measured == [
        "[published, target_test] rows were measured on target_test, on which this table scores "
        "only some of its runs (it scores target_test, target_val): a reference for those, not "
        "a comparison with the others"
    ], table.notes


@pytest.mark.parametrize(
    ("code", "line"),
    [
        ("EROFS", "read-only file system: {file}; write the output to a writable folder"),
        ("EACCES", "permission denied: {file}; check the path's owner and permissions"),
        ("EPERM", "permission denied: {file}; check the path's owner and permissions"),
        ("EDQUOT", "disk quota exceeded: {file}; free some space and run the command again"),
    ],
)
def test_a_run_it_may_not_write_fails_at_once_not_retried(tmp_path, monkeypatch, code, line):
    # a read-only file system or a folder this user may not write: retrying cannot help, and
    # EROFS / EACCES were raised for Dask to retry as if transient
    import errno

    from avda.train import loop

    file = tmp_path / "so" / "s-t" / "seed0" / "metrics.jsonl"

    def refused(**kwargs):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)), str(file))

    monkeypatch.setattr(loop, "train", refused)
    task = sweep.SweepTask(
        name="so/s-t/seed0", run=file.parent, cache=tmp_path / "c.zarr", cache_name="c",
        head="source-only", method="so", setting="s-t", source=("s",), target=("t",), seed=0,
        overrides={},
    )  # fmt: skip
    outcome = sweep._run_task(task)
    assert outcome.status == "failed"
    assert outcome.error.startswith(line.format(file=file)), outcome.error
