"""Audio cut short by damage (issue 18, item 7): a file whose audio ends before its container
(or WAV header) says is read with the rest of the declared track marked lost, so a segment
there fails with its reason instead of being stored as silence. Before, a file cut in half
decoded to half its length with nothing lost, and later segments were zero padded."""

from __future__ import annotations

import pandas as pd
import pytest

from avda.errors import MediaError
from avda.extract import audio as audio_lib
from avda.extract.inputs import _lost_note

FILES = {"video/v_GGSY1Qvo990.mp4": 18.16, "audio/test.wav": 6.56}


@pytest.mark.parametrize("name", sorted(FILES))
def test_a_cut_file_keeps_its_declared_length_with_the_rest_lost(media, tmp_path, name):
    source = media / name
    intact = audio_lib.read_audio(source, 16000)
    assert intact.lost == () and intact.duration == pytest.approx(FILES[name], abs=0.05)
    cut = tmp_path / source.name
    cut.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    track = audio_lib.read_audio(cut, 16000)
    assert track.duration == pytest.approx(FILES[name], abs=0.05)
    assert len(track.lost) == 1
    start, stop = track.lost[0]
    assert 0.3 * FILES[name] < start < 0.7 * FILES[name]
    assert stop == pytest.approx(track.duration, abs=1e-3)
    # The kept half is the intact file's audio, sample for sample (up to the cut's last packet).
    kept = int(start * 16000) - 16000  # leave a second for the resampler's edge
    assert abs(track.samples[:kept] - intact.samples[:kept]).max() < 1e-4
    # A segment after the cut fails with its reason; one before it is intact.
    late = pd.Series({"uid": "late", "start_sec": stop - 1.5, "stop_sec": stop - 0.5})
    with pytest.raises(MediaError, match="the file was cut short"):
        _lost_note(track, late, [(stop - 1.5, stop - 0.5)])
    early = pd.Series({"uid": "early", "start_sec": 0.0, "stop_sec": 1.0})
    assert _lost_note(track, early, [(0.0, 1.0)]) == ""
