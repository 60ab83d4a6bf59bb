"""``--jpeg-dct fast``: frame and flow JPEGs decoded as TensorFlow decodes them (MM-SADA's
input), checked against arrays TensorFlow decoded from the shared frames
(``data/tf_decode_jpeg.json``, written by ``make_tf_jpeg_reference.py``: TensorFlow itself,
never imported here)."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from tests.extract.conftest import tiny

from avda import cli
from avda.cache import open_cache
from avda.errors import CacheError, ConfigError, MissingDependencyError
from avda.extract import backbones, runner
from avda.extract import frames as frames_lib
from avda.extract.inputs import InputPaths, SegmentDataset
from avda.extract.transforms import centre_crop

REFERENCE = json.loads((Path(__file__).parent / "data" / "tf_decode_jpeg.json").read_text())


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


@pytest.mark.parametrize("name", sorted(REFERENCE["files"]))
def test_fast_is_tensorflows_decode_jpeg_and_accurate_its_integer_accurate(media, name):
    """The fast decoding equals ``tf.io.decode_jpeg``'s default byte for byte (RGB and the
    one-channel flow JPEGs); the accurate one (Pillow) equals TensorFlow's
    ``INTEGER_ACCURATE``, and the two differ on every file."""
    recorded = REFERENCE["files"][name]
    path = media.parent / REFERENCE["folder"] / name
    mode = "L" if recorded["channels"] == 1 else "RGB"
    fast = frames_lib.read_image(path, shorter_side=None, mode=mode, dct="fast")
    accurate = frames_lib.read_image(path, shorter_side=None, mode=mode)
    shape = tuple(recorded["default"]["shape"])
    assert fast.reshape(shape).dtype == np.uint8
    assert _digest(fast.reshape(shape)) == recorded["default"]["sha256"]
    assert _digest(accurate.reshape(shape)) == recorded["accurate"]["sha256"]
    assert recorded["default"]["sha256"] != recorded["accurate"]["sha256"]


def test_the_segment_dataset_reads_the_fast_decoding(epic_folders):
    """A segment's RGB clip and flow stacks are the fast-decoded files, cropped as the recipe
    says (the frames TBN reads), and differ from the accurate ones."""
    rgb_root, flow_root, manifest = epic_folders
    recipe = tiny("ta3n", resize_shorter=240)  # the frames' own size: decoded, not resized
    segments = manifest.iloc[[0]]
    clips = {}
    for dct in ("fast", "accurate"):
        inputs = InputPaths(frames=rgb_root, flow=flow_root, jpeg_dct=dct)
        for modality in ("rgb", "flow"):
            spec = backbones.create("tbn", modality=modality).input_spec
            dataset = SegmentDataset(segments, np.array([0]), inputs, recipe, modality, spec, None)
            _, x, status, error = dataset[0]
            assert error == "" or not error, error
            clips[dct, modality] = x.numpy()
    folder = rgb_root / "P01" / "P01_01"
    held = {
        n: frames_lib.read_image(
            folder / f"frame_{n:010d}.jpg", shorter_side=None, mode="RGB", dct="fast"
        )
        for n in range(1, 11)
    }
    rgb = clips["fast", "rgb"]
    for k in range(rgb.shape[0]):  # every snippet frame is one of the fast-decoded files
        frame = rgb[k, 0]
        assert any(np.array_equal(frame, centre_crop(h, 64)) for h in held.values())
    assert not np.array_equal(clips["fast", "rgb"], clips["accurate", "rgb"])
    assert not np.array_equal(clips["fast", "flow"], clips["accurate", "flow"])


def test_a_store_records_its_jpeg_decoding_and_refuses_the_other(epic_folders, tmp_path):
    rgb_root, flow_root, manifest = epic_folders
    options = dict(
        recipe=tiny("ta3n"),
        modalities=[runner.ModalitySpec("rgb", "tbn"), runner.ModalitySpec("flow", "tbn")],
        workers=0,
        progress=False,
        batch_size=25,
    )
    out = tmp_path / "fast.zarr"
    result = runner.extract(
        manifest, out=out, frames=rgb_root, flow=flow_root, jpeg_dct="fast", **options
    )
    assert result.ok and result.done == 4, result.failures
    store = open_cache(out)
    assert store.modality_info("rgb")["input"] == {"source": "frames", "jpeg_dct": "fast"}
    assert store.modality_info("flow")["input"]["jpeg_dct"] == "fast"
    assert "from flow-frames (jpeg_dct fast): done 2" in store.summary()  # avda cache info
    with pytest.raises(CacheError, match="jpeg_dct"):
        runner.extract(manifest, out=out, frames=rgb_root, flow=flow_root, **options)
    accurate = tmp_path / "accurate.zarr"
    runner.extract(manifest, out=accurate, frames=rgb_root, flow=flow_root, **options)
    # a store made the accurate way records what stores made before the option record
    assert open_cache(accurate).modality_info("rgb")["input"] == {"source": "frames"}
    assert not np.allclose(open_cache(accurate).load("flow"), store.load("flow"))


def test_bad_values_and_a_missing_decoder_are_one_line(epic_folders, tmp_path, monkeypatch):
    rgb_root, _, _ = epic_folders
    with pytest.raises(ConfigError, match="--jpeg-dct 'quick': expected accurate or fast"):
        InputPaths(frames=rgb_root, jpeg_dct="quick").check(["rgb"])
    with pytest.raises(ConfigError, match="no modality here reads them"):
        InputPaths(videos=tmp_path, jpeg_dct="fast").check(["rgb"])
    monkeypatch.setitem(sys.modules, "simplejpeg", None)  # not installed
    image = rgb_root / "P01" / "P01_01" / "frame_0000000001.jpg"
    with pytest.raises(MissingDependencyError, match=r"pip install 'avda\[jpeg\]'"):
        frames_lib.read_image(image, shorter_side=None, mode="RGB", dct="fast")


def test_the_cli_option(epic_folders, tmp_path, capsys):
    rgb_root, _, manifest = epic_folders
    path = tmp_path / "m.csv"
    manifest.to_csv(path, index=False)
    code = cli.main(
        ["extract", "--manifest", str(path), "--frames", str(rgb_root), "--jpeg-dct", "quick",
         "-o", str(tmp_path / "x.zarr"), "-q"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code != 0 and "--jpeg-dct 'quick'" in err and "Traceback" not in err


def _jpegs(media: Path, tmp_path: Path) -> list[Path]:
    """The shared frames and JPEGs of a real 1280 x 720 frame in several layouts: 4:4:4, 4:2:2,
    4:2:0, progressive, grey, CMYK."""
    import av
    from PIL import Image

    with av.open(str(media / "video" / "bigbuckbunny.mp4")) as container:
        frame = next(container.decode(video=0)).to_ndarray(format="rgb24")
    image = Image.fromarray(frame)
    made = []
    for name, save in (
        ("444", dict(subsampling=0)),
        ("422", dict(subsampling=1)),
        ("420", dict(subsampling=2)),
        ("progressive", dict(progressive=True)),
    ):
        made.append(tmp_path / f"{name}.jpg")
        image.save(made[-1], "JPEG", quality=90, **save)
    made.append(tmp_path / "grey.jpg")
    image.convert("L").save(made[-1], "JPEG", quality=90)
    made.append(tmp_path / "cmyk.jpg")
    image.convert("CMYK").save(made[-1], "JPEG", quality=90)
    return sorted((media / "frames" / "mmaction2_imgs").glob("*.jpg")) + made


def test_accurate_arrays_are_pillows_whichever_library_decodes_them(media, tmp_path, monkeypatch):
    """Without resizing, a YCbCr JPEG read as RGB (or a grey one as L) is decoded by simplejpeg
    for speed: the arrays must be Pillow's, in every layout, resized or not, and the same
    without simplejpeg installed."""
    decoded, paths = {}, _jpegs(media, tmp_path)
    for path in paths:
        for mode in ("RGB", "L"):
            for side in (None, 128):
                data = path.read_bytes()
                pillow = frames_lib._read_with_pillow(path, data, shorter_side=side, mode=mode)
                got = frames_lib.read_image(path, shorter_side=side, mode=mode)
                np.testing.assert_array_equal(got, pillow, err_msg=f"{path.name} {mode} {side}")
                decoded[path.name, mode, side] = got
    # the fast route is taken where it applies (else this test would check Pillow twice)
    frame = media / "frames" / "mmaction2_imgs" / "img_00001.jpg"
    taken = frames_lib._accurate_by_simplejpeg(frame.read_bytes(), shorter_side=None, mode="RGB")
    assert taken is not None
    monkeypatch.setitem(sys.modules, "simplejpeg", None)  # not installed: Pillow throughout
    for (name, mode, side), array in decoded.items():
        path = next(p for p in paths if p.name == name)
        again = frames_lib.read_image(path, shorter_side=side, mode=mode)
        np.testing.assert_array_equal(again, array)


def test_a_missing_decoder_stops_the_run_before_any_work(epic_folders, tmp_path, monkeypatch):
    """Without simplejpeg, --jpeg-dct fast is one line before the store is made: it was a store
    created and every segment failed with the same message (exit code 3, a failures file)."""
    rgb_root, _, manifest = epic_folders
    monkeypatch.setitem(sys.modules, "simplejpeg", None)  # not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'avda\[jpeg\]'"):
        InputPaths(frames=rgb_root, jpeg_dct="fast").check(["rgb"])
    out = tmp_path / "fast.zarr"
    with pytest.raises(MissingDependencyError, match=r"--jpeg-dct fast needs simplejpeg"):
        runner.extract(
            manifest, out=out, frames=rgb_root, jpeg_dct="fast", recipe=tiny("ta3n"),
            modalities=[runner.ModalitySpec("rgb", "tbn")], workers=0, progress=False,
        )  # fmt: skip
    assert not out.exists()
    InputPaths(frames=rgb_root).check(["rgb"])  # the default decoding needs no simplejpeg
