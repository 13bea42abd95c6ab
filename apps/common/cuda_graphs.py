"""CUDA graphs for the training steps of any app: the network's forward and backward replayed as two graphs.

A training step of a small network on a fast GPU is often bound by the host, which launches hundreds of kernels per
step (PyTorch's and the mixers' Triton kernels). Replaying a captured graph launches them all at once. Measured on an
H100 (session 16, `python -m benchmarks.training_step`: one B16 x 2 s step of the speech app's separators, forward +
backward + AdamW, bf16): Gated DeltaNet 81.4 -> 26.3 ms, Mamba-2 72.4 -> 32.2 ms, attention 39.5 -> 19.7 ms,
Conv-TasNet 58.7 -> 37.6 ms.

`CudaGraphs` (a Lightning callback of every app; `callbacks.cuda_graphs.enabled` is auto, the default: on when training
on one GPU, or true, or false) routes the task's network (`pl_module.model`) through `GraphedForward`: the first
training call is captured with `torch.cuda.make_graphed_callables` and later calls with the same input shapes replay
it; anything else (evaluation, no_grad, other shapes such as a smaller last batch, keyword arguments) runs eagerly. The
parameters stay where they are: checkpoints are unchanged.

What a graph needs, as any CUDA graph: a forward and backward without host synchronisation (`.item()`,
data-dependent shapes); a network that has one trains eagerly after a warning (an error with `enabled=true`). And the
network's outputs are the graph's static buffers: the caller uses them before the next training call, as a training
step does.

Graphs are captured in CUDA's thread-local capture mode, as Inductor's are: in the default global mode a CUDA call from
any other thread during the capture, such as the DataLoader's pin-memory thread pinning the next batch, invalidates the
capture and fails in that thread, which ended training (session 20: the speech benchmark's Conv-TasNet, twice in five
runs, on an H100).
"""
from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)


def _signature(args: tuple[Any, ...]) -> tuple | None:
    """What a graph depends on: each input's shape, dtype, device and requires_grad, and the autocast state;
    None when an argument is not a CUDA tensor (such calls run eagerly)."""
    if not args or not all(isinstance(a, Tensor) and a.is_cuda for a in args):
        return None
    autocast = torch.is_autocast_enabled("cuda")
    return (
        tuple((a.shape, a.dtype, a.device, a.requires_grad) for a in args),
        autocast and torch.get_autocast_dtype("cuda"),
    )


def _own_pending_gradients(parameters: list[nn.Parameter]) -> None:
    """Copies every pending .grad into memory of its own (one multi-tensor copy), before a replay.

    A replay's backward hands autograd its static gradient buffers, and a .grad that was None keeps such a buffer as
    is (autograd takes over a fresh gradient). The next replay reuses that memory, already in its forward (the two
    graphs share one memory pool), so a gradient still being accumulated (accumulate_grad_batches > 1,
    zero_grad(set_to_none=False)) would be overwritten. Lightning sets .grad to None only after the forward, so this
    copies the previous step's gradients once per step."""
    pending = [p for p in parameters if p.grad is not None]
    if pending:
        for parameter, own in zip(pending, torch._foreach_mul([p.grad for p in pending], 1.0)):
            parameter.grad = own


@contextlib.contextmanager
def _thread_local_capture() -> Iterator[None]:
    """torch.cuda.graph captures in "thread_local" mode inside the block (make_graphed_callables takes no mode and calls
    torch.cuda.graph with the default, "global"): other threads may then use CUDA while this one captures."""
    original = torch.cuda.graph
    torch.cuda.graph = functools.partial(original, capture_error_mode="thread_local")
    try:
        yield
    finally:
        torch.cuda.graph = original


def _generator(device: torch.device) -> torch.Generator:
    """The default random generator of a CUDA device (the one dropout draws from)."""
    return torch.cuda.default_generators[device.index]


class GraphedForward:
    """A module's `forward` that replays a CUDA graph of it in training: installed as `module.forward` by `install`,
    removed by `remove`.

    The first call in training mode with gradients on and CUDA tensor arguments captures the forward and backward
    (three warm-up passes first, which do not touch the parameters' .grad); such calls with the same signature replay
    it. Other calls run the module's own forward.
    """

    def __init__(self, module: nn.Module, strict: bool = True) -> None:
        self.module = module
        self.strict = strict  # a failed capture raises; else it warns and every call runs eagerly
        self.failed = False
        self.graphed: Callable[..., Any] | None = None
        self.signature: tuple | None = None
        self.replays = 0
        self.eager_training_calls = 0  # training calls run eagerly

    @classmethod
    def install(cls, module: nn.Module, strict: bool = True) -> GraphedForward:
        if "forward" in module.__dict__:
            raise RuntimeError(f"{type(module).__name__}.forward is already replaced on this instance; remove that first")
        graphed = cls(module, strict)
        module.forward = graphed
        return graphed

    def remove(self) -> None:
        """Restores the module's own forward and drops the graphs (and the memory they hold)."""
        if self.module.__dict__.get("forward") is self:
            del self.module.forward
        self.graphed = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        training = self.module.training and torch.is_grad_enabled()
        signature = _signature(args) if training and not kwargs else None
        if signature is not None and self.graphed is None and not self.failed:
            self._capture(args, signature)
        if signature is not None and signature == self.signature:
            self.replays += 1
            _own_pending_gradients(list(self.module.parameters()))
            return self.graphed(*args)
        self.eager_training_calls += int(training)
        return type(self.module).forward(self.module, *args, **kwargs)

    def _capture(self, args: tuple[Tensor, ...], signature: tuple) -> None:
        module = self.module
        del module.forward  # make_graphed_callables captures the class's forward and replaces it on the instance
        # the graph's static inputs, which every replay copies into: fresh tensors, so that an expanded input (stride 0,
        # such as timesteps broadcast over a batch) does not become a placeholder that cannot be written
        samples = tuple(a.detach().clone().requires_grad_(a.requires_grad) for a in args)
        generator = _generator(args[0].device)
        rng = generator.clone_state()
        try:
            # autocast as the caller has it, without its cast cache, which graphs cannot use
            autocast_dtype = signature[1]
            with torch.autocast("cuda", dtype=autocast_dtype or None, enabled=bool(autocast_dtype), cache_enabled=False), _thread_local_capture():
                torch.cuda.make_graphed_callables(module, samples, allow_unused_input=True)
        except Exception as error:
            # a failed capture leaves the device's random generator in capture mode, where every later random op
            # (dropout) fails with "Offset increment outside graph capture": give it back its state from before
            generator.graphsafe_set_state(rng)
            module.__dict__.pop("forward", None)
            failure = f"capturing {type(module).__name__} in a CUDA graph failed ({type(error).__name__}: {error})"
            if self.strict:
                raise RuntimeError(
                    f"{failure}. Graphs need a forward and backward without host synchronisation; train without them: "
                    "callbacks.cuda_graphs.enabled=false"
                ) from error
            log.warning(f"{failure}; training eagerly (graphs need a forward and backward without host synchronisation)")
            self.failed = True
        else:
            self.graphed = module.__dict__.pop("forward")
            self.signature = signature
            shapes = ", ".join(str(tuple(a.shape)) for a in args)
            log.info(f"CUDA graphs: captured {type(module).__name__}'s forward and backward for inputs {shapes}")
        module.forward = self


class CudaGraphs(L.Callback):
    """Replays the training steps' forward and backward of `pl_module.model` as CUDA graphs (see the module docstring).

    Args:
        enabled: "auto" (the default): when training on one CUDA device, and a network that cannot be captured trains
            eagerly after a warning; True: whenever training on CUDA, and a failed capture is an error (on a machine
            without CUDA, a warning and eager training); False: never.
    """

    def __init__(self, enabled: bool | str = "auto") -> None:
        if enabled not in (True, False, "auto"):
            raise ValueError(f"callbacks.cuda_graphs.enabled must be true, false or auto, got {enabled!r}")
        self.enabled = enabled
        self.graphed: GraphedForward | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        on_cuda = pl_module.device.type == "cuda"
        if not self.enabled or (self.enabled == "auto" and not (on_cuda and trainer.world_size == 1)):
            return
        if not on_cuda:
            log.warning(f"callbacks.cuda_graphs.enabled=true needs a CUDA device; training on {pl_module.device.type} eagerly")
            return
        model = getattr(pl_module, "model", None)
        if not isinstance(model, nn.Module):
            raise TypeError(f"{type(pl_module).__name__} has no network at .model for CUDA graphs to capture")
        self.graphed = GraphedForward.install(model, strict=self.enabled is True)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.graphed is not None:
            log.info(f"CUDA graphs: {self.graphed.replays} training calls replayed, {self.graphed.eager_training_calls} eager")
            self.graphed.remove()
            self.graphed = None
