"""The one-line error contract: every command, driven into its failure paths, writes exactly one
line on stderr (no traceback) and exits with the documented code (1 error, 2 usage, 130
interrupted)."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from avda import cli, paths, runs
from avda.errors import ConfigError
from tests.conftest import make_feature_cache

# Log records (``avda -v`` style) may precede the error line; they are not error output.
LOG_RECORD = re.compile(r"^(DEBUG|INFO|WARNING) [\w.]+: ")


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str, *, logs: bool = False) -> str:
    """The single line of ``err`` (``logs``: log records before it are allowed)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    if logs:
        lines = [line for line in lines if not LOG_RECORD.match(line)]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    return lines[0]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A folder with a small cache, an empty, a corrupt and a bad manifest, a folder, a file and
    a sweep spec; the tests chdir into it and name these by relative path."""
    root = tmp_path_factory.mktemp("cli-errors")
    make_feature_cache(root / "c.zarr", per_class=4)
    (root / "empty.csv").write_text("uid,video_id,domain,split,start_sec,stop_sec\n")
    (root / "corrupt.csv").write_text('uid,video_id\n"a,b\n\x00\x01garbage')
    (root / "bad.csv").write_text(
        "uid,video_id,domain,split,start_sec,stop_sec\na,v,D1,train,0,1\na,v,D1,bogus,2,1\n"
    )
    (root / "a-file.txt").write_text("not a folder\n")
    (root / "folder").mkdir()
    (root / "bad.yaml").write_text("{}\n")
    spec = {
        "cache": "c.zarr",
        "heads": ["source-only"],
        "settings": ["source->target"],
        "seeds": [0],
        "out": "runs",
        "cluster": {"kind": "local", "workers": 1, "cores": 1, "memory": "1GB"},
    }
    (root / "sweep.yaml").write_text(yaml.safe_dump(spec))
    (root / "no-out.yaml").write_text(yaml.safe_dump({k: v for k, v in spec.items() if k != "out"}))
    return root


@pytest.fixture
def in_work(work: Path, monkeypatch) -> Path:
    monkeypatch.chdir(work)
    monkeypatch.delenv("AVDA_DEBUG", raising=False)
    return work


TRAIN = ["train", "--cache", "c.zarr", "--source", "source", "--target", "target"]
FINETUNE = ["finetune", "--backbone", "i3d", "--modality", "rgb", "--source", "D1"]

# (command line, exit code, a fragment of the error line)
CASES = [
    # manifest
    ("manifest validate nope.csv", 1, "manifest nope.csv does not exist"),
    ("manifest validate empty.csv", 1, "the manifest has no rows"),
    ("manifest validate corrupt.csv", 1, "manifest corrupt.csv cannot be read"),
    (
        "manifest validate bad.csv",
        1,
        "manifest bad.csv has 3 problem(s), listed above (the first: row 3 [uid]: duplicate",
    ),
    ("manifest validate folder", 1, "cannot be read"),
    ("manifest stats nope.csv", 1, "does not exist"),
    ("manifest build bogus -a folder -o new/m.csv", 1, "unknown benchmark 'bogus'"),
    ("manifest build epic55-mmsada -a nope -o new/m.csv", 1, "annotations path nope"),
    ("manifest build epic55-mmsada -a folder -o folder", 1, "-o folder is a folder"),
    ("manifest build epic55-mmsada -o m.csv", 2, "Missing option '--annotations'"),
    # extract
    ("extract -m nope.csv -o s.zarr", 1, "manifest nope.csv does not exist"),
    ("extract -m empty.csv -o s.zarr --videos folder", 1, "the manifest has no rows"),
    ("extract -m corrupt.csv -o s.zarr", 1, "cannot be read"),
    ("extract -m bad.csv -o s.zarr --precision fp8", 1, "--precision 'fp8'"),
    ("extract -m bad.csv -o a-file.txt", 1, "-o a-file.txt is a file"),
    ("extract -m bad.csv -o a-file.txt/s.zarr", 1, "a file of that name exists"),
    ("extract -m bad.csv -o s.zarr --batch-size many", 2, "Invalid value for '--batch-size'"),
    # flow
    ("flow -m nope.csv -o fl", 1, "does not exist"),
    ("flow -m empty.csv -o fl --method nope", 1, "unknown flow method 'nope'"),
    ("flow -m empty.csv -o a-file.txt", 1, "-o a-file.txt is a file"),
    # finetune
    (" ".join(FINETUNE) + " -m nope.csv -o ft/x.pt", 1, "manifest nope.csv does not exist"),
    (" ".join(FINETUNE) + " -m empty.csv -o folder", 1, "-o folder is a folder"),
    (" ".join(FINETUNE) + " -m empty.csv -o ft/x.pt --epochs x", 2, "'--epochs'"),
    # cache import / export / info
    ("cache import nope.pkl -o imp.zarr", 1, "feature file nope.pkl does not exist"),
    ("cache import corrupt.csv -o imp.zarr", 1, "cannot tell the format"),
    ("cache import folder --format h5 -o imp.zarr", 1, "is a directory: folder"),
    ("cache export nope.zarr -o x.h5", 1, "cache nope.zarr does not exist"),
    ("cache export c.zarr -o folder", 1, "-o folder is a folder"),
    ("cache export c.zarr -o x.h5 --modalities nope", 1, "unknown modality 'nope'; valid"),
    ("cache export c.zarr -o x.h5 --format csv", 1, "--format 'csv': expected h5 or epic-pkl"),
    ("cache export c.zarr -o a-file.txt/x.h5", 1, "a file of that name exists"),
    ("cache info nope.zarr", 1, "cache nope.zarr does not exist"),
    ("cache info empty.csv", 1, "is not a Zarr store"),
    ("cache infos c.zarr", 2, "No such command 'infos'"),
    # cluster
    ("cluster nope.zarr", 1, "cache nope.zarr does not exist"),
    ("cluster c.zarr --modality nope", 1, "unknown modality 'nope'; valid: audio, rgb"),
    ("cluster c.zarr --plot a-file.txt", 1, "--plot a-file.txt is a file"),
    ("cluster c.zarr --max-k 0", 1, "--max-k must be >= 1"),
    # train
    (" ".join(TRAIN) + " --head nope -o r", 1, "unknown head 'nope'"),
    (" ".join(TRAIN) + " --head dan -o r", 1, "did you mean 'dann'?"),
    ("train --head dann --cache nope.zarr --source s --target t -o r", 1, "does not exist"),
    ("train --head dann --cache c.zarr --source nope --target target -o r", 1, "domain 'nope'"),
    (" ".join(TRAIN) + " --head dann -o r --set bogus=1", 1, "unknown DannConfig field"),
    (" ".join(TRAIN) + " --head dann -o r --set bogus", 1, "--set expects key=value"),
    (" ".join(TRAIN) + " --head dann -o a-file.txt", 1, "-o a-file.txt is a file"),
    (" ".join(TRAIN) + " --head dann -o r --epochs x", 2, "Invalid value for '--epochs'"),
    ("train --heat x", 2, "No such option: --heat"),
    # --setting is manifest build's: train names the setting's domains
    (" ".join(TRAIN) + " --head dann -o r --setting ucf-hmdb", 2, "--source ucf --target hmdb"),
    (" ".join(TRAIN) + " --head dann -o r --setting x", 2, "domains: --source A --target B"),
    # evaluate / report
    ("evaluate nope", 1, "nope does not exist"),
    ("evaluate folder", 1, "holds no avda run"),
    ("evaluate folder -o a-file.txt/results", 1, "a file of that name exists"),
    ("evaluate folder --export-submission folder", 1, "--export-submission folder is a folder"),
    # --format: checked before any run is read; html/latex is a paper layout's (it said "use
    # --layout auto for latex" to --format html, and so to a misspelt format)
    # its lines went to stdout above the table: `--format csv > t.csv` was no CSV
    ("evaluate folder --checkpoint-average 9 --format csv", 1, "would break the csv on stdout"),
    # its fix said "or write the table with -o OUT", which with --format csv is refused again
    ("evaluate folder --checkpoint-average 9 --format csv -o t", 1, "out (-o OUT still writes"),
    ("evaluate folder --sls 2,3,3", 1, "--sls describes the model of a challenge file: add"),
    ("evaluate folder --format json", 1, "--format must be one of markdown, latex, csv, html"),
    ("evaluate folder --layout auto --format json", 1, "got 'json'"),
    ("evaluate folder --format html", 1, "--format html: the runs layout prints markdown or csv"),
    ("report nope -o r.html", 1, "nope does not exist"),
    ("report folder -o folder", 1, "-o folder is a folder"),
    ("report folder -o a-file.txt/r.html", 1, "a file of that name exists"),
    # sweep
    ("sweep nope.yaml", 1, "sweep spec nope.yaml does not exist"),
    ("sweep folder", 1, "sweep spec folder is a folder"),
    ("sweep bad.yaml", 1, "3 problems in the sweep spec (see docs/sweep.md): bad.yaml: cache"),
    ("sweep sweep.yaml --cluster nope", 1, "--cluster must be one of local, slurm, pbs"),
    ("sweep sweep.yaml --cluster slurm --scheduler tcp://x:1", 1, "not both"),
    ("sweep sweep.yaml --worker-timeout -1", 2, "'--worker-timeout'"),
    ("sweep sweep.yaml --job-script", 1, "--job-script needs --cluster slurm or pbs"),
    (
        "sweep no-out.yaml",
        1,
        "error: no output folder: give --out=DIR or put 'out: DIR' in no-out.yaml",
    ),
    # demo and the root
    ("demo --epochs x", 2, "Invalid value for '--epochs'"),
    ("demo -o a-file.txt", 1, "-o a-file.txt is a file"),
    ("nope", 2, "No such command 'nope'"),
]


@pytest.mark.parametrize(("line", "code", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_each_failure_is_one_line_with_its_exit_code(capsys, in_work, line, code, fragment):
    got, _, err = run(capsys, *line.split())
    message = one_line(err)
    assert got == code, err
    assert message.startswith("usage error: " if code == 2 else "error: "), message
    assert fragment in message, message


def test_missing_parent_folders_of_outputs_are_created(capsys, in_work):
    code, out, err = run(capsys, "cache", "export", "c.zarr", "-o", "new/deeper/x.h5")
    assert code == 0, err
    assert (in_work / "new" / "deeper" / "x.h5").is_file()
    assert not list((in_work / "new" / "deeper").glob(".*partial"))
    code, out, err = run(
        capsys, "cache", "export", "c.zarr", "-o", "pkl/dir/x.pkl", "--format", "epic-pkl"
    )
    assert code == 0, err and (in_work / "pkl" / "dir" / "x.pkl").is_file()
    code, _, err = run(capsys, *TRAIN, "--head", "source-only", "-o", "runs/a/b/so",
                       "--epochs", "1", "--quiet")  # fmt: skip
    assert code == 0, err
    code, _, err = run(capsys, "evaluate", "runs/a/b/so", "-o", "tables/here/results")
    assert code == 0, err
    assert (in_work / "tables" / "here" / "results.md").is_file()


# ------------------------------------------------------------------------------ OS errors
@pytest.mark.parametrize(
    ("error", "fragment"),
    [
        (OSError(errno.ENOSPC, "No space left on device", "x.h5"), "no space left on device: x.h5"),
        (PermissionError(errno.EACCES, "Permission denied", "x.h5"), "permission denied: x.h5"),
        (IsADirectoryError(errno.EISDIR, "Is a directory", "x.h5"), "is a directory: x.h5"),
        (FileNotFoundError(errno.ENOENT, "No such file", "y.h5"), "no such file or directory: y"),
        (OSError(errno.EIO, "Input/output error", "x.h5"), "input/output error: x.h5"),
        # a library's write that names no file (a Zarr chunk): the command's output is named
        (OSError(errno.ENOSPC, "No space left on device"), "no space left on device writing x.h5"),
        # so does every full disk's (DISK_FULL): a quota, a file-size limit named no file
        (OSError(errno.EDQUOT, "Disk quota exceeded"), "disk quota exceeded writing x.h5"),
        (OSError(errno.EFBIG, "File too large"), "file too large writing x.h5 (a file-size"),
        (OSError(errno.EROFS, "Read-only file system"), "read-only file system writing x.h5"),
        (MemoryError(), "out of memory"),
    ],
)
def test_os_errors_escaping_the_library_are_one_line(capsys, in_work, monkeypatch, error, fragment):
    from avda.cache import interop

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(interop, "export_h5", fail)
    code, _, err = run(capsys, "cache", "export", "c.zarr", "-o", "x.h5")
    assert code == 1
    message = one_line(err)
    assert message.startswith("error: ") and fragment in message, message


def test_an_unexpected_exception_is_an_internal_error_line(capsys, in_work, monkeypatch):
    from avda.cache import interop

    def fail(*args, **kwargs):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(interop, "export_h5", fail)
    code, _, err = run(capsys, "cache", "export", "c.zarr", "-o", "x.h5")
    assert code == 1
    message = one_line(err)
    assert message.startswith("internal error: RuntimeError: boom; second line; please report")
    assert "AVDA_DEBUG=1" in message
    monkeypatch.setenv("AVDA_DEBUG", "1")
    code, _, err = run(capsys, "cache", "export", "c.zarr", "-o", "x.h5")
    assert code == 1 and "Traceback" in err and err.rstrip().endswith("AVDA_DEBUG=1")


def test_a_failed_export_leaves_no_partial_file(in_work, monkeypatch):
    from avda.cache import interop

    def fail(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(interop, "_copy_chunked", fail)
    with pytest.raises(OSError):
        interop.export_h5("c.zarr", "partial/x.h5")
    assert list((in_work / "partial").iterdir()) == []


# ------------------------------------------------------------------------------ interrupts
@pytest.mark.parametrize(
    ("argv", "resumable"),
    [
        ([*TRAIN, "--head", "dann", "-o", "r-int"], True),
        (["cache", "import", "x.pkl", "-o", "i.zarr"], True),
        (["evaluate", "folder"], False),
    ],
)
def test_keyboard_interrupt_is_one_line_and_130(capsys, in_work, monkeypatch, argv, resumable):
    import avda.cache.interop
    import avda.evaluate.tables
    import avda.train.loop

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(avda.train.loop, "train", interrupt)
    monkeypatch.setattr(avda.cache.interop, "import_features", interrupt)
    monkeypatch.setattr(avda.evaluate.tables, "evaluate_runs", interrupt)
    code, _, err = run(capsys, *argv)
    assert code == 130
    message = one_line(err)
    if resumable:
        assert message.startswith("interrupted; avda ") and "run the same command again" in message
    else:
        assert message == "interrupted"


def _epochs_recorded(run: Path, after: int = 0) -> bool:
    """Whether ``run``'s metrics.jsonl holds more than ``after`` whole epochs' records: the
    loop is in its epochs (config.yaml is written before the data loads and the head is
    checked)."""
    try:
        text = (run / "metrics.jsonl").read_text()
    except FileNotFoundError:
        return False
    return text.endswith("\n") and len(text.splitlines()) > after


@pytest.mark.parametrize(
    ("signum", "said"),
    [
        (signal.SIGINT, "interrupted"),
        # SLURM/PBS at a job's time limit, scancel, kill: Python's default ended the process on
        # the spot without a word (exit -15); it unwinds as from Ctrl-C and says so (exit 143)
        (signal.SIGTERM, "terminated (SIGTERM)"),
    ],
    ids=["SIGINT", "SIGTERM"],
)
def test_sigint_to_a_running_train_exits_130_with_the_resume_line(work, tmp_path, signum, said):
    """A real Ctrl-C: SIGINT to an ``avda train`` subprocess in the middle of its epochs (and
    SIGTERM, which a batch scheduler sends: exit 143, the same line).

    Waits for the first epoch's record, not a fixed time: a loaded machine takes over a minute
    to import torch and load the cache (the 60 s it had to write config.yaml ran out at load
    10), and a fixed sleep after config.yaml sent SIGINT during the set-up at one load and deep
    in the epochs at another."""
    out = tmp_path / "run"
    err = _train_until_an_epoch_then(signum, work, out)
    message = one_line(err, logs=True)
    assert message == f"{said}; avda train resumes where it stopped: run the same command again"
    if signum == signal.SIGTERM:  # and it does: the same command goes on from where it stopped
        before = _epochs(out)
        _train_until_an_epoch_then(signum, work, out, after=len(before))
        after = _epochs(out)
        assert after[: len(before)] == before and len(after) > len(before)
        assert [record["epoch"] for record in after] == list(range(1, len(after) + 1))


def test_the_terminated_line_comes_after_the_bars_left_open(capsys, monkeypatch, tmp_path):
    """A command's bar not closed in a ``finally`` (``avda extract --scheduler``'s shards) is
    closed as the unwound frames go: the 'terminated' line was said before, so a bar's last
    state ended stderr, where Ctrl-C's 'interrupted' line comes after it."""
    from avda._io import progress_bar
    from avda.cache.store import FeatureCache

    make_feature_cache(tmp_path / "c.zarr", per_class=2)

    def verify(self, progress=True):
        bar = progress_bar(total=3, desc="verify", unit="chunk", disable=False)
        bar.update(1)
        raise cli.Terminated

    monkeypatch.setattr(FeatureCache, "verify", verify)
    code, _, err = run(capsys, "cache", "verify", str(tmp_path / "c.zarr"))
    assert code == 128 + signal.SIGTERM
    assert err.strip().splitlines()[-1] == "terminated (SIGTERM)", err
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # main's handler undone


def test_a_second_sigterm_does_not_cut_the_clean_up_short(capsys, monkeypatch, tmp_path):
    """A job's SIGTERM can come twice (a wrapper forwarding it, a repeated kill): the second,
    raised inside the first's clean-up, cut it short (a cluster half closed) or, after it,
    ended the command with a traceback; the clean-up runs to its end and the line is said."""
    from avda.cache.store import FeatureCache

    make_feature_cache(tmp_path / "c.zarr", per_class=2)
    cleaned = []

    def verify(self, progress=True):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises before this ends
        finally:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            cleaned.append(True)

    monkeypatch.setattr(FeatureCache, "verify", verify)
    code, _, err = run(capsys, "cache", "verify", str(tmp_path / "c.zarr"))
    assert code == 128 + signal.SIGTERM and cleaned == [True]
    assert one_line(err) == "terminated (SIGTERM)"
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def _epochs(run: Path) -> list[dict]:
    """Its epochs' records without their times (an epoch past the last checkpoint is trained
    again on resume: the same numbers, another time)."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in record.items() if k != "seconds"} for record in records]


def _train_until_an_epoch_then(signum, work, out: Path, after: int = 0) -> str:
    """Start ``avda train`` (source-only, 100,000 epochs) into ``out``, send ``signum`` once
    its metrics.jsonl holds more than ``after`` whole epochs' records, return its stderr."""
    env = {**os.environ, "AVDA_DEBUG": ""}
    process = subprocess.Popen(
        [
            sys.executable,
            "-X",
            "faulthandler",  # a hang below is reported with every thread's stack (SIGABRT)
            "-m",
            "avda.cli",
            *TRAIN,
            "--head",
            "source-only",
            "-o",
            str(out),
            "--epochs",
            "100000",
            "--quiet",
        ],  # fmt: skip
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # SIGINT as a terminal's job has it, whatever this runner inherited (started in the
        # background by a shell, SIGINT is ignored, and an ignored signal stays ignored).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        # generous: a hang is caught by the deadlines, a slow machine only waits longer
        deadline = time.monotonic() + 600
        while not _epochs_recorded(out, after):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "train recorded no epoch within 600 s"
            time.sleep(0.1)
        process.send_signal(signum)
        try:
            _, err = process.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGABRT)  # faulthandler prints the threads' stacks
            _, err = process.communicate(timeout=60)
            pytest.fail(f"avda train did not exit within 300 s of {signum!r}; its stderr:\n{err}")
    finally:
        if process.poll() is None:
            process.kill()
    # SIGINT: 130, or death by SIGINT, which a shell reports as the same 130: under ``python
    # -m``, CPython re-raises the signal at exit when the interrupt landed while a string was
    # exec'd (dataclasses build their methods so, and torch imports some lazily at the first
    # optimiser step), although avda caught it (CPython's pymain_run_module /
    # unhandled_keyboard_interrupt); the ``avda`` script always exits 130. SIGTERM: 143.
    codes = (130, -signal.SIGINT) if signum == signal.SIGINT else (128 + signal.SIGTERM,)
    assert process.returncode in codes, err
    return err


HELD_BAR = """
import asyncio, os, signal, sys, threading
from tqdm import tqdm
from zarr.core.sync import sync
from avda import cli

@cli.app.command("hold")
def hold():
    bar = tqdm(total=2, desc="held")  # closed when collected, as avda extract --scheduler's
    bar.update(1)

    async def writes():  # Zarr's, as avda cache import's writing chunks
        await asyncio.gather(*(asyncio.sleep(30) for _ in range(3)))

    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
    sync(writes())

sys.exit(cli.main(["hold"]))
"""


def test_sigterm_says_its_line_last_after_the_bars_the_unwinding_closes(tmp_path):
    """The line was printed while the exception still held the command's frames: a progress
    bar closed only when collected (``avda extract --scheduler local:2``'s shards) drew itself
    again under it, so the job log's last line was the bar, not what to do. Zarr's writes left
    pending on its event loop (``avda cache import``) were logged at exit, each 'Task was
    destroyed but it is pending!' with its coroutine."""
    script = tmp_path / "held.py"
    script.write_text(HELD_BAR)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120,
        env={**os.environ, "AVDA_DEBUG": ""},
    )  # fmt: skip
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    assert "Traceback" not in done.stderr and "held: " in done.stderr
    assert "destroyed but it is pending" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "terminated (SIGTERM)", done.stderr


def test_demo_with_a_missing_checkpoint_is_refused_before_making_its_dataset(capsys, tmp_path):
    for option in ("--weights", "--audio-weights"):
        code, _, err = run(capsys, "demo", "-o", str(tmp_path / "d"), option, "nope.pt")
        assert code == 1 and f"{option} nope.pt: no such checkpoint file" in one_line(err)
        assert not (tmp_path / "d").exists()


def test_manifest_validate_lists_every_problem_on_stdout(capsys, work, tmp_path):
    """Other commands name the first five problems of a manifest in their error line;
    ``validate`` is for finding them all."""
    rows = "".join(f"r{i},v,D1,bogus{i},0,1\n" for i in range(8))
    (tmp_path / "m.csv").write_text("uid,video_id,domain,split,start_sec,stop_sec\n" + rows)
    code, out, err = run(capsys, "manifest", "validate", str(tmp_path / "m.csv"))
    assert code == 1
    assert out.splitlines() == [
        f"row {i + 2} [split]: unknown split 'bogus{i}'; expected one of train, val, test"
        for i in range(8)
    ]
    assert "has 8 problem(s), listed above" in one_line(err)
    code, _, err = run(capsys, "manifest", "stats", str(tmp_path / "m.csv"))
    assert code == 1 and "row 6 [split]" in err and "row 7 [split]" not in err, err
    assert "... and 3 more" in err


# ------------------------------------------------------------------------------ SLURM / PBS
def fake_bin(folder: Path, **scripts: str) -> Path:
    folder.mkdir()
    for name, body in scripts.items():
        path = folder / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
    return folder


def test_sweep_on_slurm_without_sbatch_is_refused_at_once(capsys, in_work, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(fake_bin(tmp_path / "bin")))  # no sbatch, no qsub
    for kind, command in (("slurm", "sbatch"), ("pbs", "qsub")):
        out = tmp_path / kind
        code, _, err = run(capsys, "sweep", "sweep.yaml", "--cluster", kind, "--out", str(out))
        assert code == 1
        message = one_line(err, logs=True)
        assert f"submits its workers with `{command}`, which is not on PATH" in message
        assert not out.exists()  # refused before anything is written
    # without dask-jobqueue, that is said first: it can be installed here, sbatch cannot
    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)
    code, _, err = run(capsys, "sweep", "sweep.yaml", "--cluster", "slurm", "--out", str(out))
    assert code == 1 and "dask-jobqueue" in one_line(err, logs=True) and "sbatch" not in err


def test_an_unreachable_scheduler_is_given_up_within_the_worker_timeout(capsys, in_work, tmp_path):
    with socket.socket() as free:  # a port nothing listens on
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    out = tmp_path / "runs"
    began = time.monotonic()
    address = f"tcp://127.0.0.1:{port}"
    code, _, err = run(capsys, "sweep", "sweep.yaml", "--out", str(out),
                       "--scheduler", address, "--worker-timeout", "2")  # fmt: skip
    assert code == 1
    assert f"--scheduler tcp://127.0.0.1:{port}: cannot connect" in one_line(err, logs=True)
    assert time.monotonic() - began < 20
    assert not (out / "sweep.json").exists()  # no index of runs that never started


def test_sweep_gives_up_when_no_worker_joins(capsys, in_work, monkeypatch, tmp_path):
    """sbatch accepts the job, which never starts: no worker joins, one line after the timeout."""
    folder = fake_bin(tmp_path / "bin", sbatch='echo "Submitted batch job 4242"', scancel="exit 0")
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    began = time.monotonic()
    code, _, err = run(
        capsys, "sweep", "sweep.yaml", "--cluster", "slurm", "--worker-timeout", "1.5"
    )
    assert code == 1
    message = one_line(err, logs=True)
    assert message.startswith("error: no Dask worker joined the SLURM cluster within 1.5 s")
    assert "squeue -u $USER" in message and "--job-script" in message
    assert time.monotonic() - began < 30


def test_sweep_reports_a_submit_command_that_prints_no_job_id(
    capsys, in_work, monkeypatch, tmp_path
):
    folder = fake_bin(tmp_path / "bin", sbatch="exit 0")
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    code, _, err = run(
        capsys, "sweep", "sweep.yaml", "--cluster", "slurm", "--worker-timeout", "60"
    )
    assert code == 1
    message = one_line(err, logs=True)
    assert message.startswith("error: could not submit the SLURM worker jobs with `sbatch`")


def test_a_refused_submission_says_what_the_submit_command_said(
    capsys, in_work, monkeypatch, tmp_path
):
    """sbatch's own reason (an invalid account...) reaches the user, not only "exited with a
    non-zero exit code"."""
    folder = fake_bin(
        tmp_path / "bin", sbatch='echo "sbatch: error: Invalid account or partition" >&2; exit 1'
    )
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    code, _, err = run(
        capsys, "sweep", "sweep.yaml", "--cluster", "slurm", "--worker-timeout", "60"
    )
    assert code == 1
    message = one_line(err, logs=True)
    assert "could not submit the SLURM worker jobs" in message
    assert "sbatch: error: Invalid account or partition" in message


def test_sweep_job_script_needs_no_sbatch(capsys, in_work, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(fake_bin(tmp_path / "bin")))
    code, out, err = run(capsys, "sweep", "sweep.yaml", "--cluster", "slurm", "--job-script")
    assert code == 0, err
    assert out.startswith("#!/usr/bin/env bash") and "#SBATCH -J avda-sweep" in out
    # the spec's out: is not used by the script: one named as a file was refused all the same
    spec = yaml.safe_load((in_work / "sweep.yaml").read_text())
    # (a spec of its own: sweep.yaml is the module's, which later tests run)
    (in_work / "zarr-out.yaml").write_text(yaml.safe_dump({**spec, "out": "r.zarr"}))
    code, out, err = run(capsys, "sweep", "zarr-out.yaml", "--cluster", "slurm", "--job-script")
    assert code == 0 and "#SBATCH -J avda-sweep" in out, err


def test_worker_timeout_in_the_spec_is_validated(tmp_path):
    from avda import sweep
    from avda.errors import ConfigError

    make_feature_cache(tmp_path / "c.zarr", per_class=2)
    base = {"cache": str(tmp_path / "c.zarr"), "heads": ["dann"], "settings": ["source->target"]}
    spec = sweep.parse_spec({**base, "cluster": {"worker_timeout": 12}}, source="s.yaml")
    assert spec.cluster.worker_timeout == 12.0
    assert sweep.parse_spec(base, source="s.yaml").cluster.worker_timeout == 300.0
    with pytest.raises(ConfigError, match="worker_timeout: expected a number of seconds > 0"):
        sweep.parse_spec({**base, "cluster": {"worker_timeout": "soon"}}, source="s.yaml")


def test_a_scheduler_without_workers_is_given_up_on(capsys, in_work):
    """--scheduler ADDRESS with no worker connected: sweep and extract stop after the timeout."""
    from distributed import Client, LocalCluster

    from avda.errors import AvdaError
    from avda.extract import distributed

    # The root log handler may still write to an earlier test's closed capture stream.
    logging.basicConfig(stream=sys.stderr, force=True)
    with LocalCluster(
        n_workers=0, processes=False, dashboard_address=None, silence_logs=logging.ERROR
    ) as empty:
        address = empty.scheduler_address
        capsys.readouterr()  # the cluster's own start-up output
        code, _, err = run(
            capsys, "sweep", "sweep.yaml", "--scheduler", address, "--worker-timeout", "0.5"
        )
        assert code == 1
        message = one_line(err, logs=True)
        assert message.startswith(f"error: no Dask worker joined the scheduler at {address}")
        assert f"`dask worker {address}`" in message
        with Client(address) as client, pytest.raises(AvdaError, match="no Dask worker joined"):
            distributed._wait_for_worker(client, address, 0.5)


def test_a_bad_scheduler_address_is_one_line(capsys, in_work):
    code, _, err = run(capsys, "sweep", "sweep.yaml", "--scheduler", "nonsense")
    assert code == 1
    assert "expected an address such as tcp://host:8786" in one_line(err, logs=True)


# typer, as the command line's imports reach it: says so, then takes its time (as torch's
# and Zarr's imports do on a loaded node) while the test sends SIGTERM
SLOW_TYPER = """
import os, time
open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "importing"), "w").close()
time.sleep(60)
"""


def _sigterm_caught(pid: int) -> bool:
    with open(f"/proc/{pid}/status") as status:
        caught = next(line for line in status if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) & 1 << (signal.SIGTERM - 1))


def _avda_until(ready, tmp_path: Path, *args: str, env=None) -> subprocess.Popen:
    """``python -m avda ARGS`` (the console script's entry) once ``ready(process)`` holds."""
    process = subprocess.Popen(
        [sys.executable, "-m", "avda", *args], cwd=tmp_path, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env={**os.environ, "AVDA_DEBUG": "", **(env or {})},
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not ready(process):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "avda did not get there within 60 s"
        time.sleep(0.005)
    return process


def _signalled_while_importing(tmp_path: Path, signum: int) -> tuple[int, str]:
    """``avda cache info`` given ``signum`` while Python imports the command line (typer made
    slow): its exit code and stderr."""
    shadow = tmp_path / "shadow"
    shadow.mkdir(exist_ok=True)
    (shadow / "importing").unlink(missing_ok=True)
    (shadow / "typer.py").write_text(SLOW_TYPER)
    path = os.pathsep.join([str(shadow), os.environ.get("PYTHONPATH", "")])
    process = _avda_until(
        lambda _: (shadow / "importing").exists(), tmp_path, "cache", "info", "c.zarr",
        env={"PYTHONPATH": path},
    )  # fmt: skip
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    return process.returncode, err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_sigterm_while_avda_starts_is_one_line_and_143(tmp_path):
    """A job's time limit can come while Python imports the command line, before main() sets
    its handler (avda.cli's imports: a few tenths of a second, more on a loaded node): the
    process ended on the spot, exit -15 without a word. The console script's entry handles
    SIGTERM before those imports: one line, nothing started, 143."""
    code, err = _signalled_while_importing(tmp_path, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, err
    assert err == (
        "terminated (SIGTERM) while avda was starting: nothing was started; run it again\n"
    )

    # unslowed, the SIGTERM as soon as the process handles it: either line, never -15
    process = _avda_until(lambda p: _sigterm_caught(p.pid), tmp_path, "cache", "info", "c.zarr")
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert one_line(err).startswith("terminated (SIGTERM)"), err


EXITING = """
import atexit, os, signal, sys, time
from avda._entry import entry

# after main() has returned: the process is exiting (its interpreter shutting down)
atexit.register(lambda: (os.kill(os.getpid(), signal.SIGTERM), time.sleep(1)))
entry()
"""


def test_a_sigterm_once_the_command_has_ended_leaves_its_exit_code(tmp_path):
    """A SIGTERM after main() returned (the interpreter's shutdown: about a second once torch
    and Zarr are loaded) ended the process with -15, the command's code and line lost."""
    script = tmp_path / "exiting.py"
    script.write_text(EXITING)
    done = subprocess.run(
        [sys.executable, str(script), "cache", "info", "nope.zarr"], cwd=tmp_path,
        capture_output=True, text=True, timeout=120, env={**os.environ, "AVDA_DEBUG": ""},
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "nope.zarr does not exist" in one_line(done.stderr)


def test_a_ctrl_c_while_avda_starts_is_one_line_and_130(tmp_path):
    """Ctrl-C while Python imports the command line, before main() catches it, printed a
    KeyboardInterrupt traceback through the imports (exit -2); the console script's entry
    says one line, as for SIGTERM, and 130, as Ctrl-C in a command."""
    code, err = _signalled_while_importing(tmp_path, signal.SIGINT)
    assert code == 130, err
    assert err == "interrupted while avda was starting: nothing was started; run it again\n"


# ------------------------------------------------------------------------------ output paths
FILE_OUTPUTS = [  # each command writing one file, and the name it offers (docs/cli.md)
    (["report", "folder", "-o"], "-o", "report.html"),
    (["predict", "folder", "-o"], "-o", "predictions.npz"),
    (["manifest", "build", "generic", "-a", "empty.csv", "-o"], "-o", "manifest.csv"),
    (["cache", "export", "c.zarr", "-o"], "-o", "features.h5"),
    ([*FINETUNE, "-m", "empty.csv", "-o"], "-o", "finetuned.pt"),
    (["evaluate", "folder", "--export-submission"], "--export-submission", "test.json"),
]


@pytest.mark.parametrize(("args", "option", "name"), FILE_OUTPUTS, ids=lambda v: str(v)[:30])
@pytest.mark.parametrize(
    ("out", "what", "offered"),
    [
        # the trailing slash was dropped: the file was written as `sub`, or told `sub.html`
        ("sub/", "names a folder", "sub/{}"),
        ("folder/", "is a folder", "folder/{}"),
        ("folder", "is a folder", "folder/{}"),
        (".", "is a folder", "{}"),
        ("..", "is a folder", "../{}"),
        # a hidden file named as its type: told `.npz.npz`, `.html.html`, or written so
        (".npz", "is a file type alone", "{}"),
        ("sub/.html", "is a file type alone", "sub/{}"),
        (".tar.gz", "is a file type alone", "{}"),
    ],
)
def test_a_file_output_naming_a_folder_or_only_a_type_is_refused_offering_a_name(
    capsys, in_work, args, option, name, out, what, offered
):
    before = sorted(p.name for p in in_work.iterdir())
    code, _, err = run(capsys, *args, out)
    expected = f"{option} {out} {what}; give the path of the file to write: {offered}"
    assert (code, one_line(err)) == (1, "error: " + expected.format(name)), err
    assert sorted(p.name for p in in_work.iterdir()) == before  # nothing made


# Every command's output options, each with a command line that fails on bad input once its
# output's folders are made (OUT: a path below a folder that does not exist yet)
OUTPUTS = {
    ("report", "--out"): ["report", "no-runs", "-o", "OUT/report.html"],
    ("predict", "--out"): ["predict", "no-run", "-o", "OUT/predictions.npz"],
    ("evaluate", "--out"): ["evaluate", "no-runs", "-o", "OUT/results"],
    ("evaluate", "--export-submission"): ["evaluate", "folder", "--export-submission",
                                          "OUT/test.json"],  # without --sls
    ("manifest build", "--out"): ["manifest", "build", "generic", "-a", "no.csv", "-o",
                                  "OUT/manifest.csv"],
    ("cache export", "--out"): ["cache", "export", "no.zarr", "-o", "OUT/features.h5"],
    ("cache import", "--out"): ["cache", "import", "no.pkl", "--out", "OUT/c.zarr"],
    ("finetune", "--out"): [*FINETUNE, "-m", "no.csv", "-o", "OUT/finetuned.pt"],
    ("cluster", "--plot"): ["cluster", "no.zarr", "--plot", "OUT/plots"],
    ("extract", "--out"): ["extract", "-m", "no.csv", "-o", "OUT/c.zarr"],
    ("train", "--out"): ["train", "--cache", "c.zarr", "--source", "no", "--target", "target",
                         "--head", "source-only", "-o", "OUT/run"],
    ("sweep", "--out"): ["sweep", "no.yaml", "--out", "OUT/runs"],
    ("flow", "--out"): ["flow", "--videos", "no-videos", "--out", "OUT/flow"],
    ("demo", "--out"): ["demo", "-o", "OUT/demo", "--weights", "no.pt"],
    ("weights fetch", "--dir"): ["weights", "fetch", "no-such-name", "--dir", "OUT/weights"],
}  # fmt: skip
OUTPUT_OPTIONS = {"--out", "--plot", "--export-submission", "--dir"}


def test_every_output_option_of_every_command_is_in_the_output_table():
    """A new command (or output option) joins OUTPUTS, and with it the checks below."""
    import typer.main

    def options(command, name):
        for param in command.params:
            for opt in set(getattr(param, "opts", [])) & OUTPUT_OPTIONS:
                yield name, opt
        for word, sub in getattr(command, "commands", {}).items():
            yield from options(sub, f"{name} {word}".strip())

    assert set(options(typer.main.get_command(cli.app), "")) == set(OUTPUTS)


@pytest.mark.parametrize("args", OUTPUTS.values(), ids=[" ".join(k) for k in OUTPUTS])
@pytest.mark.parametrize("out", ["new/deeper", "folder/new"])
def test_a_command_refused_on_bad_input_leaves_no_folder_it_made(capsys, in_work, args, out):
    # avda report -o miss/x.html NO_SUCH_RUNS made miss/ (the outputs' folders are made before
    # the inputs are read) and left it; the folders a failed command made are removed while
    # empty, and a folder that was there (folder/) is kept
    before = sorted(p.name for p in in_work.iterdir())
    try:
        code, _, err = run(capsys, *[arg.replace("OUT", out) for arg in args])
        assert code in (1, 2), err
        one_line(err, logs=True)
        assert sorted(p.name for p in in_work.iterdir()) == before
        assert not any((in_work / "folder").iterdir())
    finally:  # the next test's folder as it was (the module's work folder is shared)
        shutil.rmtree(in_work / "new", ignore_errors=True)
        shutil.rmtree(in_work / "folder" / "new", ignore_errors=True)


def test_a_command_failing_after_making_its_output_folder_removes_it_while_empty(
    capsys, tmp_path, monkeypatch
):
    # the output folder itself, made by the command (weights fetch --dir: before the download
    # that fails), is removed with its new parent; the bad-input cases fail before it is made
    monkeypatch.chdir(tmp_path)
    with socket.socket() as closed:  # a port nothing listens on: the connection is refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    code, _, err = run(capsys, "weights", "fetch", "bninception_imagenet_rgb", "--dir", "new/w",
                       "--mirror", f"http://127.0.0.1:{port}/x", "-q")  # fmt: skip
    assert code == 1 and "cannot reach" in one_line(err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_command_failing_after_work_keeps_the_folders_it_made_and_filled(
    capsys, tmp_path, media, monkeypatch
):
    # exit 3 after partial work (one video missing): the folders made for the store (new/,
    # new/deeper/) hold the store and its failures list, kept with every finished row; only
    # an empty folder a failed command made is removed (rmdir, never a tree)
    import pandas as pd

    monkeypatch.chdir(tmp_path)
    rows = {"uid": ["a", "b"], "video_id": ["clip", "gone"], "domain": ["S", "S"],
            "split": ["train", "train"], "start_sec": [1.0, 1.0], "stop_sec": [3.0, 3.0],
            "video_path": ["v_ZNVhz7ctTq0.mp4", "gone.mp4"]}  # fmt: skip
    pd.DataFrame(rows).to_csv("m.csv", index=False)
    code, _, err = run(capsys, "extract", "-m", "m.csv", "-o", "new/deeper/d.zarr", "--videos",
                       str(media / "video"), "--modalities", "audio", "--recipe", "demo",
                       "-q")  # fmt: skip
    assert code == 3, err
    kept = {p.name for p in (tmp_path / "new" / "deeper").iterdir()}
    assert {"d.zarr", "d.zarr.failures.csv"} <= kept, kept
    from avda.cache import open_cache

    # the finished row kept, the failed one listed
    assert open_cache(tmp_path / "new" / "deeper" / "d.zarr").status("audio").tolist() == [1, 2]


# Each command writing a folder: what it writes there and the folder it offers (docs/cli.md)
FOLDER_OUTPUTS = {
    ("train", "--out"): ([*TRAIN, "--head", "source-only", "-o"], "-o", "a run folder", "run"),
    ("extract", "--out"): (["extract", "-m", "empty.csv", "-o"], "-o",
                           "a Zarr cache (a folder)", "features.zarr"),
    ("cache import", "--out"): (["cache", "import", "no.pkl", "--out"], "-o",
                                "a Zarr cache (a folder)", "features.zarr"),
    ("flow", "--out"): (["flow", "-m", "empty.csv", "--out"], "-o", "flow frame folders",
                        "flow"),
    ("cluster", "--plot"): (["cluster", "c.zarr", "--plot"], "--plot",
                            "elbow plots (one PNG per class)", "elbows"),
    ("sweep", "--out"): (["sweep", "sweep.yaml", "--out"], "--out", "a folder of runs", "runs"),
    ("demo", "--out"): (["demo", "-o"], "-o", "its working folder", "avda-demo"),
    ("weights fetch", "--dir"): (["weights", "fetch", "bninception_imagenet_rgb", "--dir"], "--dir",
                                 "published weights files", "weights"),
}  # fmt: skip


def test_every_output_option_follows_the_rule_of_its_kind():
    """Each output option of OUTPUTS (every one of the CLI's) is one file (FILE_OUTPUTS), a
    folder (FOLDER_OUTPUTS) or the tables' name (avda evaluate -o: tables.check_out)."""
    files = {
        (" ".join(args[:2]) if args[0] in ("manifest", "cache") else args[0],
         "--out" if option == "-o" else option)
        for args, option, _ in FILE_OUTPUTS
    }  # fmt: skip
    assert files | set(FOLDER_OUTPUTS) | {("evaluate", "--out")} == set(OUTPUTS)


@pytest.mark.parametrize("command", FOLDER_OUTPUTS, ids=" ".join)
@pytest.mark.parametrize(
    ("out", "what", "offered"),
    [
        # a cache's path given as a run's (train -o x.zarr), a file's as a store's: a folder of
        # that name was made, or a hidden one (-o .zarr)
        (".zarr", "is a file type alone", "{name}"),
        ("sub/.npz", "is a file type alone", "sub/{name}"),
        ("x.zarr", "is named as a Zarr cache", "x{suffix}"),
        ("sub/x.tar.gz", "is named as a .tar.gz file", "sub/x{suffix}"),
        ("x.PNG", "is named as a .png file", "x{suffix}"),
    ],
)
def test_a_folder_output_named_as_a_file_is_refused_offering_a_folder(
    capsys, in_work, command, out, what, offered
):
    args, option, writes, name = FOLDER_OUTPUTS[command]
    suffix = Path(name).suffix
    if suffix and out.endswith(suffix):  # x.zarr is a store's own name
        return
    before = sorted(p.name for p in in_work.iterdir())
    code, _, err = run(capsys, *args, out)
    offered = offered.format(name=name, suffix=suffix)
    assert (code, one_line(err)) == (1, f"error: {option} {out} {what}; avda writes {writes} "
        f"there: give the folder's path: {offered}"), err  # fmt: skip
    assert sorted(p.name for p in in_work.iterdir()) == before


def test_a_sweep_specs_out_named_as_a_file_is_a_spec_problem(capsys, in_work, tmp_path):
    # out: runs.zarr in the spec: the runs' folder named as a cache (--out is refused so)
    spec = yaml.safe_load((in_work / "sweep.yaml").read_text())
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({**spec, "cache": str(in_work / "c.zarr"), "out": "r.zarr"}))
    for check in (["--check"], []):
        code, _, err = run(capsys, "sweep", str(path), *check)
        assert code == 1 and one_line(err).endswith(
            f"out: is named as a Zarr cache; avda writes a folder of runs there: give the "
            f"folder's path: {tmp_path / 'r'}"), err  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]
    # --out replaces out:, which is not used: it was refused all the same, --check too
    runs_dir = str(tmp_path / "runs")
    code, _, err = run(capsys, "sweep", str(path), "--check", "--out", runs_dir)
    assert code == 0, err
    code, _, err = run(capsys, "sweep", str(path), "--check", "--out", f"{runs_dir}.zarr")
    assert (code, one_line(err)) == (1, f"error: --out {runs_dir}.zarr is named as a Zarr cache; "
        f"avda writes a folder of runs there: give the folder's path: {runs_dir}"), err  # fmt: skip
    code, _, err = run(capsys, "sweep", str(path), "--out", runs_dir, "--cluster", "nope")
    assert (code, one_line(err)) == (1, "error: --cluster must be one of local, slurm, pbs, "
                                     "got 'nope'"), err  # fmt: skip
    # the library too, the spec given as a dict (parse_spec), as a file (load_spec)
    from avda import sweep

    as_dict = {**spec, "cache": str(in_work / "c.zarr"), "out": "r.zarr"}
    for given in (as_dict, path):
        with pytest.raises(ConfigError, match="^cluster must be one of"):
            sweep.run_sweep(given, out=tmp_path / "runs", cluster="nope")
    path.write_text(yaml.safe_dump({**spec, "cache": str(in_work / "c.zarr"), "out": "r.json/"}))
    assert run(capsys, "sweep", str(path), "--check")[0] == 0  # a trailing slash: a folder


def test_a_sweep_specs_home_folder_paths_are_expanded(in_work, tmp_path, monkeypatch):
    # out: ~/runs and cache: ~/c.zarr were a folder named ~ in the spec's folder
    from avda import sweep

    monkeypatch.setenv("HOME", str(in_work))
    spec = yaml.safe_load((in_work / "sweep.yaml").read_text())
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({**spec, "cache": "~/c.zarr", "out": "~/runs"}))
    loaded = sweep.load_spec(path)
    assert (loaded.out, loaded.caches["cache"]) == (in_work / "runs", in_work / "c.zarr")


def test_a_folder_made_by_another_process_meanwhile_is_not_removed(tmp_path, monkeypatch):
    # a folder missing at the existence check and made by a parallel command before this
    # one's mkdir (exist_ok) was recorded as made, and removed when this command failed
    theirs, real_mkdir = tmp_path / "theirs", Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self == theirs and not theirs.exists():
            real_mkdir(theirs)  # the other process, between the check and this mkdir
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    cli._MADE_FOLDERS.clear()
    cli._make_parent(theirs / "ours" / "x.h5", "-o")
    cli._remove_made_folders()
    assert [p.name for p in tmp_path.iterdir()] == ["theirs"]
    assert not any(theirs.iterdir())  # ours/, made here, removed


@pytest.mark.parametrize("command", FOLDER_OUTPUTS, ids=" ".join)
def test_a_folder_output_with_a_trailing_slash_is_a_folder_whatever_its_name(
    capsys, in_work, command
):
    # -o x.json/ said a folder, but Typer's Path dropped the slash: the name rule refused it
    args, option, writes, name = FOLDER_OUTPUTS[command]
    try:
        code, _, err = run(capsys, *args, "x.json/")
        assert "is named as" not in err and "type alone" not in err, err
        # made and removed as it failed while empty; kept where the command did work in it
        # (0, or a sweep whose runs partly failed on a loaded machine: 3, its runs kept)
        made = in_work / "x.json"
        assert not made.exists() or code == 0 or (code == 3 and any(made.iterdir())), code
    finally:
        shutil.rmtree(in_work / "x.json", ignore_errors=True)
    assert paths.check_output_folder("x.h5/", "-o", *paths.STORE_OUTPUT) == Path("x.h5")


def test_a_folder_output_in_a_file_is_refused_alike_with_a_trailing_slash(capsys, in_work):
    # -o notes.txt/x.json/ (made itself) said "part of it is a file", -o notes.txt/x not
    (in_work / "notes.txt").write_text("mine")
    for out in ("notes.txt/x", "notes.txt/x.json/", "notes.txt/d/x/"):
        parent = "notes.txt/d" if "/d/" in out else "notes.txt"
        why = "part of it is a file" if "/d/" in out else "a file of that name exists"
        code, _, err = run(capsys, "cluster", "c.zarr", "--plot", out)
        assert (code, one_line(err)) == (1, f"error: --plot {out.rstrip('/')}: cannot create "
                                         f"its folder {parent}: {why}"), err  # fmt: skip
    assert (in_work / "notes.txt").read_text() == "mine"


def test_train_into_a_folder_named_with_a_trailing_slash(capsys, in_work, tmp_path):
    out = tmp_path / "run.json"
    code, _, err = run(capsys, *TRAIN, "--head", "source-only", "-o", f"{out}/", "-q")
    assert code == 0 and (out / "config.yaml").is_file(), err


def test_a_folder_output_keeps_ordinary_names(tmp_path):
    for out in ("runs/dann", "v1.5", "dann.seed0", "lr1e-3", "exp.2026-12-07", "i3d.rgb",
                "runs.v2", "sub/", ".", "..", ".x", "c.zarr"):  # fmt: skip
        assert paths.check_output_folder(out, "-o", "a run", "run" if out != "c.zarr" else
                                         "features.zarr") == Path(out)  # fmt: skip


def test_an_existing_folder_named_as_a_file_is_still_its_folder(capsys, in_work, tmp_path):
    # a run an older avda wrote as -o old.json (or a sweep's out: results.json) could no longer
    # be trained into again or resumed: the name rule refused the folder it had made itself
    old = tmp_path / "old.json"
    assert run(capsys, *TRAIN, "--head", "source-only", "-o", str(old), "-q")[2].startswith(
        f"error: -o {old} is named as a .json file")  # fmt: skip
    old.mkdir()  # as an older avda made it (here: empty, so trained into whole)
    code, _, err = run(capsys, *TRAIN, "--head", "source-only", "-o", str(old), "-q")
    assert code == 0 and (old / "config.yaml").is_file(), err
    assert run(capsys, *TRAIN, "--head", "source-only", "-o", str(old), "-q")[0] == 0  # again
    spec = yaml.safe_load((in_work / "sweep.yaml").read_text())
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({**spec, "cache": str(in_work / "c.zarr"), "out": "old.json"}))
    code, _, err = run(capsys, "sweep", str(path), "--check")
    assert code == 0, err


def test_train_refuses_a_cache_and_extract_a_run(capsys, in_work, tmp_path):
    # a cache named without .zarr given as train -o (it must never be written into), a run
    # given as extract -o: refused naming what the folder is, a folder beside it offered
    cache = tmp_path / "features"
    shutil.copytree(in_work / "c.zarr", cache)
    before = sorted(str(p.relative_to(cache)) for p in cache.rglob("*"))
    code, _, err = run(capsys, *TRAIN, "--head", "source-only", "-o", str(cache), "-q")
    assert (code, one_line(err)) == (1, f"error: -o {cache} is an avda cache, not an avda run; "
        "avda does not write into it: give a new path (it is created) or an empty folder: "
        f"{tmp_path / 'run'}"), err  # fmt: skip
    assert sorted(str(p.relative_to(cache)) for p in cache.rglob("*")) == before
    trained = tmp_path / "dann"
    assert run(capsys, *TRAIN, "--head", "source-only", "-o", str(trained), "-q")[0] == 0
    manifest = tmp_path / "m.csv"
    manifest.write_text("uid,video_id,domain,split,start_sec,stop_sec\na,v,D1,train,0,1\n")
    code, _, err = run(capsys, "extract", "-m", str(manifest), "--videos", str(tmp_path), "-o",
                       str(trained), "--device", "cpu", "-q")  # fmt: skip
    assert (code, one_line(err, logs=True)) == (1, f"error: -o {trained} is an avda run, not an "
        "avda cache; avda does not write into it: give a new path (it is created) or an empty "
        f"folder: {tmp_path / 'features.zarr'}"), err  # fmt: skip
    assert list(tmp_path.glob("dann*")) == [trained]  # no dann.lock made beside the run


def test_cluster_plots_into_a_folder_of_its_own(capsys, in_work, tmp_path):
    # --plot . or .. wrote one PNG per class among the user's files; a folder of earlier plots
    # (a killed write's temporary too) is written again, a new or empty one is made
    before = sorted(p.name for p in in_work.iterdir())
    for out, offered in ((".", "elbows"), ("..", "../elbows")):
        code, _, err = run(capsys, "cluster", "c.zarr", "--plot", out, "-q")
        assert (code, one_line(err)) == (1, f"error: --plot {out} is a folder that is not avda "
            "cluster's plot folder and is not empty; avda does not write into it: give a new "
            f"path (it is created) or an empty folder: {offered}"), err  # fmt: skip
    assert sorted(p.name for p in in_work.iterdir()) == before
    store = tmp_path / "c.zarr"
    shutil.copytree(in_work / "c.zarr", store)
    plots = tmp_path / "sub"
    code, _, err = run(capsys, "cluster", str(store), "--plot", f"{plots}/", "-q")
    assert code == 0, err
    written = sorted(plots.iterdir())
    (plots / f"{written[0].name}.tmp").write_bytes(b"")
    assert run(capsys, "cluster", str(store), "--plot", str(plots), "-q")[0] == 0


def test_train_refuses_a_folder_of_other_files(capsys, in_work):
    # `avda train -o .` (or `-o ..`) wrote config.yaml, checkpoints/ and predictions/ among the
    # files of the folder it was run in; an empty folder, a new path or a run's own (to resume)
    # are still trained into
    before = sorted(p.name for p in in_work.iterdir())
    for out in (".", "./"):
        code, _, err = run(capsys, *TRAIN, "--head", "source-only", "-o", out, "-q")
        assert (code, one_line(err)) == (1, f"error: -o {out.rstrip('/') or out} is a folder "
            "that is not an avda run and is not empty; avda does not write into it: give a new "
            "path (it is created) or an empty folder: run"), err  # fmt: skip
    assert sorted(p.name for p in in_work.iterdir()) == before


def test_train_refuses_a_folder_of_other_files_holding_a_users_stages_folder(capsys, in_work):
    # stages run alone make RUN/stages/ (their records), a run train -o reuses; a user's own
    # folder named stages (notes, a non-record .json) made a folder of other files a run's
    (in_work / "stages").mkdir()
    (in_work / "stages" / "notes.txt").write_text("act 1")
    (in_work / "stages" / "cast.json").write_text('{"stage": "left"}')
    before = sorted(p.name for p in in_work.iterdir())
    code, _, err = run(capsys, *TRAIN, "--head", "source-only", "-o", ".", "-q")
    assert (code, one_line(err)) == (1, "error: -o . is a folder that is not an avda run and is "
        "not empty; avda does not write into it: give a new path (it is created) or an empty "
        "folder: run"), err  # fmt: skip
    assert sorted(p.name for p in in_work.iterdir()) == before


def test_an_option_given_as_equals_tilde_is_read_in_the_home_folder(capsys, in_work, monkeypatch):
    # `--out=~/x`: the shell leaves a `~` after `=`, and avda made a folder named `~` in the
    # working folder (which `rm -rf ~` then deletes with the user's home); read as `--out ~/x`
    home = in_work / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    code, _, err = run(capsys, "cache", "export", "c.zarr", "--out=~/sub/f.h5")
    assert code == 0, err
    assert (home / "sub" / "f.h5").is_file() and not (in_work / "~").exists()
    assert cli._home_expanded(["--set", "x=~/y", "-o~/z", "--name=~"]) == [
        "--set", "x=~/y", "-o~/z", f"--name={home}"]  # fmt: skip
    # a script's main([..., Path]) (a path object, not a word to expand) is passed on as is
    assert cli._home_expanded(["-o", Path("~x")]) == ["-o", Path("~x")]


def test_train_and_extract_take_a_folder_holding_only_a_desktops_file(capsys, in_work, tmp_path):
    # a folder made and opened in Finder holds a .DS_Store: empty to its user, it was refused
    # as 'not empty' by avda train -o and avda extract -o (one rule, paths.refuse_foreign_folder)
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    code, _, err = run(capsys, *TRAIN, "--head", "source-only", "-o", folder, "-q")
    assert code == 0, err
    assert (folder / runs.CONFIG).exists()
    store = tmp_path / "store.zarr"
    store.mkdir()
    (store / ".DS_Store").write_bytes(b"\0")
    paths.refuse_foreign_folder(store, "-o", "an avda cache", is_ours=False)
    (store / "notes.txt").write_text("mine\n")
    with pytest.raises(ConfigError, match="is not empty"):
        paths.refuse_foreign_folder(store, "-o", "an avda cache", is_ours=False)
