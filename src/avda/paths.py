"""Paths built from data: one safe component per id, writes kept inside their output folder.

Manifest ids (``video_id``, ``domain``, ``participant_id``) and other names read from files
become file and folder names (``avda flow -o OUT`` writes ``OUT/<video_id>/``). Every place
that builds a path from such a name goes through :func:`child`, which refuses a name that is
not one plain path component (``..``, ``a/b``, an absolute path, a NUL byte) and a path that a
symbolic link leads out of the output folder. :func:`component_problem` is the same rule for
validators that collect problems instead of raising (the manifest check). See
docs/security.md. :func:`names_a_folder` and :func:`file_type_alone` read an output path as the
user typed it (a trailing slash, ``.``, a file type with no name: docs/cli.md, "Output paths").
"""

from __future__ import annotations

import os
from pathlib import Path

from avda.errors import ConfigError

# Characters that make a name more than one path component on some system (or end it early).
_SEPARATORS = ("/", "\\", "\x00")

# File types avda or another program writes (documents, figures, tables, archives, data): a
# name that is only these (``.pdf``, ``.npz``, ``.tar.gz``) is a hidden file named as its type.
FILE_TYPES = frozenset(
    """pdf png jpg jpeg gif svg eps ps tif tiff bmp webp xlsx xls xlsm ods numbers doc docx odt
    rtf ppt pptx odp key txt log json jsonl xml yaml yml toml rst tsv ipynb zip gz tgz tar bz2
    xz zst 7z rar h5 hdf5 npz npy pkl pickle pt pth parquet feather zarr mat mp4 avi wav md csv
    tex html""".split()
)


def names_a_folder(out: str | Path) -> bool:
    """Whether an output path as typed names a folder: a trailing slash (``sub/``, which
    ``Path`` drops), ``.``, ``..``, ``sub/.`` (``Path`` drops the dot too: the text's last part
    is read); an existing folder named without a slash is the caller's."""
    return os.path.basename(str(out)) in ("", ".", "..")


def file_type_alone(name: str) -> bool:
    """Whether ``name`` is file types with no name before them (``.md``, ``.npz``, ``.tar.gz``:
    a hidden file's name, which no output of avda is meant to have; ``.x`` is a name)."""
    kinds = name.lower().split(".")
    return kinds[0] == "" and len(kinds) > 1 and all(k in FILE_TYPES for k in kinds[1:])


def check_output_file(out: str | Path, option: str, name: str) -> Path:
    """``out`` as a path of one file to write (docs/cli.md, "Output paths"): a folder (an
    existing one, a trailing slash ``sub/``, ``.``, ``..``) or a file type alone (``.npz``)
    names no file and is refused, offering ``name`` (the usual file) in that folder."""
    typed, path = str(out), Path(out)  # Path drops the trailing slash: read it from the text
    folder = names_a_folder(typed) or path.is_dir()
    if folder or file_type_alone(path.name):
        what = (
            "is a folder"
            if path.is_dir()
            else "names a folder"
            if folder
            else "is a file type alone"
        )
        offered = (path if folder else path.parent) / name
        raise ConfigError(f"{option} {typed} {what}; give the path of the file to write: {offered}")
    return path


# What a store's and a run's folder output is, and the name offered for it
# (:func:`check_output_folder`'s ``what`` and ``name``): the CLI and the library say the same.
STORE_OUTPUT = ("a Zarr cache (a folder)", "features.zarr")
RUN_OUTPUT = ("a run folder", "run")
RUNS_OUTPUT = ("a folder of runs", "runs")  # a sweep's


def check_output_folder(out: str | Path, option: str, what: str, name: str) -> Path:
    """``out`` as a folder to write (``what``: "a run folder") read as typed (docs/cli.md,
    "Output paths"): a file type alone (``-o .zarr``) or a name ending in a file type other
    than ``name``'s (``avda train -o x.zarr``: the cache given as the output; ``--plot x.png``)
    names a file, refused offering ``name`` in its folder or the name without its types
    (``x``, or ``x.zarr`` for a store); an existing file is refused too. A trailing slash
    (``-o x.json/``, :func:`names_a_folder`) says a folder is meant, and an existing folder is
    a folder, whatever its name (a run or cache an older avda wrote as ``x.json``, to resume or
    add to): what it holds is the command's to judge (:func:`refuse_foreign_folder`)."""
    typed, path = str(out), Path(out)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {typed} is a file; give a folder (it is created if missing)")
    if path.is_dir() or names_a_folder(typed):
        return path
    wanted = Path(name).suffix.lower()  # .zarr: a store is a folder named so
    if file_type_alone(path.name):
        offered, why = path.parent / name, "is a file type alone"
    else:
        stem = path.name
        while (kind := Path(stem).suffix.lower()) != wanted and kind[1:] in FILE_TYPES:
            stem = Path(stem).stem
        if stem == path.name:
            return path
        offered = path.parent / (stem if Path(stem).suffix.lower() == wanted else stem + wanted)
        kind = path.name[len(stem) :].lower()  # .tar.gz: every type taken off
        why = "is named as a Zarr cache" if kind == ".zarr" else f"is named as a {kind} file"
    raise ConfigError(
        f"{option} {typed} {why}; avda writes {what} there: give the folder's path: {offered}"
    )


def component_problem(name: object) -> str | None:
    """Why ``name`` is not usable as one file or folder name, or None when it is."""
    text = str(name)
    if text == "" or text.strip() == "":
        return "is empty"
    if text in (".", ".."):
        return f"{text!r} is not a name (it names a folder relative to another)"
    for separator in _SEPARATORS:
        if separator in text:
            shown = {"\x00": "a NUL byte", "/": "'/'", "\\": "'\\'"}[separator]
            return f"{text!r} contains {shown}: an id must be one name, not a path"
    if any(ord(c) < 32 for c in text):
        return f"{text!r} contains a control character"
    if len(text.encode("utf-8", "surrogatepass")) > 255:
        return f"{text[:40]!r}... is longer than 255 bytes, the longest file name"
    return None


def safe_component(name: object, what: str = "id") -> str:
    """``name`` as a string when it is one plain path component; ConfigError otherwise."""
    problem = component_problem(name)
    if problem is not None:
        raise ConfigError(f"{what} {problem}; fix it in the manifest (see docs/security.md)")
    return str(name)


def relative_path_problem(value: object) -> str | None:
    """Why ``value`` is not a relative path that stays below its root (``video_path``)."""
    text = str(value)
    if "\x00" in text:
        return f"{text!r} contains a NUL byte"
    path = Path(text.replace("\\", "/"))
    if path.is_absolute() or text.startswith(("/", "\\")) or (len(text) > 1 and text[1] == ":"):
        return f"{text!r} is absolute; give a path relative to --videos"
    if ".." in path.parts:
        return f"{text!r} climbs out of its folder with '..'; give a path below --videos"
    return None


def is_within(path: Path, root: Path) -> bool:
    """Whether ``path`` (symbolic links resolved) lies inside ``root`` (resolved)."""
    try:
        return Path(os.path.realpath(path)).is_relative_to(Path(os.path.realpath(root)))
    except (OSError, ValueError):
        return False


def child(root: str | Path, name: object, what: str = "id") -> Path:
    """``root / name`` for a ``name`` that is one safe component, refused when a symbolic
    link (the child itself, or one inside it) would lead writes out of ``root``."""
    root = Path(root)
    path = root / safe_component(name, what)
    if path.is_symlink() and not is_within(path, root):
        raise ConfigError(
            f"{path} is a symbolic link to {os.path.realpath(path)}, outside {root}; avda does "
            "not write through links that leave the output folder: remove the link"
        )
    return path


def check_inside(path: Path, root: Path) -> Path:
    """``path`` when it (links resolved) stays inside ``root``; ConfigError otherwise."""
    if not is_within(path, root):
        raise ConfigError(
            f"{path} resolves to {os.path.realpath(path)}, outside {root} (a symbolic link); "
            "avda does not write through links that leave the output folder: remove the link"
        )
    return path


# Files a desktop puts in a folder the user made and opened (macOS Finder, Windows Explorer):
# such a folder is empty to its user.
DESKTOP_FILES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})


def refuse_foreign_folder(
    path: Path, option: str, kind: str, is_ours: bool, name: str | None = None
) -> None:
    """Refuse to write into ``path`` when it is an existing, non-empty folder that is not
    ``kind`` (``is_ours`` says whether it is), offering ``name`` (the usual folder) in it; an
    empty folder (or one holding only a desktop's ``.DS_Store``) is fine. An avda run given
    where a cache is written, or a cache where a run is, is named as such."""
    if not path.is_dir() or is_ours:
        return
    if any(entry.name not in DESKTOP_FILES for entry in path.iterdir()):
        from avda.runs import CONFIG, STATUS

        within = path.parent  # a new folder beside a cache or a run, not in it
        if (path / "zarr.json").is_file():  # the cache a run reads, given as its -o
            held = f"is an avda cache, not {kind}"
        elif (path / CONFIG).is_file() and (path / STATUS).is_file():
            held = f"is an avda run, not {kind}"
        else:
            held, within = f"is a folder that is not {kind} and is not empty", path
        offered = f": {within / name}" if name else ""
        raise ConfigError(
            f"{option} {path} {held}; avda does not write into it: give a new path (it is "
            f"created) or an empty folder{offered}"
        )


def remove_empty_folder(path: Path) -> None:
    """Remove ``path``, a folder :func:`refuse_foreign_folder` found empty (a desktop's
    ``.DS_Store`` in it removed too), for a store to be created in its place."""
    for name in DESKTOP_FILES:
        (path / name).unlink(missing_ok=True)
    path.rmdir()


def check_no_outward_links(root: Path) -> None:
    """Refuse a folder tree (a cache opened for writing) holding a symbolic link that leads
    out of it: writes through it would land elsewhere."""
    root = Path(root)
    real_root = Path(os.path.realpath(root))
    for folder, names, files in os.walk(root):  # does not descend into linked folders
        for name in (*names, *files):
            path = Path(folder) / name
            if path.is_symlink() and not Path(os.path.realpath(path)).is_relative_to(real_root):
                raise ConfigError(
                    f"{path} is a symbolic link to {os.path.realpath(path)}, outside {root}; "
                    "avda does not write through links that leave the cache: replace the link "
                    "with the folder itself"
                )
