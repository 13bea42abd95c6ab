"""Shapes, op and impl names, and the constants of the kernel benchmark."""

from __future__ import annotations

import re
from dataclasses import dataclass


CHUNK = 64  # chunk size of our kernels and of fla's
SUB_CHUNK = 16  # fla's GLA sub-chunk: the diagonal blocks of the per-channel-decay score matrix
OPS = ("lr_none", "lr_scalar", "gla", "delta", "gated_delta", "attention", "decode")
IMPLS = ("ours", "sdpa", "sdpa_flash", "torch_chunk", "fla")  # run in this order; fla last
SHAPE_SETS = {
    "32k": ("B16_T2048_H16_D128", "B8_T4096_H16_D128", "B2_T16384_H16_D128"),
    "fla": ("B1_T8192_H96_D128", "B4_T2048_H16_D128", "B8_T1024_H8_D64"),
    "quick": ("B8_T4096_H16_D128",),
}
DEFAULT_SHAPES = ("32k", "fla")
DECODE = {"B": 1, "H": 16, "D": 128, "steps_per_graph": 100}
DECODE_TARGET_US = 10.0
OUR_FUNCTIONS = {
    "lr_none": "kernels.linear_recurrence.chunk_linear_recurrence",
    "lr_scalar": "kernels.linear_recurrence.chunk_linear_recurrence",
    "gla": "kernels.linear_recurrence.chunk_linear_recurrence",
    "delta": "kernels.delta_rule.chunk_delta_rule",
    "gated_delta": "kernels.delta_rule.chunk_delta_rule",
}
FLA_FUNCTIONS = {
    "lr_none": "fla.ops.linear_attn.chunk_linear_attn",  # normalize=False
    "lr_scalar": "fla.ops.simple_gla.chunk_simple_gla",
    "gla": "fla.ops.gla.chunk_gla",
    "delta": "fla.ops.delta_rule.chunk_delta_rule",
    "gated_delta": "fla.ops.gated_delta_rule.chunk_gated_delta_rule",
}
UNFINISHED = ("time budget", "not run")  # statuses that --resume measures again


# --------------------------------------------------------------------------- shapes


@dataclass(frozen=True)
class Shape:
    B: int
    T: int
    H: int
    D: int  # K = V = D

    @property
    def name(self) -> str:
        return f"B{self.B}_T{self.T}_H{self.H}_D{self.D}"

    @property
    def tokens(self) -> int:
        return self.B * self.T


_SHAPE = re.compile(r"B(\d+)_T(\d+)_H(\d+)_D(\d+)", re.IGNORECASE)


def parse_shape(text: str) -> Shape:
    """'B8_T4096_H16_D128' (fla's naming; K = V = D) -> Shape(8, 4096, 16, 128)."""
    match = _SHAPE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"shape {text!r}: expected B<batch>_T<length>_H<heads>_D<head dim>, e.g. B8_T4096_H16_D128, or a set: {', '.join(SHAPE_SETS)}")
    shape = Shape(*map(int, match.groups()))
    if min(shape.B, shape.T, shape.H, shape.D) < 1:
        raise ValueError(f"shape {text!r}: every size must be at least 1")
    return shape


def parse_shapes(items: list[str] | tuple[str, ...]) -> list[Shape]:
    """Shape names and set names (32k, fla, quick), space- or comma-separated, in order, without repeats."""
    shapes: list[Shape] = []
    for item in (part for text in items for part in text.split(",") if part.strip()):
        for name in SHAPE_SETS.get(item.strip().lower(), (item,)):
            shape = parse_shape(name)
            if shape not in shapes:
                shapes.append(shape)
    if not shapes:
        raise ValueError("no shapes given")
    return shapes


def parse_names(items: list[str] | tuple[str, ...], allowed: tuple[str, ...], what: str) -> list[str]:
    """Space- or comma-separated names among `allowed`, returned in `allowed`'s order."""
    names = {part.strip().lower() for text in items for part in text.split(",") if part.strip()}
    unknown = sorted(names - set(allowed))
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; choose among {', '.join(allowed)}")
    return [name for name in allowed if name in names]


def impls_for(op: str, impls: list[str]) -> list[str]:
    """The impls that compute `op`: SDPA only the attention op, the others every recurrent op."""
    if op == "decode":
        return []
    return [i for i in impls if i.startswith("sdpa") == (op == "attention")]
