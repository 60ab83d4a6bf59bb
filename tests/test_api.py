"""The Python API: ``avda.extract``, ``avda.train``, ``avda.evaluate``, ``avda.open_cache``."""

from __future__ import annotations

import doctest
import re
import subprocess
import sys
from pathlib import Path

import pytest

import avda
from avda.errors import ConfigError
from tests.conftest import make_feature_cache, without_audio

DOC = Path(__file__).resolve().parents[1] / "docs" / "python_api.md"


def test_import_avda_loads_no_heavy_module():
    code = (
        "import sys, avda; heavy = [m for m in ('torch', 'pandas', 'zarr', 'avda.api') "
        "if m in sys.modules]; print(heavy); print(callable(avda.open_cache))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert out[0] == "[]" and out[1] == "True"


def test_avda_modules_are_reached_from_import_avda_as_the_docs_write_them():
    """docs/weights.md's `avda.weights.resolve(...)` and `avda.extract.backbones.create`,
    docs/python_api.md's `avda.sweep.run_sweep(...)` after `import avda`: AttributeError
    ('module avda has no attribute weights') unless the module had been imported."""
    code = (
        "import avda; print(callable(avda.weights.resolve), callable(avda.sweep.run_sweep), "
        "callable(avda.runs.read_predictions), callable(avda.extract.backbones.create), "
        "hasattr(avda, 'nonexistent'), hasattr(avda.train, 'nonexistent'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True"] * 4 + ["False"] * 2


def test_the_api_names_stay_functions_after_their_packages_are_imported():
    import avda.evaluate.tables  # noqa: F401
    import avda.extract.runner  # noqa: F401
    import avda.train.loop  # noqa: F401

    for name in ("extract", "train", "evaluate", "open_cache"):
        assert callable(getattr(avda, name)), name
    assert set(avda.__all__) >= {"extract", "train", "evaluate", "open_cache"}


def test_python_api_page_example_runs(tmp_path, monkeypatch):
    """docs/python_api.md's example, as doctest, in an empty folder."""
    monkeypatch.chdir(tmp_path)
    result = doctest.testfile(
        str(DOC), module_relative=False, optionflags=doctest.NORMALIZE_WHITESPACE, verbose=False
    )
    assert result.attempted >= 10 and result.failed == 0


def test_train_and_evaluate_keywords_mirror_the_cli(tmp_path):
    make_feature_cache(tmp_path / "c.zarr", per_class=6)
    run = avda.train(
        head="dann", cache=tmp_path / "c.zarr", source=["source"], target="target",
        out=tmp_path / "dann", epochs=1, head_config={"modalities": ["rgb"]}, seed=2,
        progress=False,
    )  # fmt: skip
    from avda import runs

    config = runs.read_config(run.run)
    assert config["seed"] == 2 and config["modalities"] == ["rgb"]
    assert config["head_config"]["epochs"] == 1
    table = avda.evaluate([tmp_path / "dann"], out=tmp_path / "results")
    assert table.loc[0, "head"] == "dann" and (tmp_path / "results.csv").exists()


def test_train_takes_numpy_integers_as_a_notebook_loop_gives_them(tmp_path):
    """``for seed in np.arange(3)``: np.int64 seed and epochs train and are recorded as ints
    (the seed failed writing config.yaml: RepresenterError; epochs: 'expected an integer')."""
    import numpy as np

    make_feature_cache(tmp_path / "c.zarr", per_class=6)
    run = avda.train(
        head="source-only", cache=tmp_path / "c.zarr", source="source", target="target",
        out=tmp_path / "so", seed=np.int64(1), epochs=np.int64(1),
        head_config={"hidden_dim": np.int32(8), "lr": np.float32(0.01)}, progress=False,
    )  # fmt: skip
    from avda import runs

    config = runs.read_config(run.run)
    assert config["seed"] == 1 and type(config["seed"]) is int
    assert config["head_config"]["epochs"] == 1 and config["head_config"]["hidden_dim"] == 8
    # an open cache stands for its store: the same run, already complete
    again = avda.train(
        head="source-only", cache=avda.open_cache(tmp_path / "c.zarr"), source="source",
        target="target", out=tmp_path / "so", seed=1, epochs=1,
        head_config={"hidden_dim": 8, "lr": np.float32(0.01)}, progress=False,
    )  # fmt: skip
    assert again.skipped and runs.read_config(run.run)["cache"] == config["cache"]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"seed": "1"}, r"^seed: expected an integer >= 0, got '1'$"),
        ({"seed": 1.5}, r"^seed: expected an integer >= 0, got 1.5$"),
        ({"seed": True}, r"^seed: expected an integer >= 0, got True$"),
        ({"seed": -1}, r"^seed: expected an integer in \[0, 2\*\*32\), got -1$"),
        ({"head_config": ["lr", 0.1]}, r"^head_config: expected a dict of the head's fields"),
    ],
)
def test_train_refuses_a_wrong_type_in_one_line_before_any_folder(tmp_path, given, expected):
    make_feature_cache(tmp_path / "c.zarr", per_class=6)
    with pytest.raises(ConfigError, match=expected):
        avda.train(
            head="dann", cache=tmp_path / "c.zarr", source="source", target="target",
            out=tmp_path / "run", epochs=1, progress=False, **given,
        )  # fmt: skip
    assert not (tmp_path / "run").exists()


def test_train_without_required_values_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"^avda.train: missing cache, source, target, out;"):
        avda.train(head="dann")


def test_extract_checks_a_dataframe_manifest_as_a_file(tmp_path):
    import pandas as pd

    from avda.errors import ManifestError

    frame = pd.DataFrame(
        {"uid": ["a", "a"], "video_id": ["v", "v"], "domain": ["D1", "D1"],
         "split": ["train", "train"], "start_sec": [0.0, 2.0], "stop_sec": [1.0, 3.0]}
    )  # fmt: skip
    with pytest.raises(
        ManifestError, match=r"(?s)^the DataFrame given as manifest has 1 problem.*duplicate uid"
    ):
        avda.extract(frame, tmp_path / "c.zarr", videos=tmp_path, progress=False)
    assert not (tmp_path / "c.zarr").exists()


def test_a_dataframe_manifests_problems_name_the_argument_its_index_and_columns(tmp_path):
    """A DataFrame has no file: its problems were "file [domain]", "row 3" (a file row, one
    more than the position) and "run `avda manifest validate` again" (which reads files). They
    name the argument, the index labels and the columns, and the call to repeat."""
    import pandas as pd

    from avda.errors import ManifestError

    rows = pd.DataFrame(
        {"uid": ["a", "a"], "video_id": ["v", "v"], "domain": ["D1", "D1"],
         "split": ["train", "training"], "start_sec": [0.0, 2.0], "stop_sec": [1.0, 3.0]},
        index=["s1", "s2"],
    )  # fmt: skip
    with pytest.raises(ManifestError) as caught:
        avda.extract(rows, tmp_path / "c.zarr", videos=tmp_path, progress=False)
    assert str(caught.value).splitlines() == [
        "the DataFrame given as manifest has 2 problem(s):",
        "  index 's2' [uid]: duplicate uid 'a' (first at index 's1')",
        "  index 's2' [split]: unknown split 'training'; expected one of train, val, test",
        "fix these rows of the DataFrame (or drop them) and call avda.extract again",
    ]
    columns = pd.DataFrame({"uid": ["a"], "video_id": ["v"], "dom": ["D1"], "split": ["train"],
                            "start_sec": [0.0], "stop_sec": [1.0]})  # fmt: skip
    with pytest.raises(ManifestError) as caught:
        avda.extract(columns, tmp_path / "c.zarr", videos=tmp_path, progress=False)
    assert str(caught.value).splitlines() == [
        "the DataFrame given as manifest has 1 problem(s):",
        "  columns [domain]: required column 'domain' is missing; the DataFrame has 'dom': "
        "rename it to 'domain'",
        "fix the DataFrame and call avda.extract again",
    ]
    assert not (tmp_path / "c.zarr").exists()


def test_extract_takes_a_published_weights_name(tmp_path, monkeypatch):
    """``weights=NAME`` resolves as ``--weights NAME``: unfetched, one line naming the fetch."""
    import pandas as pd

    monkeypatch.setenv("AVDA_HOME", str(tmp_path / "home"))
    frame = pd.DataFrame(
        {"uid": ["a"], "video_id": ["v"], "domain": ["D1"], "split": ["train"],
         "start_sec": [0.0], "stop_sec": [1.0]}
    )  # fmt: skip
    with pytest.raises(
        ConfigError, match=r"weights piergiaj_rgb_imagenet: not fetched yet .*avda weights fetch"
    ):
        avda.extract(
            frame, tmp_path / "c.zarr", videos=tmp_path, weights="piergiaj_rgb_imagenet",
            progress=False,
        )  # fmt: skip
    assert not (tmp_path / "c.zarr").exists()


def test_extract_records_the_class_tables_of_a_built_manifest(tmp_path, media):
    """A manifest made by ``avda manifest build`` has its class tables beside it
    (``<manifest>.build.json``): the store records them, so a run is sized by the benchmark's
    classes (5 here), not by the largest id the segments hold (1)."""
    import json

    import pandas as pd

    from avda.cache import open_cache

    manifest = tmp_path / "m.csv"
    pd.DataFrame(
        {"uid": ["a", "b"], "video_id": ["clip", "clip"], "domain": ["S", "T"],
         "split": ["train", "test"], "start_sec": [1.0, 5.0], "stop_sec": [3.0, 7.0],
         "verb_class": [0, 1], "video_path": ["v_ZNVhz7ctTq0.mp4"] * 2}
    ).to_csv(manifest, index=False)  # fmt: skip
    names = ["take", "put", "open", "close", "wash"]
    (tmp_path / "m.csv.build.json").write_text(json.dumps({"classes": {"verb_class": names}}))
    avda.extract(manifest, tmp_path / "c.zarr", videos=media / "video", modalities=["audio"],
                 recipe="demo", progress=False)  # fmt: skip
    assert open_cache(tmp_path / "c.zarr").provenance["classes"] == {"verb_class": names}
    from avda import runs
    from avda.train.loop import train

    train(cache=tmp_path / "c.zarr", head="source-only", source=["S"], target=["T"],
          out=tmp_path / "run", seed=0, overrides={"epochs": 1}, progress=False)  # fmt: skip

    assert runs.read_predictions(tmp_path / "run", "target_test")["scores"]["verb"].shape == (1, 5)


@pytest.mark.parametrize(
    ("modalities", "given", "expected"),
    [
        (["audio"], {"weights": "i3d.pt"}, "is the visual backbone's checkpoint, but no visual"),
        (["rgb"], {"audio_weights": "vgg.pt"}, "but audio is not extracted (modalities rgb)"),
        # it ran the rgb extraction and ignored the audio backbone without a word
        (["rgb"], {"audio_backbone": "vggish"}, "audio_backbone vggish is given, but audio"),
        # the valid names were every backbone's, i3d and slowfast (no audio) included
        (
            ["audio"],
            {"audio_backbone": "vggish"},
            "unknown audio backbone 'vggish'; valid: audio_resnet18, tbn",
        ),
        (
            ["rgb"],
            {"backbone": "i3dd"},
            "unknown backbone 'i3dd'; did you mean 'i3d'? valid: i3d, slowfast, "
            "slowfast-r101-mmaction, slowfast-r101-mmaction-max, slowfast-r50-mmaction, "
            "slowfast-r50-mmaction-max, tbn",
        ),
    ],
)
def test_weights_for_a_modality_not_extracted_are_refused(tmp_path, modalities, given, expected):
    """A fine-tuned audio checkpoint passed as --weights (as finetune's hint once said) was
    ignored: the store held random-init audio features, exit 0."""
    import pandas as pd

    frame = pd.DataFrame(
        {"uid": ["a"], "video_id": ["v"], "domain": ["D1"], "split": ["train"],
         "start_sec": [0.0], "stop_sec": [1.0]}
    )  # fmt: skip
    with pytest.raises(ConfigError, match=re.escape(expected)):
        avda.extract(frame, tmp_path / "c.zarr", videos=tmp_path, modalities=modalities,
                     progress=False, **given)  # fmt: skip
    assert not (tmp_path / "c.zarr").exists()


def test_train_takes_numpy_strings_as_a_loop_over_an_array_gives_them(tmp_path):
    """``for optimizer in np.array(["adam", "sgd"])``: np.str_ values are written to config.yaml
    as plain strings (they failed there: RepresenterError, after the checks had passed)."""
    import numpy as np

    from avda import runs

    make_feature_cache(tmp_path / "c.zarr", per_class=6)
    run = avda.train(
        head="source-only", cache=tmp_path / "c.zarr", source="source", target="target",
        out=tmp_path / "so", epochs=1, progress=False,
        head_config={"optimizer": np.array(["adam", "sgd"])[1], "modalities": [np.str_("rgb")]},
    )  # fmt: skip
    config = runs.read_config(run.run)["head_config"]
    assert config["optimizer"] == "sgd" and config["modalities"] == ["rgb"]


def test_evaluate_errors_name_the_keywords_not_the_cli_options(tmp_path):
    """The evaluation code is shared with ``avda evaluate``, whose errors say ``--set``; a
    Python caller is told the keyword it passed."""
    make_feature_cache(tmp_path / "c.zarr", per_class=4)
    avda.train(
        head="source-only", cache=tmp_path / "c.zarr", source="source", target="target",
        out=tmp_path / "run", epochs=1, progress=False,
    )  # fmt: skip
    with pytest.raises(ConfigError) as error:
        avda.evaluate(tmp_path / "run", eval_set="nope")
    assert "eval_set='nope'" in str(error.value) and "--" not in str(error.value)
    with pytest.raises(ConfigError) as error:
        avda.evaluate(tmp_path / "run", metric="mAP")
    assert "metric='mAP'" in str(error.value) and "--" not in str(error.value)
    with pytest.raises(avda.errors.RunError) as error:
        avda.evaluate(tmp_path / "run", layout="auto", eval_set="nope")
    assert "choose another eval_set" in str(error.value) and "--set" not in str(error.value)


def test_evaluate_keywords_leave_a_hint_to_train_with_set_as_it_is():
    """``--set key=value`` in an error is `avda train`'s option (train again with it), not
    `avda evaluate`'s --set: it stays a command-line hint."""
    from avda.api import _EVALUATE_KEYWORDS, _keywords

    hint = "train with --set keep_last_predictions=5; lower lr (--set lr=...)"
    assert _keywords(hint, _EVALUATE_KEYWORDS) == hint
    assert _keywords("--set x has no labels: choose another --set", _EVALUATE_KEYWORDS) == (
        "eval_set='x' has no labels: choose another eval_set"
    )
    # a flag takes no value, and an option is none: '--per-class --metric top5' kept
    # '--metric top5' (taken for the flag's next word)
    assert _keywords("leave out --per-class --metric top5 or -o OUT", _EVALUATE_KEYWORDS) == (
        "leave out per_class=True metric='top5' or out='OUT'"
    )


def test_evaluate_refuses_what_the_runs_layout_cannot_use_as_the_cli_does(tmp_path):
    """``protocol=`` in the runs layout was silently ignored (``avda evaluate --protocol``
    without ``--layout`` is refused), and an unknown layout listed every layout but ``runs``."""
    make_feature_cache(tmp_path / "c.zarr", per_class=4)
    avda.train(
        head="source-only", cache=tmp_path / "c.zarr", source="source", target="target",
        out=tmp_path / "run", epochs=1, progress=False,
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"^protocol: only a paper layout .* layout='auto'$"):
        avda.evaluate(tmp_path / "run", protocol="unified")
    with pytest.raises(ConfigError, match=r"^compare: only a paper layout"):
        avda.evaluate(tmp_path / "run", compare="source-only")
    with pytest.raises(ConfigError, match=r"^unknown layout 'table'; valid: runs, auto,"):
        avda.evaluate(tmp_path / "run", layout="table")
    # a paper layout without out: compare was used only to write the files, so a method the
    # table does not have (a typo, another label) passed silently
    with pytest.raises(ConfigError, match=r"^compare 'dan' is not a method of this table; "):
        avda.evaluate(tmp_path / "run", layout="auto", compare="dan")


def test_the_callable_packages_show_the_api_functions_signatures():
    """``inspect.signature(avda.train)`` (Jupyter's Shift-Tab) was ``(*args, **kwargs)``."""
    import inspect

    import avda.api

    for name in ("extract", "train", "evaluate"):
        assert inspect.signature(getattr(avda, name)) == inspect.signature(getattr(avda.api, name))
    assert "head_config" in inspect.signature(avda.train).parameters


def _cli_error(capsys, *args: str) -> str:
    """``avda ARGS``'s one-line error (exit 1)."""
    from avda import cli

    capsys.readouterr()
    code = cli.main(list(args))
    captured = capsys.readouterr()
    assert code == 1, captured
    return captured.err


def test_train_errors_name_the_keywords_and_the_cli_its_options(tmp_path, capsys):
    """A notebook's ``avda.train`` into a finished run of another configuration was told to
    "use another -o"; it passed ``out=``."""
    make_feature_cache(tmp_path / "c.zarr", per_class=4)
    given = {"head": "source-only", "cache": tmp_path / "c.zarr", "source": "source",
             "target": "target", "out": tmp_path / "run", "progress": False}  # fmt: skip
    avda.train(epochs=1, **given)
    with pytest.raises(avda.errors.RunError, match=r"another configuration .*; use another out$"):
        avda.train(epochs=2, **given)
    err = _cli_error(
        capsys, "train", "--head", "source-only", "--cache", str(tmp_path / "c.zarr"),
        "--source", "source", "--target", "target", "-o", str(tmp_path / "run"), "--epochs", "2",
    )  # fmt: skip
    assert err.rstrip().endswith("; use another -o")


def test_head_config_refusals_name_the_keyword_the_caller_typed(tmp_path, capsys):
    """``avda.train(epochs=0)`` said ``DannConfig.epochs: expected an integer >= 1``, a class
    attribute the caller never typed; it names ``epochs``, and a ``head_config`` field
    ``head_config['lr']``. The CLI keeps its words (``--set lr=-1``: ``DannConfig.lr``)."""
    make_feature_cache(tmp_path / "c.zarr", per_class=4)
    given = {"head": "dann", "cache": tmp_path / "c.zarr", "source": "source",
             "target": "target", "out": tmp_path / "run", "progress": False}  # fmt: skip
    with pytest.raises(ConfigError, match=r"^epochs: expected an integer >= 1, got 0$"):
        avda.train(**given, epochs=0)
    with pytest.raises(ConfigError, match=r"^head_config\['epochs'\]: expected an integer >= 1"):
        avda.train(**given, head_config={"epochs": 0})
    with pytest.raises(ConfigError, match=r"^head_config\['lr'\]: expected a number > 0, got -1"):
        avda.train(**given, head_config={"lr": -1, "hidden_dim": 8})
    with pytest.raises(ConfigError, match=r"^unknown head_config field 'hiden_dim'; did you"):
        avda.train(**given, head_config={"hiden_dim": 8})
    assert not (tmp_path / "run").exists()
    err = _cli_error(
        capsys, "train", "--head", "dann", "--cache", str(tmp_path / "c.zarr"), "--source",
        "source", "--target", "target", "-o", str(tmp_path / "run"), "--set", "lr=-1", "-q",
    )  # fmt: skip
    assert "DannConfig.lr: expected a number > 0, got -1.0" in err


def test_a_command_to_leave_is_one_of_avda_s_commands():
    """``avda <word>`` is a command to run, left as is, only where the word is one of avda's
    commands: prose ('whose workers avda does not submit, ...: run with --cluster slurm') kept
    the options after it up to the next ';'."""
    from avda import cli, wording

    typed = {c.name or c.callback.__name__ for c in cli.app.registered_commands}
    assert set(wording.COMMANDS) == typed | {g.name for g in cli.app.registered_groups}
    table = {"cluster": "cluster", "scheduler": "scheduler"}
    assert wording.keywords("workers avda does not submit, or run with --cluster slurm", table) == (
        "workers avda does not submit, or run with cluster slurm"
    )
    hint = "`avda sweep SPEC --cluster slurm --job-script`, or --scheduler ADDRESS"
    assert wording.keywords(hint, table) == (
        "`avda sweep SPEC --cluster slurm --job-script`, or scheduler ADDRESS"
    )


def test_every_set_field_of_a_hint_is_one_head_config_dict(tmp_path, capsys):
    """A hint that names two fields (``--set batch_size=N --set target_batch_size=N``) is one
    ``head_config`` dict of both in the API; the rewrite turned only the first key into it
    (``head_config={'batch_size': N}, target_batch_size=N``). The CLI's hint is its syntax:
    ``--set`` once per field (``--set a=N, b=N`` is not a command line)."""
    from avda.api import _TRAIN_KEYWORDS, _keywords

    make_feature_cache(tmp_path / "c.zarr", per_class=4)
    given = {"head": "adabn", "cache": tmp_path / "c.zarr", "source": "source",
             "target": "target", "out": tmp_path / "run", "epochs": 1}  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        avda.train(**given, head_config={"batch_size": 1}, progress=False)
    assert "(head_config={'batch_size': N, 'target_batch_size': N})" in str(caught.value)
    err = _cli_error(
        capsys, "train", "--head", "adabn", "--cache", str(tmp_path / "c.zarr"), "--source",
        "source", "--target", "target", "-o", str(tmp_path / "run"), "--epochs", "1", "--set",
        "batch_size=1", "-q",
    )  # fmt: skip
    assert "(--set batch_size=N --set target_batch_size=N)" in err
    assert _keywords("(--set lr=0.1, modalities=[rgb,audio]; or)", _TRAIN_KEYWORDS) == (
        "(head_config={'lr': 0.1, 'modalities': ['rgb', 'audio']}; or)"
    )
    assert _keywords("(--set lr=0.1, a smaller one)", _TRAIN_KEYWORDS) == (
        "(head_config={'lr': 0.1}, a smaller one)"
    )


def test_predict_errors_name_the_keywords_and_the_cli_its_options(tmp_path, capsys):
    """``avda.predict(splits="nope")`` said ``unknown --split 'nope'``."""
    make_feature_cache(tmp_path / "c.zarr", per_class=4)
    avda.train(
        head="source-only", cache=tmp_path / "c.zarr", source="source", target="target",
        out=tmp_path / "run", epochs=1, progress=False,
    )  # fmt: skip
    with pytest.raises(avda.errors.CacheError, match=r"^unknown splits='nope'; valid: ") as error:
        avda.predict(tmp_path / "run", splits="nope", progress=False)
    assert "--" not in str(error.value)
    err = _cli_error(
        capsys, "predict", str(tmp_path / "run"), "--split", "nope", "-o", str(tmp_path / "p.npz")
    )
    assert "unknown --split 'nope'; valid: " in err


def test_extract_errors_name_the_keywords_and_the_cli_its_options(tmp_path, media, capsys):
    """``avda.extract`` into a store of another manifest was told "Use another -o, or --force";
    it takes ``out=`` and ``force=True``."""
    import pandas as pd

    manifest = tmp_path / "m.csv"
    rows = {"uid": ["a"], "video_id": ["clip"], "domain": ["S"], "split": ["train"],
            "start_sec": [1.0], "stop_sec": [3.0], "video_path": ["v_ZNVhz7ctTq0.mp4"]}  # fmt: skip
    pd.DataFrame(rows).to_csv(manifest, index=False)
    given = {"videos": media / "video", "modalities": ["audio"], "recipe": "demo"}
    avda.extract(manifest, tmp_path / "c.zarr", progress=False, **given)
    pd.DataFrame({**rows, "stop_sec": [4.0]}).to_csv(manifest, index=False)
    with pytest.raises(avda.errors.CacheError) as error:
        avda.extract(manifest, tmp_path / "c.zarr", progress=False, **given)
    assert str(error.value).endswith(
        "Use another out, or force=True to replace it with a new store"
    )
    assert "--" not in str(error.value)
    err = _cli_error(
        capsys, "extract", "--manifest", str(manifest), "-o", str(tmp_path / "c.zarr"),
        "--videos", str(media / "video"), "--modalities", "audio", "--recipe", "demo", "-q",
    )  # fmt: skip
    assert err.rstrip().endswith("Use another -o, or --force to replace it with a new store")


def test_extract_failure_records_name_the_keywords_and_the_cli_its_options(tmp_path, media, capsys):
    """A segment whose video is missing is a failure record, not an error: avda.extract's
    ``failures`` said "check --videos" (the keyword rewrite saw only raised errors); the CLI's
    STORE.failures.csv keeps its options."""
    import pandas as pd

    from avda import cli

    manifest = tmp_path / "m.csv"
    rows = {"uid": ["a", "b"], "video_id": ["clip", "gone"], "domain": ["S", "S"],
            "split": ["train", "train"], "start_sec": [1.0, 1.0], "stop_sec": [3.0, 3.0],
            "video_path": ["v_ZNVhz7ctTq0.mp4", "gone.mp4"]}  # fmt: skip
    pd.DataFrame(rows).to_csv(manifest, index=False)
    given = {"videos": media / "video", "modalities": ["audio"], "recipe": "demo"}
    result = avda.extract(manifest, tmp_path / "c.zarr", progress=False, **given)
    assert result.done == 1 and result.failures["uid"].tolist() == ["b"]
    (error,) = result.failures["error"]
    assert error.endswith("not found; check videos / the audio folder"), error
    assert "--" not in error
    code = cli.main(["extract", "--manifest", str(manifest), "-o", str(tmp_path / "d.zarr"),
                     "--videos", str(media / "video"), "--modalities", "audio", "--recipe",
                     "demo", "-q"])  # fmt: skip
    capsys.readouterr()
    assert code == 3
    listed = pd.read_csv(tmp_path / "d.zarr.failures.csv")
    assert listed["error"].iloc[0].endswith("not found; check --videos / the audio folder")


def test_the_no_weights_warning_names_the_modality_s_keyword(
    tmp_path, media, caplog, capsys, monkeypatch
):
    """avda.extract of audio without weights said 'give a published checkpoint (avda
    extract/demo: --weights, or --audio-weights for the audio backbone; Python:
    weights=PATH)': both spellings inside a Python call, and the wrong keyword for the audio
    backbone (weights=, not audio_weights=). It names the modality's option, spoken as the
    keyword; the CLI keeps the option."""
    import pandas as pd

    from avda import cli
    from avda.extract import backbones

    manifest = tmp_path / "m.csv"
    rows = {"uid": ["a"], "video_id": ["clip"], "domain": ["S"], "split": ["train"],
            "start_sec": [1.0], "stop_sec": [3.0], "video_path": ["v_ZNVhz7ctTq0.mp4"]}  # fmt: skip
    pd.DataFrame(rows).to_csv(manifest, index=False)
    given = {"videos": media / "video", "modalities": ["audio"], "recipe": "demo"}
    monkeypatch.setattr(backbones, "RANDOM_INIT_WARNED", set())
    with caplog.at_level("WARNING", logger="avda.extract.backbones"):
        avda.extract(manifest, tmp_path / "c.zarr", progress=False, **given)
    (warning,) = [r.getMessage() for r in caplog.records if "random init" in r.getMessage()]
    assert warning.endswith(
        "give a published checkpoint with audio_weights (a file, or a name of `avda weights list`)"
    ), warning
    assert "--" not in warning
    capsys.readouterr()
    code = cli.main(["extract", "--manifest", str(manifest), "-o", str(tmp_path / "d.zarr"),
                     "--videos", str(media / "video"), "--modalities", "audio", "--recipe",
                     "demo"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    assert "give a published checkpoint with --audio-weights (a file, or a name of" in err


def test_warnings_name_the_keywords_and_the_cli_its_options(tmp_path, caplog, capsys):
    """A run far shorter than its recipe, on a cache with a segment without audio, warns about
    both: from Python they said 'leave --epochs unset' and '--set modalities=[rgb] leaves audio
    out' (the keyword rewrite saw only raised errors); the CLI keeps its options."""
    from avda import cli

    without_audio(make_feature_cache(tmp_path / "c.zarr", per_class=4))
    given = {"head": "source-only", "cache": tmp_path / "c.zarr", "source": "source",
             "target": "target", "epochs": 1}  # fmt: skip
    with caplog.at_level("WARNING"):
        avda.train(**given, out=tmp_path / "api", head_config={"hidden_dim": 8}, progress=False)
    assert "(leave epochs unset to train the recipe's amount)" in caplog.text
    assert "their audio features are zeros; head_config={'modalities': ['rgb']} leaves" in (
        caplog.text
    )
    assert "--" not in caplog.text
    capsys.readouterr()
    code = cli.main(["train", *(f"--{k}={v}" for k, v in given.items()), "-o",
                     str(tmp_path / "cli"), "--set", "hidden_dim=8", "-q"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    assert "(leave --epochs unset to train the recipe's amount)" in err
    assert "their audio features are zeros; --set modalities=[rgb] leaves audio out" in err


def test_evaluate_of_a_missing_folder_names_no_option(tmp_path):
    """It said "pass run directories or a sweep's --out folder" from avda.evaluate too."""
    with pytest.raises(avda.errors.RunError) as raised:
        avda.evaluate(tmp_path / "gone")
    assert str(raised.value).endswith("does not exist; pass run folders, or the folder of a "
                                      "sweep's runs")  # fmt: skip


def test_the_keywords_of_train_and_extract_hints():
    """``--set key=value`` is train's ``head_config``; a command to run stays as it is."""
    from avda.api import _EXTRACT_KEYWORDS, _TRAIN_KEYWORDS, _keywords

    assert _keywords(
        "lower lr (--set lr=...) or --set modalities=[rgb,audio]", _TRAIN_KEYWORDS
    ) == ("lower lr (head_config={'lr': ...}) or head_config={'modalities': ['rgb', 'audio']}")
    hint = "extract with `avda extract --recipe cia`, or train again (avda train --config c -o r)"
    assert _keywords(hint, _TRAIN_KEYWORDS) == hint
    assert _keywords("(--force --prepare-only, without --shard)", _EXTRACT_KEYWORDS) == (
        "(force=True prepare_only=True, without shard)"
    )


def test_keyword_errors_keep_an_error_whose_constructor_takes_more_than_its_message(tmp_path):
    """``ManifestProblems(path, problems)``: rewriting its message must not become a TypeError
    (``type(exc)(message)``), and it keeps its ``problems``."""
    from avda.api import _EXTRACT_KEYWORDS, _keyword_errors
    from avda.data_manifests.schema import ManifestProblems, Problem
    from avda.errors import MissingDependencyError

    problems = [Problem(2, "split", "use -o for the output")]

    @_keyword_errors(_EXTRACT_KEYWORDS)
    def fails():
        raise ManifestProblems(tmp_path / "m.csv", problems)

    with pytest.raises(ManifestProblems, match="use out for the output") as caught:
        fails()
    assert caught.value.problems == problems and caught.value.path == tmp_path / "m.csv"

    @_keyword_errors(_EXTRACT_KEYWORDS)
    def lacks():  # an ImportError: its message is its msg
        raise MissingDependencyError("--jpeg-dct fast needs simplejpeg", name="simplejpeg")

    with pytest.raises(MissingDependencyError, match="^jpeg_dct fast needs") as caught:
        lacks()
    assert caught.value.name == "simplejpeg"


def test_keywords_leave_what_a_quoted_value_holds(tmp_path):
    """A manifest's cell or a path in an error is quoted: an option-like text in it is data,
    not an option to name as a keyword (the message must say what the file holds)."""
    import pandas as pd

    from avda.api import _EXTRACT_KEYWORDS, _PREDICT_KEYWORDS, _keywords
    from avda.errors import ManifestError

    frame = pd.DataFrame(
        {"uid": ["a"], "video_id": ["v"], "domain": ["D1"], "split": ["--force"],
         "start_sec": [0.0], "stop_sec": [1.0]}
    )  # fmt: skip
    with pytest.raises(ManifestError, match=r"unknown split '--force'; expected"):
        avda.extract(frame, tmp_path / "c.zarr", videos=tmp_path, progress=False)
    message = "cache '/data/a -o b.zarr' exists. Use another -o, or --force"
    assert _keywords(message, _EXTRACT_KEYWORDS) == (
        "cache '/data/a -o b.zarr' exists. Use another out, or force=True"
    )
    assert _keywords("unknown --split 'x'", _PREDICT_KEYWORDS) == "unknown splits='x'"


def test_evaluate_refuses_an_out_named_as_another_format_as_the_cli_does(
    tmp_path, capsys, monkeypatch
):
    """``avda.evaluate(out="x.pdf")`` wrote x.pdf.md, x.pdf.csv: one error naming the tables'
    formats and suffixes instead, in the command line and the API, before any run is read."""
    make_feature_cache(tmp_path / "c.zarr", per_class=4)
    avda.train(
        head="source-only", cache=tmp_path / "c.zarr", source="source", target="target",
        out=tmp_path / "run", epochs=1, progress=False,
    )  # fmt: skip
    out = tmp_path / "tables" / "x.pdf"
    _cli_error(capsys, "evaluate", str(tmp_path / "run"), "-o", str(out))
    assert not (tmp_path / "tables").exists(), "a refused -o made its folder"
    with pytest.raises(ConfigError, match="is named as a .PDF file"):  # in any case
        avda.evaluate(tmp_path / "run", out=tmp_path / "tables" / "X.PDF")
    for kwargs, options in (({}, []), ({"layout": "auto"}, ["--layout", "auto"]),
                            ({"per_class": True}, ["--per-class"])):  # fmt: skip
        with pytest.raises(ConfigError) as error:
            avda.evaluate(tmp_path / "run", out=out, **kwargs)
        message = str(error.value)
        assert message.startswith(f"out: {out} is named as a .pdf file"), message
        # no -o (the paths may hold one: /tmp/pytest-of-root)
        words = message.replace(str(out.with_suffix("")), "PATH")
        assert "OUT.md, OUT.csv, OUT.tex" in message and "-o" not in words
        assert f"name them {out.with_suffix('')}" in message
        stderr = _cli_error(capsys, "evaluate", str(tmp_path / "run"), *options, "-o", str(out))
        assert stderr.startswith(f"error: -o: {out} is named as a .pdf file"), stderr
        assert not list((tmp_path / "tables").glob("x.pdf*"))
        # a suffix that is no other program's stays part of the name (-o tab.v1: tab.v1.md)
        avda.evaluate(tmp_path / "run", out=tmp_path / "tables" / "tab.v1", **kwargs)
        assert (tmp_path / "tables" / "tab.v1.md").exists()
    # other programs' file types (x.zip, x.rst wrote x.zip.md) are refused, naming the tables'
    for name in ("x.zip", "x.rst", "x.Json"):
        out = tmp_path / "tables" / name
        expected = (
            f"{out} is named as a {out.suffix} file, and the tables are Markdown, CSV and LaTeX "
            f"(OUT.md, OUT.csv, OUT.tex); name them {out.with_suffix('')} (a suffix .csv, .html, "
            ".md, .tex is replaced by each table's; another is kept in the name: tab.v1.md)"
        )
        with pytest.raises(ConfigError) as error:
            avda.evaluate(tmp_path / "run", out=out)
        assert str(error.value) == f"out: {expected}"
        stderr = _cli_error(capsys, "evaluate", str(tmp_path / "run"), "-o", str(out))
        assert stderr == f"error: -o: {expected}\n"
    assert not list((tmp_path / "tables").glob("x.*"))
    avda.evaluate(tmp_path / "run", out=tmp_path / "tables" / "x.md")  # a table's: x.md, x.csv
    assert sorted(p.name for p in (tmp_path / "tables").glob("x.*")) == ["x.csv", "x.md"]
    # a suffix that is no file type is part of the name, as a user naming a run writes it
    avda.evaluate(tmp_path / "run", out=tmp_path / "tables" / "results.final")
    assert (tmp_path / "tables" / "results.final.md").exists()
    # the name offered is one the tables may have (x.tar.gz was told x.tar, refused in turn)
    with pytest.raises(ConfigError, match=r"is named as a \.gz file, .*; name them \S+/x \("):
        avda.evaluate(tmp_path / "run", out=tmp_path / "tables" / "x.tar.gz")
    # a folder or a file type alone names no table: `-o .` was an internal error once the runs
    # were read, `-o .md` wrote the hidden .md.md, .md.csv, `-o .pdf` .pdf.md (its refusal
    # offered the hidden .tar for .tar.gz), `-o sub/` (the slash dropped) sub.md
    monkeypatch.chdir(tmp_path)
    for out, named in (
        (".", "results"),
        (".md", "results"),
        ("tables/.CSV", "tables/results"),
        (".pdf", "results"),
        ("tables/.tar.gz", "tables/results"),
        ("sub/", "sub/results"),
        ("tables/", "tables/results"),
        ("sub/.", "sub/results"),  # Path drops the '.' too: it wrote sub.md
        ("sub//", "sub/results"),
    ):
        expected = (
            f"{out} names no table (the tables are OUT.md, OUT.csv and OUT.tex); give them a "
            f"name: {named}"
        )
        with pytest.raises(ConfigError) as error:
            avda.evaluate(tmp_path / "run", out=out)
        assert str(error.value) == f"out: {expected}"
        stderr = _cli_error(capsys, "evaluate", str(tmp_path / "run"), "-o", out)
        assert stderr == f"error: -o: {expected}\n"
    assert not list(tmp_path.glob(".*")) and not list((tmp_path / "tables").glob(".*"))
    assert not list(tmp_path.glob("sub*")) and not (tmp_path / "tables.md").exists()


def _scored_run(run: Path, seed: int, protocol: str | None, labelled_test: bool = True) -> Path:
    """A complete run of source-only on D1->D2 with verb predictions (all right but one of
    eight) on target_test, or on target_val beside an unlabelled target_test."""
    import numpy as np

    from avda import runs

    labels = np.arange(8) % 4
    scores = np.eye(4)[np.r_[labels[:-1], (labels[-1] + 1) % 4]]
    uids = np.array([f"s{i}" for i in range(8)])
    config = {"head": "source-only", "source": ["D1"], "target": ["D2"], "seed": seed,
              "tasks": [{"name": "verb", "num_classes": 4}], "head_config": {}}  # fmt: skip
    if protocol is not None:
        config.update(protocol=protocol, protocol_role="source-only")
    runs.write_config(run, config)
    test = labels if labelled_test else np.full(8, -1)
    runs.write_predictions(run, "target_test", uids, {"verb": test}, {"verb": scores})
    if not labelled_test:
        runs.write_predictions(run, "target_val", uids, {"verb": labels}, {"verb": scores})
    runs.mark_complete(run, {})
    return run


def test_evaluate_notes_name_the_keywords_as_its_warnings_do(tmp_path, capsys):
    """A table's notes (runs of another protocol left out, runs scored on different sets) said
    `--protocol X`, `--set` to a Python caller, whose warnings of the same say protocol='X',
    eval_set: the paper and per-class tables' notes, and the files ``out`` writes, as the
    warnings; the command line's keep its options."""
    _scored_run(tmp_path / "runs" / "a", 0, "cia-ucf-hmdb")
    _scored_run(tmp_path / "runs" / "b", 1, "cia-ucf-hmdb", labelled_test=False)
    _scored_run(tmp_path / "runs" / "c", 0, None)
    paper = avda.evaluate(tmp_path / "runs", layout="auto", out=tmp_path / "paper")
    per_class = avda.evaluate(tmp_path / "runs", per_class=True, out=tmp_path / "pc")
    for notes, written in ((paper.notes, tmp_path / "paper.md"), (per_class.notes,
                           tmp_path / "pc.md")):  # fmt: skip
        text = "\n".join(notes)
        assert "train them with protocol='cia-ucf-hmdb' to compare them here" in text, text
        assert "score one set for all with eval_set (avda evaluate)" in text, text
        assert "--" not in text, text
        kept = written.read_text()
        assert "--set" not in kept and "--protocol" not in kept and "eval_set" in kept, kept
    from avda import cli

    capsys.readouterr()
    assert cli.main(["evaluate", str(tmp_path / "runs"), "--layout", "auto"]) == 0
    printed = capsys.readouterr().out
    assert "train them with --protocol cia-ucf-hmdb" in printed
    assert "score one set for all with --set (avda evaluate)" in printed


def test_a_folder_output_named_as_a_file_is_refused_as_the_cli_refuses_it(tmp_path, media):
    """avda.train(out="x.zarr") made a run folder named as a cache, avda.extract(out="x.h5") a
    store named as an HDF5 file, where avda train -o / avda extract -o refuse the name: the
    library refuses it too, in its keywords, nothing made."""
    make_feature_cache(tmp_path / "c.zarr", per_class=4)
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "uid,video_id,domain,split,start_sec,stop_sec,video_path\n"
        "a,clip,S,train,1,3,v_ZNVhz7ctTq0.mp4\n"
    )
    new = tmp_path / "new"
    with pytest.raises(ConfigError) as caught:
        avda.train("source-only", tmp_path / "c.zarr", "source", "target", new / "x.zarr",
                   epochs=1, progress=False)  # fmt: skip
    assert str(caught.value) == (f"out {new / 'x.zarr'} is named as a Zarr cache; avda writes "
        f"a run folder there: give the folder's path: {new / 'x'}")  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        avda.extract(manifest, new / "x.h5", videos=media / "video", modalities=["audio"],
                     recipe="demo", progress=False)  # fmt: skip
    assert str(caught.value) == (f"out {new / 'x.h5'} is named as a .h5 file; avda writes a "
        f"Zarr cache (a folder) there: give the folder's path: {new / 'x.zarr'}")  # fmt: skip
    assert not new.exists()
