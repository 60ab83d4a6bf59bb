"""Issue 18 item 1: a received run folder never runs code. Every ``.pt`` that an avda command
reads (a run's ``checkpoints/last.pt``, the audio-adaptive ``stages/*.pt`` and
``*.partial.pt``, a fine-tuning ``OUT.partial.pt``, backbone and RAFT ``--weights``) is
replaced by a pickle that would create a file when unpickled; each command, run through the
CLI, refuses it with one line naming the file, exits non-zero, creates nothing and writes no
output. ``avda evaluate`` reads no ``.pt`` at all: it must not even open one. The ``.npz``
files (predictions, stage outputs) get an object array holding the payload (numpy pickles it).
See docs/security.md, "Checkpoints"."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from avda import runs
from tests.adversarial._cli import one_line, run
from tests.conftest import make_feature_cache


class _Payload:
    """Unpickling this creates ``marker``: what a malicious checkpoint would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def craft(path: Path, marker: Path) -> None:
    """Replace ``path`` by a torch zip file (like every real checkpoint) holding the payload."""
    path.unlink(missing_ok=True)
    state = {"epoch": 1, "model": _Payload(str(marker)), "state_dict": _Payload(str(marker))}
    torch.save(state, path)


def craft_arrays(path: Path, marker: Path) -> None:
    """Replace the ``.npz`` at ``path`` by one whose ``uids`` is an object array (a pickle)
    holding the payload: ``numpy.load(allow_pickle=True)`` would run it."""
    with np.load(path) as data:
        arrays = {key: data[key] for key in data.files}
    payload = np.empty(1, dtype=object)
    payload[0] = _Payload(str(marker))
    arrays[next(iter(arrays))] = payload
    path.unlink()
    np.savez(path, **arrays)


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def refused(capsys, path: Path, marker: Path, *line, code: int = 1) -> str:
    """Run ``avda *line``: refused with one ``error:`` line naming ``path``, no marker."""
    found, _, err = run(capsys, *line)
    assert not marker.exists(), "the crafted checkpoint ran code"
    assert found == code, err
    message = one_line(err)
    assert str(path) in message, message
    return message


HEAD = ["--head", "source-only", "--source", "source", "--target", "target", "--quiet"]
AUDIO_ADAPTIVE = {
    "audio_hidden_dim": 16,
    "audio_epochs": 1,
    "cluster_max_k": 3,
    "cluster_n_init": 1,
    "encoder_epochs": 2,
    "attention_dim": 16,
    "attention_depth": 1,
    "attention_heads": 2,
    "attention_head_dim": 8,
    "attention_mlp_dim": 16,
    "encoder_bottleneck": 8,
    "epochs": 1,
    "delegate_dim": 16,
    "recognizer_dim": 16,
    "recognizer_depth": 1,
    "recognizer_heads": 2,
    "recognizer_head_dim": 8,
    "recognizer_mlp_dim": 16,
}


def cli_run(*args) -> tuple[int, str, str]:
    """The CLI in a module fixture (no ``capsys`` there): its output stays in pytest's capture."""
    from avda import cli

    return cli.main([str(a) for a in args]), "", ""


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A tiny cache, a finished source-only run and a finished audio-adaptive run."""
    root = tmp_path_factory.mktemp("checkpoints")
    make_feature_cache(root / "c.zarr", per_class=6, K=1, D=8)
    code, _, err = cli_run("train", "--cache", root / "c.zarr", *HEAD, "-o", root / "run",
                           "--epochs", "2")  # fmt: skip
    assert code == 0, err
    sets = [x for k, v in AUDIO_ADAPTIVE.items() for x in ("--set", f"{k}={v}")]
    code, _, err = cli_run("train", "--cache", root / "c.zarr", "--head", "audio-adaptive",
                           "--source", "source", "--target", "target", "--quiet", *sets,
                           "-o", root / "aa")  # fmt: skip
    assert code == 0, err
    return root


@pytest.fixture
def scratch(work, tmp_path, monkeypatch) -> Path:
    monkeypatch.delenv("AVDA_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.zarr").symlink_to(work / "c.zarr")
    return tmp_path


def copy_run(work: Path, name: str, to: Path) -> Path:
    shutil.copytree(work / name, to)
    return to


# ------------------------------------------------------------------------------ run checkpoint
def test_report_refuses_a_crafted_run_checkpoint(capsys, work, scratch):
    out = copy_run(work, "run", scratch / "run")
    path, marker = out / runs.CHECKPOINT, scratch / "pwned"
    craft(path, marker)
    before = snapshot(out)
    message = refused(capsys, path, marker, "report", out, "-o", scratch / "r.html", "--quiet")
    assert "is not a checkpoint avda wrote" in message and "io.open" in message
    assert not (scratch / "r.html").exists() and snapshot(out) == before


def test_evaluate_does_not_open_a_run_checkpoint(capsys, work, scratch):
    out = copy_run(work, "run", scratch / "run")
    marker = scratch / "pwned"
    craft(out / runs.CHECKPOINT, marker)
    code, text, err = run(capsys, "evaluate", out)
    assert code == 0, err
    assert "| source-only |" in text and not marker.exists()  # the table, its row


def test_train_resume_refuses_a_crafted_run_checkpoint(capsys, work, scratch):
    out = copy_run(work, "run", scratch / "run")
    (out / runs.STATUS).unlink()  # an unfinished run someone sent
    path, marker = out / runs.CHECKPOINT, scratch / "pwned"
    craft(path, marker)
    before = snapshot(out)
    message = refused(capsys, path, marker, "train", "--cache", "c.zarr", *HEAD, "-o", out,
                      "--epochs", "2")  # fmt: skip
    assert "is not a checkpoint avda wrote" in message and "io.open" in message
    assert snapshot(out) == before


def test_sweep_refuses_a_crafted_run_checkpoint(capsys, work, scratch):
    spec = {
        "cache": str(work / "c.zarr"),
        "heads": [{"name": "source-only", "epochs": 2}],
        "settings": ["source->target"],
        "seeds": [0],
        "out": "runs",
        "retries": 0,
        "cluster": {"kind": "local", "workers": 1},
    }
    (scratch / "sweep.yaml").write_text(yaml.safe_dump(spec))
    out = scratch / "runs" / "source-only" / "source-target" / "seed0"
    out.parent.mkdir(parents=True)
    shutil.copytree(work / "run", out)
    (out / runs.STATUS).unlink()
    path, marker = out / runs.CHECKPOINT, scratch / "pwned"
    craft(path, marker)
    before = snapshot(out)
    code, text, err = run(capsys, "sweep", scratch / "sweep.yaml", "--quiet")
    assert not marker.exists(), "the crafted checkpoint ran code"
    assert code == 3, text + err  # EXIT_FAILED_ITEMS: the other runs of a sweep go on
    assert "Traceback" not in err
    failed = [line for line in text.splitlines() if "FAILED" in line]
    assert len(failed) == 1 and str(path) in failed[0], text
    assert "is not a checkpoint avda wrote" in failed[0] and "io.open" in failed[0]
    assert snapshot(out) == before


# ------------------------------------------------------------------------------ predictions
@pytest.mark.parametrize("command", ["report", "evaluate"])
def test_crafted_predictions_are_refused(capsys, work, scratch, command):
    out = copy_run(work, "run", scratch / "run")
    path, marker = out / runs.PREDICTIONS / "target_test.npz", scratch / "pwned"
    craft_arrays(path, marker)
    before = snapshot(out)
    line = [command, out, *(["-o", scratch / "r.html", "--quiet"] if command == "report" else [])]
    message = refused(capsys, path, marker, *line)
    assert "is not an array file avda wrote" in message and "allow_pickle=False" in message
    assert not (scratch / "r.html").exists() and snapshot(out) == before


@pytest.mark.parametrize("change", ["duplicate", "short", "narrow", "nan"])
def test_predictions_with_a_segment_twice_or_rows_missing_are_refused(
    capsys, work, scratch, change
):
    """A predictions file listing a segment twice counted it twice (a new user's edited copy
    of a run: noun top-1 23.2 instead of 23.1); one with fewer score rows than segments."""
    out = copy_run(work, "run", scratch / "run")
    path = out / runs.PREDICTIONS / "target_test.npz"
    arrays = runs.read_arrays(path)
    if change == "duplicate":
        arrays = {key: np.concatenate([value, value[:1]]) for key, value in arrays.items()}
    elif change == "nan":  # it said "scores contain NaN; check the model outputs" (no file)
        key = next(k for k in arrays if k.startswith("score_"))
        arrays[key] = arrays[key].copy()
        arrays[key][2, 0] = np.nan
    else:  # a row fewer, or a class fewer (96 verbs for EPIC's 97: scored as if right)
        key = next(k for k in arrays if k.startswith("score_"))
        arrays[key] = arrays[key][:-1] if change == "short" else arrays[key][:, :-1]
    np.savez(path, **arrays)
    message = refused(capsys, path, scratch / "none", "evaluate", out)
    if change == "nan":
        uid = str(arrays["uids"][2])
        assert f"scores of segment {uid!r} (and maybe others) are NaN or infinite" in message
        assert "remove the file and train the run again" in message
        return
    assert "not a predictions file avda wrote" in message
    assert ("more than once" in message) == (change == "duplicate"), message


# ------------------------------------------------------------------------------ stages
def _aa_stage_files(work: Path) -> list[str]:
    return sorted(p.name for p in (work / "aa" / "stages").glob("*.pt"))


@pytest.mark.parametrize("stage", ["audio-classifier", "encoder-rgb"])
@pytest.mark.parametrize("kind", ["finished", "partial"])
def test_audio_adaptive_stages_refuse_a_crafted_stage_file(capsys, work, scratch, stage, kind):
    out = copy_run(work, "aa", scratch / "aa")
    stages = out / "stages"
    assert (stages / f"{stage}.pt").exists(), _aa_stage_files(work)
    (out / runs.STATUS).unlink()
    shutil.rmtree(out / "checkpoints")  # the recognizer is trained again on the stages
    marker = scratch / "pwned"
    if kind == "finished":
        path = stages / f"{stage}.pt"
    else:  # the stage was interrupted: its record and result gone, a partial left
        (stages / f"{stage}.pt").unlink()
        (stages / f"{stage}.json").unlink()
        path = stages / f"{stage}.partial.pt"
    craft(path, marker)
    before = snapshot(out)
    sets = [x for k, v in AUDIO_ADAPTIVE.items() for x in ("--set", f"{k}={v}")]
    message = refused(capsys, path, marker, "train", "--cache", "c.zarr", "--head",
                      "audio-adaptive", "--source", "source", "--target", "target", "--quiet",
                      *sets, "-o", out)  # fmt: skip
    assert "is not a checkpoint avda wrote" in message and "io.open" in message
    assert snapshot(out) == before


# ------------------------------------------------------------------------------ fine-tuning
MANIFEST = (
    "uid,video_id,domain,split,start_sec,stop_sec,verb_class\n"
    "a,v,source,train,0,1,0\nb,v,source,train,1,2,1\n"
)


def test_finetune_resume_refuses_a_crafted_partial(capsys, scratch):
    (scratch / "m.csv").write_text(MANIFEST)
    path, marker = Path("ft.pt.partial.pt"), scratch / "pwned"
    craft(path, marker)
    message = refused(capsys, path, marker, "finetune", "--backbone", "audio_resnet18",
                      "--modality", "audio", "-m", "m.csv", "--source", "source", "-o", "ft.pt",
                      "--videos", ".", "--epochs", "1", "--workers", "0", "--device", "cpu",
                      "--quiet")  # fmt: skip
    assert "is not a checkpoint avda wrote" in message and "io.open" in message
    assert sorted(p.name for p in scratch.iterdir()) == ["c.zarr", "ft.pt.partial.pt", "m.csv"]


# ------------------------------------------------------------------------------ --weights
WEIGHTS = {
    "extract": ["extract", "-m", "m.csv", "-o", "x.zarr", "--videos", ".", "--backbone", "i3d",
                "--weights", "w.pt", "--device", "cpu", "--workers", "0", "--quiet"],
    "extract-audio": ["extract", "-m", "m.csv", "-o", "x.zarr", "--videos", ".",
                      "--modalities", "audio", "--audio-weights", "w.pt", "--device", "cpu",
                      "--workers", "0", "--quiet"],
    "finetune": ["finetune", "--backbone", "audio_resnet18", "--modality", "audio", "-m",
                 "m.csv", "--source", "source", "-o", "ft.pt", "--videos", ".", "--weights",
                 "w.pt", "--epochs", "1", "--workers", "0", "--device", "cpu", "--quiet"],
    "flow": ["flow", "-m", "m.csv", "-o", "fl", "--videos", ".", "--method", "raft",
             "--weights", "w.pt", "--device", "cpu", "--quiet"],
}  # fmt: skip


@pytest.mark.parametrize("command", sorted(WEIGHTS))
def test_a_crafted_weights_file_is_refused(capsys, scratch, command):
    (scratch / "m.csv").write_text(MANIFEST)
    path, marker = scratch / "w.pt", scratch / "pwned"
    craft(path, marker)
    message = refused(capsys, Path("w.pt"), marker, *WEIGHTS[command])
    assert "io.open" in message, message
    assert sorted(p.name for p in scratch.iterdir()) == ["c.zarr", "m.csv", "w.pt"]


@pytest.mark.parametrize(
    "stage",
    [
        "clusters",
        "weights",
        "pseudo-labels-rgb",
        "absent-labels",
        "audio-embeddings",
        "encoded-rgb",
    ],
)
def test_audio_adaptive_stages_refuse_crafted_stage_arrays(capsys, work, scratch, stage):
    out = copy_run(work, "aa", scratch / "aa")
    (out / runs.STATUS).unlink()
    shutil.rmtree(out / "checkpoints")
    path, marker = out / "stages" / f"{stage}.npz", scratch / "pwned"
    craft_arrays(path, marker)
    before = snapshot(out)
    sets = [x for k, v in AUDIO_ADAPTIVE.items() for x in ("--set", f"{k}={v}")]
    message = refused(capsys, path, marker, "train", "--cache", "c.zarr", "--head",
                      "audio-adaptive", "--source", "source", "--target", "target", "--quiet",
                      *sets, "-o", out)  # fmt: skip
    assert "is not an array file avda wrote" in message
    assert snapshot(out) == before
