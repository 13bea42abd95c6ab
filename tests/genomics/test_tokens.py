"""Tokenizer, FASTA/GFF3 readers, genome index and region splits."""
from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from apps.genomics import tokenizer
from apps.genomics.fasta import read_fasta, read_gff3
from apps.genomics.genome import load_genome
from apps.genomics.regions import SPLITS, WindowSampler, split_regions, window_positions
from apps.genomics.sources import CodingWindows, PromoterWindows, merged_intervals


def test_encode_decode_round_trip_and_soft_mask():
    ids, lower = tokenizer.encode("ACGTNacgtn")
    assert tokenizer.decode(ids) == "ACGTNACGTN"
    assert lower.tolist() == [False] * 5 + [True] * 5
    assert tokenizer.decode(tokenizer.encode(tokenizer.decode(ids))[0]) == "ACGTNACGTN"


def test_iupac_codes_read_as_n_and_bad_characters_are_named():
    ids, _ = tokenizer.encode("ARYSWKMBDHVry")
    assert tokenizer.decode(ids) == "A" + "N" * 12
    with pytest.raises(ValueError, match=r"record 'x': 'U' at position 3 .* convert RNA U to T"):
        tokenizer.encode("ACUG", where="record 'x'")
    with pytest.raises(ValueError, match="'-' at position 2"):
        tokenizer.encode("A-C")


def test_reverse_complement_twice_is_identity():
    tokens = torch.randint(0, tokenizer.VOCAB_SIZE, (3, 17))
    assert torch.equal(tokenizer.reverse_complement(tokenizer.reverse_complement(tokens)), tokens)
    ids = torch.from_numpy(tokenizer.encode("AACGTN")[0]).long()
    assert tokenizer.decode(tokenizer.reverse_complement(ids)) == "NACGTT"


def write(path, text: str):
    data = text.encode()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


@pytest.mark.parametrize("name", ["plain.fa", "packed.fa.gz"])
def test_fasta_streams_records_plain_and_gzip(tmp_path, name):
    path = write(tmp_path / name, ">one first record\nACGT\nacgt\n\n>two\nNNRY\n")
    records = list(read_fasta(path))
    assert [(r.name, r.description, r.sequence) for r in records] == [("one", "first record", b"ACGTacgt"), ("two", "", b"NNRY")]


def test_fasta_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="record 'empty' is empty"):
        list(read_fasta(write(tmp_path / "a.fa", ">empty\n>full\nACGT\n")))
    with pytest.raises(ValueError, match="sequence before the first '>'"):
        list(read_fasta(write(tmp_path / "b.fa", "ACGT\n>x\nA\n")))
    with pytest.raises(ValueError, match="no FASTA record"):
        list(read_fasta(write(tmp_path / "c.fa", "\n")))
    with pytest.raises(FileNotFoundError):
        list(read_fasta(tmp_path / "missing.fa"))


def test_gff3_features_are_zero_based_half_open(tmp_path):
    path = write(tmp_path / "g.gff3.gz", "##gff-version 3\nc1\tx\tCDS\t1\t10\t.\t+\t0\tID=a\nc1\tx\tmRNA\t1\t10\t.\t+\t.\tID=m\n")
    (feature,) = read_gff3(path)
    assert (feature.seqid, feature.start, feature.end, feature.strand) == ("c1", 0, 10, "+")
    with pytest.raises(ValueError, match="9 tab-separated columns"):
        list(read_gff3(write(tmp_path / "bad.gff3", "c1 x CDS 1 10\n")))


def test_genome_index_is_built_once_and_memory_mapped(tmp_path):
    path = write(tmp_path / "g.fa", ">a\nACGTac\n>b\nNNGG\n")
    genome = load_genome(path, tmp_path / "cache")
    assert genome.names == ["a", "b"] and genome.lengths.tolist() == [6, 4] and genome.starts.tolist() == [0, 6]
    assert tokenizer.decode(genome.tokens(np.arange(10))) == "ACGTACNNGG"
    assert genome.soft_masked(np.arange(6)).tolist() == [False] * 4 + [True] * 2
    assert isinstance(load_genome(path, tmp_path / "cache").codes, np.memmap)
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_regions_never_overlap_and_windows_stay_inside(generated_genome):
    regions = split_regions(generated_genome, block_size=20_000, seed=3)
    covered = np.zeros(generated_genome.size, np.int8)
    for split in SPLITS:
        for start, end in regions[split]:
            covered[start:end] += 1
    assert covered.max() == 1  # no base in two splits (or twice in one)
    record_of = np.searchsorted(generated_genome.starts, np.arange(generated_genome.size), side="right")
    sampler = WindowSampler(regions["test"], 300, "test")
    positions = window_positions(sampler.starts(500, np.random.default_rng(0)), 300)
    in_test = np.zeros(generated_genome.size, bool)
    for start, end in regions["test"]:
        in_test[start:end] = True
    assert in_test[positions].all()
    assert (record_of[positions] == record_of[positions[:, :1]]).all()  # no window crosses a record end
    with pytest.raises(ValueError, match="no region holds a window of 10000000 bases"):
        WindowSampler(regions["test"], 10_000_000, "test")


def test_merged_intervals():
    starts, ends = merged_intervals(np.array([5, 0, 2, 20]), np.array([9, 3, 6, 30]))
    assert starts.tolist() == [0, 20] and ends.tolist() == [9, 30]


def test_coding_labels_follow_the_cds(tmp_path, cache_dir):
    fasta = write(tmp_path / "c.fa", ">chrA\n" + "A" * 3000 + "\n")
    gff3 = write(tmp_path / "c.gff3", "chrA\tx\tCDS\t1001\t2000\t.\t+\t0\tID=a\n")
    source = CodingWindows(str(fasta), str(gff3), split={"block_size": 1000})
    source.prepare(cache_dir)
    labels = source.labels_of(np.array([0, 700, 1000, 1700, 1900, 2000]), 300)
    assert labels.tolist() == [0, 0, 1, 1, -1, 0]


def test_promoter_records_split_by_location(tmp_path, cache_dir):
    text = "".join(f">r{i} chr1:{1000 * i}-{1000 * i + 599}\n{'A' * 300}{'C' * 300}\n" for i in range(30))
    text += ">dup chr1:100-699\n" + "A" * 300 + "C" * 300 + "\n"  # overlaps r0: must share its split
    source = PromoterWindows(str(write(tmp_path / "p.fa", text)))
    source.prepare(cache_dir)
    assert source.split_of_record[-1] == source.split_of_record[0]
    tokens, labels = source.fixed("train", 1000, 300, seed=0)
    assert len(tokens) == 2 * (source.split_of_record == 0).sum()
    assert all(tokenizer.decode(t)[0] == ("C" if y == 1 else "A") for t, y in zip(tokens, labels))
