"""Streaming readers of FASTA / FASTA.gz and GFF3(.gz): one record or one feature at a time, never the whole file.

A FASTA record's name is the first word of its header line; an empty record (a header with no sequence) is an
error naming it, since nothing can be sampled from or predicted for it.
"""
from __future__ import annotations

import gzip
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO


def open_text_or_gzip(path: str | Path) -> IO[bytes]:
    """Binary handle of a plain or gzip-compressed file (gzip recognised by its magic bytes, not its name)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no file at {path}")
    with open(path, "rb") as handle:
        magic = handle.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


@dataclass(frozen=True)
class FastaRecord:
    name: str
    description: str
    sequence: bytes  # the letters as in the file (case kept), line breaks removed


def read_fasta(path: str | Path) -> Iterator[FastaRecord]:
    """Yield the records of a FASTA(.gz) file in order, holding one record in memory at a time."""
    name, description, lines, line_number, header_line = None, "", [], 0, 0
    with open_text_or_gzip(path) as handle:
        for line_number, line in enumerate(handle, start=1):
            line = line.rstrip(b"\r\n")
            if line.startswith(b">"):
                if name is not None:
                    yield make_record(path, name, description, lines, header_line)
                header = line[1:].decode(errors="replace").strip()
                name, _, description = header.partition(" ")
                if not name:
                    raise ValueError(f"{path}:{line_number}: FASTA header with no name")
                lines, header_line = [], line_number
            elif line.strip():
                if name is None:
                    raise ValueError(f"{path}:{line_number}: sequence before the first '>' header; is this a FASTA file?")
                lines.append(line.strip())
    if name is None:
        raise ValueError(f"{path}: no FASTA record (no line starts with '>')")
    yield make_record(path, name, description, lines, header_line)


def make_record(path: str | Path, name: str, description: str, lines: list[bytes], header_line: int) -> FastaRecord:
    sequence = b"".join(lines)
    if not sequence:
        raise ValueError(f"{path}:{header_line}: record {name!r} is empty (a header with no sequence); remove it")
    return FastaRecord(name, description, sequence)


@dataclass(frozen=True)
class Feature:
    seqid: str
    type: str
    start: int  # 0-based, inclusive
    end: int  # 0-based, exclusive
    strand: str


def read_gff3(path: str | Path, types: tuple[str, ...] = ("CDS",)) -> Iterator[Feature]:
    """Yield the features of the given types of a GFF3(.gz) file, coordinates converted to 0-based half-open."""
    with open_text_or_gzip(path) as handle:
        for line_number, raw in enumerate(handle, start=1):
            line = raw.decode(errors="replace").rstrip("\r\n")
            if line.startswith("##FASTA"):
                return
            if not line.strip() or line.startswith("#"):
                continue
            fields = line.split("\t")
            if len(fields) != 9:
                raise ValueError(f"{path}:{line_number}: a GFF3 line has 9 tab-separated columns, this one {len(fields)}")
            if fields[2] not in types:
                continue
            try:
                start, end = int(fields[3]), int(fields[4])
            except ValueError:
                raise ValueError(f"{path}:{line_number}: start/end {fields[3]!r}, {fields[4]!r} are not integers") from None
            if not 1 <= start <= end:
                raise ValueError(f"{path}:{line_number}: need 1 <= start <= end, got start={start}, end={end}")
            yield Feature(fields[0], fields[2], start - 1, end, fields[6])
