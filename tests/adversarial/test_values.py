"""Impossible values are refused with one line, before any work (issue 18, item 7;
docs/security.md, Values): non-finite or huge times, segments past the video's end, negative
epochs, a domain on both sides, head settings out of range (every head, ``--set`` and sweep
specs alike), negative worker counts, and a TA3N export that would turn failed rows into
features of zeros."""

from __future__ import annotations

import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from avda.cache import Status, interop, open_cache
from avda.errors import CacheError, ConfigError
from tests.adversarial._cli import one_line, run
from tests.conftest import make_feature_cache

HEADER = "uid,video_id,domain,split,start_sec,stop_sec"


@pytest.fixture(scope="module")
def work(tmp_path_factory, shared_data) -> Path:
    root = tmp_path_factory.mktemp("values")
    make_feature_cache(root / "c.zarr", per_class=3)
    (root / "videos").mkdir()
    shutil.copy(shared_data / "media" / "video" / "demo.mp4", root / "videos" / "demo.mp4")
    return root


@pytest.fixture
def in_work(work, monkeypatch) -> Path:
    monkeypatch.chdir(work)
    monkeypatch.delenv("AVDA_DEBUG", raising=False)
    return work


def in_range(option: str, low: int | None = None) -> re.Pattern:
    """The usage error of an integer option below its minimum (click's or typer's words)."""
    bound = rf"(x>={low}|greater than or equal to {low})" if low is not None else ""
    return re.compile(rf"Invalid value for '{option}': .*{bound}")


def matches(fragment, message: str) -> bool:
    return (
        bool(fragment.search(message)) if isinstance(fragment, re.Pattern) else fragment in message
    )


def refused(capsys, *args, code: int = 1) -> str:
    got, _, err = run(capsys, *args)
    if code == 2:  # a usage error: one line too
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("usage error: "), err
        assert got == 2, err
        return lines[0]
    message = one_line(err)
    assert got == code, err
    return message


# ------------------------------------------------------------------------------ times
@pytest.mark.parametrize("stop", ["inf", "1e308", "-inf"])
def test_non_finite_or_huge_times_are_refused_by_the_manifest_check(capsys, in_work, stop):
    Path("t.csv").write_text(f"{HEADER}\na,demo,D1,train,0,1\nb,demo,D1,train,0,{stop}\n")
    message = refused(capsys, "manifest", "validate", "t.csv")
    assert "row 3 [stop_sec]" in message and "is not a time avda can use" in message, message


def test_extract_refuses_an_infinite_stop_before_extracting(capsys, in_work):
    Path("t.csv").write_text(f"{HEADER}\na,demo,D1,train,0,1\nb,demo,D1,train,0,inf\n")
    message = refused(capsys, "extract", "-m", "t.csv", "-o", "inf.zarr", "--videos", "videos",
                      "--device", "cpu", "--quiet")  # fmt: skip
    assert "row 3 [stop_sec]" in message
    assert not Path("inf.zarr").exists()


def test_a_non_finite_time_fails_one_segment_not_the_run():
    """A library user's frame skips the manifest check: the segment fails, with its reason."""
    from avda.extract.sampling import SegmentFrames

    with pytest.raises(ConfigError, match="segment 'b': start_sec 0.0 / stop_sec inf"):
        SegmentFrames.from_seconds("b", 0.0, float("inf"), 30.0)


def test_a_segment_past_the_end_of_its_video_fails_with_its_reason(capsys, in_work):
    """demo.mp4 lasts 10 s: a segment that starts after it or lies mostly past its end fails
    (its clips would all be the last frame repeated); one running a little past it is kept."""
    Path("late.csv").write_text(
        f"{HEADER}\na,demo,D1,train,0,1\nlate,demo,D1,train,100000,100001\n"
        "mostly,demo,D1,train,8,30\nedge,demo,D1,train,9,10.5\n"
    )
    code, out, err = run(capsys, "extract", "-m", "late.csv", "-o", "late.zarr", "--videos",
                         "videos", "--device", "cpu", "--quiet", "--workers", "0")  # fmt: skip
    assert code == 3, err
    failures = pd.read_csv("late.zarr.failures.csv").set_index("uid")["error"]
    assert sorted(failures.index) == ["late", "mostly"]
    assert "starts at 100000.00 s, after the end of the video (10.00 s)" in failures["late"]
    assert "runs to 30.00 s, 20.00 s past the end of the video (10.00 s)" in failures["mostly"]
    status = open_cache("late.zarr").status("rgb")
    assert status.tolist() == [Status.DONE, Status.FAILED, Status.FAILED, Status.DONE]
    code, out, err = run(capsys, "manifest", "validate", "late.csv", "--videos", "videos")
    assert code != 0  # the same rule, before any extraction, from the declared duration
    assert "row 3 [start_sec]: starts at 100000.00 s, after the end of the video (10.00 s)" in out
    assert "row 4 [stop_sec]: runs to 30.00 s" in out and "row 5" not in out
    assert "has 2 problem(s)" in err


def test_a_segment_past_the_end_of_its_audio_fails_its_audio(capsys, in_work, shared_data):
    """A segment that starts after the track (a real stereo WAV of 6.6 s) ends or lies mostly
    past its end fails, rather than being stored done with the track's last samples repeated;
    one running partly past the end is kept."""
    audio = Path("audio")
    audio.mkdir(exist_ok=True)
    shutil.copy(shared_data / "media" / "audio" / "test.wav", audio / "test.wav")
    Path("late_audio.csv").write_text(
        f"{HEADER}\na,test,D1,train,0,1\nedge,test,D1,train,0.5,10\nlate,test,D1,train,40,41.5\n"
        "mostly,test,D1,train,0.5,30\n"
    )
    code, _, err = run(capsys, "extract", "-m", "late_audio.csv", "-o", "late_audio.zarr",
                       "--audio", "audio", "--modalities", "audio", "--device", "cpu",
                       "--quiet", "--workers", "0")  # fmt: skip
    assert code == 3, err
    failures = pd.read_csv("late_audio.zarr.failures.csv")
    failures = failures.set_index("uid")["error"]
    assert sorted(failures.index) == ["late", "mostly"]
    assert "starts at 40.00 s, after the end of the audio of" in failures["late"]
    assert "runs to 30.00 s, 23.44 s past the end of the audio of" in failures["mostly"]
    status = open_cache("late_audio.zarr").status("audio")
    assert status.tolist() == [Status.DONE, Status.DONE, Status.FAILED, Status.FAILED]


# ------------------------------------------------------------------------------ train
TRAIN = ["train", "--head", "dann", "--cache", "c.zarr", "--source", "source", "--target",
         "target", "--quiet"]  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "code", "fragment"),
    [
        (["--epochs", "-3"], 2, in_range("--epochs", 1)),
        (["--epochs", "0"], 2, in_range("--epochs", 1)),
        (["--set", "epochs=-3"], 1, "DannConfig.epochs: expected an integer >= 1, got -3"),
        (["--set", "lr=-1"], 1, "DannConfig.lr: expected a number > 0, got -1.0"),
        (["--set", "lr=.inf"], 1, "DannConfig.lr: expected a finite number, got inf"),
        (["--set", "lr=.nan"], 1, "DannConfig.lr: expected a finite number, got nan"),
        (["--set", "batch_size=0"], 1, "DannConfig.batch_size: expected an integer >= 1, got 0"),
        (["--set", "dropout=5"], 1, "DannConfig.dropout: expected a probability in [0, 1), got"),
        (["--set", "weight_decay=-0.1"], 1, "DannConfig.weight_decay: expected a number >= 0"),
        (["--set", "eval_every=0"], 1, "DannConfig.eval_every: expected an integer >= 1"),
        (["--set", "lr_steps=[0]"], 1, "DannConfig.lr_steps: expected an integer >= 1, got 0"),
        (["--set", "momentum=2"], 1, "DannConfig.momentum: expected a number in [0, 1]"),
    ],
)
def test_bad_training_values_are_refused(capsys, in_work, extra, code, fragment):
    message = refused(capsys, *TRAIN, "-o", "r-bad", *extra, code=code)
    assert matches(fragment, message), message
    assert not Path("r-bad/metrics.jsonl").exists()


def test_the_same_domain_as_source_and_target_is_refused(capsys, in_work):
    message = refused(capsys, "train", "--head", "dann", "--cache", "c.zarr", "--source",
                      "source", "--target", "source,target", "-o", "r-same")  # fmt: skip
    assert "domain(s) source are both source and target" in message


def test_every_head_default_and_preset_is_in_range():
    """The range checks live in HeadConfig: every head's defaults and presets pass them."""
    from avda.train import heads

    for name in heads.names():
        config_class = heads.config_class(name)
        config_class.from_dict({})
        for preset in config_class.presets:
            config_class.from_dict({"preset": preset})
        with pytest.raises(ConfigError, match=r"\.lr: expected a number > 0"):
            config_class.from_dict({"lr": 0})
    # a negative loss weight inverts a term (a diagnostic): allowed, but finite
    assert heads.config_class("dann").from_dict({"grl_weight": -1.0}).grl_weight == -1.0
    with pytest.raises(ConfigError, match="grl_weight: expected a finite number"):
        heads.config_class("dann").from_dict({"grl_weight": float("-inf")})


def test_a_sweep_spec_gets_the_same_ranges(tmp_path):
    from avda import sweep

    make_feature_cache(tmp_path / "c.zarr", per_class=2)
    spec = {
        "cache": str(tmp_path / "c.zarr"),
        "heads": [{"name": "dann", "dropout": 5}],
        "settings": ["source->target"],
    }
    with pytest.raises(ConfigError, match=r"dropout: expected a probability in \[0, 1\)"):
        sweep.parse_spec(spec, source="s.yaml")


# ------------------------------------------------------------------------------ CLI numbers
@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("extract -m t.csv -o w.zarr --workers -1", in_range("--workers", 0)),
        ("extract -m t.csv -o w.zarr --batch-size 0", in_range("--batch-size")),
        ("extract -m t.csv -o w.zarr --chunk-rows 0", in_range("--chunk-rows")),
        ("flow -m t.csv -o fl --workers -1", "No such option: --workers"),
        ("flow -m t.csv -o fl --bound inf", "'--bound': expected a finite number > 0, got inf"),
        ("flow -m t.csv -o fl --margin -1", "'--margin': expected a finite number >= 0"),
        ("flow -m t.csv -o fl --size 0", in_range("--size")),
        ("demo --epochs -3", in_range("--epochs", 1)),
        ("demo --workers -1", in_range("--workers", 0)),
        (
            "train --head dann --cache c.zarr --source source --target target -o r --seed -1",
            in_range("--seed", 0),
        ),
        ("cache import x.npy -o i.zarr --num-clips 0", in_range("--num-clips")),
        ("cache import x.npy -o i.zarr --feature-rate nan", "'--feature-rate': expected a finite"),
        ("report folder --max-points 0", in_range("--max-points")),
    ],
)
def test_cli_numbers_out_of_range_are_usage_errors(capsys, in_work, line, fragment):
    Path("t.csv").write_text(f"{HEADER}\na,demo,D1,train,0,1\n")
    message = refused(capsys, *line.split(), code=2)
    assert matches(fragment, message), message


def test_finetune_numbers_out_of_range(capsys, in_work):
    base = ["finetune", "--backbone", "i3d", "--modality", "rgb", "-m", "t.csv", "--source",
            "D1", "-o", "ft.pt"]  # fmt: skip
    Path("t.csv").write_text(f"{HEADER}\na,demo,D1,train,0,1\n")
    for extra, fragment in (
        (["--epochs", "-3"], in_range("--epochs", 1)),
        (["--workers", "-1"], in_range("--workers", 0)),
        (["--lr", "-1"], "'--lr': expected a finite number > 0, got -1"),
        (["--accumulate", "0"], in_range("--accumulate", 1)),
    ):
        assert matches(fragment, refused(capsys, *base, *extra, code=2))


# ------------------------------------------------------------------------------ export
def test_a_ta3n_export_does_not_turn_failed_rows_into_zeros(capsys, in_work, tmp_path):
    store = tmp_path / "f.zarr"
    make_feature_cache(store, per_class=2)
    cache = open_cache(store, mode="r+")
    cache.status_array("rgb")[1] = int(Status.FAILED)
    message = refused(capsys, "cache", "export", store, "-o", tmp_path / "x.pkl",
                      "--format", "epic-pkl")  # fmt: skip
    assert "1 of the 24 rows to export have no rgb features (failed 1;" in message, message
    assert not (tmp_path / "x.pkl").exists()
    # the Python API refuses the same rows (the check is the export's, not the CLI's)
    with pytest.raises(CacheError, match="1 of the 24 rows to export have no rgb features"):
        interop.export_epic_pickle(store, tmp_path / "x.pkl")
    assert not (tmp_path / "x.pkl").exists()
    # the rows that are all done export as before
    code, _, err = run(capsys, "cache", "export", store, "-o", tmp_path / "y.pkl",
                       "--format", "epic-pkl", "--domain", "target")  # fmt: skip
    assert code == 0, err
    # no input at all (a video without an audio track): nothing to retry; leave it out
    cache.status_array("audio")[3] = int(Status.MISSING)
    message = refused(capsys, "cache", "export", store, "-o", tmp_path / "z.pkl", "--format",
                      "epic-pkl", "--domain", "source", "--modalities", "audio")  # fmt: skip
    assert "have no audio features (missing 1;" in message and "retry" not in message, message
    assert "their videos have no audio input" in message
    code, _, err = run(capsys, "cache", "export", store, "-o", tmp_path / "z.pkl", "--format",
                       "epic-pkl", "--domain", "target", "--modalities", "rgb")  # fmt: skip
    assert code == 0, err
    with open(tmp_path / "z.pkl", "rb") as handle:
        assert list(pickle.load(handle)["features"]) == ["RGB"]


def test_segments_past_the_end_of_frame_folders_fail_with_their_reason(capsys, in_work):
    from PIL import Image

    image = Image.fromarray(np.full((64, 80, 3), 120, dtype=np.uint8))
    gray = Image.fromarray(np.full((64, 80), 128, dtype=np.uint8))
    for number in range(1, 11):
        (Path("frames") / "vid").mkdir(parents=True, exist_ok=True)
        image.save(Path("frames") / "vid" / f"frame_{number:010d}.jpg")
        for component in ("u", "v"):
            (Path("flow") / "vid" / component).mkdir(parents=True, exist_ok=True)
            gray.save(Path("flow") / "vid" / component / f"frame_{number:010d}.jpg")
    Path("ff.csv").write_text(
        f"{HEADER},fps\na,vid,D1,train,0,0.3,10\nlate,vid,D1,train,500,501,10\n"
    )
    code, _, err = run(capsys, "extract", "-m", "ff.csv", "-o", "ff.zarr", "--frames", "frames",
                       "--flow", "flow", "--flow-stride", "1", "--modalities", "rgb,flow",
                       "--device", "cpu", "--quiet", "--workers", "0")  # fmt: skip
    assert code == 3, err
    failures = pd.read_csv("ff.zarr.failures.csv")
    assert failures["uid"].tolist() == ["late", "late"]
    errors = " | ".join(failures["error"])
    assert "starts at frame 5001, after the last frame (10)" in errors, errors
    assert "after the last flow frame (10)" in errors, errors
