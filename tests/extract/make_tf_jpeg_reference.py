"""Record how TensorFlow decodes the shared JPEG frames, for tests/extract/data/tf_decode_jpeg.json.

MM-SADA reads its RGB and flow JPEGs with ``tf.image.decode_jpeg(..., channels=3 or 1)`` at the
default ``dct_method`` (``src/data_gen/preprocessing.py`` l. 73 of jonmun/MM-SADA-code):
libjpeg's fast integer IDCT. avda's ``--jpeg-dct fast`` must give the same arrays. TensorFlow
is never imported by avda or by the test suite; only this script runs it, in a throwaway
environment::

    python3.11 -m venv /tmp/tfenv && /tmp/tfenv/bin/pip install tensorflow-cpu
    /tmp/tfenv/bin/python tests/extract/make_tf_jpeg_reference.py ../shared/data

Each file's decoded array is recorded by shape, sha256 of its bytes and mean; the default
``dct_method`` and ``"INTEGER_FAST"`` are checked to agree, and ``"INTEGER_ACCURATE"`` is
recorded too (Pillow's decoding).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf


def record(array: np.ndarray) -> dict:
    array = np.ascontiguousarray(array)
    return {
        "shape": list(array.shape),
        "sha256": hashlib.sha256(array.tobytes()).hexdigest(),
        "mean": round(float(array.mean()), 6),
    }


def main(shared: Path) -> None:
    folder = shared / "media" / "frames" / "mmaction2_imgs"
    out: dict = {"tensorflow": tf.__version__, "folder": "media/frames/mmaction2_imgs", "files": {}}
    for path in sorted(folder.glob("*.jpg")):
        data = path.read_bytes()
        channels = 1 if path.name.startswith(("x_", "y_")) else 3  # flow u/v: one channel
        default = tf.io.decode_jpeg(data, channels=channels).numpy()
        fast = tf.io.decode_jpeg(data, channels=channels, dct_method="INTEGER_FAST").numpy()
        accurate = tf.io.decode_jpeg(data, channels=channels, dct_method="INTEGER_ACCURATE").numpy()
        assert np.array_equal(default, fast), path  # the default is the fast IDCT
        out["files"][path.name] = {
            "channels": channels,
            "default": record(default),
            "accurate": record(accurate),
        }
    target = Path(__file__).parent / "data" / "tf_decode_jpeg.json"
    target.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {target} ({len(out['files'])} files)")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
