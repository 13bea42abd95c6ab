"""Speech sources and mixing: espeak-ng synthesis and its cache, dynamic and fixed mixtures, folders of
recordings, and the LibriMix / wsj0-mix layouts (written in miniature under tmp_path)."""
from __future__ import annotations

import dataclasses
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import torch.nn.functional as F
from torch import Tensor

from apps.speech.audio import warp
from apps.speech.data import DynamicMixtures, FixedMixtures, SeparationDataModule
from apps.speech.espeak import Voice, synthesize
from apps.speech.mixing import Room, draw_mixture, mix, pick_utterances, place, read_on
from apps.speech.sources import PreparedMixtures, folder_speakers
from apps.speech.tts import ACCENTS, VARIANTS, cache_file, espeak_voice, f0_factor, sibling_voice, synthetic_speakers

LIBRIVOX = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "speech" / "librivox"
needs_librivox = pytest.mark.skipif(not LIBRIVOX.is_dir(), reason=f"no recordings under {LIBRIVOX}")


def test_espeak_voices_differ_and_synthesis_is_cached(tmp_path):
    assert len({espeak_voice(i) for i in range(100)}) == 100
    assert espeak_voice(0).name == "en-us-nyc_m6_p61_r158_g82"  # speaker i stays the same voice: caches stay valid
    speakers = synthetic_speakers(range(2), utterances=3, sample_rate=8000, cache_dir=tmp_path)
    assert [len(s) for s in speakers] == [3, 3]
    for utterance in speakers[0]:
        assert utterance.dtype == torch.float32 and 0.5 * 8000 < len(utterance) < 6 * 8000
        assert utterance.abs().max() > 0.05  # speech, trimmed of silence at both ends
        assert utterance[:80].abs().max() > 1e-3 or utterance[-80:].abs().max() > 1e-3
    path = cache_file(tmp_path, "espeak", espeak_voice(0), 8000)
    assert path.relative_to(tmp_path) == Path("espeak-8000/en-us-nyc_m6_p61_r158_g82.npz")
    assert path.is_file() and len(np.load(path).files) == 3
    stamp = path.stat().st_mtime_ns  # the cache is read, not synthesised again
    cached = synthetic_speakers(range(2), utterances=3, sample_rate=8000, cache_dir=tmp_path)
    assert path.stat().st_mtime_ns == stamp and torch.equal(cached[0][1], speakers[0][1])
    wideband = synthetic_speakers(range(2), utterances=3, sample_rate=16000, cache_dir=tmp_path)
    assert len(wideband[0][0]) == pytest.approx(2 * len(speakers[0][0]), abs=2)


def test_every_accent_and_variant_of_the_catalogue_speaks():
    for language in ACCENTS:
        assert len(synthesize("Hello.", Voice(language, "m1", 50, 160, 50))[0]) > 1000
    for variant in VARIANTS:
        assert len(synthesize("Hello.", Voice("en", variant, 50, 160, 50))[0]) > 1000


def test_espeak_names_a_missing_voice():
    with pytest.raises(ValueError, match="no voice variant 'nobody'"):
        synthesize("hello", Voice("en", "nobody", 50, 160, 50))
    with pytest.raises(ValueError, match="no language 'xx'"):
        synthesize("hello", Voice("xx", "m1", 50, 160, 50))


def test_mixture_is_the_sum_of_its_sources_with_gains_in_range():
    rng = np.random.default_rng(0)
    utterances = [torch.randn(3000), torch.randn(5000)]
    for _ in range(20):
        mixture, sources = mix(utterances, 4000, 5.0, rng)
        assert mixture.shape == (4000,) and sources.shape == (2, 4000)
        torch.testing.assert_close(mixture, sources.sum(0))
        assert mixture.abs().max() <= 0.9 + 1e-6
        rms = sources.square().mean(1).sqrt()  # unit RMS over the window times a gain in [-5, 5] dB each
        assert abs(20 * torch.log10(rms[0] / rms[1])) <= 10 + 1e-4
    mixture, sources = mix(utterances, None, 0.0, rng)  # "min" mode: the shorter utterance's length
    assert mixture.shape == (3000,)


def test_place_crops_long_and_pads_short_utterances():
    rng = np.random.default_rng(1)
    long = torch.arange(1.0, 101.0)
    crop = place(long, 10, rng)
    assert len(crop) == 10 and torch.equal(crop, torch.arange(crop[0], crop[0] + 10))
    short = place(torch.ones(4), 10, rng)
    assert short.sum() == 4 and len(short) == 10


def test_fixed_mixtures_repeat_and_dynamic_mixtures_do_not():
    speakers = [[torch.randn(2000) for _ in range(2)] for _ in range(4)]
    fixed = FixedMixtures(speakers, 2, 1000, 2.5, length=8, seed=3)
    first, again = fixed[5], fixed[5]
    assert torch.equal(first[0], again[0]) and first[2] == again[2]
    assert len({fixed[i][2].split("_")[1] for i in range(6)}) == 6  # all 6 speaker pairs before any repeats
    dynamic = DynamicMixtures(speakers, 2, 1000, 2.5, length=8)
    assert not torch.equal(dynamic[0][0], dynamic[0][0])
    with pytest.raises(ValueError, match="need 3 speakers"):
        FixedMixtures(speakers[:2], 3, 1000, 2.5, length=1, seed=0)


def test_same_speaker_fraction_of_training_draws():
    speakers = [[torch.randn(100) for _ in range(5)] for _ in range(10)]
    rng = np.random.default_rng(0)
    for fraction in (0.0, 0.3, 1.0):
        draws = [pick_utterances(speakers, 2, rng, fraction) for _ in range(2000)]
        same = np.mean([a[0] == b[0] for a, b in draws])
        assert abs(same - fraction) < 0.04  # binomial standard deviation 0.01 at 0.3
        assert all(sorted(a[1]) == list(range(5)) and sorted(b[1]) == list(range(5)) for a, b in draws if a[0] != b[0])
        assert all(sorted(a[1] + b[1]) == list(range(5)) for a, b in draws if a[0] == b[0])  # dealt out: none twice


def test_dynamic_same_speaker_mixtures_hold_one_speaker():
    # utterance u of speaker s: ones of length 100 + 10 s + u, so a source's non-zero count names its speaker
    speakers = [[torch.ones(100 + 10 * s + u) for u in range(3)] for s in range(6)]
    dynamic = DynamicMixtures(speakers, 2, 400, 2.5, length=20, same_speaker_fraction=1.0)
    for _, sources, _ in (dynamic[i] for i in range(len(dynamic))):
        lengths = (sources != 0).sum(dim=1) - 100
        assert lengths[0] // 10 == lengths[1] // 10 and lengths[0] != lengths[1]


def test_same_speaker_test_mixtures_mix_different_utterances_of_one_speaker():
    speakers = [[torch.ones(100 + 10 * s + u) for u in range(3)] for s in range(4)]  # lengths name speaker and utterance
    fixed = FixedMixtures(speakers, 2, 400, 2.5, length=8, seed=3, same_speaker=True)
    names = [fixed[i][2] for i in range(8)]
    assert {name.split("_")[1] for name in names[:4]} == {"0-0", "1-1", "2-2", "3-3"}  # every speaker before repeats
    for _, sources, name in (fixed[i] for i in range(8)):
        lengths = (sources != 0).sum(dim=1) - 100
        assert (lengths // 10 == int(name[-1])).all() and lengths[0] != lengths[1]
    with pytest.raises(ValueError, match="same-speaker mixtures needs 3 utterances of every speaker"):
        FixedMixtures([[torch.ones(5)] * 2], 3, 400, 2.5, length=1, seed=0, same_speaker=True)
    with pytest.raises(ValueError, match="needs speakers to mix"):
        SeparationDataModule(test="librimix", test_path="x", test_same_speaker=True)


def median_f0(waveform: Tensor, rate: int = 8000) -> float:
    """Median f0 (Hz) over voiced frames: 40 ms every 10 ms, louder than 10 % of the RMS, at the lag (2-20 ms) of the
    largest normalised autocorrelation where that exceeds 0.6 (torchaudio's detect_pitch_frequency makes octave errors)."""
    x, n, lags = waveform.double(), int(0.04 * rate), range(rate // 500, rate // 50 + 1)
    frames = x.unfold(0, n + lags[-1], rate // 100)
    frames = frames[frames[:, :n].square().mean(1) > 0.01 * x.square().mean()]
    correlation = torch.stack([F.cosine_similarity(frames[:, :n], frames[:, lag : lag + n], dim=1) for lag in lags], 1)
    peak, lag = correlation.max(1)
    return (rate / (lag[peak > 0.6] + lags[0])).median().item()


def test_f0_siblings_are_their_speaker_at_another_pitch(tmp_path):
    low, high = math.log1p(0.3 / 2), math.log1p(0.3)
    factors = [f0_factor(i, n, 0.3) for i in range(50) for n in (1, 2)]
    assert all(low <= abs(math.log(f)) <= high for f in factors) and 0.3 < np.mean([f > 1 for f in factors]) < 0.7
    assert f0_factor(0, 1, 0.3) == pytest.approx(1.18584, abs=1e-5)  # the same on every machine: caches stay valid
    for i in range(20):
        speaker, sibling = espeak_voice(i), sibling_voice("espeak", i, 1, 0.3)
        assert sibling_voice("espeak", i) == speaker and dataclasses.replace(sibling, pitch=speaker.pitch) == speaker
        assert sibling.pitch in (0, 99) or (sibling.pitch > speaker.pitch) == (f0_factor(i, 1, 0.3) > 1)
    # measured: the median f0 of a sentence moves by about f (voices 0-7 are not clipped; one sentence's median is
    # noisy, the mapping is fitted to the median over sentences)
    speakers = synthetic_speakers(range(8), 1, 8000, tmp_path)
    siblings = synthetic_speakers(range(8), 1, 8000, tmp_path, sibling=1, f0_shift=0.3)
    moved = [math.log(median_f0(siblings[i][0]) / median_f0(speakers[i][0])) / math.log(f0_factor(i, 1, 0.3)) for i in range(8)]
    assert all(0.4 < m < 1.6 for m in moved) and np.mean(moved) == pytest.approx(1, abs=0.15)
    for i in range(8):
        path = cache_file(tmp_path, "espeak", sibling_voice("espeak", i, 1, 0.3), 8000)
        assert path.is_file() and path != cache_file(tmp_path, "espeak", espeak_voice(i), 8000)


def utterance_runs(source: Tensor) -> list[int]:
    """Lengths of the non-zero runs of a source that lie inside its window (not cut by either end)."""
    edges = torch.diff(F.pad((source != 0).int(), (1, 1))).nonzero().flatten().tolist()
    return [stop - start for start, stop in zip(edges[::2], edges[1::2]) if start > 0 and stop < len(source)]


@pytest.mark.parametrize("pause", [None, (5, 10)])
def test_same_speaker_draws_read_from_f0_siblings(pause):
    # utterance u of speaker s: length 100 + 10 s + u; sibling n's samples cycle through n + 2 levels, so a source's
    # number of distinct values names its sibling and its runs' lengths name speaker and utterances
    speakers = [[torch.ones(100 + 10 * s + u) for u in range(6)] for s in range(4)]
    siblings = [[[torch.arange(100.0 + 10 * s + u) % (n + 2) + 1 for u in range(6)] for s in range(4)] for n in range(2)]
    same_speaker_draws = 0
    for seed in range(40):
        plain = draw_mixture(speakers, 2, 400, 2.5, np.random.default_rng(seed), 0.5, pause)
        _, sources = draw_mixture(speakers, 2, 400, 2.5, np.random.default_rng(seed), 0.5, pause, siblings)
        runs = [utterance_runs(source) for source in sources]
        assert runs == [utterance_runs(source) for source in plain[1]]  # the same draw, other voices at most
        if len({length // 10 for source_runs in runs for length in source_runs}) > 1:  # two speakers: unchanged
            assert torch.equal(sources, plain[1])
            continue
        assert [len(source[source != 0].unique()) for source in sources] == [2, 3]  # source n: sibling n
        assert not set(runs[0]) & set(runs[1])  # no sentence twice in a mixture
        same_speaker_draws += all(runs)
    assert same_speaker_draws >= 10


def test_room_impulse_responses_decay_at_their_rt60_with_their_direct_to_reverberant_ratio():
    room = Room(1.0, 8000, rt60=(0.4, 0.4), drr_db=(10.0, 10.0))
    rir = room.impulse_response(np.random.default_rng(0))
    assert len(rir) == 3200 and rir[0] == 1.0
    assert 10 * math.log10(1.0 / rir[1:].square().sum()) == pytest.approx(10.0, abs=1e-4)  # the direct path over the tail
    early, late = rir[1:401].square().mean(), rir[-400:].square().mean()  # 0-50 ms against 350-400 ms
    assert 10 * math.log10(early / late) == pytest.approx(60 * 0.35 / 0.4, abs=3)  # 60 dB per rt60
    click = torch.zeros(4000)
    click[100] = 1.0
    rng = np.random.default_rng(0)
    rng.random()  # the draw against the fraction comes first
    assert torch.allclose(room(click, np.random.default_rng(0)), F.pad(room.impulse_response(rng), (100, 700)), atol=1e-6)
    assert room(click, np.random.default_rng(1)).shape == click.shape  # the tail past the end cut
    assert Room(0.0, 8000)(click, np.random.default_rng(0)) is click


def test_dynamic_mixtures_reverberate_their_fraction_of_sources():
    click = torch.zeros(300)
    click[0] = 1.0
    speakers = [[click] for _ in range(4)]
    for fraction, expected in ((0.0, 0.0), (1.0, 1.0), (0.5, 0.5)):
        dynamic = DynamicMixtures(speakers, 2, 800, 0.0, length=400, room=Room(fraction, 8000, rt60=(0.05, 0.05)))
        reverberant = []
        for mixture, sources, _ in (dynamic[i] for i in range(200)):
            assert torch.allclose(mixture, sources.sum(0), atol=1e-6)
            reverberant += [(source != 0).sum().item() > 1 for source in sources]  # a click has one sample, a room many
        assert np.mean(reverberant) == pytest.approx(expected, abs=0.07)


def test_passages_read_on_with_pauses_until_the_segment_is_full():
    rng = np.random.default_rng(2)
    utterances = [torch.full((100,), float(k + 1)) for k in range(5)]
    passage = read_on(utterances, 250, (10, 20), rng)
    values = passage.unique_consecutive().tolist()
    assert values == [1.0, 0.0, 2.0, 0.0, 3.0]  # three utterances reach 250 samples, in order, pauses between
    assert 320 <= len(passage) < 340 and (passage != 0).sum() == 300
    assert torch.equal(read_on(utterances[:1], 250, (10, 20), rng), utterances[0])  # too few: all there is
    # utterance u of speaker s: ones of length 100 + 10 s + u; every source is speech from its first to last sample
    speakers = [[torch.ones(100 + 10 * s + u) for u in range(6)] for s in range(4)]
    dynamic = DynamicMixtures(speakers, 2, 300, 2.5, length=50, same_speaker_fraction=0.5, pause=(5, 10))
    for _, sources, _ in (dynamic[i] for i in range(len(dynamic))):
        assert ((sources != 0).sum(dim=1) > 300 - 2 * 10).all()  # at most two pauses in a 300-sample window


def write_tone(path: Path, seconds: float, rate: int, frequency: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    soundfile.write(path, 0.3 * np.sin(2 * np.pi * frequency * t), rate)


def test_folder_speakers_by_subdirectory_or_by_file(tmp_path):
    for speaker in ("a", "b"):
        for k in range(2):
            write_tone(tmp_path / "by_dir" / speaker / "chapter" / f"{k}.wav", 0.5, 16000, 200 + k)
    speakers = folder_speakers(tmp_path / "by_dir", 8000)
    assert [len(s) for s in speakers] == [2, 2] and len(speakers[0][0]) == 4000
    write_tone(tmp_path / "flat" / "x.flac", 0.25, 8000, 300)
    write_tone(tmp_path / "flat" / "y.wav", 0.25, 8000, 400)
    assert [len(s) for s in folder_speakers(tmp_path / "flat", 8000)] == [1, 1]
    with pytest.raises(FileNotFoundError, match="no folder of recordings"):
        folder_speakers(tmp_path / "missing", 8000)


def test_cached_folder_speakers_equal_the_decoded_ones_and_are_decoded_once(tmp_path, monkeypatch):
    for speaker, frequencies in (("a", (200, 250, 300)), ("b", (400,))):
        for k, frequency in enumerate(frequencies):
            write_tone(tmp_path / "dir" / speaker / f"{k}.flac", 0.5 + 0.25 * k, 16000, frequency)
    decoded = folder_speakers(tmp_path / "dir", 8000)
    cached = folder_speakers(tmp_path / "dir", 8000, tmp_path / "cache")
    assert [len(s) for s in cached] == [3, 1] and len(list((tmp_path / "cache" / "recordings-8000").iterdir())) == 4
    for ours, theirs in zip(cached, decoded):
        assert [len(u) for u in ours] == [len(u) for u in theirs]
        assert all(torch.allclose(a, b, atol=1 / 32768) and a.dtype == torch.float32 for a, b in zip(ours, theirs))
    assert torch.equal(cached[0][-1], cached[0][2])
    with pytest.raises(IndexError, match="recording 3 of 3"):
        cached[0][3]
    restored = pickle.loads(pickle.dumps(cached[0]))  # as a spawned data-loader worker gets it
    assert restored._mapped is None and torch.equal(restored[1], cached[0][1])

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr("apps.speech.sources.load_mono", no_decoding)
    assert torch.equal(folder_speakers(tmp_path / "dir", 8000, tmp_path / "cache")[1][0], cached[1][0])
    monkeypatch.undo()
    write_tone(tmp_path / "dir" / "b" / "0.flac", 1.0, 16000, 600)  # a changed recording is decoded again
    (changed,) = folder_speakers(tmp_path / "dir", 8000, tmp_path / "cache")[1]
    assert len(changed) == 8000 and dominant_frequency(changed, 8000) == pytest.approx(600, abs=2)


def test_recordings_make_their_fraction_of_the_synthetic_training_mixtures(tmp_path):
    for speaker, frequency in (("a", 500), ("b", 700)):  # two real speakers, each a tone
        for k in range(2):
            write_tone(tmp_path / "real" / speaker / f"{k}.ogg", 1.0, 16000, frequency)  # Ogg Vorbis, resampled on reading
    settings = dict(train_voices=2, val_voices=2, utterances_per_voice=2, train_mixtures=10, cache_dir=str(tmp_path / "cache"))
    data = SeparationDataModule(recordings=str(tmp_path / "real"), recordings_fraction=0.3, same_speaker_fraction=0.5, **settings)
    data.setup("fit")
    synthetic, real = data.datasets["train"].datasets
    assert (len(synthetic), len(real)) == (7, 3) and len(data.datasets["train"]) == 10
    assert len(real.speakers) == 2 and real.same_speaker_voices is None and len(synthetic.speakers) == 2
    tones = torch.sin(2 * math.pi * torch.tensor([[500.0], [700.0]]) * torch.arange(8000) / 8000)
    for _, sources, _ in (real[i] for i in range(8)):  # every source one of the two tones (or silence where placed)
        for source in sources:
            assert F.cosine_similarity(source.abs().unsqueeze(0), tones.abs(), dim=1).max() > 0.9 or source.abs().max() == 0
    assert torch.equal(data.datasets["val"].speakers[0][0], data.espeak_voices("val")[0][0])  # validation stays synthetic
    assert data.train_dataloader().sampler.__class__.__name__ == "RandomSampler"  # the two kinds interleaved
    alone = SeparationDataModule(**settings)
    alone.setup("fit")
    assert isinstance(alone.datasets["train"], DynamicMixtures) and alone.train_dataloader().sampler.__class__.__name__ == "SequentialSampler"
    for bad in ({"recordings_fraction": 0.0}, {"recordings_fraction": 1.5}, {"train": "folder", "train_path": "x"}):
        with pytest.raises(ValueError, match="data.recordings adds real speakers to the synthetic voices"):
            SeparationDataModule(recordings=str(tmp_path / "real"), **bad)
    for k in range(2):
        write_tone(tmp_path / "one" / "a" / f"{k}.wav", 1.0, 8000, 500)
    with pytest.raises(ValueError, match="holds 1 speaker"):
        SeparationDataModule(recordings=str(tmp_path / "one"), **settings).setup("fit")


def dominant_frequency(waveform: Tensor, rate: int) -> float:
    return float(torch.fft.rfft(waveform).abs().argmax()) * rate / len(waveform)


def test_warp_scales_pitch_up_and_duration_down():
    rate, tone = 8000, torch.sin(2 * math.pi * 300 * torch.arange(8000) / 8000)
    for factor in (0.8, 1.25):
        warped = warp(tone, factor, rate)
        assert len(warped) == round(8000 / factor)
        assert dominant_frequency(warped, rate) == pytest.approx(300 * factor, abs=2)
    assert torch.equal(warp(tone, 1.0, rate), tone)
    with pytest.raises(ValueError, match="must be positive"):
        warp(tone, 0.0, rate)


def test_test_warps_make_each_source_another_apparent_speaker(tmp_path):
    for name, frequency in (("a", 400), ("b", 600)):  # two recordings, one speaker each
        write_tone(tmp_path / f"{name}.wav", 1.0, 8000, frequency)
    data = SeparationDataModule(test="folder", test_path=str(tmp_path), test_mixtures=2, test_warps=[1.0, 0.5])
    data.setup("test")
    for mixture, sources, name in (data.datasets["test"][i] for i in range(2)):
        assert name.endswith("_0-1")  # the one pair
        assert dominant_frequency(sources[0], 8000) == pytest.approx(400, abs=2)  # as recorded
        assert dominant_frequency(sources[1], 8000) == pytest.approx(300, abs=2)  # an octave down, twice as long
        assert len(mixture) == 8000  # "min" mode: the unwarped one's length
    for bad in ([1.0], [1.0, 0.0]):
        with pytest.raises(ValueError, match="one positive factor per source"):
            SeparationDataModule(test="folder", test_path=str(tmp_path), test_warps=bad)
    with pytest.raises(ValueError, match="speakers to mix"):
        SeparationDataModule(test="librimix", test_path="x", test_warps=[1.0, 0.8])


@needs_librivox
def test_librivox_test_mixtures_pair_every_recording():
    data = SeparationDataModule(test="folder", test_path=str(LIBRIVOX), test_mixtures=10)
    data.setup("test")
    items = [data.datasets["test"][i] for i in range(10)]
    assert len({name.split("_")[1] for _, _, name in items}) == 10  # the 10 pairs of 5 recordings
    for mixture, sources, _ in items:
        assert sources.shape == (2, len(mixture)) and len(mixture) > 2 * 8000  # whole utterances ("min" mode)


@pytest.mark.parametrize("layout", ["librimix", "wsj0_mix"])
def test_prepared_mixture_layouts(layout, tmp_path):
    split_dir = tmp_path / ("wav8k/min/test" if layout == "librimix" else "2speakers/wav8k/min/tt")
    mixture_dir = "mix_clean" if layout == "librimix" else "mix"
    for name in ("m1", "m2"):
        for folder, frequency in ((mixture_dir, 100), ("s1", 200), ("s2", 300)):
            write_tone(split_dir / folder / f"{name}.wav", 0.5, 8000, frequency)
    if layout == "librimix":  # the metadata CSV lists the mixtures, here only one of the two
        (tmp_path / "wav8k/min/metadata").mkdir(parents=True)
        (tmp_path / "wav8k/min/metadata/mixture_test_mix_clean.csv").write_text("mixture_ID,mixture_path\nm2,x\n")
    data = PreparedMixtures.from_layout(layout, tmp_path, "test", 8000, num_speakers=2)
    assert len(data) == (1 if layout == "librimix" else 2)
    mixture, sources, name = data[0]
    assert mixture.shape == (4000,) and sources.shape == (2, 4000) and name == ("m2" if layout == "librimix" else "m1")
    cropped = PreparedMixtures.from_layout(layout, tmp_path, "test", 8000, num_speakers=2, segment=1000)
    assert cropped[0][1].shape == (2, 1000)
    with pytest.raises(FileNotFoundError, match="data.path must be the"):
        PreparedMixtures.from_layout(layout, tmp_path / "nowhere", "test", 8000, num_speakers=2)


def test_datamodule_rejects_bad_settings(tmp_path):
    with pytest.raises(ValueError, match="data.train='tts' is not one of"):
        SeparationDataModule(train="tts")
    with pytest.raises(ValueError, match="needs data.test_path"):
        SeparationDataModule(test="folder")
    with pytest.raises(ValueError, match="8000 or 16000"):
        SeparationDataModule(sample_rate=44100)
    with pytest.raises(ValueError, match="must list some of espeak, flite, festival, each once"):
        SeparationDataModule(engines=["espeak", "espeak"])
    with pytest.raises(ValueError, match="needs dynamic mixing"):
        SeparationDataModule(train="librimix", train_path="x", same_speaker_fraction=0.5)
    with pytest.raises(ValueError, match="data.passages needs dynamic mixing"):
        SeparationDataModule(train="wsj0_mix", train_path="x", passages=True)
    for bad in ({}, {"same_speaker_fraction": 0.5, "train": "folder", "train_path": "x"}):
        with pytest.raises(ValueError, match="set data.same_speaker_fraction > 0 .* and data.train=espeak"):
            SeparationDataModule(same_speaker_f0_shift=0.3, **bad)
    with pytest.raises(ValueError, match="must be >= 0"):
        SeparationDataModule(same_speaker_fraction=0.5, same_speaker_f0_shift=-0.1)
    with pytest.raises(ValueError, match="data.reverb_fraction=0.5 must be in"):
        SeparationDataModule(train="librimix", train_path="x", reverb_fraction=0.5)
    for bad in ({"reverb_rt60": [0.5, 0.1]}, {"reverb_rt60": [0.0, 0.1]}, {"reverb_drr_db": [10.0]}):
        with pytest.raises(ValueError, match="must each be a range"):
            SeparationDataModule(reverb_fraction=0.5, **bad)
    assert SeparationDataModule(reverb_fraction=0.5, sample_rate=16000).room == Room(0.5, 16000, (0.1, 0.5), (3.0, 15.0))
    assert SeparationDataModule(passages=True, sample_rate=16000).pause == (1600, 8000)
    data = SeparationDataModule(train_voices=2, val_voices=2, utterances_per_voice=1, same_speaker_fraction=0.5, cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="raise data.utterances_per_voice"):
        data.setup("fit")


@pytest.mark.parametrize("shift", [0.0, 0.3])
def test_f0_siblings_are_synthesised_for_the_training_speakers_only_when_asked(shift, tmp_path):
    data = SeparationDataModule(train_voices=2, val_voices=2, utterances_per_voice=2, same_speaker_fraction=0.5,
                                same_speaker_f0_shift=shift, cache_dir=str(tmp_path))  # fmt: skip
    data.setup("fit")
    voices = data.datasets["train"].same_speaker_voices
    files = {path.stem for path in (tmp_path / "espeak-8000").iterdir()}
    assert files >= {espeak_voice(i).name for i in range(4)}  # training and validation speakers
    if not shift:
        assert voices is None and len(files) == 4
        return
    assert voices[0] is data.datasets["train"].speakers and files - {espeak_voice(i).name for i in range(4)} == {
        sibling_voice("espeak", i, 1, shift).name for i in range(2)
    }
    expected = synthetic_speakers(range(2), 2, 8000, tmp_path, sibling=1, f0_shift=shift)
    assert all(torch.equal(a, b) for x, y in zip(voices[1], expected) for a, b in zip(x, y))
