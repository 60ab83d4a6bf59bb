"""A run's provenance.json records what trained it: versions, GPU, avda's git revision."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from tests.conftest import REPO, make_feature_cache

import avda
from avda import environment, runs
from avda.train.loop import train


def _train(cache, out):
    return train(
        cache=cache,
        head="source-only",
        source=["source"],
        target=["target"],
        out=out,
        overrides={"epochs": 2, "batch_size": 16},
        progress=False,
    )


@pytest.fixture()
def cache(tmp_path):
    make_feature_cache(tmp_path / "c.zarr", per_class=4, modalities=("rgb",))
    return tmp_path / "c.zarr"


def test_provenance_records_versions_device_and_the_cache(cache, tmp_path):
    run = tmp_path / "run"
    _train(cache, run)
    provenance = json.loads((run / runs.PROVENANCE).read_text())
    assert provenance["recipe"] == {"name": "synthetic"}  # the cache's provenance stays
    env = provenance["environment"]
    assert env["avda_version"] == avda.__version__
    assert env["torch"] == torch.__version__
    assert env["cuda"] == torch.version.cuda
    cudnn = torch.backends.cudnn.version()
    assert env["cudnn"] == (int(cudnn) if cudnn is not None else None)
    assert env["device"] == "cpu" or env["device"].startswith("cuda")
    if torch.cuda.is_available():
        assert env["gpu"] == torch.cuda.get_device_name(0)
    else:
        assert env["gpu"] is None
    assert "resumed" not in provenance


def test_avda_git_revision_when_imported_from_a_checkout(cache, tmp_path):
    package = Path(avda.__file__).resolve()
    tracked = shutil.which("git") and subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "--error-unmatch", "src/avda/__init__.py"],
        capture_output=True,
    )
    if not (tracked and tracked.returncode == 0 and package.is_relative_to(REPO.resolve())):
        pytest.skip("avda is not imported from a git checkout here")
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    _train(cache, tmp_path / "run")
    git = runs.read_provenance(tmp_path / "run")["environment"]["avda_git"]
    assert git["revision"] == head and isinstance(git["dirty"], bool)


def _git(folder, *args):
    subprocess.run(
        ["git", "-c", "user.email=t@example.org", "-c", "user.name=t", "-C", str(folder), *args],
        check=True,
        capture_output=True,
    )


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_revision_and_dirty_flag_of_a_checkout(tmp_path):
    package = tmp_path / "repo" / "src" / "avda" / "__init__.py"
    package.parent.mkdir(parents=True)
    package.write_text("__version__ = '0'\n")
    _git(tmp_path / "repo", "init", "-q")
    assert environment.git_revision(package) is None  # not tracked yet: not avda's checkout
    _git(tmp_path / "repo", "add", ".")
    _git(tmp_path / "repo", "commit", "-qm", "first")
    head = subprocess.run(
        ["git", "-C", str(tmp_path / "repo"), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    assert environment.git_revision(package) == {"revision": head, "dirty": False}
    (tmp_path / "repo" / "notes.txt").write_text("untracked files do not count")
    assert environment.git_revision(package)["dirty"] is False
    package.write_text("__version__ = '1'\n")
    assert environment.git_revision(package) == {"revision": head, "dirty": True}


def test_no_git_or_no_checkout_is_none_not_a_failure(tmp_path, monkeypatch):
    outside = tmp_path / "site-packages" / "avda" / "__init__.py"
    outside.parent.mkdir(parents=True)
    outside.write_text("")
    assert environment.git_revision(outside) is None  # a wheel install: no repository
    monkeypatch.setattr(environment.shutil, "which", lambda name: None)
    assert environment.git_revision() is None
    environment._avda_git.cache_clear()
    try:
        assert environment.describe("cpu")["avda_git"] is None
    finally:
        environment._avda_git.cache_clear()


def test_a_resume_adds_its_environment(cache, tmp_path):
    run = tmp_path / "run"
    _train(cache, run)
    first = runs.read_provenance(run)
    (run / runs.STATUS).unlink()  # as if stopped after its last checkpoint
    _train(cache, run)
    again = runs.read_provenance(run)
    assert again["environment"] == first["environment"]
    assert [r["torch"] for r in again["resumed"]] == [torch.__version__]
