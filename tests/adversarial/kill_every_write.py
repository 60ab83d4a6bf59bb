"""Kill ``avda cache import`` before each of its file writes in turn, rerun it, compare.

Run as a script (``python kill_every_write.py WORKDIR [--representative]``) from a fresh
interpreter: it forks one child per kill point, so it must not have done any Zarr I/O itself
(Zarr's event-loop thread does not survive a fork). Prints one JSON object: the number of
writes of a clean import, the kill points tried and, per kill point that went wrong, what went
wrong.

Every write is a kill point by default. ``--representative`` kills only before the first write
of each kind (see :func:`write_kind`) and before the last write: every kind of file the import
writes is still interrupted once, in fewer runs.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.adversarial import _helpers  # noqa: E402

KILLED = 77


def _child(fn, report: Path | None = None) -> int:
    """Run ``fn`` in a forked child; its exit status (an exception: 1, its last line in
    ``report``)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = int(fn() or 0)
        except BaseException:  # noqa: BLE001 - reported through the exit status
            last = traceback.format_exc().strip().splitlines()[-1]
            if report is not None:
                report.write_text(f"crashed: {last}")
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def write_kind(store: Path, base: Path, path: str, earlier: set[str]) -> tuple:
    """What a write of ``path`` (inside ``store``) is: its group (segments, features, status,
    errors or the root), group metadata / array metadata / chunk, whether the array is in the
    store before the import (``base``) and whether this import wrote the file before."""
    parts = Path(path).parts
    parts = parts[len(parts) - parts[::-1].index(store.name) :]
    group = parts[0] if len(parts) > 1 else "root"
    if parts[-1] != "zarr.json":
        array, kind = parts[: parts.index("c")], "chunk"
    elif len(parts) <= 2:
        array, kind = parts[:-1], "group-metadata"
    else:
        array, kind = parts[:-1], "array-metadata"
    return group, kind, (base / Path(*array)).exists(), path in earlier


def _count_writes(limit: int | None, counter: Path | None = None) -> None:
    """Patch Zarr's file writer: exit (as a kill would) before write number ``limit``;
    ``counter`` gets each written path, one a line."""
    from zarr.storage import _local

    original = _local._put
    calls = [0]

    def put(path, value, exclusive=False):
        calls[0] += 1
        if limit is not None and calls[0] >= limit:
            os._exit(KILLED)
        if counter is not None:
            with counter.open("a") as handle:
                handle.write(f"{path}\n")
        return original(path, value, exclusive=exclusive)

    _local._put = put


def _import(files: dict[str, Path], name: str, out: Path) -> None:
    from avda.cache import interop

    interop.import_features(files[name], out=out, annotations=files["ann"], chunk_rows=4)


def main(work: Path, representative: bool = False) -> dict:
    import avda.cache.interop  # noqa: F401 - imported before forking, no I/O

    files = _helpers.files(work)
    ref, base = work / "ref.zarr", work / "base.zarr"

    def reference() -> None:
        _import(files, "base", base)
        (work / "base.json").write_text(json.dumps(_helpers.fingerprint(base, physical=False)))
        _import(files, "base", ref)
        _import(files, "new", ref)
        (work / "ref.json").write_text(json.dumps(_helpers.fingerprint(ref)))
        (work / "ref-logical.json").write_text(
            json.dumps(_helpers.fingerprint(ref, physical=False))
        )

    assert _child(reference) == 0, "the clean imports failed"
    counter = work / "count.txt"

    def count() -> None:
        shutil.copytree(base, work / "count.zarr")
        _count_writes(None, counter)
        _import(files, "new", work / "count.zarr")

    assert _child(count) == 0, "the counted import failed"
    written = counter.read_text().splitlines()
    writes = len(written)
    points = list(range(1, writes + 1))
    if representative:
        kinds: dict[tuple, int] = {}
        for n, path in enumerate(written, 1):
            kind = write_kind(work / "count.zarr", base, path, set(written[: n - 1]))
            kinds.setdefault(kind, n)
        points = sorted({*kinds.values(), writes})
    base_fp = json.loads((work / "base.json").read_text())
    ref_fp = json.loads((work / "ref.json").read_text())
    ref_logical = json.loads((work / "ref-logical.json").read_text())
    problems: dict[int, str] = {}
    for n in points:
        target = work / f"kill-{n}.zarr"
        shutil.copytree(base, target)

        def killed(n=n, target=target) -> None:
            _count_writes(n)
            _import(files, "new", target)

        code = _child(killed)
        if code != KILLED:
            problems[n] = f"the import was not killed (exit {code})"
            continue
        report = work / f"kill-{n}.txt"

        def rerun(target=target, report=report) -> int:
            seen = _helpers.fingerprint(target, physical=False)
            if seen not in (base_fp, ref_logical):
                report.write_text(
                    "after the kill a reader sees neither the old nor the new store: "
                    f"{_helpers.differences(seen, base_fp)} differ from the old one"
                )
                return 1
            _import(files, "new", target)
            final = _helpers.fingerprint(target)
            if final != ref_fp:
                wrong = _helpers.differences(final, ref_fp)
                report.write_text(f"the rerun differs from a clean import in {wrong}")
                return 1
            return 0

        code = _child(rerun, report)
        if code != 0:
            problems[n] = report.read_text() if report.exists() else f"rerun crashed (exit {code})"
        else:
            shutil.rmtree(target)
    return {
        "writes": writes,
        "points": points,
        "problems": {str(k): v for k, v in problems.items()},
    }


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), representative="--representative" in sys.argv)))
