"""The separate verb's pieces: chunked separation with an oracle separator, and bad input files."""
from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import soundfile
import torch

from apps.speech.separate import match_to, prepare_input, separate_in_chunks
from torchmetrics.functional.audio import scale_invariant_signal_noise_ratio


def speech_like(length: int, seed: int, pauses: bool = True) -> torch.Tensor:
    """Noise under a slow random envelope, with pauses (some chunk overlaps silent for one source) or without."""
    generator = torch.Generator().manual_seed(seed)
    envelope = torch.nn.functional.interpolate(torch.rand(1, 1, length // 400, generator=generator), size=length, mode="linear")[0, 0]
    return torch.randn(length, generator=generator) * (envelope > 0.3 if pauses else 1.0) * envelope


class OracleSeparator:
    """Returns the true sources of whichever stretch of the mixture it is given, in a random order per call
    and (if `rescale`) each with a random gain per call: what a separation model may legitimately do."""

    def __init__(self, mixture: torch.Tensor, sources: torch.Tensor, rescale: bool) -> None:
        self.mixture, self.sources, self.rescale = mixture, sources, rescale
        self.rng = np.random.default_rng(0)

    def __call__(self, piece: torch.Tensor) -> torch.Tensor:
        start = next(s for s in range(len(self.mixture) - len(piece) + 1) if torch.equal(self.mixture[s : s + len(piece)], piece))
        estimates = self.sources[:, start : start + len(piece)][self.rng.permutation(len(self.sources))]
        gains = torch.from_numpy(self.rng.uniform(0.3, 3.0, size=(len(estimates), 1))).float() if self.rescale else 1.0
        return estimates * gains


@pytest.mark.parametrize("num_speakers", [2, 3])
def test_oracle_chunks_sum_back_to_the_mixture(num_speakers):
    sources = torch.stack([speech_like(10_000, seed) for seed in range(num_speakers)])
    mixture = sources.sum(0)
    estimates = separate_in_chunks(OracleSeparator(mixture, sources, rescale=False), mixture, chunk=1500, overlap=300)
    torch.testing.assert_close(estimates.sum(0), mixture, atol=1e-5, rtol=1e-5)
    first = [int(torch.argmax(torch.stack([(e * s).sum() for s in sources]))) for e in estimates]
    torch.testing.assert_close(estimates, sources[first], atol=1e-5, rtol=1e-5)  # one speaker order throughout


def test_oracle_chunks_with_arbitrary_gains_keep_each_speaker_whole():
    """A gain can only be matched where both chunks hear the speaker, so these sources have no pauses."""
    sources = torch.stack([speech_like(12_345, seed, pauses=False) for seed in (7, 8)])
    mixture = sources.sum(0)
    estimates = separate_in_chunks(OracleSeparator(mixture, sources, rescale=True), mixture, chunk=2000, overlap=400)
    order = [int(torch.argmax(torch.stack([(e * s).sum() for s in sources]))) for e in estimates]
    assert sorted(order) == [0, 1]
    si_snr = scale_invariant_signal_noise_ratio(estimates, sources[order])
    assert (si_snr > 40).all(), si_snr  # one gain for the whole file: the chunks were matched to each other


def test_match_to_reorders_and_rescales():
    previous = torch.stack([speech_like(500, 1), speech_like(500, 2)])
    current = torch.cat([previous.flip(0) * torch.tensor([[2.0], [0.5]]), torch.randn(2, 100)], dim=1)
    torch.testing.assert_close(match_to(previous, current)[:, :500], previous)


def test_short_mixture_is_one_chunk_and_bad_overlap_is_named():
    mixture = torch.randn(100)
    assert separate_in_chunks(lambda x: torch.stack([x, -x]), mixture, chunk=200, overlap=10).shape == (2, 100)
    with pytest.raises(ValueError, match="overlap_seconds"):
        separate_in_chunks(lambda x: x[None], mixture, chunk=50, overlap=50)


def write(path, data: np.ndarray, rate: int):
    soundfile.write(path, data, rate, subtype="FLOAT")
    return path


def test_bad_input_files(tmp_path, caplog):
    tone = 0.3 * np.sin(2 * math.pi * 440 * np.arange(16000) / 16000)
    stereo = write(tmp_path / "stereo.wav", np.stack([tone, tone[::-1]], axis=1), 16000)
    with pytest.raises(ValueError, match="2 channels.*channel=0.*channel=mean"):
        prepare_input(stereo, 8000, None, 16)
    left, length = prepare_input(stereo, 8000, 0, 16)
    assert length == 8000 and len(left) == 8000
    with caplog.at_level(logging.INFO):
        prepare_input(write(tmp_path / "mono16k.wav", tone, 16000), 8000, None, 16)
    assert "resampling 16000 Hz -> 8000 Hz" in caplog.text

    with_nan = tone.copy()
    with_nan[100:103] = np.nan
    with pytest.raises(ValueError, match="3 NaN or infinite samples"):
        prepare_input(write(tmp_path / "nan.wav", with_nan, 8000), 8000, None, 16)
    with pytest.raises(ValueError, match="silent"):
        prepare_input(write(tmp_path / "silence.wav", np.zeros(8000), 8000), 8000, None, 16)
    short, length = prepare_input(write(tmp_path / "short.wav", tone[:5], 8000), 8000, None, 16)
    assert length == 5 and len(short) == 16 and "zero-padded" in caplog.text
    with pytest.raises(FileNotFoundError, match="no audio file"):
        prepare_input(tmp_path / "missing.wav", 8000, None, 16)
