"""The recurrences as functions; `core.ops.dispatch` picks an implementation for each."""

from core.ops.linear_recurrence import linear_recurrence
from core.ops.varlen import mask_padding

__all__ = ["linear_recurrence", "mask_padding"]
from core.ops.delta_rule import delta_product, delta_rule  # noqa: E402
from core.ops.dplr_delta_rule import dplr_delta_rule  # noqa: E402

__all__ += ["delta_product", "delta_rule", "dplr_delta_rule"]
from core.ops.mlstm import MLSTMState, mlstm, neutral_gates  # noqa: E402
from core.ops.prefix_attention import PrefixAttentionState, prefix_attention  # noqa: E402

__all__ += ["MLSTMState", "mlstm", "neutral_gates", "PrefixAttentionState", "prefix_attention"]
from core.ops.linear_scan import linear_scan, log_linear_scan, mask_scan_padding  # noqa: E402
from core.ops.selective_scan import selective_scan  # noqa: E402

__all__ += ["linear_scan", "log_linear_scan", "mask_scan_padding", "selective_scan"]
from core.ops.forgetting_attention import ForgettingAttentionState, forgetting_attention  # noqa: E402

__all__ += ["ForgettingAttentionState", "forgetting_attention"]
from core.ops.neural_memory import MemorySpec, NeuralMemoryState, neural_memory  # noqa: E402

__all__ += ["MemorySpec", "NeuralMemoryState", "neural_memory"]
