"""Where the windows of each task come from and what their labels are.

Every source has `prepare(cache_dir)` (index its files once), `sample(split, n, window, rng)` for training
batches and `fixed(split, n, window, seed)` for the validation and test sets, both returning
(tokens (n, window) uint8, labels); `labels` is what `label_kind` says:
- "tokens": the tokens themselves (language models);
- "sequence": (n,) int64, one class per window;
- "per_base": (n, window) int64, one class per base.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from apps.genomics import generated
from apps.genomics.fasta import read_gff3
from apps.genomics.genome import Genome, load_genome
from apps.genomics.regions import SPLITS, WindowSampler, split_regions, window_positions

log = logging.getLogger(__name__)
MAX_REJECTION_ROUNDS = 200


class GenomeWindows:
    """Windows of one genome in non-overlapping train/val/test regions (see regions.py); base class of the
    genome-wide sources. fasta: a FASTA(.gz) file or "generated" (generated.py);
    split: keyword options of `split_regions` (fractions, block_size, seed)."""

    label_kind = "tokens"
    class_names: tuple[str, ...] = ()

    def __init__(self, fasta: str, split: dict | None = None) -> None:
        self.fasta = fasta
        self.split_options = dict(split or {})
        self.samplers: dict[tuple[str, int], WindowSampler] = {}

    def prepare(self, cache_dir: str | Path) -> None:
        self.genome = load_genome(generated.resolve(self.fasta, cache_dir, 0), cache_dir)
        self.regions = split_regions(self.genome, **self.split_options)

    def sampler(self, split: str, window: int) -> WindowSampler:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if (split, window) not in self.samplers:
            self.samplers[split, window] = WindowSampler(self.regions[split], window, f"{self.fasta} ({split} split)")
        return self.samplers[split, window]

    def positions(self, split: str, n: int, window: int, rng: np.random.Generator) -> np.ndarray:
        return window_positions(self.sampler(split, window).starts(n, rng), window)

    def sample(self, split: str, n: int, window: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        tokens = self.genome.tokens(self.positions(split, n, window, rng))
        return tokens, tokens

    def fixed(self, split: str, n: int, window: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        return self.sample(split, n, window, np.random.default_rng(seed))


class RepeatWindows(GenomeWindows):
    """Per-base labels 1 where the FASTA letter is lower case (soft-masked repeat), 0 where it is upper case.
    The tokens carry no case, so the model has to recognise repeats from the sequence."""

    label_kind = "per_base"
    class_names = ("unmasked", "repeat")

    def sample(self, split: str, n: int, window: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        positions = self.positions(split, n, window, rng)
        return self.genome.tokens(positions), self.genome.soft_masked(positions).astype(np.int64)


class SpeciesWindows:
    """Which genome a window comes from: class i = fastas[i], classes drawn with equal probability, each
    genome split into its own non-overlapping regions."""

    label_kind = "sequence"

    def __init__(self, fastas: Sequence[str], class_names: Sequence[str], split: dict | None = None) -> None:
        if len(fastas) < 2 or len(fastas) != len(class_names):
            raise ValueError(
                f"species: need two or more FASTA files and one class name each, got {list(fastas)} / {list(class_names)}"
            )
        self.class_names = tuple(class_names)
        self.genomes = [GenomeWindows(path, split) for path in fastas]

    def prepare(self, cache_dir: str | Path) -> None:
        for genome in self.genomes:
            genome.prepare(cache_dir)

    def sample(self, split: str, n: int, window: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, len(self.genomes), size=n)
        tokens = np.empty((n, window), np.uint8)
        for label, genome in enumerate(self.genomes):
            rows = np.flatnonzero(labels == label)
            tokens[rows] = genome.sample(split, len(rows), window, rng)[0]
        return tokens, labels.astype(np.int64)

    def fixed(self, split: str, n: int, window: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        return self.sample(split, n, window, np.random.default_rng(seed))


def record_for_seqid(genome: Genome, seqid: str) -> int:
    """Record of `genome` a GFF3 seqid refers to: the record of that name, else the one record whose name has
    it as a ':'- or '|'-separated field (e.g. 'chr01' in 'Umaydis:chr01:1:+:2476500')."""
    if seqid in genome.names:
        return genome.names.index(seqid)
    matches = [i for i, name in enumerate(genome.names) if seqid in re.split(r"[:|]", name)]
    if len(matches) != 1:
        problem = "no" if not matches else f"{len(matches)}"
        raise ValueError(f"GFF3 seqid {seqid!r} matches {problem} record(s) of {genome.path} (e.g. {genome.names[0]!r}); "
                         "the GFF3 and FASTA must describe the same assembly")
    return matches[0]


def merged_intervals(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Union of half-open intervals as sorted, disjoint (starts, ends)."""
    order = np.argsort(starts)
    starts, ends = starts[order], np.maximum.accumulate(ends[order])  # running end of the union so far
    new = np.ones(len(starts), bool)
    new[1:] = starts[1:] > ends[:-1]
    last = np.append(np.flatnonzero(new)[1:] - 1, len(starts) - 1)
    return starts[new], ends[last]


class CodingWindows(GenomeWindows):
    """Class 1 (coding): the window lies inside CDS features of the GFF3 (either strand); class 0 (non-coding):
    it overlaps none. Windows partly in a CDS are not used. Classes are drawn with equal probability."""

    label_kind = "sequence"
    class_names = ("non-coding", "coding")

    def __init__(self, fasta: str, gff3: str, split: dict | None = None) -> None:
        super().__init__(fasta, split)
        self.gff3 = gff3

    def prepare(self, cache_dir: str | Path) -> None:
        super().prepare(cache_dir)
        starts, ends = [], []
        for feature in read_gff3(generated.resolve(self.gff3, cache_dir, 1), types=("CDS",)):
            record = record_for_seqid(self.genome, feature.seqid)
            if feature.end > self.genome.lengths[record]:
                raise ValueError(f"{self.gff3}: CDS {feature.seqid}:{feature.start + 1}-{feature.end} ends past its record "
                                 f"({self.genome.lengths[record]} bases)")
            starts.append(self.genome.starts[record] + feature.start)
            ends.append(self.genome.starts[record] + feature.end)
        if not starts:
            raise ValueError(f"{self.gff3}: no CDS feature; coding labels need CDS lines")
        self.cds_starts, self.cds_ends = merged_intervals(np.asarray(starts), np.asarray(ends))

    def labels_of(self, starts: np.ndarray, window: int) -> np.ndarray:
        """1 for windows inside one CDS interval, 0 for windows outside all, -1 for the rest."""
        first = np.searchsorted(self.cds_ends, starts, side="right")  # first interval ending after the start
        inside = first < len(self.cds_ends)
        cds_start = np.where(inside, self.cds_starts[np.minimum(first, len(self.cds_ends) - 1)], np.iinfo(np.int64).max)
        cds_end = np.where(inside, self.cds_ends[np.minimum(first, len(self.cds_ends) - 1)], 0)
        coding = (cds_start <= starts) & (cds_end >= starts + window)
        noncoding = cds_start >= starts + window
        return np.where(coding, 1, np.where(noncoding, 0, -1))

    def sample(self, split: str, n: int, window: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        wanted = rng.integers(0, 2, size=n)
        chosen = {0: [], 1: []}
        for _ in range(MAX_REJECTION_ROUNDS):
            starts = self.sampler(split, window).starts(4 * n, rng)
            labels = self.labels_of(starts, window)
            for label in (0, 1):
                chosen[label].append(starts[labels == label])
            if all(sum(map(len, chosen[c])) >= (wanted == c).sum() for c in (0, 1)):
                break
        else:
            found = {self.class_names[c]: sum(map(len, chosen[c])) for c in (0, 1)}
            raise ValueError(f"{self.fasta} ({split} split): too few windows of each class of {window} bases (found {found}); "
                             "lower data.window")
        starts = np.empty(n, np.int64)
        for label in (0, 1):
            rows = np.flatnonzero(wanted == label)
            starts[rows] = np.concatenate(chosen[label])[: len(rows)]
        return self.genome.tokens(window_positions(starts, window)), wanted.astype(np.int64)


HEADER_LOCATION = re.compile(r"(\S+?):(\d+)-(\d+)")


class PromoterWindows:
    """Upstream sequences oriented towards their gene (e.g. UCSC upstream2000): class 1 (promoter-proximal) is the
    last `window` bases, next to the transcription start, class 0 (distal) the first `window` bases.

    Records are split into train/val/test by genomic location: a header "chrom:start-end" (UCSC style) places a
    record, overlapping records form one group, and whole groups go to one split (identical upstream regions of
    alternative transcripts never straddle splits). Records without a location are groups of their own.
    Records shorter than 2 * window are not used (logged).
    """

    label_kind = "sequence"
    class_names = ("distal", "proximal")

    def __init__(self, fasta: str, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0) -> None:
        self.fasta, self.fractions, self.seed = fasta, list(fractions), seed
        self.usable: dict[tuple[str, int], np.ndarray] = {}

    def prepare(self, cache_dir: str | Path) -> None:
        self.genome = load_genome(generated.resolve(self.fasta, cache_dir, 0), cache_dir)
        group = self.location_groups()
        order = np.random.default_rng(self.seed).permutation(group.max() + 1)
        cut = np.cumsum(np.asarray(self.fractions) / sum(self.fractions))[:2] * len(order)
        split_of_group = np.empty(len(order), np.int64)
        split_of_group[order] = np.searchsorted(cut, np.arange(len(order)), side="right")
        self.split_of_record = split_of_group[group]

    def location_groups(self) -> np.ndarray:
        """(R,) group id per record: overlapping located records share one."""
        located = {}
        for index, (name, description) in enumerate(zip(self.genome.names, self.genome.descriptions)):
            match = HEADER_LOCATION.search(description) or HEADER_LOCATION.search(name)
            if match:
                located[index] = (match[1], int(match[2]), int(match[3]))
        group = np.full(len(self.genome.names), -1, np.int64)
        next_group, chrom_end = 0, ("", -1)
        for index in sorted(located, key=located.get):
            chrom, start, end = located[index]
            if chrom != chrom_end[0] or start > chrom_end[1]:
                next_group += 1
                chrom_end = (chrom, end)
            chrom_end = (chrom, max(chrom_end[1], end))
            group[index] = next_group - 1
        unlocated = group < 0
        group[unlocated] = next_group + np.arange(unlocated.sum())
        return group

    def records(self, split: str, window: int) -> np.ndarray:
        """Indices of the records of `split` long enough for two windows (computed once per split and window)."""
        if (split, window) not in self.usable:
            self.usable[split, window] = self.usable_records(split, window)
        return self.usable[split, window]

    def usable_records(self, split: str, window: int) -> np.ndarray:
        usable = (self.split_of_record == SPLITS.index(split)) & (self.genome.lengths >= 2 * window)
        short = (self.split_of_record == SPLITS.index(split)) & ~usable
        if short.any():
            log.info("%s (%s split): %d records shorter than 2 x %d bases are not used", self.fasta, split, short.sum(), window)
        if not usable.any():
            raise ValueError(f"{self.fasta} ({split} split): no record holds two windows of {window} bases; lower data.window")
        return np.flatnonzero(usable)

    def examples(self, records: np.ndarray, labels: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
        ends = self.genome.starts[records] + self.genome.lengths[records]
        starts = np.where(labels == 1, ends - window, self.genome.starts[records])
        return self.genome.tokens(window_positions(starts, window)), labels.astype(np.int64)

    def sample(self, split: str, n: int, window: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        records = self.records(split, window)
        return self.examples(rng.choice(records, size=n), rng.integers(0, 2, size=n), window)

    def fixed(self, split: str, n: int, window: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Both ends of every record of the split, or n of them drawn without replacement."""
        records = self.records(split, window)
        records, labels = np.repeat(records, 2), np.tile([0, 1], len(records))
        keep = np.sort(np.random.default_rng(seed).permutation(len(records))[:n])
        return self.examples(records[keep], labels[keep], window)
