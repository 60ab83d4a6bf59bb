"""Packaging: one version, py.typed shipped, PEP 639 licence with the setuptools it needs,
optional extras whose absence is one line naming the extra."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

import avda
from avda.errors import MissingDependencyError
from avda.optional import require

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_one_version_from_the_package():
    assert "version" not in PYPROJECT["project"]
    assert PYPROJECT["project"]["dynamic"] == ["version"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "avda.__version__"}
    assert avda.__version__.count(".") == 2


def test_licence_expression_needs_setuptools_77():
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    requires = PYPROJECT["build-system"]["requires"]
    assert requires == ["setuptools>=77"], requires


def test_py_typed_is_shipped():
    assert (REPO / "src" / "avda" / "py.typed").is_file()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["avda"]


def test_single_feature_packages_are_extras_not_core():
    core = " ".join(PYPROJECT["project"]["dependencies"])
    extras = PYPROJECT["project"]["optional-dependencies"]
    for extra, package in (
        ("flow", "opencv-contrib-python-headless"),
        ("jpeg", "simplejpeg"),
        ("hpc", "dask-jobqueue"),
        ("report", "matplotlib"),
        ("log", "tensorboard"),
        ("wandb", "wandb"),
        ("mlflow", "mlflow"),
    ):
        assert package not in core
        assert any(dep.startswith(package) for dep in extras[extra]), extra
    assert "avda[flow,jpeg,hpc,report,log]" in extras["dev"]  # CI installs what the tests use
    assert "safetensors" in core and "scikit-learn" in core  # core: weights, clustering


@pytest.mark.parametrize(
    ("module", "extra"),
    [("cv2", "flow"), ("simplejpeg", "jpeg"), ("dask_jobqueue", "hpc"), ("matplotlib", "report")],
)
def test_a_missing_extra_is_one_line_naming_it(monkeypatch, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # import now raises ImportError
    with pytest.raises(MissingDependencyError) as info:
        require(module, package="pkg", extra=extra, feature="this feature")
    assert str(info.value) == (
        f"this feature needs pkg, which is not installed: pip install 'avda[{extra}]' "
        "(or pip install pkg)"
    )


def test_tvl1_without_opencv_names_the_flow_extra(monkeypatch):
    from avda.extract import flow

    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(MissingDependencyError, match=r"TV-L1 flow .* pip install 'avda\[flow\]'"):
        flow._TVL1()


def test_report_without_matplotlib_names_the_report_extra(monkeypatch):
    for name in [n for n in sys.modules if n.startswith("matplotlib")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.delitem(sys.modules, "avda.evaluate.report", raising=False)
    with pytest.raises(MissingDependencyError, match=r"avda report needs matplotlib"):
        importlib.import_module("avda.evaluate.report")
    monkeypatch.delitem(sys.modules, "avda.evaluate.report", raising=False)


def _build_python() -> str:
    """An interpreter with setuptools >= 77 and `build` ($AVDA_BUILD_PYTHON, else this one)."""
    python = os.environ.get("AVDA_BUILD_PYTHON", sys.executable)
    probe = (
        "import build, setuptools, sys; sys.exit(int(setuptools.__version__.split('.')[0]) < 77)"
    )
    if subprocess.run([python, "-c", probe], capture_output=True).returncode != 0:
        pytest.skip(
            f"{python} lacks setuptools>=77 or build; set AVDA_BUILD_PYTHON to one that has them"
        )
    return python


def test_wheel_builds_and_ships_py_typed(tmp_path):
    python = _build_python()
    source = tmp_path / "src-copy"
    # Copy only what the build reads (not the worktree's caches).
    for relative in ("pyproject.toml", "README.md"):
        (source / relative).parent.mkdir(parents=True, exist_ok=True)
        (source / relative).write_bytes((REPO / relative).read_bytes())
    for path in (REPO / "src").rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts and ".egg-info" not in str(path):
            target = source / path.relative_to(REPO)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    out = tmp_path / "dist"
    done = subprocess.run(
        [python, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(source)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (wheel,) = out.glob("avda-*.whl")
    assert wheel.name.startswith(f"avda-{avda.__version__}-")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(f"avda-{avda.__version__}.dist-info/METADATA").decode()
    assert "avda/py.typed" in names and "avda/weights.py" in names
    assert "License-Expression: Apache-2.0" in metadata
    assert 'Requires-Dist: matplotlib>=3.8; extra == "report"' in metadata
