"""Local Dask workers are spawned processes that import the calling script again: a call at
the script's top level (no ``if __name__ == "__main__":``) would run again in every worker.
avda refuses to start them from there, in one line naming the script and the line, before any
work (it failed with lock errors from the workers and "Nanny failed to start")."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

from tests.conftest import make_feature_cache

MANIFEST = "uid,video_id,domain,split,start_sec,stop_sec\na,v,d,test,0.0,1.0\n"


def _run(script: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300,
        cwd=script.parent,
    )  # fmt: skip


def _last_line(result: subprocess.CompletedProcess) -> str:
    return result.stderr.strip().splitlines()[-1]


def test_a_local_scheduler_from_a_scripts_top_level_is_refused(tmp_path):
    (tmp_path / "m.csv").write_text(MANIFEST)
    call = (
        'avda.extract("m.csv", "c.zarr", videos=".", recipe="demo", modalities=["rgb"], '
        'workers=0, device="cpu", scheduler="local:2", progress=False)'
    )
    script = tmp_path / "top.py"
    script.write_text(f"import avda\n\n{call}\n")
    result = _run(script)
    assert result.returncode == 1
    assert _last_line(result) == (
        f"avda.errors.ConfigError: scheduler local:2 starts worker processes that import "
        f"{script} again, and its top level (the call at line 3) would run again in each: put "
        'the script\'s calls under `if __name__ == "__main__":`'
    ), result.stderr
    assert not (tmp_path / "c.zarr").exists()  # before any work
    # in a function called from the top level: the same
    script.write_text(f"import avda\n\ndef main():\n    {call}\n\nmain()\n")
    result = _run(script)
    assert "(the call at line 6)" in _last_line(result), result.stderr


def test_a_complete_store_needs_no_cluster_nor_guard(tmp_path):
    """Nothing left to extract: no worker starts, so the unguarded script is not refused."""
    import avda

    (tmp_path / "m.csv").write_text(MANIFEST)
    (tmp_path / "v.mp4").write_bytes(b"not a video")  # there, so not refused; cannot decode
    first = avda.extract(
        tmp_path / "m.csv", tmp_path / "c.zarr", videos=tmp_path, recipe="demo",
        modalities=["rgb"], workers=0, device="cpu", progress=False,
    )  # fmt: skip
    assert first.failed == 1  # the video cannot be decoded: the row failed (not pending)
    script = tmp_path / "top.py"
    script.write_text(
        "import avda\n"
        'r = avda.extract("m.csv", "c.zarr", videos=".", recipe="demo", modalities=["rgb"], '
        'workers=0, device="cpu", scheduler="local:2", progress=False)\n'
        "print(r.failed, r.done)\n"
    )
    result = _run(script)
    assert result.returncode == 0 and result.stdout == "1 0\n", result.stderr
    # --force makes work again: refused before it
    script.write_text(script.read_text().replace("progress=False", "progress=False, force=True"))
    result = _run(script)
    assert result.returncode == 1 and "would run again in each" in _last_line(result)


def test_the_guard_and_a_function_it_calls_are_fine(tmp_path):
    script = tmp_path / "guarded.py"
    script.write_text(
        textwrap.dedent(
            """
            from avda.dask_support import refuse_unguarded_main

            def main():
                refuse_unguarded_main("x")
                print("ok")

            if "__main__" == __name__:
                main()
            """
        )
    )
    result = _run(script)
    assert result.returncode == 0 and result.stdout == "ok\n", result.stderr
    # the guard in an `and`, and the else of `!=`
    for guard in (
        'if __name__ == "__main__" and True:',
        'if __name__ != "__main__":\n    pass\nelse:',
    ):
        script.write_text(
            "from avda.dask_support import refuse_unguarded_main\n"
            f"{guard}\n    refuse_unguarded_main('x')\n    print('ok')\n"
        )
        result = _run(script)
        assert result.returncode == 0 and result.stdout == "ok\n", (guard, result.stderr)
    # `python -m package`: spawn does not run a package's __main__ again
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(
        "from avda.dask_support import refuse_unguarded_main\nrefuse_unguarded_main('x')\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "pkg"], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    # ``python -c`` (and an interactive session, a notebook) has no script to import again
    code = "from avda.dask_support import refuse_unguarded_main; refuse_unguarded_main('x')"
    assert subprocess.run([sys.executable, "-c", code], timeout=300).returncode == 0


def test_a_sweep_on_its_own_local_cluster_from_a_scripts_top_level_is_refused(tmp_path):
    make_feature_cache(tmp_path / "c.zarr", per_class=2)
    spec = {
        "cache": str(tmp_path / "c.zarr"),
        "heads": [{"name": "source-only", "epochs": 1}],
        "settings": ["source->target"],
        "out": "runs",
        "cluster": {"kind": "local", "workers": 1},
    }
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(spec))
    script = tmp_path / "sweep_top.py"
    script.write_text("from avda import sweep\nsweep.run_sweep('sweep.yaml', progress=False)\n")
    result = _run(script)
    assert result.returncode == 1
    assert _last_line(result).startswith(
        "avda.errors.ConfigError: a sweep on its own local cluster starts worker processes"
    ), result.stderr
    assert "(the call at line 2)" in _last_line(result)
    assert not (tmp_path / "runs").exists()
