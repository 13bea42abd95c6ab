"""Fish Fillets dialogue as real speakers: speakers named by the level scripts' subtitle fonts, what is left out and
why, the folder written (a miniature game under tmp_path), and the Debian packages where they are installed."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile

from apps.speech import fillets
from apps.speech.sources import folder_speakers
from tests.speech.test_data import write_tone

SCRIPT = """
dialogId("hello-v", "font_big", "Hello.")
dialogStr("Ahoj.")
dialogId("hi-m", "font_small", "Hi.")
dialogId("again-m", "font_small", "Again.")
dialogId("more-m", "font_small", "More.")
dialogId("squawk", "font_parrot", "Squawk.")
dialogId("both", "font_both", "Together.")
"""


def miniature_game(root):
    (root / "script" / "cabin").mkdir(parents=True)
    (root / "script" / "cabin" / "dialogs_cs.lua").write_text(SCRIPT)
    for line, frequency in (("hello-v", 200), ("hi-m", 300), ("again-m", 310), ("more-m", 320), ("squawk", 900), ("both", 400), ("unnamed", 500)):
        write_tone(root / "sound" / "cabin" / "cs" / f"{line}.ogg", 0.5, 22050, frequency)
    soundfile.write(root / "sound" / "cabin" / "cs" / "hello-v.ogg", np.zeros((11025, 2)) + 0.1 * np.sin(np.arange(11025) / 9)[:, None], 22050)  # stereo
    write_tone(root / "sound" / "cabin" / "nl" / "hi-m.ogg", 0.5, 22050, 300)  # no Dutch script: no speaker


def test_speakers_come_from_the_subtitle_fonts_and_the_rest_is_left_out_with_a_reason(tmp_path):
    miniature_game(tmp_path)
    speakers, left_out = fillets.dialogue(tmp_path)
    assert {name: [p.stem for p in paths] for name, paths in speakers.items()} == {
        "cs-m": ["again-m", "hi-m", "more-m"], "cs-v": ["hello-v"], "cs-cabin-parrot": ["squawk"],
    }
    assert sorted(entry.split("/")[-1] for entry in left_out) == [
        "both.ogg (both fish at once)", "hi-m.ogg (no speaker in the script)", "unnamed.ogg (no speaker in the script)"
    ]
    with pytest.raises(FileNotFoundError, match="apt-get install fillets-ng-data-cs"):
        fillets.dialogue(tmp_path / "nothing")


@pytest.mark.parametrize("codec", ["flac", "opus"])
def test_written_speakers_are_a_folder_of_one_channel_recordings_at_the_asked_rate(codec, tmp_path):
    miniature_game(tmp_path / "game")
    kept, left_out = fillets.write_speakers(tmp_path / "out", tmp_path / "game", ("cs",), 8000, codec, min_lines=2)
    assert set(kept) == {"cs-m"} and kept["cs-m"] == pytest.approx(1.5, abs=0.1)
    assert "cs-v (1 lines, fewer than 2)" in left_out and "cs-cabin-parrot (1 lines, fewer than 2)" in left_out
    files = sorted((tmp_path / "out" / "cs-m").iterdir())
    assert [f.name for f in files] == [f"cabin-{line}{fillets.SUFFIX[codec]}" for line in ("again-m", "hi-m", "more-m")]
    assert all(soundfile.info(f).samplerate == 8000 and soundfile.info(f).channels == 1 for f in files)
    (speaker,) = folder_speakers(tmp_path / "out", 8000)
    peak = [np.abs(np.fft.rfft(u.numpy())).argmax() * 8000 / len(u) for u in speaker]
    assert peak == pytest.approx([310, 300, 320], abs=8)
    with pytest.raises(ValueError, match="must be one of flac, opus"):
        fillets.write_speakers(tmp_path / "out", tmp_path / "game", codec="mp3")


@pytest.mark.skipif(not (fillets.ROOT / "sound").is_dir(), reason=f"the packages are not installed: {fillets.FIX}")
def test_the_debian_packages_hold_four_fish_actors_and_the_czech_characters():
    speakers, left_out = fillets.dialogue()
    assert {name: len(paths) for name, paths in speakers.items() if name[3:] in ("v", "m")} == {
        "cs-m": 730, "cs-v": 691, "nl-m": 783, "nl-v": 743
    }
    assert len(speakers) > 30 and all(name.startswith("cs-") for name in speakers if name[3:] not in ("v", "m"))
    reasons = [entry.rsplit(" (", 1)[1] for entry in left_out]
    assert {reason: reasons.count(reason) for reason in reasons} == {
        "no speaker in the script)": 69, "both fish at once)": 1, "empty)": 2
    }
