"""The offline default genome: a seeded, generated genome with genes, repeats and their annotation.

No dependency of the project ships DNA, so `fasta: generated` (and `gff3: generated`) write this genome as
FASTA.gz + GFF3 into the cache directory and read it back through the same readers as real files. It follows
real rules, not real sequence: genes are open reading frames under the standard genetic code (ATG, sense
codons, a stop codon) on either strand, recorded as CDS features; intergenic DNA is AT-rich; copies of three
repeat families (10% point mutations) are inserted between genes in lower case, as RepeatMasker soft-masks.
Use it to try the app; the benchmarks use the real genomes of ${paths.data}/genomics.
"""
from __future__ import annotations

import gzip
import itertools
import os
from pathlib import Path

import numpy as np

GENERATED = "generated"
LETTERS = np.frombuffer(b"ACGT", dtype=np.uint8)
STOPS = {"TAA", "TAG", "TGA"}
SENSE_CODONS = np.array([c for c in map("".join, itertools.product("ACGT", repeat=3)) if c not in STOPS])
COMPLEMENT = bytes.maketrans(b"ACGTacgt", b"TGCAtgca")


def random_bases(rng: np.random.Generator, n: int, gc: float) -> bytes:
    probabilities = [(1 - gc) / 2, gc / 2, gc / 2, (1 - gc) / 2]
    return LETTERS[rng.choice(4, size=n, p=probabilities)].tobytes()


def gene(rng: np.random.Generator) -> bytes:
    codons = SENSE_CODONS[rng.integers(0, len(SENSE_CODONS), size=rng.integers(100, 500))]
    return ("ATG" + "".join(codons) + sorted(STOPS)[rng.integers(0, 3)]).encode()


def mutated(rng: np.random.Generator, consensus: bytes, rate: float = 0.1) -> bytes:
    copy = np.frombuffer(consensus, dtype=np.uint8).copy()
    hits = rng.random(len(copy)) < rate
    copy[hits] = LETTERS[rng.integers(0, 4, size=hits.sum())]
    return copy.tobytes()


def write_generated_genome(directory: str | Path, records: int = 4, record_length: int = 250_000, seed: int = 0) -> tuple[Path, Path]:
    """Write generated-<seed>.fa.gz and generated-<seed>.gff3 under `directory` (once; kept for later runs); returns their paths."""
    directory = Path(directory)
    fasta, gff3 = directory / f"{GENERATED}-{seed}.fa.gz", directory / f"{GENERATED}-{seed}.gff3"
    if fasta.is_file() and gff3.is_file():
        return fasta, gff3
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    families = [random_bases(rng, int(rng.integers(200, 400)), gc=0.5) for _ in range(3)]
    fasta_parts, features = [], []
    for index in range(1, records + 1):
        name, parts, length = f"chr{index}", [], 0
        while length < record_length:
            parts.append(random_bases(rng, int(rng.integers(100, 1500)), gc=0.38))
            if rng.random() < 0.4:
                parts.append(mutated(rng, families[rng.integers(0, 3)]).lower())
                parts.append(random_bases(rng, int(rng.integers(50, 300)), gc=0.38))
            coding = gene(rng)
            strand = "+" if rng.random() < 0.5 else "-"
            start = sum(map(len, parts))
            parts.append(coding if strand == "+" else coding.translate(COMPLEMENT)[::-1])
            features.append(f"{name}\tgenerated\tCDS\t{start + 1}\t{start + len(coding)}\t.\t{strand}\t0\tID=cds{len(features)}\n")
            length = start + len(coding)
        sequence = b"".join(parts)
        lines = b"\n".join(sequence[i : i + 80] for i in range(0, len(sequence), 80))
        fasta_parts.append(b">" + name.encode() + b" generated genome, seed " + str(seed).encode() + b"\n" + lines + b"\n")
    annotation = ("##gff-version 3\n" + "".join(features)).encode()
    for path, content in ((gff3, annotation), (fasta, gzip.compress(b"".join(fasta_parts), compresslevel=1))):
        partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        partial.write_bytes(content)
        os.replace(partial, path)
    return fasta, gff3


def resolve(path: str, cache_dir: str | Path, which: int) -> str:
    """`path`, or for "generated" the generated genome's FASTA (which=0) or GFF3 (which=1) in cache_dir."""
    return str(write_generated_genome(cache_dir)[which]) if path == GENERATED else path
