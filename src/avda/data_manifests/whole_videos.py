"""A manifest without annotations: one segment per whole video (``avda extract --videos`` with
no ``--manifest``), as video_features extracts a folder of videos.

``--videos`` is a folder (every video file below it, by suffix, sorted) or a text file listing
video paths, one a line (``#`` starts a comment; relative paths are relative to the list's
folder). Each video becomes one row:

* ``uid`` and ``video_id``: for a folder, the video's path relative to it without its suffix,
  subfolders joined with ``__`` (``kitchen/P01_01.mp4`` -> ``kitchen__P01_01``); for a list,
  the file's stem, with as many of its folders as make it unique when stems repeat
  (``a/x.mp4``, ``b/x.mp4`` -> ``a__x``, ``b__x``). The suffix is kept when two files differ
  only by it (``a.mp4``, ``a.avi`` -> ``a.mp4``, ``a.avi``);
* ``video_path``: the path relative to the folder (for a list: to the deepest folder holding
  every listed video, which becomes ``--videos``); ``start_sec`` 0 and ``stop_sec`` the
  duration its header gives (PyAV: the video stream's duration, else the container's);
* ``domain`` and ``split``: the same for every row, ``all`` and ``test`` unless given
  (``--domain``, ``--split``): ``test`` because unannotated features are most often evaluated
  or inspected; ``split="train"`` with ``root=`` makes them an unlabelled target domain
  that joins a labelled source's manifest (one cache for ``avda train``: docs/extraction.md).

A file that cannot be opened as a video, or has no duration, is refused with one line naming
it, before any work.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from avda.data_manifests import schema
from avda.errors import ConfigError, ManifestError, MediaError
from avda.paths import component_problem

VIDEO_SUFFIXES = (
    ".mp4",
    ".avi",
    ".mkv",
    ".mov",
    ".webm",
    ".m4v",
    ".mpg",
    ".mpeg",
    ".flv",
    ".wmv",
    ".3gp",
    ".ts",
)
DEFAULT_DOMAIN = "all"
DEFAULT_SPLIT = "test"
MAX_NAMED = 5


def find_videos(source: str | Path) -> tuple[Path, list[Path]]:
    """``(root, paths relative to root)`` of the videos in folder ``source`` or listed in the
    text file ``source`` (``root``: the deepest folder holding every listed video)."""
    source = Path(source)
    if source.is_dir():
        found = sorted(
            p.relative_to(source)
            for p in source.rglob("*")
            if p.suffix.lower() in VIDEO_SUFFIXES
            and p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(source).parts)
        )
        if not found:
            raise ConfigError(
                f"--videos {source}: no video files below it (suffixes "
                f"{', '.join(VIDEO_SUFFIXES)}); pass a folder of videos, a text file listing "
                "them, or a --manifest"
            )
        return source, found
    if not source.is_file():
        raise ConfigError(f"--videos {source}: no such folder or file")
    try:
        lines = source.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"--videos {source} is not a readable text file of video paths: {exc}"
        ) from None
    listed, missing = [], []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        path = Path(text) if Path(text).is_absolute() else source.parent / text
        if not path.is_file():
            missing.append(f"line {number}: {text}")
        listed.append(Path(os.path.abspath(path)))  # links are not followed: their own name
    if missing:
        shown = "; ".join(missing[:MAX_NAMED]) + (
            f"; and {len(missing) - MAX_NAMED} more" if len(missing) > MAX_NAMED else ""
        )
        raise ConfigError(f"--videos {source} lists videos that do not exist ({shown})")
    if not listed:
        raise ConfigError(f"--videos {source} lists no video (one path a line)")
    unique = list(dict.fromkeys(listed))
    root = Path(os.path.commonpath([p.parent for p in unique]))
    return root, [p.relative_to(root) for p in unique]


def _ids(paths: list[Path], *, shortest: bool = False) -> list[str]:
    """Ids of ``paths``: the whole path without its suffix, folders joined with ``__``; with
    ``shortest``, its shortest ending that is unique (the stem unless stems repeat). Two paths
    that differ only by their suffix keep it."""
    bare = [p.with_suffix("") for p in paths]
    depths = [1 if shortest else len(b.parts) for b in bare]
    suffixed = [bare.count(b) > 1 for b in bare]

    def ending(index: int) -> str:
        parts = list(bare[index].parts[-depths[index] :])
        if suffixed[index]:
            parts[-1] = paths[index].name
        return "__".join(parts)

    while True:
        ids = [ending(i) for i in range(len(paths))]
        repeated = {i for i in ids if ids.count(i) > 1}
        if not repeated:
            return ids
        deeper = [
            i for i, ident in enumerate(ids) if ident in repeated and depths[i] < len(bare[i].parts)
        ]
        if not deeper:  # "a__b.mp4" and "a/b.mp4": numbered in path order
            seen: dict[str, int] = {}
            for index, ident in enumerate(ids):
                if ident in repeated:
                    seen[ident] = seen.get(ident, 0) + 1
                    ids[index] = f"{ident}~{seen[ident]}"
            return ids
        for index in deeper:
            depths[index] += 1


def duration(path: Path) -> float:
    """Seconds of the first video stream from the header (no decoding)."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError(f"{path} has no video stream")
            stream = container.streams.video[0]
            seconds = None
            if stream.duration and stream.time_base:
                seconds = float(stream.duration * stream.time_base)
            elif container.duration:
                seconds = container.duration / av.time_base
    except MediaError:
        raise
    except Exception as exc:  # PyAV raises many error types for damaged files
        raise MediaError(f"{path} cannot be opened as a video: {str(exc)[:200]}") from None
    if seconds is None or not seconds > 0:
        raise MediaError(f"{path}: its header gives no duration")
    return seconds


def manifest(
    source: str | Path,
    *,
    domain: str = DEFAULT_DOMAIN,
    split: str = DEFAULT_SPLIT,
    root: str | Path | None = None,
    progress: bool = False,
) -> tuple[pd.DataFrame, Path]:
    """One segment per whole video of ``source`` (a folder or a list file); returns the
    manifest and the folder its ``video_path`` values are relative to (``--videos``).

    ``root``: a folder holding every video of ``source`` to make ``video_path`` relative to
    (default: ``source``'s own folder), so that the manifest can join another one whose paths
    are relative to ``root`` (a labelled source domain and a folder of unlabelled target
    videos, extracted into one cache: docs/extraction.md). Ids stay those of ``source``."""
    from avda._io import progress_bar

    problem = component_problem(domain)
    if problem is not None:
        raise ConfigError(f"--domain {problem}")
    if split not in schema.SPLITS:
        raise ConfigError(f"--split {split!r}: expected one of {', '.join(schema.SPLITS)}")
    root_dir, paths = find_videos(source)
    ids = (
        _ids(paths) if Path(source).is_dir() else _ids([root_dir / p for p in paths], shortest=True)
    )
    stops, bad = [], []
    for relative in progress_bar(paths, desc="probe videos", unit="video", disable=not progress):
        try:
            stops.append(duration(root_dir / relative))
        except MediaError as exc:
            bad.append(str(exc))
    if bad:
        shown = "; ".join(bad[:MAX_NAMED]) + (
            f"; and {len(bad) - MAX_NAMED} more" if len(bad) > MAX_NAMED else ""
        )
        fix = (
            "remove them from the list"
            if not Path(source).is_dir()
            else "remove them, or list the videos to extract in a text file (--videos LIST.txt)"
        )
        raise MediaError(
            f"--videos {source}: {len(bad)} file(s) are not readable videos ({shown}); {fix}"
        )
    video_paths = [p.as_posix() for p in paths]
    if root is not None:
        given = Path(root)
        base = Path(os.path.abspath(given))
        try:
            inside = Path(os.path.abspath(root_dir)).relative_to(base)
        except ValueError:
            raise ConfigError(
                f"root {given} does not hold the videos of {source} (in {root_dir}); give a "
                "folder above them"
            ) from None
        video_paths = [(inside / p).as_posix() for p in paths]
        root_dir = given
    frame = pd.DataFrame(
        {
            "uid": ids,
            "video_id": ids,
            "domain": domain,
            "split": split,
            "start_sec": 0.0,
            "stop_sec": stops,
            "video_path": video_paths,
        }
    )
    problems = schema.find_problems(frame)
    if problems:
        raise ManifestError(schema.format_problems(f"(the videos of {source})", problems))
    return schema.normalise(frame), root_dir


__all__ = ["DEFAULT_DOMAIN", "DEFAULT_SPLIT", "VIDEO_SUFFIXES", "find_videos", "manifest"]
