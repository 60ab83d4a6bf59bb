"""Decoding workers end with the process that started them, however it ends (Linux): also one
whose parent is gone before the worker starts (a Dask worker killed as its shard begins)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")

PARENT = """
import multiprocessing, os, sys, time

def child(path, gate):
    while not os.path.exists(gate):  # the test kills the parent first when asked to
        time.sleep(0.01)
    from avda.extract.inputs import die_with_parent
    die_with_parent()
    open(path, "w").write(str(os.getpid()))
    time.sleep(120)

if __name__ == "__main__":
    multiprocessing.set_start_method("fork")
    process = multiprocessing.Process(target=child, args=sys.argv[1:3])
    process.start()
    open(sys.argv[3], "w").write(str(process.pid))
    time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:  # a zombie waits for its reaper: it is gone
            return handle.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_for(path, parent, seconds=60.0):
    deadline = time.monotonic() + seconds
    while not path.exists() or not path.read_text():
        assert parent.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    return int(path.read_text())


@pytest.mark.parametrize("parent_dies", ["after the call", "before the call"])
def test_a_killed_parent_takes_its_decoding_worker_along(tmp_path, parent_dies):
    script, marker = tmp_path / "parent.py", tmp_path / "called.pid"
    gate, started = tmp_path / "gate", tmp_path / "started.pid"
    script.write_text(PARENT)
    parent = subprocess.Popen([sys.executable, str(script), str(marker), str(gate), str(started)])
    try:
        child = _wait_for(started, parent)
        if parent_dies == "after the call":
            gate.touch()
            assert _wait_for(marker, parent) == child
        parent.send_signal(signal.SIGKILL)  # no clean-up runs: only the kernel can end it
        parent.wait(10)
        gate.touch()
        deadline = time.monotonic() + 20
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child)
    finally:
        if parent.poll() is None:
            parent.kill()
        if started.exists() and started.read_text() and _alive(int(started.read_text())):
            os.kill(int(started.read_text()), signal.SIGKILL)


def _group(pgid: int) -> list[int]:
    """The live processes of process group ``pgid``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    fields = handle.read().split(")")[-1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                found.append(int(entry))
    return found


def test_sigterm_to_the_process_group_ends_avda_extract_with_its_one_line(demo_dataset, tmp_path):
    """SLURM at a time limit (and a shell's kill of a job) sends SIGTERM to every process of the
    job: the decoding workers too. PyTorch's worker handler died by it and the parent's SIGCHLD
    handler raised 'DataLoader worker ... is killed by signal: Terminated', an internal error
    (exit 1) or a traceback before the 'terminated' line; the workers leave it to the parent."""
    root, _ = demo_dataset
    command = [
        sys.executable, "-m", "avda.cli", "extract", "--manifest", str(root / "manifest.csv"),
        "--videos", str(root), "-o", str(tmp_path / "c.zarr"), "--recipe", "demo",
        "--workers", "2", "--device", "cpu", "--quiet",
    ]  # fmt: skip
    env = {**os.environ, "AVDA_DEBUG": ""}
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while len(_group(process.pid)) < 3:  # the command and its two decoding workers
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "no decoding workers within 300 s"
            time.sleep(0.05)
        time.sleep(0.5)  # decoding
        os.killpg(process.pid, signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert "Error" not in err and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == (
        "terminated (SIGTERM); avda extract resumes where it stopped: run the same command again"
    )
    deadline = time.monotonic() + 20
    while _group(process.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _group(process.pid)  # no decoding worker left behind
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0 and ", 0 failed" in rerun.stdout, rerun.stderr


STARTING = """
import os, signal, sys
import torch.utils.data.dataloader as dataloader
from avda import cli
from avda.extract.inputs import DecodingLoader, worker_init

started = dataloader._utils.signal_handling._set_SIGCHLD_handler

def started_then_signalled():  # the workers run; the iterator is not yet whole
    started()
    os.kill(os.getpid(), getattr(signal, sys.argv[1]))

dataloader._utils.signal_handling._set_SIGCHLD_handler = started_then_signalled
signal.signal(signal.SIGTERM, cli._terminated)
try:
    for _ in DecodingLoader(range(4), batch_size=None, num_workers=2, worker_init_fn=worker_init):
        pass
except (cli.Terminated, KeyboardInterrupt):
    print("unwound")
"""


def test_a_signal_while_the_decoding_workers_start_unwinds_without_a_traceback(tmp_path):
    """``avda finetune`` starts its decoding workers anew each epoch: a SIGTERM (or Ctrl-C)
    while PyTorch's iterator was being made left it half made, and collecting it printed
    'Exception ignored in: ... _MultiProcessingDataLoaderIter.__del__ ... AttributeError: ...
    no attribute _workers_status' above the terminated line. The signal waits until it is
    whole, then unwinds the command."""
    script = tmp_path / "starting.py"
    script.write_text(STARTING)
    done = subprocess.run(
        [sys.executable, str(script), "SIGTERM"], capture_output=True, text=True, timeout=120
    )
    assert done.stdout.split() == ["unwound"], done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return int(handle.read().split(")")[-1].split()[1])
    except FileNotFoundError:
        return 0


def _workers(command: int) -> set[int]:
    """The Dask worker processes (and the resource tracker) ``command`` started."""
    return {p for p in _group(command) if _parent(p) == command}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signalled_local_cluster_leaves_no_semaphore_to_report(demo_dataset, tmp_path, signum):
    """``avda extract --scheduler local:2`` stopped by its job's SIGTERM (or a terminal's
    Ctrl-C) while a shard's decoding workers run: each Dask worker, spawned, spawned its
    decoding workers too, their loader's queues holding semaphores registered with the
    command's resource tracker; the Dask worker killed, the tracker printed 'There appear to be
    N leaked semaphore objects to clean up at shutdown' under the one line."""
    root, _ = demo_dataset
    command = [
        sys.executable, "-m", "avda", "extract", "--manifest", str(root / "manifest.csv"),
        "--videos", str(root), "-o", str(tmp_path / "c.zarr"), "--recipe", "demo",
        "--scheduler", "local:2", "--chunk-rows", "2", "--device", "cpu", "--quiet",
    ]  # fmt: skip
    # stderr to a file: the tracker, the last of the group to end, writes there after the command
    with open(tmp_path / "stderr", "w") as stderr:
        process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True,
            env={**os.environ, "AVDA_DEBUG": ""},
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        # a shard's decoding workers: the group's processes that a Dask worker started
        while not [p for p in _group(process.pid) if _parent(p) in _workers(process.pid)]:
            assert process.poll() is None, (tmp_path / "stderr").read_text()
            assert time.monotonic() < deadline, "no decoding workers within 300 s"
            time.sleep(0.02)
        os.killpg(process.pid, signum)
        process.wait(timeout=120)
        while _group(process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    err = (tmp_path / "stderr").read_text()
    codes = (128 + signal.SIGTERM,) if signum == signal.SIGTERM else (130, -signal.SIGINT)
    assert process.returncode in codes, err
    assert "leaked" not in err and "Traceback" not in err, err
    said = "avda extract resumes where it stopped: run the same command again"
    assert err.strip().splitlines()[-1].endswith(said), err


LONG_ITEM = """
import multiprocessing, os, signal, sys, time
from torch.utils.data import Dataset
from avda import cli
from avda.extract.inputs import DecodingLoader, worker_init

class Slow(Dataset):  # every item but the first is long (a long segment, a slow file system)
    def __len__(self):
        return 8

    def __getitem__(self, index):
        time.sleep(60 if index else 0)
        return index

signal.signal(signal.SIGTERM, cli._terminated)
try:
    for _ in DecodingLoader(Slow(), batch_size=None, num_workers=2, worker_init_fn=worker_init):
        print(" ".join(str(p.pid) for p in multiprocessing.active_children()), flush=True)
        if sys.argv[1] == "SIGTERM":
            os.kill(os.getpid(), signal.SIGTERM)
        raise RuntimeError("the command failed")
except (RuntimeError, cli.Terminated):
    print(time.monotonic(), flush=True)
"""


@pytest.mark.parametrize("stop", ["error", "SIGTERM"])
def test_a_stopped_command_does_not_wait_for_its_decoding_workers_items(tmp_path, stop):
    """A command stopped by an error (or by SIGTERM) while its decoding workers were on long
    items: PyTorch ends the workers still busy after its 5 s wait with terminate(), a SIGTERM
    they ignore, so the process's exit waited for each item (here 60 s)."""
    script = tmp_path / "long.py"
    script.write_text(LONG_ITEM)
    done = subprocess.run(
        [sys.executable, str(script), stop], capture_output=True, text=True, timeout=300
    )
    ended = time.monotonic()
    workers, stopped = done.stdout.split("\n")[:2]
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert ended - float(stopped) < 20, f"exited {ended - float(stopped):.0f} s after stopping"
    assert not [pid for pid in map(int, workers.split()) if _alive(pid)]


BEFORE_INIT = """
import os, signal, threading
import torch.utils.data._utils.worker as worker
from avda.extract.inputs import DecodingLoader, worker_init

loop = worker._worker_loop

def signalled_before_its_init(*args, **kwargs):  # a job's SIGTERM as the worker has just started
    os.kill(os.getpid(), signal.SIGTERM)
    loop(*args, **kwargs)

worker._worker_loop = signalled_before_its_init
loader = DecodingLoader(range(6), batch_size=None, num_workers=2, worker_init_fn=worker_init)
# off the main thread, as a Dask worker's shard: no handler of the parent's is inherited there
thread = threading.Thread(target=lambda: print(sorted(loader)))
thread.start()
thread.join()
"""


def test_a_sigterm_before_a_decoding_worker_ignores_it_is_discarded(tmp_path):
    """A decoding worker ignores SIGTERM from its worker_init on; one that came between its
    start and that call (a job's SIGTERM to the group as a shard's workers start in a Dask
    worker's thread, where no handler of the parent's is inherited) killed it, and the command
    raised 'DataLoader worker ... is killed by signal: Terminated'. The workers start with
    SIGTERM blocked until they ignore it."""
    script = tmp_path / "before_init.py"
    script.write_text(BEFORE_INIT)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.split("\n")[0] == "[0, 1, 2, 3, 4, 5]", done.stderr
    assert "Traceback" not in done.stderr, done.stderr


def test_decoding_workers_start_where_signal_masks_are_unknown(tmp_path):
    """Windows has no pthread_sigmask: DecodingLoader's workers start there without blocking
    SIGTERM (Windows has no process-group SIGTERM to hold back), where the block of 49a9671
    raised AttributeError as the first shard's workers started (and in each worker_init)."""
    script = tmp_path / "no_sigmask.py"
    script.write_text(
        "import signal\n"
        "del signal.pthread_sigmask  # as on Windows\n"
        "from avda.extract.inputs import DecodingLoader, worker_init\n"
        "loader = DecodingLoader(range(4), batch_size=None, num_workers=2,"
        " worker_init_fn=worker_init)\n"
        "print(sorted(loader))\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.split("\n")[0] == "[0, 1, 2, 3]", done.stderr
