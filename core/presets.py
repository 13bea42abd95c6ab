"""Layer patterns of known architectures: plain functions returning a `core.Backbone` `layers` list.

    model = core.Backbone(256, depth=16, layers=presets.xlstm(ratio=(7, 1)), mlp_expand=0)
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from core.mixers._checks import check_positive_int


def xlstm(
    ratio: tuple[int, int] = (7, 1),
    *,
    slstm_ffn_expand: float = 4 / 3,
    mlstm_options: Mapping[str, Any] | None = None,
    slstm_options: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """xLSTM[a:b] (Beck et al., 2024): a mLSTM blocks then b sLSTM blocks, cycled by the Backbone to its depth.

    The paper's mLSTM block has no MLP of its own (its up-projection plays that part) while the
    sLSTM block is followed by a gated GeLU MLP (factor 4/3). `Backbone` gives every block the same
    `mlp_expand`, and takes per-layer mixer options only; so use this pattern with `mlp_expand=0`,
    and the sLSTM entries carry `ffn_expand=slstm_ffn_expand`: the MLP runs inside the sLSTM mixer,
    y = s + GatedMLP(RMSNorm(s)) on the sLSTM output s. That is the paper's block except that the MLP
    reads the sLSTM output instead of the residual stream x + s.

    ratio: (mLSTM blocks, sLSTM blocks) per repeat, e.g. (7, 1) or (1, 0) for mLSTM only.
    mlstm_options, slstm_options: extra mixer options for every mLSTM / sLSTM layer.
    Returns [{"name": "mlstm", ...}] * a + [{"name": "slstm", "ffn_expand": ..., ...}] * b.
    """
    if len(ratio) != 2 or any(not isinstance(n, int) or n < 0 for n in ratio) or sum(ratio) == 0:
        raise ValueError(f"xlstm: ratio must be (mLSTM blocks, sLSTM blocks), two ints >= 0 not both 0, got {ratio!r}")
    n_mlstm, n_slstm = ratio
    mlstm = {"name": "mlstm", **(mlstm_options or {})}
    slstm = {"name": "slstm", "ffn_expand": slstm_ffn_expand, **(slstm_options or {})}
    return [dict(mlstm) for _ in range(n_mlstm)] + [dict(slstm) for _ in range(n_slstm)]


def griffin(window: int = 1024, *, num_kv_heads: int = 1, rglru_options: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Griffin (De et al., 2024): two recurrent (RG-LRU) blocks, then one local attention block.

    The attention is multi-query (`num_kv_heads=1`) over a sliding window of `window` tokens; every
    block is followed by the Backbone's gated MLP, as in the paper. Hawk is `layers="rglru"`.
    rglru_options: extra mixer options for the RG-LRU layers.
    Returns [{"name": "rglru", ...}] * 2 + [{"name": "attention", "window": window, "num_kv_heads": ...}].
    """
    check_positive_int("griffin", "window", window)
    rglru = {"name": "rglru", **(rglru_options or {})}
    return [dict(rglru), dict(rglru), {"name": "attention", "window": window, "num_kv_heads": num_kv_heads}]


def hgrn(depth: int, **options: Any) -> list[dict[str, Any]]:
    """HGRN (Qin et al., 2023): `depth` HGRN layers whose forget-gate lower bound rises with depth.

    Layer l of L gets lower_bound = l / L, the paper's learned bounds at initialisation (softmax of
    zeros over the layers, cumulative sum, minus the first), held fixed here. Pass the same `depth`
    to `core.Backbone`. options: extra mixer options for every layer.
    """
    check_positive_int("hgrn", "depth", depth)
    return [{"name": "hgrn", "lower_bound": layer / depth, **options} for layer in range(depth)]
