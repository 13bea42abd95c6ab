"""GPU benchmark of the Triton kernels against flash-linear-attention 0.6.0 and PyTorch SDPA, in one run.

    python -m benchmarks.kernels [--quick] [--ops OP ...] [--shapes SHAPE ...] [--impls IMPL ...]
        [--torch-chunk] [--max-seconds-per-impl S] [--max-seconds S] [--profile] [--resume JSON] [--out DIR]

Ops: lr_none (linear recurrence, no decay), lr_scalar (one decay per token and head, [B, T, H]),
gla (one decay per key channel, [B, T, H, K]), delta (DeltaNet), gated_delta (Gated DeltaNet),
attention (causal softmax attention through SDPA: the softmax baseline at the same B, T, H, D) and decode (one token at B = 1, H = 16, D = 128 through kernels.common.step.recurrent_step,
launched plainly and replayed from a CUDA graph, in microseconds).
Impls: ours (kernels.linear_recurrence / kernels.delta_rule), fla (fla-core 0.6.0: chunk_linear_attn,
chunk_simple_gla, chunk_gla, chunk_delta_rule, chunk_gated_delta_rule), sdpa (attention only: PyTorch's
own backend choice, cuDNN on an H100), sdpa_flash (attention only: FlashAttention-2 forced) and,
with --torch-chunk, our PyTorch chunk form in bf16 (slow).
Shapes: named B{B}_T{T}_H{H}_D{D} (K = V = D) or by set: 32k (16x2048, 8x4096, 2x16384 at H = 16,
D = 128: 32K tokens per batch), fla (fla's own benchmark shapes), quick (B8_T4096_H16_D128).
Default: 32k and fla.

For every (op, shape, impl): the first forward and backward run outside the timed region (Triton
compilation and autotuning excluded; their wall time is recorded as first_call_s), then forward and
forward+backward times (triton.testing.do_bench median: CUDA events, L2 cleared before each rep),
tokens/s, peak CUDA memory above the inputs (one call, after warm-up), achieved bytes/s and FLOP/s of
the op's roofline model (`roofline_model`: minimum bytes and FLOPs, the same for every impl) and the
fraction of the roofline floor reached, against the copy bandwidth and bf16 matmul rate measured in
the same run, and the relative RMS error of the output and of every gradient against our PyTorch
chunk form run on float32 upcasts of the same inputs (keys L2-normalised for the delta rule, beta in
(0, 1), g = logsigmoid(x) per head, logsigmoid(x) / 16 per channel for GLA).

Failures are recorded, never fatal: 'refused' (fla raised, e.g. its gated backward on Hopper with
Triton 3.4 - 3.7.0), 'not supported' (our kernel's `supports(...)` says no), 'time budget' (the
measurement ran past --max-seconds-per-impl, or the run past --max-seconds: an alarm interrupts the
Python code, and the first backward runs on the calling thread so that autotuning inside it can be
interrupted too), 'not run' (the global budget was spent before it started), 'out of memory', 'error'.
Our kernels, SDPA and the torch chunk form run first on every shape; fla runs last (its first backward
may autotune for minutes: in session 3 each fla op needed more than 60 s before its first forward or
backward returned). To pay autotuning once across machines, set TRITON_CACHE_AUTOTUNING=1 and a
TRITON_CACHE_DIR that is kept (copied back from the run and carried into the next one). The JSON and markdown are rewritten after every measurement, so a killed
run keeps what it measured; --resume JSON continues such a run, keeping its finished rows.
Output: DIR/kernels_<device>_<date>.{json,md} (default DIR benchmarks/results), with the device,
torch / triton / CUDA / fla versions and the date; the JSON's `autotuned` (also printed) holds the config the
autotuner chose for each of our kernels, and whether that is the default one (SEQMIX_TRITON_AUTOTUNE=0). Needs a CUDA GPU; on a machine without one it
stops with a message (the pure parts, roofline_model, parse_shapes and markdown, are tested on CPU
in tests/benchmarks/test_kernels.py).

Modules: shapes (names, shape sets, constants), roofline (the bytes and FLOPs model), budget (time limits and
failure classes), impls (inputs, the compared implementations, the float32 reference), measure (one
measurement, ceilings, decode, profiles), report (the markdown table and targets), run (the command line).
"""
