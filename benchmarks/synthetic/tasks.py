"""Batches of the synthetic tasks: token inputs (B, T) and per-token targets (B, T), -100 where not scored.

* mqar: multi-query associative recall (Zoology, Arora et al. 2023). The first 2 n tokens are n key-value
  pairs; every later token is one of those keys, and its target is that key's value.
* parity: bits; the target of token t is the parity of bits 1..t (needs a negative eigenvalue or a
  non-linear recurrence; Grazzi et al. 2024).
* s3: elements of the permutation group S3; the target of token t is the product g_t ... g_1. S3 is
  the smallest non-abelian group, so the state transitions must not commute (a diagonal decay cannot).
* needle: a haystack of random tokens with one needle (a marker, then a value) at a random place; the
  last token asks for the value (single-needle retrieval; only the last token is scored).
"""
from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

IGNORE = -100


@dataclass(frozen=True)
class Task:
    name: str
    vocab_size: int  # input tokens are 0..vocab_size-1
    num_classes: int  # targets are 0..num_classes-1 (or IGNORE)
    make_batch: Callable[[int, int, torch.Generator], tuple[Tensor, Tensor]]  # (batch, length, rng) -> (x, y)


MQAR_KEYS = 64  # keys are tokens 0..63, values 64..127


def mqar_pairs(length: int) -> int:
    """Key-value pairs per sequence: a quarter of the length (Zoology's ratio), at most MQAR_KEYS."""
    return min(MQAR_KEYS, length // 4)


def mqar_batch(batch: int, length: int, rng: torch.Generator) -> tuple[Tensor, Tensor]:
    """n = mqar_pairs(length) distinct keys per sequence with random values, then length - 2 n queries."""
    n = mqar_pairs(length)
    if n < 1:
        raise ValueError(f"mqar needs length >= 4, got {length}")
    keys = torch.rand(batch, MQAR_KEYS, generator=rng).argsort(-1)[:, :n]  # [B, n] distinct
    values = MQAR_KEYS + torch.randint(0, MQAR_KEYS, (batch, n), generator=rng)
    which = torch.randint(0, n, (batch, length - 2 * n), generator=rng)  # the pair each query asks for
    x = torch.cat([torch.stack([keys, values], dim=-1).flatten(1), keys.gather(1, which)], dim=1)
    y = torch.cat([torch.full((batch, 2 * n), IGNORE), values.gather(1, which) - MQAR_KEYS], dim=1)
    return x, y


def parity_batch(batch: int, length: int, rng: torch.Generator) -> tuple[Tensor, Tensor]:
    bits = torch.randint(0, 2, (batch, length), generator=rng)
    return bits, bits.cumsum(1) % 2


S3 = list(itertools.permutations(range(3)))  # the 6 elements, as tuples
S3_PRODUCT = torch.tensor([[S3.index(tuple(a[b[i]] for i in range(3))) for b in S3] for a in S3])  # [a, b] -> a o b


def s3_batch(batch: int, length: int, rng: torch.Generator) -> tuple[Tensor, Tensor]:
    g = torch.randint(0, len(S3), (batch, length), generator=rng)
    prefix, products = g[:, 0], [g[:, 0]]
    for t in range(1, length):
        prefix = S3_PRODUCT[g[:, t], prefix]  # g_t o (g_{t-1} o ... o g_1)
        products.append(prefix)
    return g, torch.stack(products, dim=1)


NEEDLE_VALUES = 32  # values are tokens 0..31, haystack tokens 32..63; then the marker and the query
NEEDLE_MARK, NEEDLE_QUERY = 2 * NEEDLE_VALUES, 2 * NEEDLE_VALUES + 1


def needle_batch(batch: int, length: int, rng: torch.Generator) -> tuple[Tensor, Tensor]:
    """Haystack, [marker, value] at a random place before the last token, the query as the last token."""
    if length < 3:
        raise ValueError(f"needle needs length >= 3 (marker, value, query), got {length}")
    x = torch.randint(NEEDLE_VALUES, 2 * NEEDLE_VALUES, (batch, length), generator=rng)
    values = torch.randint(0, NEEDLE_VALUES, (batch,), generator=rng)
    where = torch.randint(0, length - 2, (batch,), generator=rng)
    rows = torch.arange(batch)
    x[rows, where], x[rows, where + 1], x[:, -1] = NEEDLE_MARK, values, NEEDLE_QUERY
    y = torch.full((batch, length), IGNORE)
    y[:, -1] = values
    return x, y


TASKS = {
    "mqar": Task("mqar", 2 * MQAR_KEYS, MQAR_KEYS, mqar_batch),
    "parity": Task("parity", 2, 2, parity_batch),
    "s3": Task("s3", len(S3), len(S3), s3_batch),
    "needle": Task("needle", 2 * NEEDLE_VALUES + 2, NEEDLE_VALUES, needle_batch),
}
