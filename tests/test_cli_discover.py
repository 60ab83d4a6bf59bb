"""Discoverability and config files: ``avda list``, ``train --show-config``, ``--set`` lists,
``train --config`` / ``extract --config``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from avda import cli, runs
from avda.config import Config
from avda.data_manifests.settings import NAMED_SETTINGS
from avda.errors import ConfigError
from avda.extract import backbones, sampling
from avda.train import heads
from tests.conftest import make_feature_cache


def run(capsys, *args):
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "kind, names",
    [
        ("heads", heads.names()),
        ("backbones", backbones.names()),
        ("recipes", sampling.names()),
        ("settings", list(NAMED_SETTINGS)),
    ],
)
def test_list_prints_every_registered_name_with_a_description(capsys, kind, names):
    code, out, err = run(capsys, "list", kind)
    assert code == 0 and err == ""
    lines = out.strip().splitlines()
    assert [line.split()[0] for line in lines] == names
    assert all(len(line.split(None, 1)) == 2 for line in lines)  # a description on each


def test_list_heads_describes_each_head_by_its_paper(capsys):
    _, out, _ = run(capsys, "list", "heads")
    rows = dict(line.split(None, 1) for line in out.strip().splitlines())
    assert rows["dann"].startswith("DANN: domain-adversarial training")
    assert "Ganin et al., JMLR 2016" in rows["dann"]
    assert rows["source-only"].startswith("Source-only:")


def test_list_backbones_reads_as_text_not_rest_markup(capsys):
    """The lines come from docstrings: their ``code`` and :role:`x` markup is left out."""
    _, out, _ = run(capsys, "list", "backbones")
    rows = dict(line.split(None, 1) for line in out.strip().splitlines())
    assert rows["audio_resnet18"].startswith('VGGSound audio ResNet-18 for modality="audio"')
    assert "``" not in out and ":func:" not in out


def test_list_protocols_names_the_evaluation_protocols(capsys):
    code, out, _ = run(capsys, "list", "protocols")
    names = [line.split()[0] for line in out.strip().splitlines()]
    assert code == 0 and {"mmsada-epic55", "ta3n-epic100", "unified"} <= set(names)


def test_list_unknown_kind_is_one_line(capsys):
    code, out, err = run(capsys, "list", "head")
    assert code == 1 and out == ""
    assert err.strip().splitlines() == [
        "error: unknown list 'head'; did you mean 'heads'? valid: backbones, heads, protocols, "
        "recipes, settings"
    ]


@pytest.mark.parametrize("head", heads.names())
def test_show_config_lists_every_field_with_its_default_and_meaning(capsys, head):
    code, out, err = run(capsys, "train", "--head", head, "--show-config")
    assert code == 0 and err == ""
    document = yaml.safe_load(out)  # the output is a valid --config file
    cls = heads.config_class(head)
    assert document["head"] == head
    assert list(document["head_config"]) == cls.field_names()
    assert document["head_config"] == cls.from_dict({}).to_dict()
    for line in out.splitlines()[4:]:
        assert " # " in line and line.split(" # ", 1)[1].strip(), line  # type and meaning
    meanings = cls.field_help()
    assert all(meanings.values()), [k for k, v in meanings.items() if not v]


def test_show_config_applies_set_and_parses_a_comma_list(capsys):
    code, out, _ = run(
        capsys, "train", "--head", "dann", "--show-config", "--set", "modalities=rgb,audio",
        "--set", "lr=1e-3", "--set", "lr_steps=3,6", "--epochs", "10",
    )  # fmt: skip
    config = yaml.safe_load(out)["head_config"]
    assert code == 0
    assert config["modalities"] == ["rgb", "audio"]
    assert config["lr"] == 0.001 and config["lr_steps"] == [3, 6] and config["epochs"] == 10
    assert "  lr: 0.001" in out and "# float; learning rate" in out


def test_set_parsing_is_one_implementation():
    cls = heads.config_class("dann")
    parsed = cls.parse_assignments(["modalities=rgb,audio", "tasks=[verb]", "fusion=mid"])
    assert parsed == {"modalities": ["rgb", "audio"], "tasks": ["verb"], "fusion": "mid"}
    assert cls.parse_assignments(["modalities="]) == {"modalities": []}
    config = cls.from_dict({}).replace(
        **cls.parse_assignments(["modalities=rgb, audio", "lr=1e-2"])
    )
    assert config.modalities == ("rgb", "audio") and config.lr == 0.01
    # a config file's (or sweep spec's) comma string is a list too
    assert cls.from_dict({"modalities": "rgb, audio", "lr_steps": "10,20"}).lr_steps == (10, 20)
    assert cls.from_dict({"modalities": "rgb, audio"}).modalities == ("rgb", "audio")
    with pytest.raises(ConfigError, match="did you mean 'hidden_dim'"):
        cls.parse_assignments(["hiden_dim=3"])
    with pytest.raises(ConfigError, match="--set expects key=value"):
        cls.parse_assignments(["lr"])


def test_field_help_reads_metadata_then_comments():
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Example(Config):
        # meaning above
        a: int = 1
        b: int = 2  # meaning at the end
        c: int = dataclasses.field(default=3, metadata={"help": "from metadata"})
        d: int = 4

    assert Example.field_help() == {
        "a": "meaning above",
        "b": "meaning at the end",
        "c": "from metadata",
        "d": "",
    }

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Sub(Example):
        b: int = 5  # the paper's value
        d: int = 6

    help_ = Sub.field_help()
    assert help_["b"] == "meaning at the end; the paper's value" and help_["a"] == "meaning above"

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Sentence(Config):
        e: int = 1  # a whole sentence.

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class SubSentence(Sentence):
        e: int = 2  # a note

    assert SubSentence.field_help()["e"] == "a whole sentence; a note"  # not "sentence.; a"


def test_set_with_an_unknown_field_is_one_line(capsys):
    code, _, err = run(capsys, "train", "--head", "dann", "--show-config", "--set", "hiden_dim=3")
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "unknown DannConfig field 'hiden_dim'; did you mean 'hidden_dim'?" in err


def test_train_without_cache_is_a_usage_error(capsys, tmp_path):
    code, _, err = run(capsys, "train", "--head", "dann", "-o", tmp_path / "r")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "Missing option '--cache', '--source', '--target'" in err


# ------------------------------------------------------------------------------ --config
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("config")
    make_feature_cache(root / "c.zarr", per_class=6)
    code = cli.main(
        ["train", "--head", "source-only", "--cache", str(root / "c.zarr"), "--source",
         "source", "--target", "target", "-o", str(root / "first"), "--epochs", "1",
         "--set", "hidden_dim=16", "--seed", "3", "--quiet"]
    )  # fmt: skip
    assert code == 0
    return root


def test_train_config_round_trip(capsys, trained):
    code, out, err = run(
        capsys, "train", "--config", trained / "first" / runs.CONFIG, "-o", trained / "again",
        "--quiet",
    )  # fmt: skip
    assert code == 0, err
    assert runs.read_config(trained / "again") == runs.read_config(trained / "first")
    assert runs.read_config(trained / "again")["seed"] == 3


def test_train_config_is_overridden_by_options_and_set(capsys, trained):
    code, _, err = run(
        capsys, "train", "--config", trained / "first" / runs.CONFIG, "-o", trained / "other",
        "--seed", "5", "--set", "hidden_dim=8", "--quiet",
    )  # fmt: skip
    assert code == 0, err
    config = runs.read_config(trained / "other")
    assert config["seed"] == 5 and config["head_config"]["hidden_dim"] == 8
    assert config["head_config"]["epochs"] == 1  # from the file


def test_train_config_with_epochs_rescales_the_stages(capsys, trained):
    """A recorded mm-sada config (stages set) with --epochs N: the stages scale again."""
    first = runs.read_config(trained / "first")
    spec = {**first, "head": "mm-sada", "head_config": {"epochs": 4, "pretrain_epochs": 2,
            "lr_steps": [2], "schedule": "epochs"}}  # fmt: skip
    path = trained / "mm.yaml"
    path.write_text(yaml.safe_dump(spec))
    code, out, _ = run(capsys, "train", "--config", path, "--epochs", "231", "--show-config")
    config = yaml.safe_load(out)["head_config"]
    default = heads.config_class("mm-sada").from_dict({})
    assert code == 0 and config["epochs"] == 231
    assert config["pretrain_epochs"] == default.pretrain_epochs  # not the file's 2


def test_train_config_unknown_key_is_one_line(capsys, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("head: dann\ncahce: c.zarr\n")
    code, out, err = run(capsys, "train", "--config", path, "-o", tmp_path / "r")
    assert code == 1 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert f"--config {path}: unknown key 'cahce'; did you mean 'cache'?" in lines[0]
    assert "valid: " in lines[0] and "head_config" in lines[0]


def test_train_config_unknown_head_field_is_one_line(capsys, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("head: dann\nhead_config: {hiden_dim: 3}\n")
    code, _, err = run(capsys, "train", "--config", path, "--show-config")
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "unknown dann field 'hiden_dim'; did you mean 'hidden_dim'?" in err


def test_train_config_missing_file_and_not_a_mapping(capsys, tmp_path):
    code, _, err = run(capsys, "train", "--config", tmp_path / "none.yaml", "--show-config")
    assert code == 1 and "no such file" in err
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    code, _, err = run(capsys, "train", "--config", path, "--show-config")
    assert code == 1 and "expected a mapping of option: value" in err


def test_extract_config_unknown_key_is_one_line(capsys, tmp_path):
    path = tmp_path / "extract.yaml"
    path.write_text("manifest: m.csv\nout: c.zarr\nbach_size: 4\n")
    code, _, err = run(capsys, "extract", "--config", path)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "unknown key 'bach_size'; did you mean 'batch_size'?" in err


def test_extract_config_values_and_overrides(monkeypatch, capsys, tmp_path):
    """The file's values reach the library, as the options' types; an option given wins."""
    from avda.extract import runner

    seen = {}

    class Done(Exception):
        pass

    def fake_extract(frame, options, **keywords):  # one ExtractOptions reaches the runner
        seen.update(keywords, options=options, manifest=frame)
        raise Done

    monkeypatch.setattr(runner, "extract", fake_extract)
    monkeypatch.setattr("avda.data_manifests.schema.read", lambda path: path)
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "extract.yaml"
    path.write_text(
        "manifest: m.csv\nout: c.zarr\nmodalities: [rgb, audio]\nbatch-size: 4\n"
        "recipe: demo\nworkers: 0\nvideos: /data/videos\n"
    )
    with pytest.raises(Done):
        cli.app(["extract", "--config", str(path), "--workers", "1", "-o", str(tmp_path / "x")],
                standalone_mode=False)  # fmt: skip
    options = seen["options"]
    assert [m.modality for m in options.modalities] == ["rgb", "audio"]
    assert options.batch_size == 4 and options.recipe.name == "demo"
    assert options.workers == 1 and seen["out"] == tmp_path / "x"
    assert seen["manifest"] == tmp_path / "conf" / "m.csv"  # relative to the file's folder
    assert options.inputs.videos == Path("/data/videos")


def test_extract_config_bad_value_names_the_file_and_option(capsys, tmp_path):
    path = tmp_path / "extract.yaml"
    path.write_text("manifest: m.csv\nout: c.zarr\nbatch_size: many\n")
    code, _, err = run(capsys, "extract", "--config", path)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert f"--config {path}: batch_size: " in err and "integer" in err


def test_train_config_written_by_hand_with_a_relative_cache(capsys, trained):
    (trained / "conf").mkdir(exist_ok=True)
    path = trained / "conf" / "train.yaml"
    path.write_text(
        "head: source-only\ncache: ../c.zarr\nsource: source\ntarget: [target]\n"
        "head_config: {epochs: 1, hidden_dim: 8, modalities: rgb}\n"
    )
    code, _, err = run(capsys, "train", "--config", path, "-o", trained / "by-hand", "--quiet")
    assert code == 0, err
    config = runs.read_config(trained / "by-hand")
    assert config["cache"] == str((trained / "c.zarr").resolve())
    assert config["source"] == ["source"] and config["target"] == ["target"]
    assert config["head_config"]["modalities"] == ["rgb"] and config["seed"] == 0


def test_every_help_text_is_printed_whole():
    """Typer renders help with Rich markup, where ``[all]`` is a (dropped) style tag: ``--domain``
    printed "the domain of the whole-video segments ." for "... segments [all]."."""
    import typer
    from rich.text import Text

    def texts(command, path):
        yield path, command.help or ""
        for param in command.params:
            yield f"{path} --{param.name}", getattr(param, "help", None) or ""
        for name, sub in getattr(command, "commands", {}).items():
            yield from texts(sub, f"{path} {name}")

    checked = 0
    for where, text in texts(typer.main.get_command(cli.app), "avda"):
        shown = Text.from_markup(text).plain
        assert shown == text.replace("\\[", "["), f"{where}: {text!r} is shown as {shown!r}"
        checked += 1
    assert checked > 100


def test_show_config_under_a_protocol_marks_its_values_and_the_heads_defaults(capsys):
    """Under --protocol ta3n-ucf-hmdb, --show-config printed target_batch_size: 219 beside its
    meaning '128 * 26115 / 16115' (EPIC-100's 207) and lr_steps: [] beside 'the authors divide
    lr by 10 at epochs 10 and 20', nothing saying the protocol set them. A protocol's value
    says so and names the head's default; the user's --set and untouched fields do not."""
    code, out, _ = run(
        capsys, "train", "--protocol", "ta3n-ucf-hmdb", "--head", "ta3n", "--source", "hmdb",
        "--target", "ucf", "--show-config", "--set", "lr=0.01",
    )  # fmt: skip
    assert code == 0
    line = {ln.split(":")[0].strip(): ln for ln in out.splitlines() if ln.startswith("  ")}
    assert "set by protocol ta3n-ucf-hmdb (the head's default 207)" in line["target_batch_size"]
    assert "set by protocol ta3n-ucf-hmdb (the head's default [9, 19])" in line["lr_steps"]
    assert "protocol" not in line["lr"] and "protocol" not in line["batch_size"]
    code, out, _ = run(capsys, "train", "--head", "ta3n", "--show-config")
    assert code == 0 and "set by protocol" not in out
