"""A genome indexed once: every record's letters as one memory-mapped uint8 array, cached beside the runs.

codes[i] holds the token id of base i in bits 0-2 (tokenizer ids A C G T N) and 1 in bit 3 where the file had a
lower-case (soft-masked) letter. Records follow each other in file order; `starts[r]`, `lengths[r]` locate
record r. The first use of a FASTA file streams it record by record into `<cache_dir>/<stem>-<key>.codes`
(key: path, size and modification time), later uses (other processes included) map that file.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from apps.genomics import tokenizer
from apps.genomics.fasta import read_fasta

log = logging.getLogger(__name__)
LOWER_BIT = 8
TOKEN_BITS = 7


@dataclass(frozen=True)
class Genome:
    """The records of one FASTA file. codes: (total,) uint8 as described in the module docstring."""

    path: str
    names: list[str]
    descriptions: list[str]  # header text after the name
    starts: np.ndarray  # (R,) int64
    lengths: np.ndarray  # (R,) int64
    codes: np.ndarray

    @property
    def size(self) -> int:
        return int(self.lengths.sum())

    def tokens(self, index: np.ndarray) -> np.ndarray:
        """Token ids at positions `index` (any shape), uint8."""
        return self.codes[index] & TOKEN_BITS

    def soft_masked(self, index: np.ndarray) -> np.ndarray:
        """True where the file had a lower-case letter, at positions `index` (any shape)."""
        return (self.codes[index] & LOWER_BIT) > 0

    def record(self, name: str) -> int:
        """Index of the record called `name`; KeyError listing a few names if there is none."""
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"{self.path} has no record {name!r}; records: {', '.join(self.names[:5])}, ...") from None


def cache_key(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha1(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]


def load_genome(path: str | Path, cache_dir: str | Path) -> Genome:
    """The Genome of a FASTA(.gz) file, indexed into `cache_dir` on first use (then memory-mapped)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no FASTA file at {path}; check the path (data files: paths.data, or $SEQMIX_DATA)")
    stem = Path(cache_dir) / f"{path.name.split('.')[0]}-{cache_key(path)}"
    codes_file, records_file = stem.with_suffix(".codes"), stem.with_suffix(".records.json")
    if not records_file.is_file():
        build_index(path, codes_file, records_file)
    records = json.loads(records_file.read_text())
    codes = np.memmap(codes_file, dtype=np.uint8, mode="r") if sum(records["lengths"]) else np.zeros(0, np.uint8)
    starts, lengths = np.asarray(records["starts"], np.int64), np.asarray(records["lengths"], np.int64)
    return Genome(str(path), records["names"], records["descriptions"], starts, lengths, codes)


def build_index(path: Path, codes_file: Path, records_file: Path) -> None:
    """Stream the records of `path` into codes_file, then write records_file (written last: it marks completion).
    Both go through temporary names, so processes indexing the same file at once do not see half a file."""
    codes_file.parent.mkdir(parents=True, exist_ok=True)
    names, descriptions, starts, lengths, offset = [], [], [], [], 0
    partial = codes_file.with_name(f"{codes_file.name}.{os.getpid()}.tmp")
    with open(partial, "wb") as out:
        for record in read_fasta(path):
            ids, lower = tokenizer.encode(record.sequence, where=f"{path} record {record.name!r}")
            out.write((ids | (lower.astype(np.uint8) << 3)).tobytes())
            names.append(record.name)
            descriptions.append(record.description)
            starts.append(offset)
            lengths.append(len(ids))
            offset += len(ids)
    os.replace(partial, codes_file)
    partial_records = records_file.with_name(f"{records_file.name}.{os.getpid()}.tmp")
    records = {"source": str(path), "names": names, "descriptions": descriptions, "starts": starts, "lengths": lengths}
    partial_records.write_text(json.dumps(records))
    os.replace(partial_records, records_file)
    log.info("indexed %s: %d records, %d bases -> %s", path, len(names), offset, codes_file)
