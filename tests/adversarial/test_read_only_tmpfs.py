"""A read-only output (a small tmpfs remounted read-only, ``EROFS`` even for root; skipped
where it cannot be mounted) for each command that writes: one line naming the path and saying
the file system is read-only, not full; exit 1, no traceback; every file already there kept
byte for byte (an earlier output, a store the command would add to)."""

from __future__ import annotations

import shutil
import time

import pytest

from tests.adversarial._helpers import (
    annotations,
    avda,
    feature_pickle,
    opened_to_nobody,
    read_only,
    read_only_line,
    small_disk,
    snapshot,
    start_avda,
    turn_read_only,
)
from tests.conftest import make_feature_cache

ANNOTATIONS = "annotations/epic55_mmsada_splits"

COMMANDS = {  # the command (run in the folder holding disk/), what its line names
    "extract": (
        ["extract", "--manifest", "m.csv", "-o", "disk/new.zarr", "--videos", "{videos}"]
        + ["--modalities", "audio", "--recipe", "demo", "-q"],
        "disk/new.zarr",
    ),
    "train": (
        ["train", "--cache", "c.zarr", "--head", "source-only", "--source", "source"]
        + ["--target", "target", "-o", "disk/so", "--epochs", "1", "-q"],
        "disk/so",
    ),
    "flow": (
        ["flow", "--manifest", "m.csv", "--videos", "{videos}", "-o", "disk/flow", "-q"],
        "disk/flow",
    ),
    "evaluate -o": (["evaluate", "so", "-o", "disk/res"], "disk/res.md"),
    "predict -o": (["predict", "so", "--cache", "c.zarr", "-o", "disk/p.npz"], "disk/p.npz"),
    "report": (["report", "so", "-o", "disk/rep.html"], "disk/rep.html"),
    "manifest build": (
        ["manifest", "build", "epic55-mmsada", "-a", "{shared}/" + ANNOTATIONS]
        + ["--setting", "D1-D2", "-o", "disk/m.csv"],
        "disk/m.csv;",  # not its lock file, disk/.m.csv.lock
    ),
    "cluster": (
        ["cluster", "disk/c.zarr", "--modality", "rgb", "--source", "source", "-q"],
        "disk/c.zarr",
    ),
    "cache import": (
        ["cache", "import", "f.pkl", "-a", "ann.csv", "--domain", "source", "--split", "train"]
        + ["-o", "disk/c.zarr"],
        "disk/c.zarr",
    ),
    "sweep": (["sweep", "sweep.yaml", "--out", "disk/sweep", "-q"], "disk/sweep"),
}


@pytest.fixture(scope="module")
def read_only_disk(tmp_path_factory):
    """A folder holding a cache, a trained run and the commands' inputs, and ``disk/``: a
    read-only tmpfs holding a store and earlier outputs (their snapshot taken)."""
    folder = tmp_path_factory.mktemp("read-only")
    make_feature_cache(folder / "c.zarr", per_class=8)
    trained = avda(COMMANDS["train"][0][:-5] + ["-o", "so", "--epochs", "1", "-q"], folder)
    assert trained.returncode == 0, trained.stderr[-800:]
    ids = [f"n{i}" for i in range(4)]
    annotations(folder / "ann.csv", ids)
    feature_pickle(folder / "f.pkl", ids, ("RGB",))
    (folder / "m.csv").write_text(
        "uid,video_id,domain,split,start_sec,stop_sec,video_path\n"
        "a,clip,S,train,1.0,3.0,v_ZNVhz7ctTq0.mp4\n"
    )
    (folder / "sweep.yaml").write_text(
        f"cache: {folder / 'c.zarr'}\nheads:\n  - name: source-only\n    epochs: 1\n"
        "settings: ['source->target']\nseeds: 1\nretries: 2\ncluster:\n  workers: 1\n"
    )
    with small_disk(folder / "disk", "2m") as disk:
        shutil.copytree(folder / "c.zarr", disk / "c.zarr")
        for name in ("res.md", "res.csv", "rep.html", "m.csv"):
            (disk / name).write_text(f"an earlier {name}")
        read_only(disk)
        yield folder, snapshot(disk)


SLOW = {"extract", "report"}  # over 10 s each on a loaded machine (torch's backbones; a report)


@pytest.mark.parametrize(
    "command",
    [pytest.param(c, marks=pytest.mark.slow) if c in SLOW else c for c in COMMANDS],
)
def test_a_command_writing_to_a_read_only_disk_says_so_and_keeps_its_files(
    read_only_disk, command, shared_data
):
    folder, before = read_only_disk
    args, names = COMMANDS[command]
    videos = shared_data / "media" / "video"
    args = [a.format(videos=videos, shared=shared_data) for a in args]
    read_only_line(avda(args, folder), names)
    assert snapshot(folder / "disk") == before


@pytest.mark.slow
def test_a_sweep_run_whose_disk_turns_read_only_fails_in_one_line_not_retried(tmp_path):
    # a read-only file system cannot be retried away: the run was raised for Dask to retry,
    # and its retry failed on its lock (RunError), never naming the file or the read-only disk
    make_feature_cache(tmp_path / "c.zarr", per_class=8)
    (tmp_path / "sweep.yaml").write_text(
        f"cache: {tmp_path / 'c.zarr'}\nheads:\n  - name: source-only\n    epochs: 300\n"
        "settings: ['source->target']\nseeds: 1\nretries: 2\ncluster:\n  workers: 1\n"
    )
    run = tmp_path / "sweep" / "source-only" / "source-target" / "seed0"
    with small_disk(run, "4m"):
        sweep = start_avda(["sweep", "sweep.yaml", "--out", "sweep", "-q"], tmp_path)
        try:
            began = time.monotonic()
            while not (run / "metrics.jsonl").exists():  # its first epoch written
                assert sweep.poll() is None and time.monotonic() - began < 120, sweep.poll()
                time.sleep(0.05)
            turn_read_only(run)
            _, err = sweep.communicate(timeout=300)
        finally:
            sweep.kill()
    assert sweep.returncode == 3, err[-1500:]  # a run failed, listed
    assert "Traceback" not in err and "Compute Failed" not in err, err[-3000:]
    failures = (tmp_path / "sweep" / "sweep-failures.csv").read_text()
    assert f"read-only file system: {run}/" in failures, failures
    assert "write the output to a writable folder" in failures and "RunError" not in failures


def test_report_says_a_read_only_output_before_it_reads_the_runs(read_only_disk, monkeypatch):
    # the page was refused only once every run had been read and drawn (minutes for a sweep)
    import errno

    from avda.evaluate import aggregate, report

    folder, before = read_only_disk
    monkeypatch.setattr(aggregate, "find_runs", lambda paths: pytest.fail("read the runs"))
    with pytest.raises(OSError) as raised:
        report.build_report([folder / "so"], folder / "disk" / "new.html")
    assert raised.value.errno == errno.EROFS
    assert raised.value.filename == str(folder / "disk" / "new.html")
    assert snapshot(folder / "disk") == before


PERMISSION_DENIED = {  # the command, as nobody, writing into a folder of root's: what it names
    "evaluate -o": "evaluate -o",
    "manifest build": "manifest build",  # its lock file (EACCES) named the manifest (guards=)
    "report": "report",  # the probe beside the page (EACCES) names the page
}


@pytest.mark.parametrize(
    "command",
    [pytest.param(c, marks=pytest.mark.slow) if c in SLOW else c for c in PERMISSION_DENIED],
)
def test_a_command_writing_where_it_may_not_says_permission_denied_naming_its_output(
    read_only_disk, command, shared_data
):
    # a real EACCES (avda run as nobody, a folder of root's, mode 755): the tests run as root,
    # which writes whatever the mode, so the permission-denied cases were simulated in-process
    folder, _ = read_only_disk
    (folder / "roots").mkdir(exist_ok=True)
    args, names = COMMANDS[PERMISSION_DENIED[command]]
    args = [a.format(shared=shared_data).replace("disk/", "roots/") for a in args]
    output = names.rstrip(";").replace("disk/", "roots/")
    with opened_to_nobody(folder):
        result = avda(args, folder, NOBODY="1")
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-1500:]
    assert last == f"error: permission denied: {output}; check the path's owner and permissions"
    assert list((folder / "roots").iterdir()) == []
