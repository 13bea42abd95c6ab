"""PIT SI-SNR loss and the SI-SNRi / SDRi test scores on signals whose values are known in closed form."""
from __future__ import annotations

import math

import pytest
import torch

from apps.speech.task import improvements, pit_si_snr, pit_si_snr_loss, sdr_per_source
from torchmetrics.functional.audio import scale_invariant_signal_noise_ratio

T = 8000


def tones(*frequencies: int, length: int = T) -> torch.Tensor:
    """Sines of whole periods over `length` samples: zero mean, unit RMS, mutually orthogonal. (len, length)."""
    t = torch.arange(length, dtype=torch.float64) / length
    return torch.stack([math.sqrt(2) * torch.sin(2 * math.pi * f * t) for f in frequencies])


def test_pit_loss_is_permutation_invariant_and_negative_si_snr_of_the_right_order():
    torch.manual_seed(0)
    sources = torch.randn(4, 3, 2000)
    estimates = sources + 0.3 * torch.randn_like(sources)
    loss = pit_si_snr_loss(estimates, sources)
    swapped = estimates[:, [2, 0, 1]]
    assert pit_si_snr_loss(swapped, sources) == pytest.approx(loss.item(), abs=1e-5)
    right_order = scale_invariant_signal_noise_ratio(estimates, sources).mean()
    assert loss.item() == pytest.approx(-right_order.item(), abs=1e-5)
    _, permutation = pit_si_snr(swapped, sources)
    assert permutation.tolist() == [[1, 2, 0]] * 4  # estimate perm[k] goes with source k


def test_pit_loss_prefers_the_better_permutation_and_has_gradients():
    sources = tones(3, 7).float().unsqueeze(0)
    estimates = sources.flip(1).clone().requires_grad_(True)
    loss = pit_si_snr_loss(estimates, sources)
    assert loss.item() < -60  # a near-perfect estimate once reordered
    loss.backward()
    assert torch.isfinite(estimates.grad).all()


def test_si_snri_of_perfect_and_of_20_db_estimates_are_the_known_values():
    s1, s2, noise1, noise2 = tones(5, 11, 17, 23)
    gains = torch.tensor([2.0, 0.5], dtype=torch.float64)  # the mixture's SI-SNR: +12.04 dB for s1, -12.04 dB for s2
    sources = torch.stack([gains[0] * s1, gains[1] * s2]).unsqueeze(0)
    mixture = sources.sum(1)  # its SI-SNR averaged over both sources: (12.04 - 12.04) / 2 = 0 dB

    noisy = sources + 0.1 * torch.stack([gains[0] * noise1, gains[1] * noise2]).unsqueeze(0)  # 20 dB below each source
    scores = improvements(mixture, noisy, sources)
    assert scores["si_snr"].item() == pytest.approx(20.0, abs=1e-6)
    assert scores["si_snri"].item() == pytest.approx(20.0, abs=1e-6)

    perfect = improvements(mixture, sources.flip(1), sources)  # order does not matter
    eps = torch.finfo(torch.float64).eps
    energies = (sources[0] ** 2).sum(-1)
    expected = (10 * torch.log10((energies + eps) / eps)).mean().item()  # torchmetrics' eps-bounded infinity
    assert perfect["si_snri"].item() == pytest.approx(expected, rel=1e-6)
    assert perfect["sdri"].item() > 100 and scores["sdri"].item() > 0


def test_sdr_of_a_perfect_tone_is_finite_and_a_silent_source_does_not_raise():
    """SDR solves a 512-tap filter from the source's autocorrelation: near singular for a tone, singular for silence.
    The diagonal load keeps a perfect tone's SDR finite (it was NaN on one CPU) and a silent source from raising."""
    tone = tones(5)[0]
    perfect = sdr_per_source(tone.view(1, 1, -1), tone.view(1, 1, -1))
    assert 110 < perfect.item() < 130
    silent = sdr_per_source(tone.view(1, 1, -1), torch.zeros(1, 1, tone.numel(), dtype=torch.float64))
    assert silent.item() == float("-inf")
