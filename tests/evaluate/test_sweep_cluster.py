"""``avda sweep`` on SLURM / PBS (dask-jobqueue) and lost workers: spec checks of the cluster
resources, job scripts, Ctrl-C, and a cluster left without workers."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from avda import runs
from avda.sweep import run as sweep

pytest.importorskip("dask_jobqueue")

SRC = Path(__file__).resolve().parents[2] / "src"


def test_importing_dask_jobqueue_keeps_ctrl_c_a_keyboard_interrupt():
    """dask_jobqueue installs ``sys.exit()`` as the SIGINT handler on import: avda's
    ``interrupted`` line and exit 130 would never come."""
    code = textwrap.dedent(
        """
        import os, signal, sys, time
        assert "dask_jobqueue" not in sys.modules
        from avda.sweep import run
        run.import_jobqueue("slurm")
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except KeyboardInterrupt:
            print("KeyboardInterrupt")
        """
    )
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.stdout.strip() == "KeyboardInterrupt", (done.returncode, done.stderr[-2000:])


# ------------------------------------------------------------------------------ lost workers
@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    from tests.conftest import make_feature_cache

    path = tmp_path_factory.mktemp("sweep-cluster") / "features.zarr"
    make_feature_cache(path, shift=1.0)
    return path


def _close_every_worker_mid_run(clusters: list, run: Path, stop: threading.Event) -> bool:
    """Kill every worker of the sweep's cluster (as if each job was cancelled or ran past its
    walltime) once ``run`` has a checkpoint; the cluster keeps them in its spec, as
    dask-jobqueue keeps jobs that ended."""
    while not stop.is_set():
        if clusters and (run / runs.CHECKPOINT).exists() and len(runs.read_metrics(run)) >= 1:
            from distributed.core import Status

            for nanny in list(clusters[0].workers.values()):
                nanny.status = Status.failed  # no restart: the job is gone, nanny and all
                os.kill(nanny.process.pid, signal.SIGKILL)
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("restarts", [0, 1])
def test_a_cluster_left_without_workers_restarts_them_or_fails_in_one_line(
    tmp_path, cache, monkeypatch, restarts
):
    """Every worker gone mid-run (scancel, walltime, preemption): Dask waits forever for one.
    After ``worker_timeout`` s the sweep starts its workers again (a SLURM/PBS sweep submits its
    jobs again) and the run resumes; with no restart left it fails in one line, and the index
    keeps the run that finished."""
    import distributed

    from avda.errors import AvdaError

    clusters: list = []

    class Recorded(distributed.LocalCluster):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            clusters.append(self)

    monkeypatch.setattr(distributed, "LocalCluster", Recorded)
    monkeypatch.setattr(sweep, "MAX_RESTARTS", restarts)
    # a run that finished just before its worker was killed: its outcome never comes back
    # (it used to hang the sweep); the run folder says it is complete
    monkeypatch.setattr(sweep, "RESULT_SECONDS", 5)
    epochs = 12
    spec = sweep.parse_spec(
        {
            "cache": str(cache),
            "heads": [{"name": "source-only", "epochs": epochs, "hidden_dim": 16}],
            "settings": ["source->target"],
            "seeds": [0, 1],
            "retries": 0,
            "cluster": {"kind": "local", "workers": 1, "worker_timeout": 2},
        }
    )
    out = tmp_path / "runs"
    second = out / "source-only/source-target/seed1"
    stop = threading.Event()
    closed: list = []
    closer = threading.Thread(
        target=lambda: closed.append(_close_every_worker_mid_run(clusters, second, stop))
    )
    closer.start()
    try:
        if restarts:
            summary = sweep.run_sweep(spec, out=out, progress=False)
        else:
            with pytest.raises(AvdaError) as raised:
                sweep.run_sweep(spec, out=out, progress=False)
    finally:
        stop.set()
        closer.join()
    assert closed == [True]
    index = {e["seed"]: e["status"] for e in json.loads((out / sweep.INDEX).read_text())["runs"]}
    if restarts:
        assert summary.ok, summary.text()
        assert summary.outcomes["source-only/source-target/seed1"].resumed_from_epoch >= 1
        assert index == {0: "complete", 1: "complete"}
        return
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("no Dask worker left in the local cluster for 2 s, giving up")
    assert "run the same command again" in message
    assert index == {0: "complete", 1: "pending"}


# ------------------------------------------------------------------------------ the spec
def _spec_file(folder: Path, cluster: dict, **more) -> Path:
    import yaml

    path = folder / "sweep.yaml"
    spec = {"cache": "features.zarr", "heads": ["dann"], "settings": ["D1-D2"], **more}
    path.write_text(yaml.safe_dump({**spec, "cluster": cluster}, sort_keys=False))
    return path


def _problems(path: Path) -> str:
    from avda.errors import ConfigError

    with pytest.raises(ConfigError) as raised:
        sweep.load_spec(path, open_caches=False)
    return str(raised.value)


def test_a_slurm_spec_without_cores_and_memory_fails_its_check_before_anything_is_written(
    tmp_path, capsys
):
    """``--check`` said such a spec was valid; the run failed after writing ``.sweep.lock``."""
    from avda.cli import main

    path = _spec_file(tmp_path, {"kind": "slurm", "workers": 2}, out="runs")
    assert "cluster kind slurm needs cluster.cores and cluster.memory" in _problems(path)
    assert main(["sweep", str(path), "--check"]) == 1
    assert main(["sweep", str(path)]) == 1
    assert not (tmp_path / "runs").exists()
    # a local spec run with --cluster pbs: refused before the output folder is made, too
    local = _spec_file(tmp_path, {"kind": "local"}, out="runs")
    capsys.readouterr()
    assert main(["sweep", str(local), "--check"]) == 0  # valid as it is
    assert main(["sweep", str(local), "--cluster", "pbs", "--check"]) == 1
    error = capsys.readouterr().err
    assert "cluster.cores: cluster kind pbs needs cluster.cores and cluster.memory" in error
    # PBS cannot read every size SLURM can: --check says so for --cluster pbs
    sized = _spec_file(tmp_path, {"kind": "local", "cores": 2, "memory": "16G"}, out="runs")
    assert main(["sweep", str(sized), "--cluster", "pbs", "--check"]) == 1
    assert "cluster.memory: PBS cannot read '16G'" in capsys.readouterr().err
    assert main(["sweep", str(local), "--cluster", "pbs"]) == 1
    assert not (tmp_path / "runs").exists()


def test_cluster_values_that_would_give_bad_job_scripts_are_refused(tmp_path):
    text = _problems(
        _spec_file(
            tmp_path, {"kind": "slurm", "cores": 1, "processes": 2, "memory": 16, "walltime": 14400}
        )
    )
    assert "cluster.memory: 16 has no unit (it would be bytes): write e.g. 16GB" in text
    assert "2 worker processes per job need cluster.cores >= 2" in text
    assert 'YAML reads an unquoted 4:00:00 as seconds): quote it, walltime: "04:00:00"' in text
    assert "has no unit" in _problems(_spec_file(tmp_path, {"kind": "local", "memory": "16"}))


def test_pbs_gets_its_own_memory_units_and_walltime_form(tmp_path):
    assert sweep.pbs_memory("32GB") == "32GB"
    assert sweep.pbs_memory("16GiB") == "16gb"
    assert sweep.pbs_memory("0.5 TB") == "512gb"
    assert sweep.pbs_walltime("1-00:00:00") == "24:00:00"
    assert sweep.pbs_walltime("04:00:00") == "04:00:00"
    assert sweep.pbs_walltime("90") == "01:30:00"  # SLURM's minutes; PBS would read seconds
    assert sweep.pbs_walltime("90:30") == "01:30:30"
    assert sweep.pbs_walltime("2-3") == "51:00:00"
    assert sweep.pbs_memory("1.5GB") == "1536mb"
    spec = sweep.load_spec(
        _spec_file(
            tmp_path,
            {"kind": "pbs", "cores": 2, "memory": "16GiB", "walltime": "1-00:00:00"},
        ),
        open_caches=False,
    )
    script = sweep.job_script(spec)
    assert "#PBS -l select=1:ncpus=2:mem=16gb" in script, script
    assert "#PBS -l walltime=24:00:00" in script, script


def test_log_and_local_directories_are_absolute_with_home_expanded(tmp_path, monkeypatch):
    """PBS jobs start in $HOME: a relative or ``~`` folder reached the job script as is."""
    _spec_file(
        tmp_path,
        {"kind": "pbs", "cores": 1, "memory": "2GB", "log_directory": "~/avdalogs"},
    )
    monkeypatch.chdir(tmp_path.parent)
    spec = sweep.load_spec(Path(tmp_path.name) / "sweep.yaml", open_caches=False)
    assert spec.cluster.log_directory == os.path.expanduser("~/avdalogs")
    (tmp_path / "sweep.yaml").write_text(
        (tmp_path / "sweep.yaml").read_text().replace("~/avdalogs", "logs")
    )
    spec = sweep.load_spec(Path(tmp_path.name) / "sweep.yaml", open_caches=False)
    assert spec.cluster.log_directory == str(tmp_path / "logs")


def _shim(folder: Path, name: str, body: str) -> None:
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)


def _slurm_sweep(tmp_path, monkeypatch, cache, sbatch: str, scancel: str, cluster: dict) -> Path:
    """``sbatch`` / ``scancel`` shims first on PATH, and a SLURM sweep spec of one run."""
    bin_dir = tmp_path / "bin"
    _shim(bin_dir, "sbatch", sbatch)
    _shim(bin_dir, "scancel", scancel)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return _spec_file(
        tmp_path,
        {"kind": "slurm", "cores": 1, "memory": "1GB", **cluster},
        cache=str(cache),
        settings=["source->target"],
        heads=["source-only"],
        out="runs",
    )


@pytest.mark.parametrize("printed", ["", "queued, no number here"])
def test_a_submit_command_without_a_job_id_says_what_it_printed(
    tmp_path, cache, monkeypatch, capsys, printed
):
    """``sbatch`` that prints no job id (a site wrapper, a changed format): one line quoting
    what it printed, naming the spec to give --job-script, exit 1."""
    from avda.cli import main

    sbatch = f"echo '{printed}'" if printed else "true"
    path = _slurm_sweep(tmp_path, monkeypatch, cache, sbatch, "true", {})
    capsys.readouterr()
    assert main(["sweep", str(path)]) == 1
    error = capsys.readouterr().err
    assert "could not submit the SLURM worker jobs with `sbatch`" in error
    assert f"it printed: {printed or 'nothing'}" in error
    assert f"avda sweep {path} --cluster slurm --job-script" in error


def test_jobs_that_never_start_name_the_spec_and_the_log_folder(
    tmp_path, cache, monkeypatch, capsys
):
    """Submitted jobs that never start (queued, or dying at start): after worker_timeout one
    line naming the real log folder and the spec to give --job-script; the jobs cancelled."""
    from avda.cli import main

    cancelled = tmp_path / "cancelled"
    path = _slurm_sweep(
        tmp_path,
        monkeypatch,
        cache,
        "echo 'Submitted batch job 4242'",
        f'echo "$@" >> {cancelled}',
        {"log_directory": "logs", "worker_timeout": 2},
    )
    capsys.readouterr()
    assert main(["sweep", str(path)]) == 1
    error = capsys.readouterr().err
    assert "no Dask worker joined" in error or "no worker" in error, error
    assert f"their logs in {tmp_path / 'logs'}" in error
    assert f"avda sweep {path} --cluster slurm --job-script" in error
    assert "4242" in cancelled.read_text()


def test_jobs_and_local_workers_are_no_more_than_the_runs_need(
    tmp_path, cache, monkeypatch, capsys
):
    """3 runs on ``workers: 4`` jobs of ``processes: 2``: 2 jobs are submitted, not 4 (two held
    their cores, GPUs and hours in the queue and idled); a local cluster for 1 run of
    ``workers: 2`` starts 1 worker, which gets all the cores' PyTorch threads."""
    from avda.cli import main
    from avda.dask_support import threads_per_worker

    submitted = tmp_path / "submitted"
    path = _slurm_sweep(
        tmp_path,
        monkeypatch,
        cache,
        f'echo job >> {submitted}; echo "Submitted batch job $(wc -l < {submitted})"',
        "true",
        {"workers": 4, "processes": 2, "cores": 2, "worker_timeout": 2},
    )
    spec = path.read_text().replace("heads:", "seeds: 3\nheads:")
    path.write_text(spec)
    capsys.readouterr()
    assert main(["sweep", str(path), "-q"]) == 1  # no job starts: given up after 2 s
    assert "3 runs, 0 already complete, 3 to train" in capsys.readouterr().err
    assert submitted.read_text().splitlines() == ["job", "job"]
    local = sweep.parse_spec(
        {
            "cache": str(cache),
            "heads": ["source-only"],
            "settings": ["source->target"],
            "cluster": {"kind": "local", "workers": 2},
        }
    )
    with sweep.connect(local, runs=1) as (client, options):
        assert len(client.scheduler_info()["workers"]) == 1
        assert options["torch_threads"] == threads_per_worker(1)


def test_a_busy_dashboard_port_is_no_warning(tmp_path):
    """The SLURM/PBS cluster's scheduler finds 8787 taken (another user's Dask on a login
    node): Distributed's 'Port 8787 is already in use. Perhaps you already have a cluster
    running?' was printed above --job-script's script and the sweep's lines; the sweep logs
    the dashboard it got."""
    import socket
    import warnings

    path = _spec_file(tmp_path, {"kind": "slurm", "cores": 2, "memory": "4GB"})
    spec = sweep.load_spec(path, open_caches=False)
    with contextlib.closing(socket.socket()) as holder:
        with contextlib.suppress(OSError):  # else another process holds it
            holder.bind(("", 8787))
            holder.listen()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert "#SBATCH --cpus-per-task=2" in sweep.job_script(spec)
    assert not [str(w.message) for w in caught if "already in use" in str(w.message)]


@pytest.mark.parametrize("kind", ["slurm", "pbs"])
def test_job_script_creates_nothing_on_disk(tmp_path, cache, monkeypatch, capsys, kind):
    """``--job-script`` is a dry print: dask-jobqueue makes ``log_directory`` when its cluster
    is built, and the print made the log folder (and its parents) without submitting a job.
    The script still names the real folder."""
    from avda.cli import main

    path = _slurm_sweep(
        tmp_path, monkeypatch, cache, "exit 1", "exit 1", {"log_directory": "logs/sweep"}
    )
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    capsys.readouterr()
    assert main(["sweep", str(path), "--cluster", kind, "--job-script"]) == 0
    script = capsys.readouterr().out
    logs = tmp_path / "logs" / "sweep"
    prefix = "#SBATCH -e" if kind == "slurm" else "#PBS -e"
    assert f"{prefix} {logs}/" in script, script
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    # a log folder that exists is named as it is, and left alone
    logs.mkdir(parents=True)
    assert f"{prefix} {logs}/" in sweep.job_script(sweep.load_spec(path), cluster=kind)
    assert list(logs.iterdir()) == []


@pytest.mark.parametrize(
    ("kind", "directive", "said"),
    [
        ("pbs", "--gres=gpu:1", "is a SLURM directive, but the cluster kind is pbs: qsub cannot "
         "read the job script's line '#PBS --gres=gpu:1'; use cluster.gpus"),
        ("pbs", "--partition=gpu", "run with --cluster slurm"),
        ("slurm", "-l ngpus=1", "is a PBS directive, but the cluster kind is slurm: sbatch cannot "
         "read the job script's line '#SBATCH -l ngpus=1'; use cluster.gpus"),
        ("slurm", "-lwalltime=04:00:00", "use cluster.walltime"),
    ],
)  # fmt: skip
def test_directives_of_the_other_scheduler_are_refused_in_one_line(
    tmp_path, cache, monkeypatch, capsys, kind, directive, said
):
    """dask-jobqueue writes each ``job_extra_directives`` item after its own scheduler's prefix
    (``#PBS --gres=gpu:1``): the submit command refused such a script at submission, in its own
    words. ``--cluster KIND`` over another kind's spec (and a spec of that kind) names the
    directive and the fix in one line, before anything is written or submitted."""
    from avda.cli import main

    submitted = tmp_path / "submitted"
    other = "slurm" if kind == "pbs" else "pbs"
    path = _slurm_sweep(
        tmp_path, monkeypatch, cache, f"touch {submitted}", "true",
        {"kind": other, "job_extra_directives": [directive]},
    )  # fmt: skip
    _shim(tmp_path / "bin", "qsub", f"touch {submitted}")
    assert main(["sweep", str(path), "--check"]) == 0  # valid for the spec's own kind
    capsys.readouterr()
    for extra in ([], ["--job-script"], ["--check"]):
        assert main(["sweep", str(path), "--cluster", kind, *extra]) == 1
        error = capsys.readouterr().err.strip()
        assert "\n" not in error, error
        assert f"cluster.job_extra_directives: {directive!r} " in error and said in error, error
    assert not (tmp_path / "runs").exists() and not submitted.exists()
    # in a spec of that kind: a problem of the spec, with its line
    path.write_text(path.read_text().replace(f"kind: {other}", f"kind: {kind}"))
    assert "sweep.yaml:11: cluster.job_extra_directives: " in _problems(path)


def test_a_directive_with_its_own_prefix_is_refused(tmp_path):
    """``#SBATCH --exclusive`` became ``#SBATCH #SBATCH --exclusive``."""
    for kind, directive, said in [
        ("slurm", "#SBATCH --exclusive", "dask-jobqueue writes the '#SBATCH' prefix itself "
         "(it would write '#SBATCH #SBATCH --exclusive'); give it without: '--exclusive'"),
        ("pbs", "#SBATCH --exclusive", "is a SLURM directive, but the cluster kind is pbs"),
        ("slurm", "#PBS -l ngpus=1", "is a PBS directive, but the cluster kind is slurm"),
    ]:  # fmt: skip
        spec = _spec_file(
            tmp_path,
            {"kind": kind, "cores": 1, "memory": "1GB", "job_extra_directives": [directive]},
        )
        assert f"cluster.job_extra_directives: {directive!r}" in _problems(spec)
        assert said in _problems(spec)


def test_directives_both_schedulers_read_pass():
    from avda.sweep.spec import foreign_directive

    for kind, directive in [
        ("slurm", "--exclusive"), ("slurm", "-N 1"), ("pbs", "-l place=scatter"),
        ("pbs", "-p 10"), ("pbs", "-j oe"), ("slurm", "--qos=long"),
    ]:  # fmt: skip
        assert foreign_directive(directive, kind) == "", (kind, directive)


def _queue_shims(
    tmp_path: Path,
    monkeypatch,
    delays: str,
    dying: str = "",
    pending: bool = False,
    kind: str = "slurm",
) -> Path:
    """``sbatch`` / ``squeue`` / ``scancel`` shims (``kind`` pbs: ``qsub`` / ``qstat`` /
    ``qdel``) that run each job script on this machine: the k-th job waits the k-th of
    ``delays`` seconds in the "queue" (the last one for later jobs) before it starts, in its own
    process group (its job id); ``scancel`` kills the group. The k-th job for each k in
    ``dying`` (or every job: ``all``) runs a script that fails before starting its worker (a bad
    module load) instead. A job's stderr goes to the ``#SBATCH -e`` file of its script (PBS:
    ``NAME.eID`` in its ``#PBS -e`` folder); ``squeue -j ID,...`` (``qstat -f ID ...``) shows the
    jobs whose processes live as RUNNING (R) (``pending``: those still waiting their delay as
    ``PENDING Priority``; Q with a comment). The queue folder's ``events`` logs submits, starts
    and cancels."""
    queue = tmp_path / "queue"
    queue.mkdir()
    if kind == "slurm":
        submit, cancel = "sbatch", "scancel"
        err = """err=$(sed -n 's/^#SBATCH -e //p' "$1")"""
        submitted = "Submitted batch job $!"
    else:
        submit, cancel = "qsub", "qdel"
        err = """dir=$(sed -n 's/^#PBS -e //p' "$1"); name=$(sed -n 's/^#PBS -N //p' "$1")
err=; [ -n "$dir" ] && err="$dir${name:-STDIN}.e%J\""""
        submitted = "$!.pbs01"
    _shim(
        tmp_path / "bin",
        submit,
        f"""Q={queue}
exec 9>"$Q/lock"; flock 9
k=$(ls $Q | grep -c '\\.sh$')
cp "$1" "$Q/job$k.sh"
for d in {dying}; do [ "$d" = "$k" ] || [ "$d" = all ] &&
  printf 'echo "sh: module: command not found" >&2\\nexit 1\\n' > "$Q/job$k.sh"; done
{err}; [ -n "$err" ] || err="$Q/job$k.err"
delay=0; i=0; last=0
for d in {delays}; do [ $i -eq $k ] && delay=$d; last=$d; i=$((i+1)); done
[ $k -ge $i ] && delay=$last
err="\\$(echo '$err' | sed s/%J/\\$\\$/)"  # the job id (%J) is the job's pid ($$)
run="sleep $delay; echo start job$k >> $Q/events; exec sh $Q/job$k.sh 2>> $err"
setsid sh -c "$run" > "$Q/job$k.log" 2>&1 < /dev/null 9>&- &
echo $! > "$Q/job$k.pid"
echo "submit job$k $!" >> $Q/events
echo "{submitted}\"""",
    )
    _shim(
        tmp_path / "bin",
        cancel,
        f'for j in "$@"; do kill -TERM -- -"$j" 2>/dev/null; echo "{cancel} $j" >> {queue}/events; '
        "done; exit 0",
    )
    state = f"""k=$(sed -n "s/^submit \\(job[0-9]*\\) $j\\$/\\1/p" {queue}/events)
  started=1; [ {int(pending)} = 1 ] && ! grep -qx "start $k" {queue}/events && started=0
  alive=1; case "$(ps -o stat= -p "$j")" in ""|Z*) alive=0;; esac"""
    if kind == "slurm":
        _shim(
            tmp_path / "bin",
            "squeue",
            f"""ids=; while [ $# -gt 0 ]; do [ "$1" = -j ] && ids=$2; shift; done
shown=0
for j in $(echo "$ids" | tr , ' '); do
  {state}
  [ $alive = 0 ] && continue
  shown=1
  if [ $started = 1 ]; then echo "$j RUNNING None"; else echo "$j PENDING Priority"; fi
done
[ $shown = 1 ] || {{ echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1; }}""",
        )
    else:
        _shim(
            tmp_path / "bin",
            "qstat",
            f"""rc=0
for j in "$@"; do
  [ "$j" = -f ] && continue
  j=${{j%%.*}}
  {state}
  if [ $alive = 0 ]; then echo "qstat: Unknown Job Id $j.pbs01" >&2; rc=153; continue; fi
  echo "Job Id: $j.pbs01"
  if [ $started = 1 ]; then echo "    job_state = R"
  else echo "    job_state = Q"; echo "    comment = Not Running: Insufficient resources"; fi
  echo
done
exit $rc""",
        )
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("PYTHONPATH", str(SRC))  # the jobs' workers import this avda
    return queue


def _two_job_spec(cache, tmp_path, worker_timeout: float, kind: str = "slurm"):
    """Two source-only runs of 12 epochs on a SLURM (PBS) cluster of 2 one-core jobs, no
    retries."""
    return sweep.parse_spec(
        {
            "cache": str(cache),
            "heads": [{"name": "source-only", "epochs": 12, "hidden_dim": 16}],
            "settings": ["source->target"],
            "seeds": [0, 1],
            "retries": 0,
            "cluster": {
                "kind": kind, "workers": 2, "cores": 1, "memory": "2GB",
                "worker_timeout": worker_timeout, "log_directory": str(tmp_path / "logs"),
            },
        }
    )  # fmt: skip


def _assert_every_epoch_once(summary, out, interrupted: str) -> None:
    """Every run of the sweep complete, the ``interrupted`` one resumed, each epoch (1-12) of
    each run trained once (no two workers wrote one run folder)."""
    assert summary.ok, summary.text()
    assert summary.outcomes[f"source-only/source-target/{interrupted}"].resumed_from_epoch >= 1
    for run in summary.run_dirs:
        assert [m["epoch"] for m in runs.read_metrics(run)] == list(range(1, 13)), run
    index = json.loads((out / sweep.INDEX).read_text())["runs"]
    assert {e["status"] for e in index} == {"complete"}


@contextlib.contextmanager
def _first_job_preempted(queue, out):
    """Kill the first job's processes (a preemption) once a run of ``out`` has a checkpoint
    and is not complete; yields the names of the runs it interrupted. Every job the shims
    started is killed at the end, whatever happened."""
    killed: list = []

    def preempt_the_first_job() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for run in out.glob("*/*/seed*"):
                if (run / runs.CHECKPOINT).exists() and not runs.is_complete(run):
                    os.killpg(int((queue / "job0.pid").read_text()), signal.SIGKILL)
                    killed.append(run.name)
                    return
            time.sleep(0.05)

    killer = threading.Thread(target=preempt_the_first_job, daemon=True)
    killer.start()
    try:
        yield killed
    finally:
        killer.join(timeout=1)
        for pid in queue.glob("*.pid"):  # nothing left behind, whatever happened
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(pid.read_text()), signal.SIGKILL)


STARTUP_MARGIN = 20
"""worker_timeout of the shim tests that wait for a job started at once: it covers the job's
start-up (``dask worker``: a nanny, then a worker process, each importing dask and avda; over
3 s on 2 busy cores, where a 3 s timeout failed the wait for the first worker)."""
NEVER = 600
"""A shim job's wait in the queue that outlasts the test: it starts only if something is wrong."""


@pytest.mark.slow
def test_a_job_lost_mid_run_while_the_others_wait_in_a_busy_queue(tmp_path, cache, monkeypatch):
    """SLURM through shims that start jobs: of 2 jobs asked for, one starts and the other waits
    in the queue (12 s); the running job is killed mid-run (preempted) and, the queue no longer
    showing it, is submitted again at once (it waits 12 s too). The run resumes on a job that
    starts later: every run finishes, each epoch of each run is trained once (no two workers
    wrote one run folder), and the sweep's jobs are cancelled at the end."""
    queue = _queue_shims(tmp_path, monkeypatch, "0 12")
    spec, out = _two_job_spec(cache, tmp_path, worker_timeout=60), tmp_path / "runs"
    with _first_job_preempted(queue, out) as killed:
        summary = sweep.run_sweep(spec, out=out, progress=False)
    assert killed, "the first job never trained a run"
    _assert_every_epoch_once(summary, out, killed[0])
    events = (queue / "events").read_text().splitlines()
    # the killed job submitted again once, at once: before the queued one started (not after 60 s)
    assert [e.split()[1] for e in events if e.startswith("submit")] == ["job0", "job1", "job2"]


@pytest.mark.slow
@pytest.mark.parametrize(("restarts", "queue_answers"), [(2, False), (0, True)])
def test_a_restart_leaves_jobs_waiting_in_the_queue_there(
    tmp_path, cache, monkeypatch, caplog, restarts, queue_answers
):
    """SLURM through shims: of 2 jobs, one starts and the other waits in the queue (past the
    test); the running job is killed mid-run. ``squeue`` cannot be asked (or there is no
    restart left): after worker_timeout the restart submits again only the job that died (the
    queued one keeps its place: not cancelled until the sweep ends), every run finishes once,
    each epoch trained once. With no restart left the sweep gives up in one line that says a
    job is still waiting in the queue and what to raise."""
    import logging

    from avda.errors import AvdaError

    monkeypatch.setattr(sweep, "MAX_RESTARTS", restarts)
    queue = _queue_shims(tmp_path, monkeypatch, f"0 {NEVER} 0")
    if not queue_answers:
        _shim(
            tmp_path / "bin", "squeue", "echo 'slurm_load_jobs error: Socket timed out' >&2; exit 1"
        )
    spec = _two_job_spec(cache, tmp_path, worker_timeout=STARTUP_MARGIN)
    out = tmp_path / "runs"
    caplog.set_level(logging.WARNING, logger="avda.sweep.run")
    with _first_job_preempted(queue, out) as killed:
        if restarts:
            summary = sweep.run_sweep(spec, out=out, progress=False)
        else:
            with pytest.raises(AvdaError) as raised:
                sweep.run_sweep(spec, out=out, progress=False)
    assert killed, f"the first job never trained a run: {'' if restarts else raised.value}"
    events = (queue / "events").read_text().splitlines()
    waiting = (queue / "job1.pid").read_text().strip()
    if not restarts:
        message = str(raised.value)
        assert "\n" not in message
        assert "1 job(s) still waiting in the queue: raise cluster.worker_timeout" in message
        assert events.count("submit job2") == 0 and f"scancel {waiting}" in events, events
        return
    _assert_every_epoch_once(summary, out, killed[0])
    # the dead job submitted again once; the queued one cancelled only when the sweep ended
    assert [e.split()[:2] for e in events if e.startswith("submit")] == [
        ["submit", "job0"], ["submit", "job1"], ["submit", "job2"]
    ], events  # fmt: skip
    assert events.index(f"scancel {waiting}") > events.index("start job2"), events
    said = [r.message for r in caplog.records if "submitted 1 job(s) again" in r.message]
    assert said and f"for {STARTUP_MARGIN} s: submitted" in said[0], caplog.text
    assert "1 job(s) still waiting in the queue, left there" in said[0], caplog.text


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["slurm", "pbs"])
def test_a_job_killed_mid_run_that_left_the_queue_is_submitted_again_at_once(
    tmp_path, cache, monkeypatch, caplog, kind
):
    """SLURM (PBS) through shims that run real local jobs: of 2 jobs, one starts and the other
    waits in the queue (PBS: ``qstat`` Q, with a comment; the ``qstat`` route was tested only by
    parsing before); the running job is killed mid-run. ``squeue`` no longer shows it
    (``qstat``: ``Unknown Job Id``): it is submitted again at once (one of the 2 restarts), not
    after worker_timeout (120 s; before, the sweep waited for it), the runs finish on the new
    job, each epoch trained once, and the queued job is cancelled (``scancel`` / ``qdel``) only
    when the sweep ends."""
    import logging

    pbs = kind == "pbs"
    queue = _queue_shims(tmp_path, monkeypatch, f"0 {NEVER} 0", pending=pbs, kind=kind)
    spec, out = _two_job_spec(cache, tmp_path, 120, kind), tmp_path / "runs"
    caplog.set_level(logging.WARNING, logger="avda.sweep.run")
    began = time.monotonic()
    with _first_job_preempted(queue, out) as killed:
        summary = sweep.run_sweep(spec, out=out, progress=False)
    assert time.monotonic() - began < 90, "the restart waited for worker_timeout"
    assert killed, "the first job never trained a run"
    _assert_every_epoch_once(summary, out, killed[0])
    events = (queue / "events").read_text().splitlines()
    assert [e.split()[1] for e in events if e.startswith("submit")] == ["job0", "job1", "job2"]
    waiting = (queue / "job1.pid").read_text().strip()
    cancel = "qdel" if pbs else "scancel"
    assert events.index(f"{cancel} {waiting}") > events.index("start job2"), events
    said = [r.message for r in caplog.records if "submitted 1 job(s) again" in r.message]
    assert len(said) == 1, caplog.text
    assert said[0].startswith(f"no Dask worker left in the {kind.upper()} cluster and its jobs "
                              "left the queue: submitted 1 job(s) again"), said  # fmt: skip
    if not pbs:
        assert "1 job(s) still waiting in the queue, left there (1 of 2)" in said[0], said


@pytest.mark.slow
def test_jobs_that_left_the_queue_with_no_restart_left_fail_the_sweep_at_once(
    tmp_path, cache, monkeypatch
):
    """SLURM through shims: the sweep's one job is killed mid-run, no restart is left and no
    job waits in the queue. ``squeue`` no longer shows it: the sweep gives up at once (before,
    it waited the worker_timeout, 120 s) in one line naming the job id, its log and the log's
    last line."""
    import dataclasses

    from avda.errors import AvdaError

    monkeypatch.setattr(sweep, "MAX_RESTARTS", 0)
    monkeypatch.setattr(sweep, "QUEUE_POLL_SECONDS", 0.5)
    queue = _queue_shims(tmp_path, monkeypatch, "0")
    spec = _two_job_spec(cache, tmp_path, worker_timeout=120)
    spec = dataclasses.replace(spec, cluster=dataclasses.replace(spec.cluster, workers=1))
    out = tmp_path / "runs"
    began = time.monotonic()
    with _first_job_preempted(queue, out) as killed:
        with pytest.raises(AvdaError) as raised:
            sweep.run_sweep(spec, out=out, progress=False)
    assert killed, f"the first job never trained a run: {raised.value}"
    assert time.monotonic() - began < 90, "the sweep waited for worker_timeout"
    message = str(raised.value)
    assert "\n" not in message, message
    job = _job_ids((queue / "events").read_text().splitlines())["job0"]
    assert message.startswith(
        "no Dask worker left in the SLURM cluster and its jobs left the queue, giving up: no "
        f"restart left (0 of 0 used); SLURM job {job} ended (no longer in the queue; see its "
        f"log {tmp_path / 'logs'}/avda-sweep-{job}.err; its log "
    ), message
    assert message.endswith("run the same command again to train the others"), message


def _job_ids(events: list[str]) -> dict[str, str]:
    """Each shim job (``job0``...) and its job id, from the queue's events."""
    return {e.split()[1]: e.split()[2] for e in events if e.startswith("submit")}


def _sweep_finishing_within(cache, tmp_path, queue, caplog, timeout: float):
    """The two-job sweep on the shim ``queue`` (warnings logged into ``caplog``): it must end
    before ``timeout`` (its worker_timeout) with every epoch of every run trained once. The
    summary and the queue's events."""
    import logging

    spec, out = _two_job_spec(cache, tmp_path, worker_timeout=timeout), tmp_path / "runs"
    caplog.set_level(logging.WARNING, logger="avda.sweep.run")
    began = time.monotonic()
    with _first_job_preempted(queue, tmp_path / "nothing-to-preempt"):
        summary = sweep.run_sweep(spec, out=out, progress=False)
    assert time.monotonic() - began < timeout
    assert summary.ok, summary.text()
    for run in summary.run_dirs:
        assert [m["epoch"] for m in runs.read_metrics(run)] == list(range(1, 13)), run
    return summary, (queue / "events").read_text().splitlines()


@pytest.mark.slow
def test_jobs_whose_script_dies_before_their_worker_connects_are_submitted_again(
    tmp_path, cache, monkeypatch, caplog
):
    """SLURM through shims: both jobs' scripts exit 1 before starting their workers (a bad
    module load). They left the queue (``squeue`` no longer shows them): each is submitted again
    at once, counting as a restart, instead of being taken for queued until worker_timeout
    (before, the sweep waited the 60 s and failed with `no Dask worker joined`). Every run
    finishes, each epoch trained once."""
    monkeypatch.setattr(sweep, "QUEUE_POLL_SECONDS", 0.5, raising=False)
    queue = _queue_shims(tmp_path, monkeypatch, "0", dying="0 1")
    _, events = _sweep_finishing_within(cache, tmp_path, queue, caplog, 60)
    ids = _job_ids(events)
    assert sorted(ids) == ["job0", "job1", "job2", "job3"], events
    said = [r.message for r in caplog.records if "before its Dask worker connected" in r.message]
    assert len(said) == 2, caplog.text
    for job in ("job0", "job1"):
        line = next(m for m in said if f"SLURM job {ids[job]} ended" in m)
        assert f"its log: {tmp_path / 'logs'}/avda-sweep-{ids[job]}.err" in line, line
        assert "its log ends 'sh: module: command not found'" in line, line
        assert "its job script failed before starting the worker" in line, line
    assert "submitted again (1 of 2)" in said[0], said  # both at once, or one after the other


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["slurm", "pbs"])
def test_a_job_that_dies_before_its_worker_connects_again_fails_at_once_in_one_line(
    tmp_path, cache, monkeypatch, kind
):
    """Every job's script exits 1 at start, the jobs submitted in their place too: the sweep
    gives up at once (not after worker_timeout, 30 s) in one line naming the job, its log file,
    the likely cause and the --job-script command; every job is cancelled. PBS through
    ``qsub`` / ``qstat`` / ``qdel`` shims: its log is ``avda-sweep.eID``."""
    from avda.errors import AvdaError

    monkeypatch.setattr(sweep, "QUEUE_POLL_SECONDS", 0.5, raising=False)
    queue = _queue_shims(tmp_path, monkeypatch, "0", dying="all", kind=kind)
    spec, out = _two_job_spec(cache, tmp_path, 30, kind), tmp_path / "runs"
    began = time.monotonic()
    with _first_job_preempted(queue, tmp_path / "nothing-to-preempt"):
        with pytest.raises(AvdaError) as raised:
            sweep.run_sweep(spec, out=out, progress=False)
    assert time.monotonic() - began < 30
    message = str(raised.value)
    assert "\n" not in message, message
    events = (queue / "events").read_text().splitlines()
    ids = _job_ids(events)
    assert sorted(ids) == ["job0", "job1", "job2", "job3"], events
    name = kind.upper()
    job = next(j for j in ("job2", "job3") if f"{name} job {ids[j]} ended before" in message)
    assert message.startswith(f"{name} job {ids[job]} ended before its Dask worker connected ("), (
        message
    )
    log = f"avda-sweep-{ids[job]}.err" if kind == "slurm" else f"avda-sweep.e{ids[job]}"
    assert f"see its log {tmp_path / 'logs'}/{log}" in message, message
    assert "its log ends 'sh: module: command not found'" in message, message
    assert "submitted in place of a job that ended so too" in message, message
    assert f"--cluster {kind} --job-script" in message, message
    cancel = "scancel" if kind == "slurm" else "qdel"
    assert {f"{cancel} {ids[j]}" for j in ("job2", "job3")} <= set(events), events


@pytest.mark.slow
@pytest.mark.parametrize(
    ("delays", "going_on"),
    [
        ("0", "going on with the 1 worker(s) connected"),
        ("0 10 0", "going on waiting for the 1 job(s) still in the queue"),
    ],
)
def test_a_job_dying_at_start_again_is_dropped_while_another_job_trains(
    tmp_path, cache, monkeypatch, caplog, delays, going_on
):
    """SLURM through shims: the first job's script exits 1 at start, and so does the job
    submitted in its place; the second job starts (at once, or after 10 s in the queue) and
    trains. The sweep goes on with it (before, with the second job still in the queue, it
    failed at once as if no job were left): every run finishes, each epoch trained once on the
    second job, no third job is submitted in the dying one's place, and the warning names the
    job, its log and the likely cause."""
    monkeypatch.setattr(sweep, "QUEUE_POLL_SECONDS", 0.5, raising=False)
    queue = _queue_shims(tmp_path, monkeypatch, delays, dying="0 2")
    summary, events = _sweep_finishing_within(cache, tmp_path, queue, caplog, 120)
    assert len({o.worker for o in summary.outcomes.values()}) == 1, summary.outcomes
    ids = _job_ids(events)
    assert sorted(ids) == ["job0", "job1", "job2"], events
    said = [r.message for r in caplog.records if "giving up" in r.message]
    assert len(said) == 1, caplog.text
    line = said[0]
    assert line.startswith(f"SLURM job {ids['job2']} ended before its Dask worker connected ("), (
        line
    )
    assert f"see its log {tmp_path / 'logs'}/avda-sweep-{ids['job2']}.err" in line, line
    assert "its log ends 'sh: module: command not found'" in line, line
    assert "its job script failed before starting the worker" in line, line
    assert "submitted in place of a job that ended so too" in line, line
    assert line.endswith(going_on), line


def _gone(pid: str) -> bool:
    """Whether the shim job of this id has no live process (none, or a zombie)."""
    stat = subprocess.run(["ps", "-o", "stat=", "-p", pid], capture_output=True, text=True)
    return not stat.stdout.strip() or stat.stdout.strip().startswith("Z")


@pytest.mark.slow
def test_a_first_time_job_ending_at_start_with_a_resubmitted_one_is_submitted_again(
    tmp_path, cache, monkeypatch, caplog
):
    """SLURM through shims: the first job's script exits 1 at start and is submitted again
    (restart 1 of 2); the job in its place dies so too, and in the same poll the second job,
    still in the queue, is lost before its worker connected (a node failure: the test kills it;
    the queue is not asked until both are gone). Only the resubmitted job is dropped: the
    second one is submitted again with the restart left (before, both were dropped and, no
    worker connected and no job queued, the sweep failed). Every run finishes, each epoch
    trained once."""

    monkeypatch.setattr(sweep, "QUEUE_POLL_SECONDS", 0.5, raising=False)
    monkeypatch.setattr(sweep, "MAX_RESTARTS", 2)
    queue = _queue_shims(tmp_path, monkeypatch, f"0 {NEVER} 0", dying="0 2")
    real_states, held = sweep.queue_jobs, []

    def both_gone_in_one_poll(kind, job_ids):
        if not held and (queue / "job2.pid").exists():  # job0 ended, job2 in its place
            held.append(True)
            job1, job2 = ((queue / f"job{k}.pid").read_text().strip() for k in (1, 2))
            os.killpg(int(job1), signal.SIGKILL)
            deadline = time.monotonic() + 30
            while not (_gone(job1) and _gone(job2)) and time.monotonic() < deadline:
                time.sleep(0.1)
        return real_states(kind, job_ids)

    monkeypatch.setattr(sweep, "queue_jobs", both_gone_in_one_poll)
    _, events = _sweep_finishing_within(cache, tmp_path, queue, caplog, 120)
    assert held, "the resubmitted job was never seen"
    ids = _job_ids(events)
    assert sorted(ids) == ["job0", "job1", "job2", "job3"], events
    dropped = [r.message for r in caplog.records if "giving up" in r.message]
    assert len(dropped) == 1, caplog.text
    assert dropped[0].startswith(f"SLURM job {ids['job2']} ended before"), dropped
    assert "submitted in place of a job that ended so too" in dropped[0], dropped
    again = [r.message for r in caplog.records if "submitted again (" in r.message]
    assert len(again) == 2, caplog.text
    assert f"SLURM job {ids['job0']} ended" in again[0], again
    assert again[1].startswith(f"SLURM job {ids['job1']} ended"), again
    assert again[1].endswith("submitted again (2 of 2)"), again


@pytest.mark.slow
def test_no_restart_is_used_while_every_job_waits_in_the_queue(tmp_path, cache, monkeypatch):
    """SLURM through shims: the running job is killed mid-run and submitted again; it then
    waits in the queue with the other job past worker_timeout. Nothing is left to submit: the
    sweep gives up then, saying 2 jobs wait, with 1 of its 2 restarts used (before, a restart
    that submitted nothing counted as the second one)."""
    from avda.errors import AvdaError

    monkeypatch.setattr(sweep, "MAX_RESTARTS", 2)
    queue = _queue_shims(tmp_path, monkeypatch, f"0 {NEVER} {NEVER}")
    spec = _two_job_spec(cache, tmp_path, worker_timeout=STARTUP_MARGIN)
    out = tmp_path / "runs"
    with _first_job_preempted(queue, out) as killed:
        with pytest.raises(AvdaError) as raised:
            sweep.run_sweep(spec, out=out, progress=False)
    assert killed, "the first job never trained a run"
    message = str(raised.value)
    assert "(started again 1 time(s)), giving up" in message, message
    assert "2 job(s) still waiting in the queue: raise cluster.worker_timeout" in message
    events = (queue / "events").read_text().splitlines()
    assert sorted(_job_ids(events)) == ["job0", "job1", "job2"], events


@pytest.mark.slow
def test_jobs_pending_in_the_queue_past_worker_timeout_are_waited_for(
    tmp_path, cache, monkeypatch, caplog
):
    """SLURM through shims: both jobs wait 30 s in the queue, which ``squeue`` shows PENDING
    (reason Priority), past worker_timeout (20 s). The sweep waits on (before, it gave up at
    20 s: `no Dask worker joined`), saying which jobs are pending and why, and every run
    finishes once the jobs start."""
    import logging

    monkeypatch.setattr(sweep, "QUEUE_POLL_SECONDS", 0.5)
    monkeypatch.setattr(sweep, "QUEUE_REPORT_SECONDS", 5.0, raising=False)
    queue = _queue_shims(tmp_path, monkeypatch, "30", pending=True)
    spec, out = _two_job_spec(cache, tmp_path, worker_timeout=STARTUP_MARGIN), tmp_path / "runs"
    caplog.set_level(logging.WARNING, logger="avda.sweep.run")
    with _first_job_preempted(queue, tmp_path / "nothing-to-preempt"):
        summary = sweep.run_sweep(spec, out=out, progress=False)
    assert summary.ok, summary.text()
    ids = _job_ids((queue / "events").read_text().splitlines())
    said = [r.message for r in caplog.records if "still pending in the queue" in r.message]
    assert said, caplog.text
    assert said[0].startswith(
        f"2 SLURM job(s) still pending in the queue ({ids['job0']}: Priority; "
        f"{ids['job1']}: Priority), no Dask worker in the SLURM cluster for "
    ), said
    assert said[0].endswith(
        "waiting on while the queue says they are pending (cluster.queue_timeout: none)"
    ), said


@pytest.mark.slow
def test_a_job_submitted_again_pending_past_worker_timeout_is_waited_for(
    tmp_path, cache, monkeypatch
):
    """SLURM through shims: the running job is killed mid-run and submitted again; the new job
    and the other one are shown PENDING in the queue, the new one for 30 s, past
    worker_timeout (20 s). The sweep waits on (before, nothing being left to submit, it gave up
    at 20 s) and the runs finish on the new job, each epoch trained once."""
    monkeypatch.setattr(sweep, "QUEUE_POLL_SECONDS", 0.5)
    queue = _queue_shims(tmp_path, monkeypatch, f"0 {NEVER} 30", pending=True)
    spec, out = _two_job_spec(cache, tmp_path, worker_timeout=STARTUP_MARGIN), tmp_path / "runs"
    with _first_job_preempted(queue, out) as killed:
        summary = sweep.run_sweep(spec, out=out, progress=False)
    assert killed, "the first job never trained a run"
    _assert_every_epoch_once(summary, out, killed[0])
    events = (queue / "events").read_text().splitlines()
    assert [e.split()[1] for e in events if e.startswith("submit")] == ["job0", "job1", "job2"]


@pytest.mark.parametrize("given", ["spec", "--queue-timeout"])
def test_jobs_pending_past_queue_timeout_fail_the_sweep_in_one_line(
    tmp_path, cache, monkeypatch, given
):
    """SLURM through shims: the jobs stay PENDING in the queue; past cluster.queue_timeout
    (4 s; worker_timeout 2 s) the sweep gives up in one line naming the jobs, the queue's
    reason and the limit (before, it gave up at worker_timeout saying no worker joined), and
    cancels them. ``--queue-timeout 4`` (run_sweep's queue_timeout) wins over the spec's."""
    from avda.errors import AvdaError

    monkeypatch.setattr(sweep, "QUEUE_POLL_SECONDS", 0.5)
    queue = _queue_shims(tmp_path, monkeypatch, str(NEVER), pending=True)
    spec = sweep.parse_spec(
        {
            "cache": str(cache),
            "heads": ["source-only"],
            "settings": ["source->target"],
            "cluster": {
                "kind": "slurm", "workers": 1, "cores": 1, "memory": "2GB",
                "worker_timeout": 2, "queue_timeout": 4 if given == "spec" else 3600,
            },
        }
    )  # fmt: skip
    flag = {"queue_timeout": 4} if given == "--queue-timeout" else {}
    began = time.monotonic()
    with _first_job_preempted(queue, tmp_path / "nothing-to-preempt"):
        with pytest.raises(AvdaError) as raised:
            sweep.run_sweep(spec, out=tmp_path / "runs", progress=False, **flag)
    assert time.monotonic() - began >= 4
    message = str(raised.value)
    assert "\n" not in message, message
    events = (queue / "events").read_text().splitlines()
    job = _job_ids(events)["job0"]
    assert message.startswith(f"1 SLURM job(s) still pending in the queue ({job}: Priority)")
    if given == "spec":
        assert (
            "giving up: cluster.queue_timeout is 4 s (raise it, or leave it out to wait" in message
        )
    else:
        assert (
            "giving up: queue_timeout is 4 s (raise it, or leave it out for the spec's "
            "cluster.queue_timeout, 3600 s)"  # run_sweep's keyword: it said --queue-timeout
        ) in message
    assert f"scancel {job}" in events, events
    # it wrote nothing: its output folder goes, with its lock (it left runs/.sweep.lock alone)
    assert not (tmp_path / "runs").exists()


def test_a_sweep_terminated_while_its_jobs_wait_leaves_no_output_folder(
    tmp_path, cache, monkeypatch
):
    """SIGTERM (a login node's session closed, a kill) to ``avda sweep`` while its SLURM job
    waits in the queue: the terminated line and 143, the job cancelled, and no output folder
    holding only ``.sweep.lock``, which ``avda evaluate`` read as a folder without runs."""
    queue = _queue_shims(tmp_path, monkeypatch, str(NEVER), pending=True)
    spec = _spec_file(
        tmp_path,
        {"kind": "slurm", "workers": 1, "cores": 1, "memory": "2GB", "worker_timeout": 1},
        cache=str(cache), heads=["source-only"], settings=["source->target"], out="runs",
    )  # fmt: skip
    log = tmp_path / "sweep.err"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with log.open("w") as err:
        sweep_process = subprocess.Popen(
            [sys.executable, "-m", "avda", "sweep", str(spec)], cwd=tmp_path, env=env,
            stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while "waiting on while the queue says" not in log.read_text():
            assert sweep_process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        assert (tmp_path / "runs" / ".sweep.lock").exists()  # held while it waits
        sweep_process.send_signal(signal.SIGTERM)
        assert sweep_process.wait(timeout=120) == 128 + signal.SIGTERM, log.read_text()
    finally:
        if sweep_process.poll() is None:
            sweep_process.kill()
        for pid in queue.glob("*.pid"):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(pid.read_text()), signal.SIGKILL)
    assert "terminated (SIGTERM)" in log.read_text()
    assert "scancel" in (queue / "events").read_text()
    assert not (tmp_path / "runs").exists()


def test_queue_timeout_is_seconds_or_none(tmp_path):
    base = {"kind": "slurm", "cores": 1, "memory": "1GB"}
    spec = sweep.load_spec(_spec_file(tmp_path, {**base, "queue_timeout": 3600}), open_caches=False)
    assert spec.cluster.queue_timeout == 3600.0
    spec = sweep.load_spec(_spec_file(tmp_path, {**base, "queue_timeout": None}), open_caches=False)
    assert spec.cluster.queue_timeout is None
    assert "cluster.queue_timeout: expected a number of seconds > 0, got -1" in _problems(
        _spec_file(tmp_path, {**base, "queue_timeout": -1})
    )


@pytest.mark.parametrize("kind", [{"kind": "local"}, {}])
def test_queue_timeout_in_a_local_spec_is_refused_in_one_line(tmp_path, kind):
    """A local cluster has no queue: queue_timeout there bounded nothing, silently. The spec's
    kind is not the last word (--cluster wins): the same spec run on SLURM uses it."""
    from avda.errors import ConfigError

    path = _spec_file(
        tmp_path, {**kind, "workers": 1, "cores": 2, "memory": "4GB", "queue_timeout": 60}
    )
    spec = sweep.load_spec(path, open_caches=False)
    with pytest.raises(ConfigError) as refused:
        sweep.check_cluster(spec)
    assert str(refused.value) == (
        f"{path}: cluster.queue_timeout: bounds the wait for SLURM/PBS jobs pending in their "
        "queue; this sweep runs on a local cluster, which has no queue, so it would bound "
        "nothing: remove it, or run with --cluster slurm or pbs"
    )
    sweep.check_cluster(spec, "slurm")  # --cluster slurm: it bounds the queue's wait
    assert spec.cluster.queue_timeout == 60
    # a slurm spec run with --cluster local leaves it unused, as its walltime
    slurm = sweep.load_spec(
        _spec_file(tmp_path, {"kind": "slurm", "cores": 2, "memory": "4GB", "queue_timeout": 60}),
        open_caches=False,
    )
    sweep.check_cluster(slurm, "local")
    # no limit, as when left out: nothing to refuse
    spec = sweep.load_spec(_spec_file(tmp_path, {**kind, "queue_timeout": None}), open_caches=False)
    sweep.check_cluster(spec)


def test_the_queue_timeout_flag_is_refused_without_a_queue(tmp_path, cache, capsys):
    """--queue-timeout (the spec's cluster.queue_timeout, as --worker-timeout is the spec's
    worker_timeout) bounds a SLURM/PBS queue's wait: on a local cluster or a --scheduler, it
    is refused in one line before anything is written."""
    from avda.cli import main

    path = _spec_file(
        tmp_path,
        {"kind": "local", "workers": 1},
        out="runs",
        cache=str(cache),
        heads=["source-only"],
        settings=["source->target"],
    )
    for extra in ([], ["--check"], ["--cluster", "local"], ["--scheduler", "tcp://127.0.0.1:1"]):
        assert main(["sweep", str(path), "--queue-timeout", "60", *extra]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: --queue-timeout bounds the wait"), err
        # --cluster cannot go with --scheduler: the fix says to give it instead; a local run
        # is not told it has no --cluster where it has one
        fix = "instead of --scheduler" if "--scheduler" in extra else "runs on a local cluster,"
        assert "leave --queue-timeout out, or run with --cluster slurm or pbs" in err[0], err
        assert fix in err[0] and "no --cluster" not in err[0], err
    assert not (tmp_path / "runs").exists()


def test_a_local_specs_queue_timeout_is_refused_with_a_scheduler(tmp_path, cache, capsys):
    """A local spec's cluster.queue_timeout with --scheduler ADDRESS (whose workers avda does not
    submit: no queue is watched) bounded nothing, silently, where a local run refuses it; a
    SLURM spec's is unused there, as its walltime (it is meant for its own cluster)."""
    from avda.cli import main
    from avda.errors import ConfigError

    common = {"out": "runs", "cache": str(cache), "heads": ["source-only"]}
    path = _spec_file(
        tmp_path, {"kind": "local", "queue_timeout": 60}, settings=["source->target"], **common
    )
    spec = sweep.load_spec(path)
    with pytest.raises(ConfigError) as refused:
        sweep.check_cluster(spec, scheduler="tcp://127.0.0.1:1")
    assert str(refused.value) == (
        f"{path}: cluster.queue_timeout: bounds the wait for SLURM/PBS jobs pending in "
        "their queue; this sweep runs on --scheduler tcp://127.0.0.1:1, whose workers avda "
        "does not submit, so it would bound nothing: remove it, or run with --cluster "
        "slurm or pbs instead of --scheduler"
    )
    # run_sweep names its keywords, all of them: 'whose workers avda does not submit, ...'
    # was taken for a command to run ('avda does'), and kept --cluster and --scheduler
    with pytest.raises(ConfigError) as refused:
        sweep.run_sweep(path, scheduler="tcp://127.0.0.1:1")
    assert str(refused.value) == (
        f"{path}: cluster.queue_timeout: bounds the wait for SLURM/PBS jobs pending in "
        "their queue; this sweep runs on scheduler tcp://127.0.0.1:1, whose workers avda "
        "does not submit, so it would bound nothing: remove it, or run with cluster "
        "slurm or pbs instead of scheduler"
    )
    for extra in ([], ["--check"]):
        assert main(["sweep", str(path), "--scheduler", "tcp://127.0.0.1:1", *extra]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "runs on --scheduler tcp://127.0.0.1:1" in err[0], err
        # --check refuses --cluster with --scheduler as the sweep does
        both = ["--scheduler", "tcp://127.0.0.1:1", "--cluster", "slurm", *extra]
        assert main(["sweep", str(path), *both]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err == ["error: give either --scheduler ADDRESS or --cluster KIND, not both"], err
    assert not (tmp_path / "runs").exists()
    slurm = sweep.load_spec(
        _spec_file(
            tmp_path,
            {"kind": "slurm", "cores": 2, "memory": "4GB", "queue_timeout": 60},
            settings=["source->target"],
            **common,
        )
    )
    sweep.check_cluster(slurm, scheduler="tcp://127.0.0.1:1")


def test_scheduler_local_is_refused_at_once_naming_the_local_cluster(tmp_path, cache, capsys):
    """``--scheduler local:2`` (avda extract's way to start a local cluster) was read by Dask as
    the host 'local', port 2: the sweep made its output folder and waited 30 s to connect to
    tcp://local:2. It is refused in one line before anything, naming the sweep's local cluster."""
    from avda.cli import main
    from avda.errors import ConfigError

    path = _spec_file(
        tmp_path,
        {"kind": "local", "workers": 2},
        settings=["source->target"],
        out="runs",
        cache=str(cache),
        heads=["source-only"],
    )
    for value in ("local", "local:2"):
        for extra in ([], ["--check"]):
            began = time.monotonic()
            assert main(["sweep", str(path), "--scheduler", value, *extra]) == 1
            assert time.monotonic() - began < 10
            err = capsys.readouterr().err.strip().splitlines()
            assert err == [
                f"error: --scheduler {value}: avda sweep takes a running scheduler's address "
                "here (tcp://HOST:8786); for a local cluster leave --scheduler out (or give "
                "--cluster local) and set its worker processes with cluster.workers in the spec"
            ], err
    with pytest.raises(ConfigError, match="^scheduler local:2: avda sweep takes"):
        sweep.run_sweep(path, scheduler="local:2")
    assert not (tmp_path / "runs").exists()


def test_the_queue_says_which_jobs_left_it(tmp_path, monkeypatch):
    """``squeue`` / ``qstat`` as SLURM and PBS print them: a job not shown (or in an ended
    state) has left the queue; a command that fails otherwise tells nothing."""
    bin_dir = tmp_path / "bin"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    _shim(bin_dir, "squeue", "echo '11 PENDING'; echo '12 OUT_OF_MEMORY'")
    states = sweep.queue_states("slurm", ["11", "12", "13"])
    assert states == {"11": "PENDING", "12": "OUT_OF_MEMORY", "13": ""}
    # with squeue's reason column (%r), as the sweep asks for it
    _shim(bin_dir, "squeue", "echo '11 PENDING Priority'; echo '12 RUNNING None'")
    assert sweep.queue_jobs("slurm", ["11", "12"]) == {
        "11": ("PENDING", "Priority"), "12": ("RUNNING", "None")
    }  # fmt: skip
    assert sweep.queue_states("slurm", ["11", "12"]) == {"11": "PENDING", "12": "RUNNING"}
    assert [sweep.job_pending("slurm", s) for s in ("PENDING", "RUNNING", "")] == [1, 0, 0]
    assert [sweep.job_ended("slurm", s) for s in states.values()] == [False, True, True]
    _shim(bin_dir, "squeue", "echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1")
    assert sweep.queue_states("slurm", ["11"]) == {"11": ""}
    _shim(bin_dir, "squeue", "echo 'slurm_load_jobs error: Socket timed out' >&2; exit 1")
    assert sweep.queue_states("slurm", ["11"]) is None
    _shim(
        bin_dir,
        "qstat",
        "printf 'Job Id: 21.pbs01\\n    Job_Name = avda-sweep\\n    job_state = Q\\n\\n"
        "Job Id: 22.pbs01\\n    job_state = F\\n'; echo 'qstat: Unknown Job Id 23.pbs01' >&2; "
        "exit 153",
    )
    states = sweep.queue_states("pbs", ["21", "22", "23"])
    assert states == {"21": "Q", "22": "F", "23": ""}
    _shim(
        bin_dir,
        "qstat",
        "printf 'Job Id: 21.pbs01\\n    job_state = Q\\n    comment = Not Running: "
        "Insufficient amount of resource: ncpus\\n'",
    )
    assert sweep.queue_jobs("pbs", ["21"]) == {
        "21": ("Q", "Not Running: Insufficient amount of resource: ncpus")
    }
    assert [sweep.job_pending("pbs", s) for s in ("Q", "H", "R", "F")] == [1, 1, 0, 0]
    assert [sweep.job_ended("pbs", s) for s in states.values()] == [False, True, True]
    _shim(bin_dir, "qstat", "echo 'Connection refused' >&2; exit 1")
    assert sweep.queue_states("pbs", ["21"]) is None
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert sweep.queue_states("slurm", ["11"]) is None


def test_squeue_filters_of_the_users_environment_hide_no_job(tmp_path, monkeypatch):
    """SQUEUE_STATES, SQUEUE_PARTITION... filter what ``squeue -j`` shows: a queued job hidden
    so would count as ended (submitted again, losing its place, or failing the sweep)."""
    bin_dir = tmp_path / "bin"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    # as squeue does: a job outside the environment's filter is not printed
    _shim(bin_dir, "squeue", '[ -n "$SQUEUE_STATES$SQUEUE_PARTITION" ] || echo "11 PENDING"')
    monkeypatch.setenv("SQUEUE_STATES", "RUNNING")
    monkeypatch.setenv("SQUEUE_PARTITION", "gpu")
    assert sweep.queue_states("slurm", ["11"]) == {"11": "PENDING"}


def test_a_job_replacing_a_lost_one_gets_a_name_it_never_had():
    """SpecCluster offers the lowest free name: the one a lost job had (its lost-worker timer
    would close the new job)."""

    class Cluster:
        worker_spec = {"SLURMCluster-0": {}}

        def new_worker_spec(self):
            return {"SLURMCluster-1": {"cls": "job"}}

    used = frozenset({"SLURMCluster-0", "SLURMCluster-1", "SLURMCluster-1-again1"})
    assert sweep._new_worker(Cluster(), used) == {"SLURMCluster-1-again2": {"cls": "job"}}
    assert sweep._new_worker(Cluster(), frozenset()) == {"SLURMCluster-1": {"cls": "job"}}
