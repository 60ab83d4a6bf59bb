"""Failures the red team drove into tracebacks are one line now (issue 18, item 9): a CUDA
device on a machine without one, a text file or a cut-off file as weights or checkpoint, a
cut-off last line of ``metrics.jsonl`` (which also blocked resuming), damaged zarr attributes,
and LaTeX labels that could break out of their cell or comment."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from avda.errors import CacheError, CheckpointError, ConfigError, RunError
from tests.adversarial._cli import one_line, run
from tests.conftest import make_feature_cache

HEADER = "uid,video_id,domain,split,start_sec,stop_sec"
no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("one-line")
    make_feature_cache(root / "c.zarr", per_class=3)
    (root / "m.csv").write_text(f"{HEADER}\na,v,D1,train,0,1\n")
    (root / "text.pt").write_text("these are not weights\n" * 4)
    return root


@pytest.fixture
def in_work(work, monkeypatch) -> Path:
    monkeypatch.chdir(work)
    monkeypatch.delenv("AVDA_DEBUG", raising=False)
    return work


TRAIN = ["train", "--head", "source-only", "--cache", "c.zarr", "--source", "source",
         "--target", "target", "--quiet"]  # fmt: skip


def trained_run(capsys, name: str) -> Path:
    code, _, err = run(capsys, *TRAIN, "-o", name, "--epochs", "3")
    assert code == 0, err
    return Path(name)


# ------------------------------------------------------------------------------ devices
@no_gpu
@pytest.mark.parametrize(
    "line",
    [
        [*TRAIN, "-o", "r-cuda", "--device", "cuda"],
        ["extract", "-m", "m.csv", "-o", "x.zarr", "--videos", ".", "--device", "cuda"],
        [
            "flow",
            "-m",
            "m.csv",
            "-o",
            "fl",
            "--videos",
            ".",
            "--method",
            "raft",
            "--weights",
            "text.pt",
            "--device",
            "cuda:1",
        ],
        [
            "finetune",
            "--backbone",
            "i3d",
            "--modality",
            "rgb",
            "-m",
            "m.csv",
            "--source",
            "D1",
            "-o",
            "ft.pt",
            "--videos",
            ".",
            "--device",
            "cuda",
        ],
    ],  # fmt: skip
    ids=["train", "extract", "flow", "finetune"],
)
def test_cuda_without_a_gpu_is_one_line(capsys, in_work, line):
    code, _, err = run(capsys, *line)
    assert code == 1
    message = one_line(err)
    assert "no CUDA GPU is visible here" in message and "--device cpu" in message, message
    assert not Path("x.zarr").exists()


def test_a_device_that_is_not_one_is_one_line(capsys, in_work):
    code, _, err = run(capsys, *TRAIN, "-o", "r-dev", "--device", "gpu0")
    assert code == 1
    assert "--device 'gpu0' is not a device; expected cpu, cuda or cuda:N" in one_line(err)


# ------------------------------------------------------------------------------ weights
def test_a_text_file_as_weights_is_one_line(capsys, in_work):
    from avda.extract.backbones.weights import read_checkpoint

    with pytest.raises(CheckpointError, match="not a torch checkpoint"):
        read_checkpoint("text.pt")
    code, _, err = run(capsys, "extract", "-m", "m.csv", "-o", "w.zarr", "--videos", ".",
                       "--weights", "text.pt", "--device", "cpu", "--quiet")  # fmt: skip
    assert code == 1
    assert "text.pt: not a torch checkpoint" in one_line(err)


def test_a_text_file_as_a_run_checkpoint_is_one_line(capsys, in_work):
    from avda import runs

    with pytest.raises(RunError, match="is not a checkpoint avda wrote"):
        runs.load_checkpoint(Path("text.pt"))
    out = trained_run(capsys, "r-text")
    (out / "run.json").unlink()
    shutil.copy("text.pt", out / "checkpoints" / "last.pt")
    code, _, err = run(capsys, *TRAIN, "-o", out, "--epochs", "3")
    assert code == 1
    assert "last.pt is not a checkpoint avda wrote (or it is damaged)" in one_line(err)


def test_a_cut_off_checkpoint_is_one_line(capsys, in_work):
    out = trained_run(capsys, "r-cut")
    (out / "run.json").unlink()
    path = out / "checkpoints" / "last.pt"
    path.write_bytes(path.read_bytes()[:300])
    code, _, err = run(capsys, *TRAIN, "-o", out, "--epochs", "3")
    assert code == 1
    assert "last.pt is not a checkpoint avda wrote (or it is damaged)" in one_line(err)


# ------------------------------------------------------------------------------ metrics.jsonl
def test_a_cut_off_last_metrics_line_does_not_block_resuming(capsys, in_work):
    out = trained_run(capsys, "r-metrics")
    (out / "run.json").unlink()
    metrics = out / "metrics.jsonl"
    metrics.write_text(metrics.read_text()[:-25])  # killed in the middle of the last record
    code, _, err = run(capsys, *TRAIN, "-o", out, "--epochs", "3")
    assert code == 0, err
    # the cut-off record is dropped, the file is whole JSON lines again, the run complete
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert json.loads((out / "run.json").read_text())["status"] == "complete"


def test_a_cut_off_last_metrics_line_does_not_break_report_or_evaluate(capsys, in_work):
    out = trained_run(capsys, "r-report")
    metrics = out / "metrics.jsonl"
    metrics.write_text(metrics.read_text()[:-25])
    code, _, err = run(capsys, "report", out, "-o", "rep.html", "--quiet")
    assert code == 0, err
    code, _, err = run(capsys, "evaluate", out)
    assert code == 0, err


def test_a_damaged_metrics_line_before_the_last_is_one_line(capsys, in_work):
    from avda import runs

    out = trained_run(capsys, "r-damaged")
    metrics = out / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join([lines[0][:10], *lines[1:]]) + "\n")
    with pytest.raises(RunError, match="metrics.jsonl line 1 is damaged"):
        runs.read_metrics(out)
    code, _, err = run(capsys, "report", out, "-o", "rep2.html", "--quiet")
    assert code == 1
    assert "metrics.jsonl line 1 is damaged" in one_line(err)


# ------------------------------------------------------------------------------ zarr attributes
@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        (lambda p: "garbage", "it is a str, not an object"),
        (lambda p: {"schema_version": 1}, "missing avda_version, created"),
        (lambda p: {**p, "num_segments": "many"}, "num_segments is 'many', not a count"),
        (lambda p: {**p, "chunk_rows": 0}, "chunk_rows is 0, not a count >= 1"),
        (lambda p: {**p, "modalities": []}, "modalities is not an object"),
        (lambda p: {**p, "modalities": {"rgb": 3}}, "modality 'rgb' is not an object"),
        (
            lambda p: {**p, "modalities": {"rgb": {**p["modalities"]["rgb"], "num_clips": None}}},
            "modality 'rgb': num_clips is None",
        ),
    ],
)
def test_damaged_zarr_attributes_are_one_line(capsys, tmp_path, monkeypatch, damage, fragment):
    from avda.cache import open_cache

    monkeypatch.delenv("AVDA_DEBUG", raising=False)
    store = tmp_path / "c.zarr"
    make_feature_cache(store, per_class=2)
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"]["avda_cache"] = damage(meta["attributes"]["avda_cache"])
    (store / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(CacheError, match="its provenance"):
        open_cache(store)
    for line in (["cache", "info", store], [*TRAIN[:3], "--cache", store, *TRAIN[5:], "-o",
                                            tmp_path / "r"]):  # fmt: skip
        code, _, err = run(capsys, *line)
        assert code == 1
        message = one_line(err)
        assert "is damaged" in message and fragment in message, message


# ------------------------------------------------------------------------------ LaTeX
def test_latex_labels_cannot_break_out_of_their_cell_or_comment():
    from avda.evaluate import tables

    class Table:
        title = "target_test: verb top1 (%)\n\\input{/etc/passwd}"
        columns = ["D_1 & D2\n\n\\input{x}"]
        methods = ["dann_v2 & \\input{y}\n\\end{tabular}"]

        def best(self, column):
            return set(self.methods)

        def cell(self, method, column):
            return 50.0, 1.0, 2

    latex = tables.aggregate_latex(Table())
    lines = latex.splitlines()
    assert lines[0].startswith("% ") and "\\input" not in latex.replace("\\textbackslash{}", "")
    assert len(lines) == 8, latex  # comment, begin, toprule, header, midrule, row, bottomrule, end
    assert "D\\_1 \\& D2" in lines[3] and "dann\\_v2 \\&" in lines[5]


def test_a_device_helper_accepts_what_exists():
    from avda.devices import resolve_device

    assert resolve_device(None) in ("cpu", "cuda")
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(ConfigError, match="is not a device"):
        resolve_device("tpu:0:1")
