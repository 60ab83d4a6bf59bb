"""avda cache import of TA3N's released UCF-HMDB features (``--format ta3n-t7``): one folder
per video of ``img_NNNNN.t7`` files, each a ``torch.save``d frame tensor (cmhungsteve/TA3N
``video2feature.py``), in PyTorch 0.4's legacy layout or the zip one. Read only with
``torch.load(weights_only=True)``; the store equals the one of docs/benchmarks.md's former
route (a snippet turning each folder into ``<video>.npy``, then the ``.npy`` import)."""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from avda import cli
from avda.cache import Status, open_cache

REPO = Path(__file__).resolve().parents[2]
D = 8
FRAMES = {"v_a_g01_c01": 23, "v_b_g02_c03": 12, "v_c_g03_c01": 3, "v_d_g04_c02": 40}


def _save(value, path: Path, legacy: bool) -> None:
    with open(path, "wb") as handle:
        torch.save(value, handle, _use_new_zipfile_serialization=not legacy)


def _ta3n_folder(root: Path) -> Path:
    """TA3N's layout: ``RGB-feature/<video>/img_00001.t7`` ..., frame n's tensor filled with
    ``100 * video + n`` plus noise; the first two videos in the legacy layout (PyTorch 0.4's,
    that of the release), the others in the zip one."""
    folder = root / "RGB-feature"
    rng = np.random.default_rng(0)
    for v, (video, count) in enumerate(FRAMES.items()):
        (folder / video).mkdir(parents=True)
        for n in range(1, count + 1):
            values = 100.0 * v + n + rng.normal(size=D).astype(np.float32) / 32
            # video2feature.py saves features[t].clone(): one (D,) float tensor per frame
            _save(torch.from_numpy(values), folder / video / f"img_{n:05d}.t7", v < 2)
    return folder


def _snippet(features: Path, out: Path) -> None:
    """The conversion docs/benchmarks.md gave before the direct import, verbatim."""
    out.mkdir(exist_ok=True)
    for video in sorted(features.iterdir()):  # both zips' folders
        frames = sorted(video.glob("img_*.t7"))
        x = np.stack([torch.load(f, weights_only=True).numpy().reshape(-1) for f in frames])
        np.save(out / f"{video.name}.npy", x.astype(np.float32))


def _manifest(path: Path, videos=FRAMES) -> Path:
    """A manifest as `avda manifest build ucf-hmdb` makes it at 25 fps, plus a video without
    features (stored missing)."""
    names = [*videos, "v_gone_g05_c01"]
    counts = [*videos.values(), 30]
    pd.DataFrame({
        "uid": names, "video_id": names, "domain": "ucf", "split": "train",
        "start_sec": 0.0, "stop_sec": [n / 25 for n in counts],
    }).to_csv(path, index=False)  # fmt: skip
    return path


def _import(source: Path, manifest: Path, out: Path, *extra: str) -> list[str]:
    return ["cache", "import", str(source), "-a", str(manifest), "--feature-rate", "25",
            "--num-clips", "5", "--placement", "tsn", "--backbone", "resnet101",
            "-o", str(out), *extra]  # fmt: skip


def test_ta3n_frames_import_as_the_snippet_and_npy_route(tmp_path, capsys):
    folder = _ta3n_folder(tmp_path)
    manifest = _manifest(tmp_path / "m.csv")
    _snippet(folder, tmp_path / "npy")
    assert cli.main([*_import(tmp_path / "npy", manifest, tmp_path / "npy.zarr")]) == 0
    # no --format: a folder of video folders of img_*.t7 is TA3N's
    assert cli.main(_import(folder, manifest, tmp_path / "t7.zarr")) == 0
    out = capsys.readouterr().out
    assert "appended 5 segments (rgb); rgb: 1 missing" in out
    assert "no v_gone_g05_c01/img_*.t7 in" in out
    via_npy, direct = open_cache(tmp_path / "npy.zarr"), open_cache(tmp_path / "t7.zarr")
    np.testing.assert_array_equal(direct.load("rgb"), via_npy.load("rgb"))
    np.testing.assert_array_equal(direct.status("rgb"), via_npy.status("rgb"))
    pd.testing.assert_frame_equal(direct.segments, via_npy.segments)
    assert direct.status("rgb").tolist() == [Status.DONE] * 4 + [Status.MISSING]
    # TA3N's 5 frames (dataset.py _get_test_indices, 1-based file numbers): 23 frames ->
    # img_00003, 07, 12, 17, 21; 3 frames -> 1, 2, 3, 3, 3 (the last repeated)
    frames = np.rint(direct.load("rgb")[:, :, 0].astype(np.float32) % 100).astype(int)
    assert frames[0].tolist() == [3, 7, 12, 17, 21] and frames[2].tolist() == [1, 2, 3, 3, 3]
    record = direct.provenance["imports"][0]
    assert record["format"] == "ta3n-t7" and record["file"] == str(folder)
    info = direct.modality_info("rgb")
    assert info["backbone"] == "resnet101"
    assert info["input"] == {
        "source": "import", "format": "ta3n-t7", "file": "RGB-feature",
        "feature_rate": 25.0, "placement": "tsn",
    }  # fmt: skip
    # imported again: the same files (names and bytes) are "already imported"
    assert cli.main(_import(folder, manifest, tmp_path / "t7.zarr", "--format", "ta3n-t7")) == 0
    # as a .npy folder's: the same files and the same segments (the annotations' ids)
    assert "already imported on " in (out := capsys.readouterr().out)
    assert "(same files and segments; " in out, out
    # a damaged chunk names the import that re-creates its rows, with the sampling options
    chunk = tmp_path / "t7.zarr" / "features" / "rgb" / "c" / "0" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:7])
    message = open_cache(tmp_path / "t7.zarr").verify()["message"].iloc[0]
    assert (
        f"`avda cache import {folder} --format ta3n-t7 --backbone resnet101 --modality rgb "
        "--feature-rate 25 --num-clips 5 --placement tsn`"
    ) in message


def test_a_t7_whose_pickle_would_run_code_is_refused_without_running(tmp_path, capsys):
    """A frame file that unpickled with plain torch.load / pickle would call os.system: the
    restricted unpickler refuses it in one line naming the file, nothing runs, no store."""
    folder = _ta3n_folder(tmp_path)
    manifest = _manifest(tmp_path / "m.csv")
    pwned = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {pwned}",))

    # frames --placement tsn reads: 3 of 23, 4 of 12
    for legacy, video, frame in ((True, "v_a_g01_c01", 3), (False, "v_b_g02_c03", 4)):
        evil = folder / video / f"img_{frame:05d}.t7"
        original = evil.read_bytes()
        _save(Exploit(), evil, legacy)
        code = cli.main(_import(folder, manifest, tmp_path / "x.zarr"))
        err = capsys.readouterr().err
        assert code != 0 and len(err.strip().splitlines()) == 1, err
        assert str(evil) in err and "weights_only=True" in err
        assert "system" in err and "which avda never runs" in err
        assert not pwned.exists() and not (tmp_path / "x.zarr").exists()
        evil.write_bytes(original)


def test_damaged_or_incomplete_video_folders_are_refused_in_one_line(tmp_path, capsys):
    folder = _ta3n_folder(tmp_path)
    manifest = _manifest(tmp_path / "m.csv")
    cases = []
    cut = folder / "v_d_g04_c02" / "img_00005.t7"  # read by tsn (frame 5 of 40)
    cases.append((cut, lambda: cut.write_bytes(cut.read_bytes()[:100]), "not a readable"))
    gap = folder / "v_b_g02_c03" / "img_00007.t7"
    cases.append((gap, gap.unlink, "but no img_00007.t7"))
    text = folder / "v_a_g01_c01" / "img_00012.t7"
    cases.append((text, lambda: text.write_text("not a tensor\n"), "refuses it"))
    wide = folder / "v_a_g01_c01" / "img_00017.t7"
    cases.append((wide, lambda: _save(torch.zeros(D + 1), wide, True), "holds 9 values, other"))
    ints = folder / "v_c_g03_c01" / "img_00002.t7"
    cases.append((ints, lambda: _save({"x": torch.zeros(D)}, ints, False), "not a tensor"))
    for path, damage, said in cases:
        original = path.read_bytes()
        damage()
        code = cli.main(_import(folder, manifest, tmp_path / "x.zarr", "--format", "ta3n-t7"))
        err = capsys.readouterr().err
        assert code != 0 and len(err.strip().splitlines()) == 1, err
        assert said in err and (str(path) in err or str(path.parent) in err), err
        assert not (tmp_path / "x.zarr").exists()
        path.write_bytes(original)
    # one video's folder given instead of the folder of videos
    code = cli.main(_import(folder / "v_a_g01_c01", manifest, tmp_path / "x.zarr", "--format",
                            "ta3n-t7"))  # fmt: skip
    err = capsys.readouterr().err
    assert code != 0 and "it is one video's folder: pass the folder above it" in err


def _legacy_tar(path: Path, value: torch.Tensor | None = None, body: bytes | None = None) -> None:
    """``value`` in PyTorch 0.1's ``torch.save`` layout, a tar of ``sys_info``, ``pickle``,
    ``tensors`` and ``storages`` (the reader is ``torch.serialization``'s ``legacy_load``);
    ``body``: another object pickle instead of the tensor's."""
    values = (value if value is not None else torch.zeros(D)).numpy().astype("<f4")
    storages = io.BytesIO()
    for item in (1, (0, "cpu", torch.FloatStorage)):  # one storage: key, location, type
        pickle.dump(item, storages, protocol=2)
    storages.write(struct.pack("<q", values.size) + values.tobytes())
    pickle.dump([], storages, protocol=2)  # no storage views
    tensors = io.BytesIO()
    for item in (1, (1, 0, torch.FloatTensor)):  # one tensor: key, storage key, type
        pickle.dump(item, tensors, protocol=2)
    tensors.write(struct.pack("<iiqqq", 1, 0, values.size, 1, 0))  # ndim, size, stride, offset

    tensor = object()  # pickled as the persistent id of tensor 1

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return "1" if obj is tensor else None

    pickled = io.BytesIO()
    Pickler(pickled, protocol=2).dump(tensor)
    members = {
        "sys_info": pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2),
        "pickle": pickled.getvalue() if body is None else body,
        "tensors": tensors.getvalue(),
        "storages": storages.getvalue(),
    }
    with tarfile.open(path, "w:", format=tarfile.PAX_FORMAT) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def test_a_pytorch_01_tar_frame_is_named_so_and_never_unpickled(tmp_path, capsys):
    """A frame in PyTorch 0.1's tar layout (which TA3N's PyTorch 0.4 never wrote) was
    refused as a damaged copy ('unpack that video's folder again', which gives it back): it is
    named for what it is, with the fix (re-save it with a newer torch), and nothing in it runs;
    re-saved as the message says, the folder imports as the clean one."""
    folder = _ta3n_folder(tmp_path)
    manifest = _manifest(tmp_path / "m.csv")
    assert cli.main(_import(folder, manifest, tmp_path / "clean.zarr")) == 0
    capsys.readouterr()
    frame = folder / "v_a_g01_c01" / "img_00003.t7"  # read by tsn
    original = torch.load(frame, weights_only=True)
    pwned = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {pwned}",))

    for body in (pickle.dumps(Exploit(), protocol=2), None):
        _legacy_tar(frame, original, body)
        code = cli.main(_import(folder, manifest, tmp_path / "x.zarr"))
        err = capsys.readouterr().err
        assert code != 0 and len(err.strip().splitlines()) == 1, err
        assert f"{frame} is an old PyTorch tar-format file" in err
        assert "PyTorch 0.1, before its 2017 format; TA3N's PyTorch 0.4 never wrote" in err
        assert "re-save it with a newer" in err
        assert "damaged" not in err and not pwned.exists() and not (tmp_path / "x.zarr").exists()
    torch.save(torch.load(frame, weights_only=False), frame)  # the fix, on a trusted file
    assert cli.main(_import(folder, manifest, tmp_path / "x.zarr")) == 0
    np.testing.assert_array_equal(
        open_cache(tmp_path / "x.zarr").load("rgb"), open_cache(tmp_path / "clean.zarr").load("rgb")
    )


def test_a_folder_of_flow_x_y_frames_is_refused_saying_they_are_not_read(tmp_path, capsys):
    """TA3N's dataset.py reads Flow as ``{flow_prefix}{x|y}_NNNNN.t7`` (tsn-pytorch's names),
    but its release and video2feature.py have RGB frames only and its code does not say how a
    frame's x and y make one row: such a folder is refused saying so and what to do (it was
    taken for a .npy folder: 'holds no .npy files')."""
    folder = tmp_path / "Flow-feature"
    for video in FRAMES:
        (folder / video).mkdir(parents=True)
        for axis in "xy":
            _save(torch.zeros(D), folder / video / f"{axis}_00001.t7", False)
    assert cli.main(_import(folder, _manifest(tmp_path / "m.csv"), tmp_path / "x.zarr")) != 0
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "x.zarr").exists(), err
    assert f"{folder} holds no <video>/img_NNNNN.t7 folders; v_a_g01_c01/x_00001.t7 is named" in err
    assert "which avda does not import" in err and "import them with --format npy" in err


def _avda(*args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "AVDA_FAULT"}
    environment["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO)])
    return subprocess.run(
        [sys.executable, "-m", "avda.cli", *args],
        capture_output=True,
        text=True,
        env={**environment, **env},
        timeout=300,
    )


@pytest.mark.parametrize("phase", ["after-create", "after-features", "before-record"])
def test_a_ta3n_import_killed_reruns_to_the_clean_import(tmp_path, phase):
    folder = _ta3n_folder(tmp_path)
    manifest = _manifest(tmp_path / "m.csv")
    assert cli.main(_import(folder, manifest, tmp_path / "clean.zarr")) == 0
    out = tmp_path / "s.zarr"
    killed = _avda(*_import(folder, manifest, out), AVDA_FAULT=f"exit:{phase}")
    assert killed.returncode == 75, killed.stderr  # avda.cache.faults.EXIT_CODE
    rerun = _avda(*_import(folder, manifest, out))
    assert rerun.returncode == 0 and "appended 5 segments" in rerun.stdout, rerun.stderr
    clean, store = open_cache(tmp_path / "clean.zarr"), open_cache(out)
    np.testing.assert_array_equal(store.load("rgb"), clean.load("rgb"))
    np.testing.assert_array_equal(store.status("rgb"), clean.status("rgb"))
    assert store.num_segments == 5 and len(store.provenance["imports"]) == 1
    assert store.verify().attrs["notes"] == []


def test_only_the_frames_a_segment_takes_are_unpickled(tmp_path, monkeypatch):
    """The snippet unpickled every frame; the import reads the K frames of each segment (frame
    1 too only where a segment takes it)."""
    from avda.cache import interop

    folder = _ta3n_folder(tmp_path)
    read = []
    load = interop._load_ta3n_frame
    monkeypatch.setattr(interop, "_load_ta3n_frame", lambda path: read.append(path) or load(path))
    interop.import_features(folder, out=tmp_path / "s.zarr", annotations=_manifest(tmp_path /
                            "m.csv"), feature_rate=25, num_clips=5, placement="tsn")  # fmt: skip
    taken = {  # TA3N's _get_test_indices, 1-based
        "v_a_g01_c01": [3, 7, 12, 17, 21], "v_b_g02_c03": [2, 4, 7, 9, 11],
        "v_c_g03_c01": [1, 2, 3], "v_d_g04_c02": [5, 13, 21, 29, 37],
    }  # fmt: skip
    assert sorted(read) == sorted(folder / v / f"img_{n:05d}.t7" for v, ns in taken.items()
                                  for n in ns)  # fmt: skip


def test_the_fingerprint_hashes_the_frames_read_and_sizes_the_others(tmp_path, monkeypatch,
                                                                   capsys):  # fmt: skip
    """Every frame file was hashed for the "already imported" check (507,000 files on the real
    release, more than the import reads: docs/benchmarks.md). The bytes of the frames the
    import reads (and each video's frame 1) are hashed, the others' names and sizes taken: a
    changed frame read, or another size of one not read, is another import; new bytes of the
    same size in a frame no segment reads change nothing the import stores."""
    from avda.cache import interop

    folder = _ta3n_folder(tmp_path)
    manifest = _manifest(tmp_path / "m.csv")
    hashed = []
    sha256_file = interop.sha256_file
    monkeypatch.setattr(interop, "sha256_file", lambda path: hashed.append(path) or
                        sha256_file(path))  # fmt: skip
    assert cli.main(_import(folder, manifest, tmp_path / "s.zarr")) == 0
    taken = {  # TA3N's _get_test_indices, 1-based (test_only_the_frames_...), and frame 1
        "v_a_g01_c01": [1, 3, 7, 12, 17, 21], "v_b_g02_c03": [1, 2, 4, 7, 9, 11],
        "v_c_g03_c01": [1, 2, 3], "v_d_g04_c02": [1, 5, 13, 21, 29, 37],
    }  # fmt: skip
    assert sorted(hashed) == sorted(folder / v / f"img_{n:05d}.t7" for v, ns in taken.items()
                                    for n in ns)  # fmt: skip
    capsys.readouterr()

    def again() -> bool:
        code = cli.main(_import(folder, manifest, tmp_path / "s.zarr"))
        out, err = capsys.readouterr()
        assert code == 0 or "already in" in err, err  # not imported: its ids are in the store
        return "already imported on " in out

    unread, read = folder / "v_d_g04_c02" / "img_00002.t7", folder / "v_d_g04_c02" / "img_00005.t7"
    for path, layout, counts in ((unread, False, False), (read, False, True), (unread, True, True)):
        original = path.read_bytes()
        _save(torch.full((D,), 7.0), path, layout)  # v_d: the zip layout; legacy: another size
        assert (len(path.read_bytes()) != len(original)) == layout
        assert again() is not counts, (path, layout)
        path.write_bytes(original)
    assert again()


def test_videos_of_another_feature_size_are_refused_in_one_line(tmp_path, capsys):
    """A video whose rows have another D than the first video read is refused naming it (its
    rows, written into the (n, K, D) array, were a numpy broadcast error: internal error)."""
    folder = _ta3n_folder(tmp_path)
    manifest = _manifest(tmp_path / "m.csv")
    _snippet(folder, tmp_path / "npy")
    video = "v_c_g03_c01"
    for n in range(1, FRAMES[video] + 1):
        _save(torch.zeros(D + 2), folder / video / f"img_{n:05d}.t7", False)
    np.save(tmp_path / "npy" / f"{video}.npy", np.zeros((FRAMES[video], D + 2), np.float32))
    for source, named in ((folder, folder / video), (tmp_path / "npy", f"{video}.npy")):
        code = cli.main(_import(source, manifest, tmp_path / "x.zarr"))
        err = capsys.readouterr().err
        assert code == 1 and len(err.strip().splitlines()) == 1, err
        assert f"{named}" in err and f"has shape ({FRAMES[video]}, {D + 2}); expected" in err
        assert not (tmp_path / "x.zarr").exists()


def test_a_renamed_video_folder_is_another_import(tmp_path, capsys):
    """The folder's sha256 covers each frame's video folder, not its file name alone: a video
    folder renamed (the same img_NNNNN.t7 names and bytes) is not "already imported" (its
    segments would now be missing)."""
    folder = _ta3n_folder(tmp_path)
    manifest = _manifest(tmp_path / "m.csv")
    assert cli.main(_import(folder, manifest, tmp_path / "s.zarr")) == 0
    capsys.readouterr()
    (folder / "v_d_g04_c02").rename(folder / "v_x_g09_c01")
    code = cli.main(_import(folder, manifest, tmp_path / "s.zarr"))
    out, err = capsys.readouterr()
    assert "already imported" not in out and code == 1 and "already in" in err, (out, err)
    # the refusal's fix names folders of either format (it said "one .npy folder")
    assert "one folder of per-video features (.npy, TA3N's .t7) with one annotation" in err


@pytest.mark.parametrize("route", ["npy", "ta3n-t7"])
def test_a_rerun_at_another_sampling_is_refused_not_already_imported(tmp_path, capsys, route):
    """The same folder and annotations imported again at another --placement, --feature-rate
    or --num-clips would store other rows: it was "already imported" (nothing done, exit 0)
    for a .npy folder always, and for a TA3N folder where the frames read were the same (its
    fingerprint hashes those), refused where they were not. Refused either way, naming the
    store's sampling; the same options are still "already imported". Another --backbone (or
    none) was "already imported" though the store keeps its own label: refused naming it."""
    folder = _ta3n_folder(tmp_path)
    if route == "npy":
        _snippet(folder, tmp_path / "npy")
        folder = tmp_path / "npy"
    manifest = _manifest(tmp_path / "m.csv")
    store = tmp_path / "s.zarr"
    assert cli.main(_import(folder, manifest, store)) == 0
    for option, value, says in (("--placement", "nearest", "--feature-rate 25 --placement tsn"),
                                ("--feature-rate", "12.5", "--feature-rate 25 --placement tsn"),
                                ("--num-clips", "3", "K=5"),
                                ("--backbone", "i3d", "give --backbone resnet101"),
                                ("--backbone", None, "no --backbone, which would")):  # fmt: skip
        args = _import(folder, manifest, store)
        at = args.index(option)
        args[at : at + 2] = [option, value] if value else []
        capsys.readouterr()
        code = cli.main(args)
        out, err = capsys.readouterr()
        assert code == 1 and "already imported" not in out, (option, out, err)
        assert says in err and len(err.strip().splitlines()) == 1, (option, err)
    assert cli.main(_import(folder, manifest, store)) == 0
    assert "already imported on " in capsys.readouterr().out


@pytest.mark.parametrize("route", ["npy", "ta3n-t7"])
def test_a_rerun_with_other_times_or_labels_is_refused_not_already_imported(tmp_path, capsys,
                                                                          route):  # fmt: skip
    """The "already imported" fingerprint holds the segments' ids, not their times or labels:
    the folder imported again with annotations whose labels (or, for a .npy folder, times)
    were corrected was "already imported" (exit 0), the store keeping the old labels and rows.
    Refused naming the segment and column; the same annotations are still imported."""
    folder = _ta3n_folder(tmp_path)
    if route == "npy":
        _snippet(folder, tmp_path / "npy")
        folder = tmp_path / "npy"
    manifest = _manifest(tmp_path / "m.csv")
    table = pd.read_csv(manifest).assign(verb_class=[0, 1, 2, 3, 0])
    table.to_csv(manifest, index=False)
    store = tmp_path / "s.zarr"
    assert cli.main(_import(folder, manifest, store)) == 0
    changes = {"verb_class": 3, "stop_sec": 0.44} if route == "npy" else {"verb_class": 3}
    for column, value in changes.items():  # v_b: 12 frames at 25 fps, verb 1
        table.assign(**{column: table[column].where(table.index != 1, value)}).to_csv(
            manifest, index=False
        )
        capsys.readouterr()
        code = cli.main(_import(folder, manifest, store))
        out, err = capsys.readouterr()
        assert code == 1 and "already imported" not in out, (column, out, err)
        assert f"segment 'v_b_g02_c03' has {column}" in err and "another store" in err, err
    table.to_csv(manifest, index=False)
    assert cli.main(_import(folder, manifest, store)) == 0
    assert "already imported on " in capsys.readouterr().out


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes")
def test_a_pipe_or_device_among_the_files_is_refused_not_read_forever(tmp_path):
    """Every file of a per-video folder is hashed: a named pipe (or a link to /dev/zero) in it,
    which an unpacked archive can hold, is refused in one line naming it (the hash waited on
    the pipe, or read zeros, for ever)."""
    folder = _ta3n_folder(tmp_path)
    manifest = _manifest(tmp_path / "m.csv")
    _snippet(folder, tmp_path / "npy")
    pipe = folder / "v_b_g02_c03" / "img_00013.t7"  # frame 13 of 12: after the last
    os.mkfifo(pipe)
    (tmp_path / "npy" / "v_z.npy").symlink_to("/dev/zero")
    for source, named in ((folder, pipe), (tmp_path / "npy", tmp_path / "npy" / "v_z.npy")):
        try:
            done = subprocess.run(
                [sys.executable, "-m", "avda.cli", *_import(source, manifest, tmp_path / "x.zarr")],
                capture_output=True, text=True, timeout=90,
                env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])},
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            pytest.fail(f"the import of {source} read {named} for 90 s")
        assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert f"{named} is not a regular file" in done.stderr
        assert not (tmp_path / "x.zarr").exists()


def test_a_manifest_counting_seconds_at_another_rate_is_refused(tmp_path, capsys):
    """Row i is frame i + 1 only where the manifest's seconds count frames at --feature-rate:
    `avda manifest build ucf-hmdb`'s defaults (HMDB51 at 30 fps) imported at 25 took the
    tsn frames of HMDB's videos from their first 5/6, silently. Refused in one line, naming
    the rows and the fix, before any store is made; a manifest at the rate imports."""
    folder = _ta3n_folder(tmp_path)
    table = pd.read_csv(_manifest(tmp_path / "m.csv"))
    table["domain"] = ["ucf", "ucf", "hmdb", "hmdb", "ucf"]
    table["fps"] = [25.0, 25.0, 30.0, 30.0, 25.0]
    table.loc[table["fps"] == 30, "stop_sec"] *= 25 / 30  # the frames counted at 30 fps
    table.to_csv(tmp_path / "mixed.csv", index=False)
    out = tmp_path / "x.zarr"
    assert cli.main(_import(folder, tmp_path / "mixed.csv", out)) != 0
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and not out.exists(), err
    assert "2 rows (hmdb, e.g. 'v_c_g03_c01') count seconds at 30 fps, not --feature-rate 25" in err
    # 40 frames at 30 fps end at 1.333 s: read at 25, 6.67 frames off there
    assert "frame n would be read for the time n/25 s, 6.67 frames off at 'v_d_g04_c02'" in err
    # no .build.json: which builder made it is unknown, so no builder's options are named
    assert "_fps" not in err and "one value in its fps column), and that rate as" in err
    table["fps"] = 30.0
    table.to_csv(tmp_path / "thirty.csv", index=False)
    assert cli.main(_import(folder, tmp_path / "thirty.csv", out)) != 0
    assert "give the manifest's rate, --feature-rate 30" in capsys.readouterr().err
    table.loc[0, "fps"] = None  # a row without its fps: the others' rate, not 'nan'
    table.to_csv(tmp_path / "unknown.csv", index=False)
    assert cli.main(_import(folder, tmp_path / "unknown.csv", out)) != 0
    assert "give the manifest's rate, --feature-rate 30" in capsys.readouterr().err
    table["fps"] = 25.0
    table.to_csv(tmp_path / "same.csv", index=False)
    assert cli.main(_import(folder, tmp_path / "same.csv", out, "--format", "ta3n-t7")) == 0


def _build_record(manifest: Path, benchmark: str, **options) -> None:
    """The ``<manifest>.build.json`` `avda manifest build` writes beside a manifest."""
    record = {"benchmark": benchmark, "options": options, "classes": {}}
    Path(f"{manifest}.build.json").write_text(json.dumps(record), encoding="utf-8")


@pytest.mark.parametrize(
    ("benchmark", "options", "named"),
    [
        ("ucf-hmdb", {"variant": "full", "ucf_fps": 25, "hmdb_fps": 30, "olympic_fps": 30},
         "avda manifest build ucf-hmdb --option ucf_fps=25 --option hmdb_fps=25, its other"),
        ("ucf-hmdb", {"variant": "olympic", "ucf_fps": 25, "hmdb_fps": 30, "olympic_fps": 30},
         "avda manifest build ucf-hmdb --option ucf_fps=25 --option olympic_fps=25, its other"),
        ("epic55-mmsada", {"fps": 60.0, "video_path_template": "{video_id}.MP4"},
         "avda manifest build epic55-mmsada --option fps=25, its other options as before"),
        ("epic100-uda", {"video_path_template": "{video_id}.MP4"}, "one value in its fps column"),
    ],
)  # fmt: skip
def test_the_mixed_rate_fix_is_that_of_the_manifests_builder(tmp_path, capsys, benchmark,
                                                            options, named):  # fmt: skip
    """A manifest of several rates is rebuilt with its own builder's frame-rate options (the
    ones of its domains), read from its .build.json; one whose builder has none (EPIC-100's
    rates come from its video info) gets the general fix. It named ucf-hmdb's for any."""
    folder = _ta3n_folder(tmp_path)
    table = pd.read_csv(_manifest(tmp_path / "m.csv"))
    second = "olympic" if options.get("variant") == "olympic" else "hmdb"
    table["domain"] = ["ucf", "ucf", second, second, "ucf"]
    table["fps"] = [25.0, 25.0, 30.0, 30.0, 25.0]
    manifest = tmp_path / "mixed.csv"
    table.to_csv(manifest, index=False)
    _build_record(manifest, benchmark, **options)
    assert cli.main(_import(folder, manifest, tmp_path / "x.zarr")) != 0
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and named in err, err
    assert ("hmdb_fps" in err) == (named.count("hmdb_fps") == 1), err


def test_ntsc_rates_are_refused_saying_how_far_off_and_the_true_rate(tmp_path, capsys):
    """29.97 fps (30000/1001) is not 30: the frames drift by 0.1 % of the time into the video
    (0.3 frames at 10 s, 108 an hour in), so --feature-rate 30 on a manifest at 29.97 is
    refused saying how far off and the rate to give, exactly enough that it imports."""
    folder = _ta3n_folder(tmp_path)
    table = pd.read_csv(_manifest(tmp_path / "m.csv"))
    ntsc = 30000 / 1001
    table["fps"] = ntsc
    table["stop_sec"] *= 25 / ntsc  # the frames counted at 29.97 fps
    table.loc[4, "stop_sec"] = 10.0  # the video without features: a 10 s clip
    table.to_csv(tmp_path / "ntsc.csv", index=False)
    out = tmp_path / "x.zarr"
    command = _import(folder, tmp_path / "ntsc.csv", out)
    command[command.index("--feature-rate") + 1] = "30"
    assert cli.main(command) != 0
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and not out.exists(), err
    assert "count seconds at 29.97002997 fps, not --feature-rate 30" in err
    assert "n/30 s, 0.3 frames off at 'v_gone_g05_c01''s end (10 s)" in err
    assert err.strip().endswith("give the manifest's rate, --feature-rate 29.97002997"), err
    command[command.index("--feature-rate") + 1] = "29.97002997"
    assert cli.main(command) == 0, capsys.readouterr().err
    assert open_cache(out).modality_info("rgb")["input"]["feature_rate"] == 29.97002997


def test_a_second_folder_for_the_same_segments_says_to_import_them_together(tmp_path, capsys):
    """TA3N's features come in two zips; imported one by one into a store, the second is
    refused: the message said 'one .npy folder' (of a folder of video folders) and not where
    the features go once together."""
    folder = _ta3n_folder(tmp_path)
    manifest = _manifest(tmp_path / "m.csv")
    part = tmp_path / "part"
    part.mkdir()
    (folder / "v_a_g01_c01").rename(part / "v_a_g01_c01")
    out = tmp_path / "x.zarr"
    assert cli.main(_import(part, manifest, out)) == 0
    capsys.readouterr()
    assert cli.main(_import(folder, manifest, out)) != 0
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and ".npy folder" not in err, err
    assert "TA3N's two zips unpacked into one folder" in err and "into a new store (-o)" in err
