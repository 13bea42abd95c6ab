"""DNAModel: token embedding -> core.Backbone (any mixer or hybrid) -> a head, optionally reverse-complement aware.

Reverse-complement (RC) handling, `rc=`:
- "none": the backbone reads the given strand only.
- "shared" (Caduceus-PS, Schiff et al. 2024): RC-equivariant by parameter sharing. Caduceus keeps a 2*d_model
  residual stream whose second half carries the reverse-complement strand (channels flipped) and applies every
  layer to both halves with the same weights; no layer mixes the halves. That network is exactly one d_model
  backbone run with shared weights on the sequence and on its reverse complement, which is how it is computed
  here (one batch of 2B), for any mixer. The heads join the strands so that an RC input gives the
  reverse-complemented output: sequence logits are RC-invariant, per-base logits are flipped in time, base
  logits are flipped and complemented.
- "conjoin" (Caduceus-Ph): trained on one strand (use data.rc_augment=true); at evaluation and prediction the
  outputs on both strands are averaged as in "shared".

How the heads join the two strands, `rc_head=` (with rc="shared"):
- "average" (Caduceus): the head runs on each strand's features and the two outputs are averaged, so the outputs are
  RC-invariant / equivariant as above.
- "concat": the head reads both strands' features side by side (2 * d_model inputs). Equal to adding, to the
  strand-even features f + r of "average", the strand-odd f - r, which flips sign on the reverse complement (the
  odd representation of Mallet & Vert 2021): the backbone stays RC-equivariant and shares its weights, and the head
  can tell the strands apart. The output on the reverse complement is then the output with the strands swapped,
  not the same output. For labels that depend on orientation, such as promoter-proximal vs distal upstream
  sequences read in the gene's direction.

Heads, `head=`: "bases" (B, T, 4) logits of A, C, G, T at every position (language models); "sequence"
(B, num_classes) from mean-pooled features; "per_base" (B, T, num_classes).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

import core
from apps.genomics import tokenizer

RC_MODES = ("none", "shared", "conjoin")
RC_HEADS = ("average", "concat")
HEADS = ("bases", "sequence", "per_base")
COMPLEMENT_BASES = [tokenizer.T, tokenizer.G, tokenizer.C, tokenizer.A]  # logit of base b on the other strand


class DNAModel(nn.Module):
    """tokens (B, T) int64 ids of `apps.genomics.tokenizer` -> logits (see the module docstring for shapes).

    Args:
        mixer: {"name": registered mixer, "options": its options} (config group model/mixer).
        layers: backbone layer pattern: a mixer name or a hybrid list such as [mamba2, attention].
        d_model, depth, mlp_expand: backbone size (`core.Backbone`).
        bidirectional: wrap causal mixers in core's Bidirectional (needed for masked LM and classification with
            causal mixers; off for next-base prediction).
        rc: "none", "shared" or "conjoin" (module docstring).
        rc_head: "average" or "concat": how the head joins the two strands when rc="shared" (module docstring).
        head: "bases", "sequence" or "per_base"; num_classes: classes of the last two.
        dropout: on the features before the head.
    """

    def __init__(
        self,
        mixer: Mapping[str, Any],
        layers: str | Sequence[str | Mapping[str, Any]],
        d_model: int = 64,
        depth: int = 2,
        mlp_expand: float = 2.0,
        bidirectional: bool = True,
        rc: str = "none",
        rc_head: str = "average",
        head: str = "bases",
        num_classes: int = 2,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if rc not in RC_MODES:
            raise ValueError(f"model.rc={rc!r} is not one of {', '.join(RC_MODES)}")
        if head not in HEADS:
            raise ValueError(f"model.head={head!r} is not one of {', '.join(HEADS)}")
        if rc_head not in RC_HEADS:
            raise ValueError(f"model.rc_head={rc_head!r} is not one of {', '.join(RC_HEADS)}")
        if rc_head == "concat" and rc != "shared":
            raise ValueError(f"model.rc_head=concat reads both strands in training and needs model.rc=shared, not {rc!r}")
        self.rc, self.head_kind, self.concat = rc, head, rc_head == "concat"
        self.embedding = nn.Embedding(tokenizer.VOCAB_SIZE, d_model)
        self.backbone = core.Backbone(
            d_model, depth, layers=layers, mixer_options={mixer["name"]: dict(mixer.get("options") or {})},
            mlp_expand=mlp_expand, bidirectional=bidirectional,
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(d_model * (2 if self.concat else 1), tokenizer.NUM_BASES if head == "bases" else num_classes)

    @property
    def causal(self) -> bool:
        """True when position t of the output depends on tokens <= t only."""
        return self.backbone.causal and self.rc == "none"

    def both_strands(self) -> bool:
        return self.rc == "shared" or (self.rc == "conjoin" and not self.training)

    def features(self, tokens: Tensor) -> Tensor:
        """(B, T) ids -> (B, T, d_model) backbone output on the given strand."""
        return self.backbone(self.embedding(tokens))[0]

    def strand_features(self, tokens: Tensor) -> tuple[Tensor, Tensor | None]:
        """Features of the given strand and, when both strands are read, of the reverse complement aligned back
        to the given strand's positions (flipped in time); else None. Both (B, T, d_model)."""
        check_tokens(tokens)
        if not self.both_strands():
            return self.features(tokens), None
        both = self.features(torch.cat([tokens, tokenizer.reverse_complement(tokens)]))
        forward, reverse = both.chunk(2)
        return forward, reverse.flip(1)

    def forward(self, tokens: Tensor) -> Tensor:
        forward, reverse = self.strand_features(tokens)
        if self.concat:
            both = torch.cat([forward, reverse], -1)
            return self.head(self.dropout(both.mean(1) if self.head_kind == "sequence" else both))
        if self.head_kind == "sequence":
            logits = self.head(self.dropout(forward.mean(1)))
            return logits if reverse is None else (logits + self.head(self.dropout(reverse.mean(1)))) / 2
        logits = self.head(self.dropout(forward))
        if reverse is None:
            return logits
        other = self.head(self.dropout(reverse))
        if self.head_kind == "bases":  # the other strand predicts the complementary base
            other = other[..., COMPLEMENT_BASES]
        return (logits + other) / 2

    def embed(self, tokens: Tensor) -> Tensor:
        """(B, T) ids -> (B, d_model) mean-pooled features (averaged over both strands when they are read)."""
        forward, reverse = self.strand_features(tokens)
        pooled = forward.mean(1)
        return pooled if reverse is None else (pooled + reverse.mean(1)) / 2

    def encoder_state_dict(self) -> dict[str, Tensor]:
        """The weights fine-tuning transfers: embedding and backbone (not the head)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("head.")}


def check_tokens(tokens: Tensor) -> None:
    if tokens.ndim != 2 or tokens.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"tokens must be integer ids of shape (batch, length), got {tuple(tokens.shape)} {tokens.dtype}")
