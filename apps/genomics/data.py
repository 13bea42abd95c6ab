"""GenomicsDataModule: batches of windows from a task's source (sources.py), and FASTA records for predict/embed.

Training batches are drawn on the fly (a window is a slice of the memory-mapped genome, so a batch costs a
fancy-index), `train_batches` per epoch; validation and test sets are fixed by the seed. Test windows may be
longer than training and validation windows (`eval_window`): train at 1 kb, evaluate at 8 kb.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset, get_worker_info

from apps.genomics import tokenizer
from apps.genomics.fasta import read_fasta

LABEL_KINDS = ("tokens", "sequence", "per_base")


def reverse_complement_batch(tokens: Tensor, labels: Tensor, label_kind: str, rows: Tensor) -> tuple[Tensor, Tensor]:
    """The batch with the windows of `rows` (B,) bool replaced by their reverse complement, labels to match."""
    tokens = torch.where(rows[:, None], tokenizer.reverse_complement(tokens), tokens)
    if label_kind == "tokens":
        return tokens, tokens
    if label_kind == "per_base":
        return tokens, torch.where(rows[:, None], labels.flip(-1), labels)
    return tokens, labels


class TrainBatches(IterableDataset):
    """`batches` batches of (tokens (B, W) int64, labels) per pass, from `source.sample`.

    Each pass draws a fresh seed from torch's global generator (seeded by seed_everything in the main process,
    per worker and epoch by the DataLoader), plus the process rank, so epochs, workers and DDP ranks all differ.
    rc_augment: each window is reverse-complemented with probability 1/2.
    """

    def __init__(self, source: Any, batches: int, batch_size: int, window: int, rc_augment: bool) -> None:
        self.source, self.batches, self.batch_size, self.window, self.rc_augment = source, batches, batch_size, window, rc_augment

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        worker = get_worker_info()
        workers, worker_id = (worker.num_workers, worker.id) if worker else (1, 0)
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        rng = np.random.default_rng([int(torch.randint(2**62, ())), rank])
        for _ in range(worker_id, self.batches, workers):
            tokens, labels = self.source.sample("train", self.batch_size, self.window, rng)
            tokens, labels = torch.from_numpy(tokens).long(), torch.from_numpy(np.asarray(labels)).long()
            if self.rc_augment:
                flip = torch.from_numpy(rng.random(self.batch_size) < 0.5)
                tokens, labels = reverse_complement_batch(tokens, labels, self.source.label_kind, flip)
            yield tokens, labels


class FastaRecords(IterableDataset):
    """The records of a FASTA(.gz) file, streamed: (name, tokens (1, L) int64) each. Case and IUPAC codes as in
    the tokenizer; records longer than `max_length` are an error (classify pieces of them instead)."""

    def __init__(self, path: str | Path, max_length: int) -> None:
        self.path, self.max_length = path, max_length

    def __iter__(self) -> Iterator[tuple[str, Tensor]]:
        for record in read_fasta(self.path):
            if len(record.sequence) > self.max_length:
                raise ValueError(f"{self.path}: record {record.name!r} has {len(record.sequence)} bases, more than "
                                 f"data.max_predict_length={self.max_length}; raise it (memory permitting) or split the record")
            ids, _ = tokenizer.encode(record.sequence, where=f"{self.path} record {record.name!r}")
            yield record.name, torch.from_numpy(ids).long()[None]


class GenomicsDataModule(L.LightningDataModule):
    """Windows of one task.

    Args:
        source: a source of sources.py (its `label_kind` and `class_names` tell the task what labels are).
        name: the data set's name (run directories are named after it).
        window: training and validation window length in bases; eval_window: test length (None: same).
        batch_size: windows per batch; train_batches: batches per training epoch.
        val_windows, test_windows: sizes of the fixed validation and test sets.
        rc_augment: reverse-complement half of the training windows.
        cache_dir: where genome indexes are kept (built on first use, shared by later runs).
        predict_path: FASTA(.gz) for predict/embed; max_predict_length: longest record they accept.
        num_workers: DataLoader workers for training batches; seed: of the validation and test sets.
    """

    def __init__(
        self,
        source: Any,
        name: str,
        cache_dir: str,
        window: int = 512,
        eval_window: int | None = None,
        batch_size: int = 32,
        train_batches: int = 100,
        val_windows: int = 256,
        test_windows: int = 512,
        rc_augment: bool = False,
        predict_path: str | None = None,
        max_predict_length: int = 1_000_000,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if source.label_kind not in LABEL_KINDS:
            raise ValueError(f"source {type(source).__name__} has label_kind {source.label_kind!r}, not one of {LABEL_KINDS}")
        for option, value in (("window", window), ("batch_size", batch_size), ("train_batches", train_batches),
                              ("val_windows", val_windows), ("test_windows", test_windows)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"data.{option} must be a positive integer, got {value!r}")
        self.source, self.name, self.cache_dir = source, name, cache_dir
        self.window, self.eval_window = window, eval_window or window
        self.batch_size, self.train_batches = batch_size, train_batches
        self.val_windows, self.test_windows, self.rc_augment = val_windows, test_windows, rc_augment
        self.predict_path, self.max_predict_length = predict_path, max_predict_length
        self.num_workers, self.seed = num_workers, seed
        self.prepared = False
        self.sets: dict[str, Dataset] = {}

    @property
    def label_kind(self) -> str:
        return self.source.label_kind

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.source.class_names)

    def setup(self, stage: str | None = None) -> None:
        if stage == "predict":
            if self.predict_path is None:
                raise ValueError("predict and embed read a FASTA file: pass data.predict_path=FILE.fa[.gz]")
            return
        if not self.prepared:
            self.source.prepare(self.cache_dir)
            for split, n, window, seed in (("val", self.val_windows, self.window, self.seed),
                                           ("test", self.test_windows, self.eval_window, self.seed + 1)):
                tokens, labels = self.source.fixed(split, n, window, seed)
                self.sets[split] = TensorDataset(torch.from_numpy(tokens).long(), torch.from_numpy(np.asarray(labels)).long())
            self.prepared = True

    def train_dataloader(self) -> DataLoader:
        batches = TrainBatches(self.source, self.train_batches, self.batch_size, self.window, self.rc_augment)
        return DataLoader(batches, batch_size=None, num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.sets["val"], batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.sets["test"], batch_size=self.batch_size)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(FastaRecords(self.predict_path, self.max_predict_length), batch_size=None)
