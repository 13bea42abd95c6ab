"""Train / validation / test regions of a genome that never overlap, and cheap uniform window sampling in them.

The genome (records end to end) is cut into blocks of `block_size` bases; a seeded permutation gives each block
to one split in the proportions `fractions`. A region is a stretch of one block inside one record with no N in
it, so a window drawn inside a region never crosses a split, a record end or an unknown base.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from apps.genomics import tokenizer
from apps.genomics.genome import TOKEN_BITS, Genome

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


def split_regions(
    genome: Genome, fractions: Sequence[float] = (0.8, 0.1, 0.1), block_size: int = 100_000, seed: int = 0
) -> dict[str, np.ndarray]:
    """{split: regions (n, 2) int64 of [start, end) positions in genome.codes}, disjoint across splits."""
    if len(fractions) != 3 or min(fractions) <= 0:
        raise ValueError(f"split fractions must be three positive numbers (train, val, test), got {list(fractions)}")
    blocks = -(-genome.size // block_size)
    if blocks < 3:
        raise ValueError(
            f"{genome.path}: {genome.size} bases make {blocks} block(s) of block_size={block_size}; "
            "three splits need at least 3: lower the sampler's block_size"
        )
    order = np.random.default_rng(seed).permutation(blocks)
    counts = np.maximum(1, np.round(np.asarray(fractions) / sum(fractions) * blocks).astype(int))
    counts[0] = blocks - counts[1:].sum()
    split_of_block = np.empty(blocks, np.int64)
    split_of_block[order] = np.repeat(np.arange(3), counts)

    unknown = np.flatnonzero((genome.codes & TOKEN_BITS) == tokenizer.N)
    bounds = np.unique(np.concatenate([
        genome.starts, genome.starts + genome.lengths, np.arange(0, genome.size, block_size), unknown, unknown + 1, [genome.size]
    ]))
    begin, end = bounds[:-1], bounds[1:]
    keep = ~np.isin(begin, unknown)  # every N is its own one-base segment between two bounds
    begin, end = begin[keep], end[keep]
    split = split_of_block[begin // block_size]
    return {name: np.stack([begin[split == i], end[split == i]], axis=1) for i, name in enumerate(SPLITS)}


class WindowSampler:
    """Uniform windows of `window` bases inside `regions` (n, 2): every valid start equally likely.

    Regions shorter than the window cannot hold one; they are left out and logged. Raises ValueError when no
    region is long enough.
    """

    def __init__(self, regions: np.ndarray, window: int, what: str) -> None:
        lengths = regions[:, 1] - regions[:, 0]
        fits = lengths >= window
        if not fits.any():
            longest = int(lengths.max()) if len(lengths) else 0
            raise ValueError(
                f"{what}: no region holds a window of {window} bases (longest: {longest}); "
                "lower the window (data.window / data.eval_window) or raise the sampler's block_size"
            )
        if not fits.all():
            log.info("%s: %d of %d regions (%d bases) are shorter than the window of %d and are not sampled",
                     what, (~fits).sum(), len(fits), lengths[~fits].sum(), window)
        self.window = window
        self.region_starts = regions[fits, 0]
        self.cumulative = np.cumsum(lengths[fits] - window + 1)

    @property
    def num_windows(self) -> int:
        return int(self.cumulative[-1])

    def starts(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n,) int64 start positions of uniformly drawn windows."""
        draws = rng.integers(0, self.num_windows, size=n)
        region = np.searchsorted(self.cumulative, draws, side="right")
        before = np.where(region > 0, self.cumulative[region - 1], 0)
        return self.region_starts[region] + draws - before


def window_positions(starts: np.ndarray, window: int) -> np.ndarray:
    """(n, window) positions of windows starting at `starts` (n,)."""
    return starts[:, None] + np.arange(window)[None, :]
