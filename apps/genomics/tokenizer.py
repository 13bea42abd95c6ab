"""Nucleotide tokens: A, C, G, T, N and two special tokens, case-insensitive, with reverse complement.

Token ids: A=0, C=1, G=2, T=3, N=4, MASK=5 (masked-language-model input), PAD=6. The four bases come first, so a
next-base or masked-base prediction is a 4-way choice and the complement of base id b is 3 - b.

Input text, byte by byte:
- A, C, G, T in either case are those bases; lower case (soft-masked repeats) is reported in a separate mask.
- N and the IUPAC ambiguity codes R, Y, S, W, K, M, B, D, H, V (either case) become N: the model sees "some base".
- anything else (U, digits, '-', '.', '*', spaces, ...) is an error naming the record, the character and where.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

BASES = "ACGT"
IUPAC_AMBIGUOUS = "NRYSWKMBDHV"
A, C, G, T, N, MASK, PAD = range(7)
VOCAB_SIZE = 7
NUM_BASES = 4
SYMBOLS = "ACGTN"  # decode table for ids 0..4; MASK and PAD decode as '?' and '-'
INVALID = 255

_ENCODE = np.full(256, INVALID, dtype=np.uint8)
for _letter in BASES + IUPAC_AMBIGUOUS:
    _code = BASES.index(_letter) if _letter in BASES else N
    _ENCODE[ord(_letter)] = _ENCODE[ord(_letter.lower())] = _code
_DECODE = np.frombuffer((SYMBOLS + "?-").encode(), dtype=np.uint8)
_COMPLEMENT = np.array([T, G, C, A, N, MASK, PAD], dtype=np.int64)


def encode(sequence: bytes | str, where: str = "sequence") -> tuple[np.ndarray, np.ndarray]:
    """(ids (L,) uint8, lower (L,) bool) of a DNA string; `lower` marks lower-case (soft-masked) letters.

    Raises ValueError naming `where`, the first invalid character and its position.
    """
    raw = np.frombuffer(sequence.encode() if isinstance(sequence, str) else sequence, dtype=np.uint8)
    ids = _ENCODE[raw]
    bad = np.flatnonzero(ids == INVALID)
    if bad.size:
        char = chr(raw[bad[0]])
        raise ValueError(
            f"{where}: {char!r} at position {bad[0] + 1} is not a DNA letter ({bad.size} such characters); "
            f"allowed: A C G T, N and IUPAC codes {IUPAC_AMBIGUOUS[1:]} (read as N), either case. "
            "Remove gaps/other symbols (or convert RNA U to T) before using this file"
        )
    return ids, raw >= ord("a")


def decode(ids: np.ndarray | Tensor) -> str:
    """The letters of token ids (upper case); MASK is '?', PAD is '-'."""
    array = ids.cpu().numpy() if isinstance(ids, Tensor) else np.asarray(ids)
    return _DECODE[array.astype(np.int64)].tobytes().decode()


def complement(ids: Tensor) -> Tensor:
    """Complementary base of every id (A<->T, C<->G; N, MASK, PAD unchanged); any shape."""
    return torch.as_tensor(_COMPLEMENT, device=ids.device)[ids.long()].to(ids.dtype)


def reverse_complement(ids: Tensor) -> Tensor:
    """Reverse complement of ids (..., L) along the last dimension."""
    return complement(ids).flip(-1)
