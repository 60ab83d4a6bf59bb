"""`avda weights list | fetch | verify` and `--weights NAME`, through the CLI (local server)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from avda import cli
from avda import weights as published
from avda.errors import ConfigError
from tests.weights_server import git_blob_sha1, serve, synthetic_entry

PAYLOAD = b"synthetic weights " * 50_000


def run(capsys, *args):
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def table(monkeypatch, tmp_path):
    """The registry replaced by two synthetic entries served from 127.0.0.1."""
    monkeypatch.setenv(published.WEIGHTS_DIR_ENV, str(tmp_path / "cache"))
    with serve() as server:
        server.files["good.pt"] = PAYLOAD
        entries = (
            synthetic_entry("good", server.url("good.pt"), git_blob_sha1=git_blob_sha1(PAYLOAD)),
            synthetic_entry("bad", server.url("good.pt"), git_blob_sha1="1" * 40),
            synthetic_entry("open", server.url("good.pt")),
        )
        monkeypatch.setattr(published, "PUBLISHED_FILES", entries)
        monkeypatch.setattr(published, "PUBLISHED", {e.name: e for e in entries})
        yield server


def test_list_has_one_line_per_published_file(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv(published.WEIGHTS_DIR_ENV, str(tmp_path))
    (tmp_path / "H.pth.tar").write_bytes(b"x")
    code, out, err = run(capsys, "weights", "list")
    lines = out.splitlines()
    assert code == 0 and len(lines) == len(published.PUBLISHED_FILES)
    assert lines[0].split()[0] == "piergiaj_rgb_imagenet"
    vgg = next(line for line in lines if "vggsound_H" in line)
    assert vgg.startswith("* ") and "no published checksum" in vgg
    raft = next(line for line in lines if "raft_small_C_T_V2" in line)
    assert "sha256 01064c6d..." in raft and "BSD-3-Clause" in raft
    assert "not downloadable" in next(line for line in lines if "deepmind_rgb_imagenet" in line)


def test_fetch_then_weights_name_resolves(capsys, table, tmp_path):
    code, out, err = run(capsys, "weights", "fetch", "good", "-q")
    assert code == 0, err
    path = tmp_path / "cache" / "good.pt"
    assert path.read_bytes() == PAYLOAD
    assert f"good: {path} (downloaded; git blob" in out and "matches" in out
    code, out, _ = run(capsys, "weights", "fetch", "good", "-q")
    assert code == 0 and "already there" in out
    assert published.resolve("good") == path


def test_fetch_into_dir_and_unchecked_says_so(capsys, table, tmp_path):
    code, out, _ = run(capsys, "weights", "fetch", "open", "--dir", str(tmp_path / "d"), "-q")
    assert code == 0 and (tmp_path / "d" / "open.pt").is_file()
    assert "not checked: no published checksum" in out


def test_fetch_checksum_mismatch_exits_1_and_leaves_nothing(capsys, table, tmp_path):
    code, out, err = run(capsys, "weights", "fetch", "bad", "-q")
    assert code == 1 and err.startswith("error: bad: the download from") and err.count("\n") == 1
    assert "refused and deleted" in err
    assert list((tmp_path / "cache").iterdir()) == []


def test_fetch_unknown_name_is_one_line_listing_names(capsys, table):
    code, _, err = run(capsys, "weights", "fetch", "good", "nope")
    assert code == 1 and err.count("\n") == 1
    assert "no published weights named 'nope'; known: good, bad, open" in err


def test_interrupted_fetch_resumes_on_rerun(capsys, table, tmp_path):
    table.cut["good.pt"] = 1000
    code, _, err = run(capsys, "weights", "fetch", "good", "-q")
    assert code == 1 and "run the same command again to resume" in err
    assert not (tmp_path / "cache" / "good.pt").exists()
    with pytest.raises(Exception, match="not fetched yet"):
        published.resolve("good")
    code, _, err = run(capsys, "weights", "fetch", "good", "-q")
    assert code == 0, err
    assert table.ranges[-1] == "bytes=1000-"
    assert (tmp_path / "cache" / "good.pt").read_bytes() == PAYLOAD


def test_weights_name_not_fetched_is_one_line(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv(published.WEIGHTS_DIR_ENV, str(tmp_path / "cache"))
    code, _, err = run(
        capsys,
        "extract",
        "-m",
        str(tmp_path / "m.csv"),
        "-o",
        str(tmp_path / "out.zarr"),
        "--weights",
        "piergiaj_rgb_imagenet",
    )
    assert code == 1 and err.count("\n") == 1
    assert "--weights piergiaj_rgb_imagenet: not fetched yet" in err
    assert "run `avda weights fetch piergiaj_rgb_imagenet` first" in err
    code, _, err = run(
        capsys,
        "flow",
        "-m",
        str(tmp_path / "m.csv"),
        "-o",
        str(tmp_path / "flow"),
        "--method",
        "raft",
        "--weights",
        "raft_larg",
    )
    assert code == 1 and "--weights raft_larg: no such file, and no published weights" in err


def test_verify_identifies_and_refuses(capsys, shared_data, tmp_path):
    import json

    keys = json.loads(
        (shared_data / "checkpoint_keys" / "vggsound_resnet18_avgpool_H.json").read_text()
    )
    state = {k: torch.zeros(()).expand(v["shape"]) for k, v in keys["keys"].items()}
    good = tmp_path / "H.pth.tar"
    torch.save({"model_state_dict": state, "epoch": 3}, good)
    other = tmp_path / "other.pt"
    torch.save({"x": torch.ones(1)}, other)
    code, out, _ = run(capsys, "weights", "verify", str(good))
    assert code == 0 and "the keys and shapes of vggsound_H" in out
    code, out, err = run(capsys, "weights", "verify", str(other))
    assert code == 1 and "not a published file avda knows" in err and err.count("\n") == 1
    # Several files: an unknown one in the middle does not hide the lines of the others.
    code, out, err = run(capsys, "weights", "verify", str(good), str(other), str(good))
    assert code == 1 and out.count("the keys and shapes of vggsound_H") == 2
    assert err.count("not a published file avda knows") == 1


def test_verify_names_a_file_no_loader_can_load(capsys, shared_data, tmp_path):
    """VGGSound's NetVLAD model has the audio ResNet's keys but its loader refuses it: verify
    says so (it said "it may still load"); a fine-tuned H (8 classes) may still load."""
    import json

    def state_of(manifest):
        keys = json.loads((shared_data / "checkpoint_keys" / manifest).read_text())
        return {k: torch.zeros(()).expand(v["shape"]) for k, v in keys["keys"].items()}

    vlad = tmp_path / "I.pth.tar"
    torch.save({"model_state_dict": state_of("vggsound_resnet18_vlad_I.json")}, vlad)
    code, out, err = run(capsys, "weights", "verify", str(vlad))
    assert code == 1 and err.count("\n") == 1
    assert "cannot load it" in err and "NetVLAD" in err and "may still load" not in err
    tuned = state_of("vggsound_resnet18_avgpool_H.json")
    tuned["audnet.fc.weight"] = torch.zeros(8, 512)
    tuned["audnet.fc.bias"] = torch.zeros(8)
    path = tmp_path / "tuned.pth.tar"
    torch.save({"model_state_dict": tuned}, path)
    code, out, err = run(capsys, "weights", "verify", str(path))
    assert code == 1 and "may still load" in err
    # a renamed key (not the classifier): no class count makes it load (it said "may still
    # load"; the loader then refused the key)
    renamed = state_of("i3d_piergiaj_rgb.json")
    renamed["Mixed_3b.b0.conv3d.weightX"] = renamed.pop("Mixed_3b.b0.conv3d.weight")
    torch.save(renamed, tmp_path / "renamed.pt")
    code, out, err = run(capsys, "weights", "verify", str(tmp_path / "renamed.pt"))
    assert code == 1 and "may still load" not in err
    assert "cannot load it: i3d: key 'Mixed_3b.b0.conv3d.weight' is missing from the file" in err
    tuned = state_of("i3d_piergiaj_rgb.json")  # 10 classes: the classifier only differs
    tuned["logits.conv3d.weight"] = torch.zeros(10, 1024, 1, 1, 1)
    tuned["logits.conv3d.bias"] = torch.zeros(10)
    torch.save(tuned, tmp_path / "ten.pt")
    code, out, err = run(capsys, "weights", "verify", str(tmp_path / "ten.pt"))
    assert code == 1 and "may still load" in err


def test_fetch_from_a_mirror_checks_the_published_checksum(capsys, table, monkeypatch, tmp_path):
    """A lab's mirror serves the files under their avda names: ``--mirror`` (or
    ``$AVDA_WEIGHTS_MIRROR``) downloads from it instead of the publisher's URL, and the
    published checksum still decides."""
    table.files["mirror/good.pt"] = PAYLOAD
    table.files["mirror/bad.pt"] = PAYLOAD
    del table.files["good.pt"]  # the publisher's URL is gone
    mirror = table.url("mirror")
    code, out, err = run(capsys, "weights", "fetch", "good", "--mirror", mirror, "--quiet")
    assert code == 0, err
    assert (tmp_path / "cache" / "good.pt").read_bytes() == PAYLOAD
    monkeypatch.setenv(published.MIRROR_ENV, mirror + "/")
    code, out, err = run(capsys, "weights", "fetch", "bad", "--quiet")
    assert code == 1 and f"the download from {mirror}/bad.pt has" in err
    # the mirror, not the publisher, served another file (it said "changed upstream")
    assert "the mirror serves another file under this name" in err and "upstream" not in err
    assert not (tmp_path / "cache" / "bad.pt").exists()
    # a URL given where a file or a name goes: said so (it read "http:/127..." as a path)
    code, out, err = run(capsys, "weights", "verify", f"{mirror}/good.pt")
    assert code == 1 and f"{mirror}/good.pt: a URL; avda weights verify takes files." in err
    with pytest.raises(ConfigError, match=re.escape(f"--weights {mirror}/good.pt: a URL")):
        published.resolve(Path(f"{mirror}/good.pt"))  # what the CLI's Path type hands over
    code, out, err = run(capsys, "weights", "fetch", "good", "--mirror", "/srv/weights")
    assert code == 1 and "is not an http(s) URL" in err


def test_mmaction2_file_verified_by_layout_and_fetch_checks_its_prefix(
    capsys, monkeypatch, tmp_path
):
    """mmaction2's SlowFast R50, in its published wrapping (``{'meta', 'state_dict'}``) with the
    repo's manifest: verify names it by its layout; fetched from a local mirror, bytes whose
    sha256 does not start with the file name's 8 digits are refused in one line."""
    import json

    entry = published.get("mmaction2_slowfast_r50_8x8_kinetics400")
    manifest = Path(__file__).resolve().parent / "extract" / "data" / entry.manifest
    keys = json.loads(manifest.read_text())["keys"]
    state = {k: torch.zeros(()).expand(v["shape"]) for k, v in keys.items()}
    path = tmp_path / entry.file_name
    torch.save({"meta": {"epoch": 256}, "state_dict": state}, path)
    code, out, err = run(capsys, "weights", "verify", str(path))
    assert code == 0, err
    assert f"the keys and shapes of {entry.name} ({len(keys)} tensors)" in out
    assert "bytes differ from the published file" in out and "starts with 73547d2b" in out
    monkeypatch.setenv(published.WEIGHTS_DIR_ENV, str(tmp_path / "cache"))
    with serve() as server:
        server.files[f"lab/{entry.file_name}"] = path.read_bytes()
        code, out, err = run(
            capsys, "weights", "fetch", entry.name, "--mirror", server.url("lab"), "-q"
        )
    assert code == 1 and err.count("\n") == 1 and "refused and deleted" in err
    assert "the published file's starts with 73547d2b" in err
    assert list((tmp_path / "cache").iterdir()) == []
