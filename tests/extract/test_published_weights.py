"""The published-weights table, fetching over HTTP (local server), and identifying a file.

No network: every download comes from a server on 127.0.0.1 serving synthetic bytes; the
table's own checksums are only checked for form (and the fingerprints against the manifests).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import pytest
import torch
from tests.weights_server import git_blob_sha1, serve, synthetic_entry

from avda import weights as published
from avda.errors import AvdaError, CheckpointError, ConfigError, MissingDependencyError
from avda.extract.backbones.weights import find_state_dict, read_checkpoint

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB, several read chunks
# Manifests kept in the repo (mmaction2's, generated from mmaction2 0.24.1); the others are in
# the shared test data's checkpoint_keys folder.
REPO_MANIFESTS = Path(__file__).resolve().parent / "data"
MMACTION2 = {
    101: "mmaction2_slowfast_r101_8x8_kinetics400",
    50: "mmaction2_slowfast_r50_8x8_kinetics400",
}


@pytest.fixture
def server():
    with serve() as state:
        state.files["w.pt"] = PAYLOAD
        yield state


def manifest_path(shared_data: Path, entry: published.PublishedFile) -> Path:
    ours = REPO_MANIFESTS / entry.manifest
    return ours if ours.is_file() else shared_data / "checkpoint_keys" / entry.manifest


def manifest_shapes(shared_data: Path, entry: published.PublishedFile) -> dict[str, tuple]:
    keys = json.loads(manifest_path(shared_data, entry).read_text())["keys"]
    shapes = {k: tuple(v["shape"]) for k, v in keys.items()}
    for key, shape in entry.manifest_changes.items():
        assert key in shapes, (entry.name, key)
        shapes[key] = shape
    return shapes


def tiny_state(shapes: dict[str, tuple]) -> dict[str, torch.Tensor]:
    """Tensors of the right shapes that take one element of storage each (expanded zeros)."""
    return {
        k: torch.zeros(1).expand(*shape) if shape else torch.zeros(())
        for k, shape in shapes.items()
    }


# ------------------------------------------------------------------------------ the table
def test_names_and_file_names_are_unique():
    names = [e.name for e in published.PUBLISHED_FILES]
    files = [e.file_name for e in published.PUBLISHED_FILES]
    assert len(set(names)) == len(names) and len(set(files)) == len(files)
    assert set(published.PUBLISHED) == set(names)


def test_every_backbone_loader_and_manifest_is_covered(shared_data):
    loaders = {e.loader for e in published.PUBLISHED_FILES}
    assert loaders == {
        "i3d",
        "tbn",
        "slowfast",
        "slowfast-r101-mmaction",
        "slowfast-r50-mmaction",
        "audio_resnet18",
        "raft",
    }
    for entry in published.PUBLISHED_FILES:
        assert manifest_path(shared_data, entry).is_file(), entry.name


def test_checksums_have_their_form_and_source():
    for entry in published.PUBLISHED_FILES:
        assert entry.sha256 is None  # no publisher gives a full sha256 for these files
        if entry.git_blob_sha1:
            assert re.fullmatch(r"[0-9a-f]{40}", entry.git_blob_sha1)
            # pinned to the commit whose tree gave the blob id
            assert re.search(r"raw\.githubusercontent\.com/.+/[0-9a-f]{40}/", entry.url)
            assert "git tree" in entry.checksum_source
        if entry.sha256_prefix:
            # torch.hub's and mmaction2's convention: the prefix is the file name's suffix
            assert re.fullmatch(r"[0-9a-f]{8}", entry.sha256_prefix)
            assert entry.file_name.rsplit("-", 1)[1].split(".")[0] == entry.sha256_prefix
            assert entry.url.endswith(entry.file_name)
        if not entry.checked:
            assert "none" in entry.checksum_source
        if entry.url is not None:
            assert entry.url.startswith("https://")


def test_layout_fingerprints_match_the_manifests(shared_data):
    for entry in published.PUBLISHED_FILES:
        if entry.layout_fingerprint is None:
            continue
        shapes = manifest_shapes(shared_data, entry)
        assert published.layout_fingerprint(shapes) == entry.layout_fingerprint, entry.name


def test_fingerprint_ignores_wrapping_details_but_not_shapes():
    shapes = {"a.weight": (4, 3), "a.bn.running_mean": (4,), "a.bn.num_batches_tracked": ()}
    base = published.layout_fingerprint(shapes)
    prefixed = {f"module.{k}": v for k, v in shapes.items() if "num_batches" not in k}
    squeezed = {"a.weight": (4, 3), "a.bn.running_mean": (1, 4)}
    assert published.layout_fingerprint(prefixed) == base
    assert published.layout_fingerprint(squeezed) == base
    assert published.layout_fingerprint({**shapes, "a.weight": (5, 3)}) != base


# ------------------------------------------------------------------------------ resolve
def test_resolve_name_path_and_unknown(tmp_path, monkeypatch):
    monkeypatch.setenv(published.WEIGHTS_DIR_ENV, str(tmp_path / "w"))
    with pytest.raises(ConfigError, match="run `avda weights fetch piergiaj_rgb_imagenet`"):
        published.resolve("piergiaj_rgb_imagenet")
    fetched = tmp_path / "w" / "rgb_imagenet.pt"
    fetched.parent.mkdir()
    fetched.write_bytes(b"x")  # not the published bytes (its git blob id is published)
    with pytest.raises(
        ConfigError,
        match=r"rgb_imagenet.pt is not the published file \(git "
        r"blob id .*delete it and run `avda weights fetch piergiaj_rgb_imagenet`",
    ):
        published.resolve("piergiaj_rgb_imagenet")  # fmt: skip
    entry = published.PUBLISHED["piergiaj_rgb_imagenet"]
    blob = published.file_digests(fetched)["git_blob_sha1"]
    monkeypatch.setitem(
        published.PUBLISHED, entry.name, dataclasses.replace(entry, git_blob_sha1=blob)
    )
    assert published.resolve("piergiaj_rgb_imagenet") == fetched  # the published bytes
    record = json.loads((tmp_path / "w" / "rgb_imagenet.pt.digests.json").read_text())
    assert record["git_blob_sha1"] == blob  # read once: kept by size and mtime
    fetched.write_bytes(b"y")  # replaced later: read again
    with pytest.raises(ConfigError, match="is not the published file"):
        published.resolve("piergiaj_rgb_imagenet")
    local = tmp_path / "mine.pt"
    local.write_bytes(b"x")
    assert published.resolve(local) == local
    assert published.resolve(tmp_path / "absent.pt") == tmp_path / "absent.pt"  # loader says
    with pytest.raises(ConfigError, match="no published weights of that name; known: piergiaj"):
        published.resolve("piergiaj_rgb")
    with pytest.raises(
        ConfigError, match="cannot download.*save it as .*deepmind_rgb_imagenet.npz"
    ):
        published.resolve("deepmind_rgb_imagenet")
    converted = tmp_path / "w" / "deepmind_rgb_imagenet.npz"
    converted.write_bytes(b"x")
    assert published.resolve("deepmind_rgb_imagenet") == converted


def test_weights_dir_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(published.WEIGHTS_DIR_ENV, raising=False)
    monkeypatch.setenv(published.HOME_ENV, str(tmp_path / "home"))
    assert published.weights_dir() == tmp_path / "home" / "weights"
    monkeypatch.delenv(published.HOME_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert published.weights_dir() == tmp_path / "xdg" / "avda" / "weights"


def test_unknown_name_lists_the_names():
    with pytest.raises(AvdaError) as info:
        published.get("i3d")
    message = str(info.value)
    assert "'i3d'" in message and "vggsound_H" in message and "\n" not in message


# ------------------------------------------------------------------------------ fetch
def test_fetch_checked_by_git_blob(server, tmp_path):
    entry = synthetic_entry("w", server.url("w.pt"), git_blob_sha1=git_blob_sha1(PAYLOAD))
    result = published.fetch(entry, tmp_path, progress=False)
    assert result.path == tmp_path / "w.pt" and result.downloaded and result.checked
    assert result.path.read_bytes() == PAYLOAD
    assert list(tmp_path.iterdir()) == [result.path]  # no .part left
    again = published.fetch(entry, tmp_path, progress=False)
    assert not again.downloaded and len(server.ranges) == 1


def test_fetch_checked_by_sha256_prefix(server, tmp_path):
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    entry = synthetic_entry("w", server.url("w.pt"), sha256_prefix=digest[:8])
    assert published.fetch(entry, tmp_path, progress=False).checked
    bad = synthetic_entry("v", server.url("w.pt"), sha256_prefix="00000000")
    with pytest.raises(published.DownloadError, match="starts with 00000000"):
        published.fetch(bad, tmp_path, progress=False)


def test_checksum_mismatch_is_refused_and_nothing_left(server, tmp_path):
    entry = synthetic_entry("w", server.url("w.pt"), git_blob_sha1="0" * 40)
    with pytest.raises(published.DownloadError) as info:
        published.fetch(entry, tmp_path, progress=False)
    assert "refused and deleted" in str(info.value) and "0" * 40 in str(info.value)
    assert list(tmp_path.iterdir()) == []  # neither w.pt nor w.pt.part


def test_an_existing_file_that_does_not_match_is_reported(server, tmp_path):
    entry = synthetic_entry("w", server.url("w.pt"), git_blob_sha1=git_blob_sha1(PAYLOAD))
    (tmp_path / "w.pt").write_bytes(b"tampered")
    with pytest.raises(published.DownloadError, match="does not match the published w"):
        published.fetch(entry, tmp_path, progress=False)


def test_interrupted_download_never_looks_complete_and_resumes(server, tmp_path):
    entry = synthetic_entry("w", server.url("w.pt"), git_blob_sha1=git_blob_sha1(PAYLOAD))
    server.cut["w.pt"] = 300_000
    with pytest.raises(published.DownloadError, match="run the same command again to resume"):
        published.fetch(entry, tmp_path, progress=False)
    part = tmp_path / "w.pt.part"
    assert not (tmp_path / "w.pt").exists()
    assert part.read_bytes() == PAYLOAD[:300_000]
    result = published.fetch(entry, tmp_path, progress=False)
    assert server.ranges[-1] == "bytes=300000-"
    assert result.path.read_bytes() == PAYLOAD and not part.exists()


def test_resume_against_a_server_without_range_restarts(server, tmp_path):
    entry = synthetic_entry("w", server.url("w.pt"))  # no checksum: size decides
    (tmp_path / "w.pt.part").write_bytes(b"garbage from an older attempt")
    server.ignore_range = True
    result = published.fetch(entry, tmp_path, progress=False)
    assert not result.checked and result.path.read_bytes() == PAYLOAD


def test_a_wrong_partial_file_is_caught_by_the_checksum(server, tmp_path):
    entry = synthetic_entry("w", server.url("w.pt"), git_blob_sha1=git_blob_sha1(PAYLOAD))
    (tmp_path / "w.pt.part").write_bytes(b"\xff" * 1000)  # resumed onto wrong bytes
    with pytest.raises(published.DownloadError, match="refused and deleted"):
        published.fetch(entry, tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_http_error_and_unreachable_are_one_line(server, tmp_path):
    missing = synthetic_entry("m", server.url("missing.pt"))
    with pytest.raises(published.DownloadError, match="answered HTTP 404"):
        published.fetch(missing, tmp_path, progress=False)
    closed = synthetic_entry("c", "http://127.0.0.1:9/c.pt")
    with pytest.raises(published.DownloadError, match="cannot reach"):
        published.fetch(closed, tmp_path, progress=False, timeout=5)
    assert list(tmp_path.iterdir()) == []


def test_not_downloadable_entry(tmp_path):
    with pytest.raises(ConfigError, match="cannot download"):
        published.fetch(published.get("deepmind_rgb_scratch"), tmp_path, progress=False)


# ------------------------------------------------------------------------------ identify
def test_identify_by_checksum(tmp_path, monkeypatch):
    path = tmp_path / "mine.pt"
    torch.save({"a": torch.ones(3)}, path)
    entry = synthetic_entry("mine", None, git_blob_sha1=git_blob_sha1(path.read_bytes()))
    monkeypatch.setattr(published, "PUBLISHED_FILES", (*published.PUBLISHED_FILES, entry))
    found = published.identify(path)
    assert found.how == "checksum" and found.entries == (entry,)
    assert "the published mine (git blob" in found.message


def test_identify_tbn_by_layout(shared_data, tmp_path):
    entry = published.get("tbn_epic100")
    state = {f"module.{k}": v for k, v in tiny_state(manifest_shapes(shared_data, entry)).items()}
    path = tmp_path / "TBN.pth"
    torch.save({"epoch": 80, "arch": "BNInception", "state_dict": state, "best_prec1": 1.0}, path)
    assert path.stat().st_size < 2_000_000
    found = published.identify(path)
    assert found.how == "layout" and found.entries == (entry,)
    assert "no checksum" in found.message


def test_identify_checked_layout_says_bytes_differ(shared_data, tmp_path):
    entry = published.get("raft_small_C_T_V2")
    path = tmp_path / "raft.pth"
    torch.save(tiny_state(manifest_shapes(shared_data, entry)), path)
    found = published.identify(path)
    assert found.entries == (entry,) and "bytes differ from the published file" in found.message


def test_identify_ambiguous_layout_names_both(shared_data, tmp_path):
    entry = published.get("deepmind_flow_imagenet")
    path = tmp_path / "flow.npz"
    import numpy as np

    np.savez(
        path, **{k: np.zeros(s, np.float32) for k, s in manifest_shapes(shared_data, entry).items()}
    )
    found = published.identify(path)
    assert {e.name for e in found.entries} == {"deepmind_flow_imagenet", "deepmind_flow_scratch"}


def test_identify_other_class_count_names_the_layout(shared_data, tmp_path):
    entry = published.get("piergiaj_rgb_imagenet")
    shapes = manifest_shapes(shared_data, entry)
    shapes["logits.conv3d.weight"] = (10, 1024, 1, 1, 1)
    shapes["logits.conv3d.bias"] = (10,)
    path = tmp_path / "finetuned.pt"
    torch.save(tiny_state(shapes), path)
    with pytest.raises(CheckpointError, match="i3d piergiaj layout but the shapes match none"):
        published.identify(path)


def test_identify_unknown_file(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"x": torch.ones(2)}, path)
    with pytest.raises(CheckpointError, match="not a published file avda knows"):
        published.identify(path)


# ------------------------------------------------------------------------------ safetensors
def test_safetensors_loads_or_says_what_is_missing(tmp_path):
    path = tmp_path / "w.safetensors"
    state = {"conv.weight": torch.arange(6.0).reshape(2, 3), "bn.running_var": torch.ones(2)}
    try:
        from safetensors.torch import save_file
    except ImportError:
        path.write_bytes(b"\0" * 16)
        with pytest.raises(MissingDependencyError, match="pip install safetensors"):
            read_checkpoint(path)
        return
    save_file(state, str(path))
    loaded = find_state_dict(read_checkpoint(path), source=path)
    assert set(loaded) == set(state) and torch.equal(loaded["conv.weight"], state["conv.weight"])
    from avda.extract import backbones

    model = backbones.create("audio_resnet18", modality="audio")
    converted = tmp_path / "audio.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(converted))
    again = backbones.create("audio_resnet18", modality="audio", weights=converted)
    assert torch.equal(again.state_dict()["conv1.weight"], model.state_dict()["conv1.weight"])
    path.write_bytes(b"not safetensors at all")
    with pytest.raises(CheckpointError, match="not a readable .safetensors file"):
        read_checkpoint(path)


def test_docs_list_every_published_file():
    text = (Path(__file__).resolve().parents[2] / "docs" / "weights.md").read_text()
    for entry in published.PUBLISHED_FILES:
        assert f"| `{entry.name}` |" in text, entry.name
        assert entry.licence in text, entry.name
        if entry.url:
            assert entry.url in text, entry.name
        if entry.git_blob_sha1:
            assert f"git blob `{entry.git_blob_sha1[:12]}…`" in text, entry.name


def test_a_web_page_instead_of_weights_is_refused(server, tmp_path):
    server.files["page"] = b"\n<!DOCTYPE html><html><body>This link has expired</body></html>"
    entry = synthetic_entry("p", server.url("page"))  # unchecked, like the Dropbox files
    with pytest.raises(published.DownloadError, match="sent a web page, not a weights file"):
        published.fetch(entry, tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_registry_agrees_with_the_backbones_published_tables():
    from avda.extract.backbones import audio_resnet, i3d, slowfast, slowfast_mmaction, tbn

    mmaction = [b for files in slowfast_mmaction.PUBLISHED.values() for b in files]
    backbone_files = [
        *i3d.PUBLISHED,
        *tbn.PUBLISHED,
        *slowfast.PUBLISHED,
        *audio_resnet.PUBLISHED,
        *mmaction,
    ]
    for entry in published.PUBLISHED_FILES:
        if entry.loader == "raft":
            continue
        same = [
            b
            for b in backbone_files
            # one TBN file is listed per stream there: tbn_epic55_rgb, _flow, _audio
            if b.name in (entry.name, *(f"{entry.name}_{m}" for m in ("rgb", "flow", "audio")))
        ]
        assert same, entry.name
        for b in same:
            assert (b.manifest, b.layout) == (entry.manifest, entry.layout), entry.name
    for b in mmaction:  # every mmaction2 file the backbone knows is in the table, by its name
        entry = published.get(b.name)
        assert (entry.file_name, entry.licence) == (b.file_name, b.licence)
        assert b.source.startswith(f"{entry.url} ({entry.page})")


# ------------------------------------------------------------------------------ mmaction2
def mmaction2_published_file(shared_data: Path, entry: published.PublishedFile, path: Path) -> Path:
    """A file in mmaction2's published format (mmcv save_checkpoint + publish_model.py:
    ``{'meta', 'state_dict'}``, optimizer removed) with the manifest's keys, shapes and dtypes,
    each tensor one element of storage."""
    keys = json.loads(manifest_path(shared_data, entry).read_text())["keys"]
    state = {
        k: torch.zeros(1, dtype=getattr(torch, v["dtype"])).expand(*v["shape"])
        if v["shape"]
        else torch.zeros((), dtype=getattr(torch, v["dtype"]))
        for k, v in keys.items()
    }
    meta = {"mmcv_version": "1.2.7", "epoch": 256, "iter": 120000}
    torch.save({"meta": meta, "state_dict": state}, path)
    assert path.stat().st_size < 1_000_000
    return path


@pytest.mark.parametrize("depth", sorted(MMACTION2))
def test_mmaction2_entries_are_the_model_zoo_files(shared_data, depth):
    entry = published.get(MMACTION2[depth])
    manifest = json.loads(manifest_path(shared_data, entry).read_text())
    assert manifest_path(shared_data, entry).parent == REPO_MANIFESTS
    assert manifest["checkpoint_files"] == [entry.url]
    assert entry.url.startswith("https://download.openmmlab.com/mmaction/recognition/slowfast/")
    # mmaction2's publish_model.py: <name>-<first 8 hex digits of the file's sha256>.pth
    assert entry.file_name.endswith(f"-{entry.sha256_prefix}.pth")
    assert "publish_model.py" in entry.checksum_source and entry.checked
    from avda.extract import backbones

    assert entry.loader in backbones.names() and entry.loader == f"slowfast-r{depth}-mmaction"
    (layout,) = backbones.model_class(entry.loader).checkpoint_layouts()
    assert layout.name == entry.layout and layout.detect(list(manifest["keys"]))


@pytest.mark.parametrize("depth", sorted(MMACTION2))
def test_identify_mmaction2_published_format_by_layout(shared_data, tmp_path, depth):
    entry = published.get(MMACTION2[depth])
    path = mmaction2_published_file(shared_data, entry, tmp_path / entry.file_name)
    # what verify reads: the state dict under 'state_dict', keys keeping 'backbone.'
    shapes = published._read_shapes(path)
    assert next(iter(shapes)) == "backbone.slow_path.conv1.conv.weight"
    assert published.layout_fingerprint(shapes) == entry.layout_fingerprint
    found = published.identify(path)
    assert found.how == "layout" and found.entries == (entry,)  # R50 and R101 told apart
    assert f"the keys and shapes of {entry.name} ({len(shapes)} tensors)" in found.message
    assert f"the published file's starts with {entry.sha256_prefix}" in found.message


def test_fetch_mmaction2_checks_the_sha256_prefix(server, shared_data, tmp_path, monkeypatch):
    """The real entry, served from 127.0.0.1 under its file name: synthetic bytes do not start
    with the published prefix and are refused; with the prefix of those bytes (the published
    file's, as far as the test knows) the download is kept and ``--weights NAME`` finds it."""
    entry = published.get(MMACTION2[101])
    made = mmaction2_published_file(shared_data, entry, tmp_path / "made.pth")
    data = made.read_bytes()
    server.files[f"zoo/{entry.file_name}"] = data
    mirror = server.url("zoo")
    cache = tmp_path / "cache"
    with pytest.raises(published.DownloadError) as info:
        published.fetch(entry, cache, progress=False, mirror=mirror)
    message = str(info.value)
    assert "\n" not in message and "refused and deleted" in message
    assert f"the published file's starts with {entry.sha256_prefix}" in message
    assert list(cache.iterdir()) == []
    prefix = hashlib.sha256(data).hexdigest()[:8]
    assert prefix != entry.sha256_prefix
    same_bytes = dataclasses.replace(entry, sha256_prefix=prefix)
    result = published.fetch(same_bytes, cache, progress=False, mirror=mirror)
    assert result.downloaded and result.checked and result.path == cache / entry.file_name
    assert result.path.read_bytes() == data
    assert published.identify(result.path).entries == (entry,)
    monkeypatch.setenv(published.WEIGHTS_DIR_ENV, str(cache))
    with pytest.raises(ConfigError, match=f"starts with {entry.sha256_prefix}.*delete it"):
        published.resolve(entry.name)  # the real prefix: not the published bytes
    monkeypatch.setitem(published.PUBLISHED, entry.name, same_bytes)
    assert published.resolve(entry.name) == result.path
