"""The command line: exit codes, one-line errors, and the commands wired to the library."""

from __future__ import annotations

import os
import shutil

import pytest

from avda import cli
from tests.conftest import make_feature_cache


def run(capsys, *args):
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip().startswith("avda 0.")


def test_python_m_avda_is_the_command():
    # `python -m avda` said "No module named avda.__main__"
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "avda", "--version"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip().startswith("avda 0."), done.stderr
    refused = subprocess.run(
        [sys.executable, "-m", "avda", "train", "--heat", "x"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2 and "No such option" in refused.stderr


def test_usage_error_exits_2(capsys):
    code, _, err = run(capsys, "train", "--heat", "x")
    assert code == 2 and "No such option" in err


def test_avda_error_is_one_line_without_traceback(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("AVDA_DEBUG", raising=False)
    make_feature_cache(tmp_path / "c.zarr")
    code, _, err = run(
        capsys,
        "train",
        "--head",
        "dan",
        "--cache",
        str(tmp_path / "c.zarr"),
        "--source",
        "source",
        "--target",
        "target",
        "-o",
        str(tmp_path / "r"),
    )
    assert code == 1
    assert "error: unknown head 'dan'; did you mean 'dann'?" in err
    assert "Traceback" not in err
    monkeypatch.setenv("AVDA_DEBUG", "1")
    code, _, err = run(
        capsys,
        "train",
        "--head",
        "dan",
        "--cache",
        str(tmp_path / "c.zarr"),
        "--source",
        "source",
        "--target",
        "target",
        "-o",
        str(tmp_path / "r"),
    )
    assert code == 1 and "Traceback" in err


def test_manifest_validate(capsys, tmp_path):
    path = tmp_path / "m.csv"
    path.write_text(
        "uid,video_id,domain,split,start_sec,stop_sec\na,v,D1,train,0,1\na,v,D1,bogus,2,1\n"
    )
    code, out, err = run(capsys, "manifest", "validate", str(path))
    assert code == 1 and "has 3 problem(s), listed above" in err
    assert "row 3 [uid]: duplicate uid" in out and "row 3 [split]" in out
    assert "row 3 [stop_sec]" in out


def test_manifest_validate_with_a_videos_folder_that_is_not_there_says_so_once(capsys, tmp_path):
    """A mistyped --videos is one line, as avda extract says it: validate listed every row's
    video as not found under it (10,094 lines for the MM-SADA manifest)."""
    path = tmp_path / "m.csv"
    path.write_text(
        "uid,video_id,domain,split,start_sec,stop_sec\na,v,D1,train,0,1\nb,w,D1,train,0,1\n"
    )
    code, out, err = run(
        capsys, "manifest", "validate", str(path), "--videos", str(tmp_path / "nope")
    )
    assert code == 1 and out == ""
    assert err.strip() == f"error: --videos {tmp_path / 'nope'}: no such folder"


def test_train_evaluate_and_cache_info(capsys, tmp_path):
    make_feature_cache(tmp_path / "c.zarr")
    code, out, _ = run(capsys, "cache", "info", str(tmp_path / "c.zarr"))
    assert code == 0 and "rgb" in out and "done 144" in out
    for head in ("source-only", "dann"):
        code, out, _ = run(
            capsys,
            "train",
            "--head",
            head,
            "--cache",
            str(tmp_path / "c.zarr"),
            "--source",
            "source",
            "--target",
            "target",
            "-o",
            str(tmp_path / head),
            "--epochs",
            "2",
            "--set",
            "batch_size=32",
            "--quiet",
        )
        assert code == 0, out
        assert "target_test/verb/top1" in out
    code, out, err = run(
        capsys,
        "evaluate",
        str(tmp_path / "source-only"),
        str(tmp_path / "dann"),
        "-o",
        str(tmp_path / "results"),
    )
    assert code == 0
    assert "| source-only |" in out and "target_test/verb/top1" in out
    assert (tmp_path / "results.md").exists() and (tmp_path / "results.csv").exists()


def test_extract_with_a_corrupt_video_exits_3_with_failures_csv(
    capsys, tmp_path, demo_dataset, monkeypatch
):
    import avda._io

    whole = []  # files written whole or not at all (a kill never leaves the list cut short)
    atomic = avda._io.atomic_write_text
    monkeypatch.setattr(
        avda._io,
        "atomic_write_text",
        lambda path, text: whole.append(os.path.basename(path)) or atomic(path, text),
    )
    root, manifest = demo_dataset
    shutil.copytree(root / "videos", tmp_path / "videos")
    first = manifest["video_path"].iloc[0]
    (tmp_path / first).write_bytes(b"not a video at all")
    manifest.to_csv(tmp_path / "m.csv", index=False)
    store = tmp_path / "c.zarr"
    code, out, err = run(
        capsys,
        "extract",
        "--manifest",
        str(tmp_path / "m.csv"),
        "--videos",
        str(tmp_path),
        "-o",
        str(store),
        "--recipe",
        "demo",
        "--workers",
        "0",
        "--quiet",
    )
    assert code == 3
    failures = tmp_path / "c.zarr.failures.csv"
    assert failures.exists() and "--retry-failed" in err
    assert "c.zarr.failures.csv" in whole
    assert "3 failed" in out
    # Fix the video and retry only the failed segments.
    shutil.copy(root / first, tmp_path / first)
    code, out, _ = run(
        capsys,
        "extract",
        "--manifest",
        str(tmp_path / "m.csv"),
        "--videos",
        str(tmp_path),
        "-o",
        str(store),
        "--recipe",
        "demo",
        "--workers",
        "0",
        "--retry-failed",
        "--quiet",
    )
    assert code == 0 and "0 failed" in out
    assert not failures.exists()  # the list of the earlier run is stale


@pytest.mark.parametrize("command", ["extract", "train", "evaluate", "demo", "manifest", "cache"])
def test_every_command_has_help(capsys, command):
    code, out, _ = run(capsys, command, "--help")
    assert code == 0 and "Usage" in out


def test_train_help_says_epochs_scale_every_stage(capsys):
    code, out, _ = run(capsys, "train", "--help")
    text = " ".join(out.replace("│", " ").split())
    assert code == 0
    assert "every stage scales in proportion" in text and "flow recognizer" in text


def test_evaluate_exports_the_epic100_submission(capsys, tmp_path):
    import json

    import numpy as np
    import pandas as pd

    from avda import cache as cache_lib
    from avda.cache import Status

    rng = np.random.default_rng(0)
    rows = [
        {"uid": f"{d}_{s}_{i}", "video_id": "P01_101", "domain": d, "split": s,
         "start_sec": 0.0, "stop_sec": 1.0, "verb_class": (0, 1, 96)[i % 3],
         "noun_class": (0, 1, 2, 3, 299)[i % 5]}
        for d in ("source", "target") for s in ("train", "test") for i in range(12)
    ]  # fmt: skip
    segments = pd.DataFrame(rows)
    store = cache_lib.create(tmp_path / "c.zarr", segments, manifest_sha256="0", recipe={})
    store.add_modality("rgb", num_clips=2, num_features=8, info={"backbone": "x"})
    n = len(segments)
    store.write("rgb", np.arange(n), rng.normal(size=(n, 2, 8)), np.full(n, int(Status.DONE)),
                [""] * n)  # fmt: skip
    code, _, err = run(capsys, "train", "--head", "source-only",
                       "--cache", str(tmp_path / "c.zarr"),
                       "--source", "source", "--target", "target", "-o", str(tmp_path / "run"),
                       "--epochs", "1", "--quiet")  # fmt: skip
    assert code == 0, err
    out = tmp_path / "test.json"
    code, _, err = run(capsys, "evaluate", str(tmp_path / "run"), "--export-submission", str(out),
                       "--sls", "2,3,3")  # fmt: skip
    assert code == 0, err
    submission = json.loads(out.read_text())
    assert submission["challenge"] == "domain_adaptation" and submission["sls_pt"] == 2
    assert len(submission["results_target"]) == 12
    first = submission["results_target"]["target_test_0"]
    assert len(first["verb"]) == 97 and len(first["noun"]) == 300  # EPIC-100 class counts
    code, _, err = run(capsys, "evaluate", str(tmp_path / "run"), "--export-submission", str(out),
                       "--sls", "2,x")  # fmt: skip
    assert code == 1 and "--sls expects three integers" in err
    code, _, err = run(capsys, "evaluate", str(tmp_path / "run"), "--export-submission", str(out))
    assert code == 1 and "--export-submission needs --sls PT,TL,TD" in err
    # One challenge file is one model's: two runs (or their folder) are refused, not the first
    # one exported.
    import shutil

    shutil.copytree(tmp_path / "run", tmp_path / "runs" / "a")
    shutil.copytree(tmp_path / "run", tmp_path / "runs" / "b")
    other = tmp_path / "other.json"
    code, _, err = run(capsys, "evaluate", str(tmp_path / "runs"), "--export-submission",
                       str(other), "--sls", "2,3,3")  # fmt: skip
    assert code == 1 and not other.exists()
    assert "2 finished runs were given" in err and "pass the one run folder" in err
    code, _, err = run(capsys, "evaluate", str(tmp_path / "runs" / "a"), "--export-submission",
                       str(other), "--sls", "2,3,3")  # fmt: skip
    assert code == 0 and json.loads(other.read_text()) == submission

    # A target test row stored failed (NaN features) is not predicted: a file without it
    # would be rejected by the server, so the export is refused, naming the row and why.
    bad = np.flatnonzero(segments["uid"] == "target_test_5")
    store.write("rgb", bad, np.zeros((1, 2, 8)), np.array([int(Status.FAILED)]), ["NaN frames"])
    code, _, err = run(capsys, "train", "--head", "source-only",
                       "--cache", str(tmp_path / "c.zarr"),
                       "--source", "source", "--target", "target", "-o", str(tmp_path / "run2"),
                       "--epochs", "1", "--quiet")  # fmt: skip
    assert code == 0, err
    partial = tmp_path / "partial.json"
    code, _, err = run(capsys, "evaluate", str(tmp_path / "run2"), "--export-submission",
                       str(partial), "--sls", "2,3,3")  # fmt: skip
    assert code == 1 and not partial.exists()
    assert "predicts 11 of the 12 target test segments" in err
    assert "'target_test_5', rgb failed: NaN frames" in err
    code, _, err = run(capsys, "evaluate", str(tmp_path / "run2"), "--export-submission",
                       str(tmp_path / "sub.pt"), "--sls", "2,3,3")  # fmt: skip
    assert code == 1 and "the challenge file is JSON; name it .json, or .zip" in err
    assert not (tmp_path / "sub.pt").exists()


def test_evaluate_checkpoint_average_protocol(capsys, tmp_path):
    make_feature_cache(tmp_path / "c.zarr", per_class=4)
    code, _, err = run(capsys, "train", "--head", "mm-sada", "--cache", str(tmp_path / "c.zarr"),
                       "--source", "source", "--target", "target", "-o", str(tmp_path / "run"),
                       "--epochs", "3", "--set", "keep_last_predictions=2",
                       "--set", "pretrain_epochs=1", "--quiet")  # fmt: skip
    assert code == 0, err
    code, out, err = run(capsys, "evaluate", str(tmp_path / "run"), "--checkpoint-average", "2")
    assert code == 0, err
    assert "over the last 2 checkpoints" in out
    # a folder holding the run (a sweep's out) is its runs, not one run without checkpoints
    code, folder_out, err = run(capsys, "evaluate", str(tmp_path), "--checkpoint-average", "2")
    assert code == 0, err
    line = next(x for x in out.splitlines() if "over the last 2" in x)
    assert line in folder_out
    code, _, err = run(capsys, "evaluate", str(tmp_path / "run"), "--checkpoint-average", "9")
    assert code == 1 and "keep_last_predictions=9" in err
