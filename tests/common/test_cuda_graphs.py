"""CUDA graphs for training steps (apps.common.cuda_graphs): the dispatch rules on CPU, real captures on the GPU."""
from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import core
from apps.common import cuda_graphs
from apps.common.cuda_graphs import GraphedForward

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class Net(nn.Module):
    """Two backbone layers of one mixer and a head: on CUDA the recurrent mixers run their Triton kernels."""

    def __init__(self, dim: int = 64, mixer: str = "gated_deltanet") -> None:
        super().__init__()
        self.backbone = core.Backbone(dim, 2, layers=mixer)
        self.head = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x)[0])


class StubGenerator:
    """Records whether a failed capture gave the generator back its state."""

    restored = False

    def clone_state(self):
        return "state before the capture"

    def graphsafe_set_state(self, state):
        self.restored = state == "state before the capture"


def stub_capture(monkeypatch) -> list:
    """make_graphed_callables replaced by a recorder that, like the real one, sets the instance's forward; and every
    CPU tensor accepted as if it were a CUDA one. Tests the dispatch rules without a GPU."""
    captured = []

    def make_graphed_callables(module, sample_args, **kwargs):
        captured.append(tuple(a.shape for a in sample_args))
        original = module.forward

        def replay(*args):
            replay.calls += 1
            return original(*args)

        replay.calls = 0
        module.forward = replay
        return module

    monkeypatch.setattr(torch.cuda, "make_graphed_callables", make_graphed_callables)
    monkeypatch.setattr(cuda_graphs, "_signature", lambda args: (tuple((a.shape, a.dtype) for a in args), False))
    monkeypatch.setattr(cuda_graphs, "_generator", lambda device: StubGenerator())
    return captured


def test_the_first_training_call_is_captured_and_replayed_for_the_same_shapes_only(monkeypatch):
    captured = stub_capture(monkeypatch)
    torch.manual_seed(0)
    net = Net(16, "gla")
    keys = list(net.state_dict())
    graphed = GraphedForward.install(net)
    x = torch.randn(2, 8, 16)
    expected = type(net).forward(net, x)

    torch.testing.assert_close(net(x), expected)  # captures, then replays
    net(x)
    assert captured == [(x.shape,)] and graphed.replays == 2 and graphed.graphed.calls == 2
    net(x[:1])  # a smaller (last) batch
    with torch.no_grad():
        net(x)
    net.eval()
    net(x)
    net.train()
    assert graphed.replays == 2 and graphed.eager_training_calls == 1 and captured == [(x.shape,)]

    assert list(net.state_dict()) == keys  # checkpoints do not see the graphs
    graphed.remove()
    assert "forward" not in net.__dict__ and graphed.graphed is None
    GraphedForward.install(net)
    with pytest.raises(RuntimeError, match="already replaced"):
        GraphedForward.install(net)


def test_a_failed_capture_restores_the_module_and_says_how_to_train_without_graphs(monkeypatch):
    monkeypatch.setattr(cuda_graphs, "_signature", lambda args: (tuple(a.shape for a in args), False))
    generator = StubGenerator()
    monkeypatch.setattr(cuda_graphs, "_generator", lambda device: generator)

    def refuse(module, sample_args, **kwargs):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(torch.cuda, "make_graphed_callables", refuse)
    net = nn.Linear(4, 4)
    graphed = GraphedForward.install(net)
    with pytest.raises(RuntimeError, match="callbacks.cuda_graphs.enabled=false"):
        net(torch.randn(2, 4))
    assert "forward" not in net.__dict__ and graphed.graphed is None and generator.restored


def test_a_failed_capture_outside_strict_mode_warns_and_trains_eagerly(monkeypatch, caplog):
    monkeypatch.setattr(cuda_graphs, "_signature", lambda args: (tuple(a.shape for a in args), False))
    generator = StubGenerator()
    monkeypatch.setattr(cuda_graphs, "_generator", lambda device: generator)
    attempts = []

    def refuse(module, sample_args, **kwargs):
        attempts.append(1)
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(torch.cuda, "make_graphed_callables", refuse)
    net = nn.Linear(4, 4)
    graphed = GraphedForward.install(net, strict=False)
    x = torch.randn(2, 4)
    with caplog.at_level("WARNING", logger=cuda_graphs.__name__):
        torch.testing.assert_close(net(x), nn.Linear.forward(net, x))
    net(x)
    assert "training eagerly" in caplog.text and graphed.failed and attempts == [1] and generator.restored
    assert graphed.replays == 0 and graphed.eager_training_calls == 2


def test_the_capture_is_thread_local_and_the_default_mode_comes_back(monkeypatch):
    modes = []
    stub_capture(monkeypatch)
    capture = torch.cuda.make_graphed_callables  # the stub

    def make_graphed_callables(module, sample_args, **kwargs):
        modes.append(torch.cuda.graph.keywords["capture_error_mode"])  # what torch.cuda.graph(...) is called with
        return capture(module, sample_args, **kwargs)

    monkeypatch.setattr(torch.cuda, "make_graphed_callables", make_graphed_callables)
    original = torch.cuda.graph
    GraphedForward.install(net := nn.Linear(3, 1), strict=True)
    net(torch.randn(2, 3))
    assert modes == ["thread_local"] and torch.cuda.graph is original


def test_pending_gradients_get_their_own_memory_before_a_replay_overwrites_the_static_ones():
    """A stand-in for a replay: it overwrites a static buffer (as a replay's forward may: both graphs share one memory
    pool) and its backward hands autograd an alias of that buffer (as make_graphed_callables' does). Accumulated over
    two calls, .grad must be the sum, not the last gradient twice."""
    static = torch.zeros(3)

    class Replay(torch.autograd.Function):
        @staticmethod
        def forward(ctx, weight):
            static.fill_(-100.0)
            return weight * 1

        @staticmethod
        def backward(ctx, grad):
            static.copy_(grad)
            return static.detach()

    weight = nn.Parameter(torch.zeros(3))
    for scale in (1.0, 2.0):
        cuda_graphs._own_pending_gradients([weight])
        (Replay.apply(weight) * scale).sum().backward()
    torch.testing.assert_close(weight.grad, torch.full((3,), 3.0))


def test_enabled_takes_true_false_or_auto():
    with pytest.raises(ValueError, match="must be true, false or auto, got 'yes'"):
        cuda_graphs.CudaGraphs(enabled="yes")


def test_the_callback_trains_eagerly_without_cuda(tmp_path, capsys):
    from apps.common.cli import QUIET, main
    from apps.timeseries.__main__ import APP

    overrides = ["model.d_model=16", "model.depth=1", "data.lookback=32", "data.horizon=8", "data.batch_size=4",
                 "trainer.fast_dev_run=true", "trainer.accelerator=cpu", "callbacks.cuda_graphs.enabled=true", *QUIET]  # fmt: skip
    metrics = main(APP, ["train", f"paths.runs={tmp_path}", *overrides])
    assert torch.isfinite(torch.tensor(metrics["test/mse"]))
    captured = capsys.readouterr()
    assert "needs a CUDA device; training on cpu eagerly" in captured.out + captured.err  # Hydra's log handler


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("mixer", ["gated_deltanet", "mamba2", "attention"])
def test_gpu_graphed_training_matches_eager_training(mixer):
    """Five AdamW steps replayed from a graph against five eager ones from the same weights and batches (float32)."""
    batches = [torch.randn(4, 96, 64, device="cuda") for _ in range(5)]
    targets = [torch.randn(4, 96, 1, device="cuda") for _ in range(5)]

    def train(graphs: bool):
        torch.manual_seed(0)
        net = Net(64, mixer).cuda()
        optimizer = torch.optim.AdamW(net.parameters(), 1e-3)
        graphed = GraphedForward.install(net) if graphs else None
        losses = []
        for x, y in zip(batches, targets):
            loss = (net(x) - y).square().mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
        return net, losses, graphed

    eager_net, eager_losses, _ = train(False)
    net, losses, graphed = train(True)
    assert graphed.replays == 5 and graphed.eager_training_calls == 0
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(eager_losses), rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(net.named_parameters(), eager_net.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)

    for model in (net, eager_net):  # gradients accumulated over three replays (accumulate_grad_batches=3)
        for x, y in zip(batches[:3], targets[:3]):
            (model(x) - y).square().mean().backward()
    assert graphed.replays == 8 and graphed.eager_training_calls == 0
    for (name, p), q in zip(net.named_parameters(), eager_net.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)
    net.zero_grad(set_to_none=True)
    loss = (net(batches[0][:3]) - targets[0][:3]).square().mean()  # a smaller batch runs eagerly, with gradients
    loss.backward()
    assert graphed.eager_training_calls == 1 and all(p.grad is not None for p in net.parameters())
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(batches[1]), type(net).forward(net, batches[1]))
    assert graphed.replays == 8


class PinsWhileCaptured(Net):
    """Net whose forward, while it is being captured, has another thread pin fresh host memory (a cudaHostAlloc), as the
    DataLoader's pin-memory thread does at any time, and waits for it."""

    def __init__(self, dim: int, mixer: str) -> None:
        super().__init__(dim, mixer)
        self.errors: list[Exception] = []

    def pin(self) -> None:
        try:
            torch.empty(1 << 27, dtype=torch.uint8, pin_memory=True)
        except Exception as error:
            self.errors.append(error)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.cuda.is_current_stream_capturing():
            thread = threading.Thread(target=self.pin)
            thread.start()
            thread.join()
        return super().forward(x)


@pytest.mark.gpu
@needs_cuda
def test_gpu_another_thread_may_use_cuda_while_a_graph_is_captured():
    """In the default global capture mode the pinning thread fails ("operation not permitted when stream is capturing")
    and the capture with it: session 20's speech benchmark lost a Conv-TasNet training so."""
    net = PinsWhileCaptured(64, "attention").cuda()
    graphed = GraphedForward.install(net, strict=True)
    x, y = torch.randn(4, 96, 64, device="cuda"), torch.randn(4, 96, 1, device="cuda")
    for _ in range(3):
        (net(x) - y).square().mean().backward()
    assert net.errors == [] and graphed.replays == 3


@pytest.mark.gpu
@needs_cuda
def test_gpu_speech_app_trains_with_graphs_under_bf16(tmp_path, capsys):
    from apps.common.cli import QUIET, main
    from apps.speech.__main__ import APP

    overrides = ["data.train_voices=4", "data.val_voices=2", "data.test_voices=2", "data.utterances_per_voice=3",
                 "data.segment_seconds=0.25", "data.train_mixtures=16", "data.val_mixtures=2", "data.test_mixtures=2",
                 "data.batch_size=4", "trainer.max_epochs=1", "trainer=gpu", "model/mixer=gated_deltanet", "model.d_model=32",
                 "model.num_blocks=1", "callbacks.cuda_graphs.enabled=true", f"data.cache_dir={tmp_path / 'cache'}", *QUIET]  # fmt: skip
    metrics = main(APP, ["train", f"paths.runs={tmp_path}", *overrides])
    assert torch.isfinite(torch.tensor(metrics["test/si_snri"]))
    captured = capsys.readouterr()
    assert "CUDA graphs: 4 training calls replayed, 0 eager" in captured.out + captured.err  # 16 mixtures in batches of 4


@pytest.mark.gpu
@needs_cuda
def test_gpu_a_network_that_synchronises_with_the_host_trains_eagerly_or_fails_clearly():
    class Syncing(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(8, 8)
            self.dropout = nn.Dropout(0.1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.abs().max().item() > 1e6:  # a host synchronisation: allowed in warm-up, not in a capture
                raise ValueError("too large")
            return self.dropout(self.linear(x))

    x = torch.randn(4, 8, device="cuda")
    net = Syncing().cuda()
    graphed = GraphedForward.install(net, strict=False)
    net(x).sum().backward()
    assert graphed.failed and graphed.replays == 0 and net.linear.weight.grad is not None
    net.zero_grad(set_to_none=True)
    net(x).sum().backward()  # the GPU and its random generator (dropout) are still usable, eagerly
    assert graphed.eager_training_calls == 2 and torch.isfinite(net.linear.weight.grad).all()
    torch.nn.functional.dropout(x, 0.5)

    strict = Syncing().cuda()
    GraphedForward.install(strict)
    with pytest.raises(RuntimeError, match="callbacks.cuda_graphs.enabled=false"):
        strict(x)


APP_RUNS = {  # each app's tiny run (its tests' sizes), on the GPU with graphs
    "timeseries": ["model.d_model=16", "model.depth=1", "data.lookback=48", "data.horizon=24", "data.batch_size=32",
                   "trainer.limit_train_batches=3", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2"],
    "vision": ["model.embed_dim=32", "model.depth=2", "data.batch_size=32", "trainer.limit_train_batches=3",
               "trainer.limit_val_batches=2", "trainer.limit_test_batches=3"],
    "genomics": ["model.d_model=16", "model.depth=1", "data.batch_size=8", "data.train_batches=3", "data.val_windows=16",
                 "data.test_windows=16"],
}  # fmt: skip


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("app", list(APP_RUNS))
def test_gpu_apps_train_with_graphs(app, tmp_path, capsys):
    import importlib
    import re

    from apps.common.cli import QUIET, main

    APP = importlib.import_module(f"apps.{app}.__main__").APP
    overrides = [*APP_RUNS[app], "trainer.max_epochs=1", "trainer=gpu", *QUIET]  # graphs by default (auto) on one GPU
    if app == "timeseries":  # a CSV of its own: the default weather data needs pvlib, which a GPU machine may lack
        hours = pd.date_range("2020-01-01", periods=800, freq="h")
        phase = np.arange(800) * 2 * np.pi / 24
        pd.DataFrame({"date": hours, "a": np.sin(phase), "b": np.cos(phase), "c": np.sin(2 * phase)}).to_csv(tmp_path / "sines.csv", index=False)
        overrides += ["data=csv", f"data.path={tmp_path / 'sines.csv'}"]
    main(APP, ["train", f"paths.runs={tmp_path}", *overrides])
    captured = capsys.readouterr()
    replayed = re.search(r"CUDA graphs: (\d+) training calls replayed, (\d+) eager", captured.out + captured.err)
    assert replayed and int(replayed[1]) >= 2 and int(replayed[2]) <= 1, captured.err[-2000:]  # 3 batches: the last may be smaller


@pytest.mark.gpu
@needs_cuda
def test_gpu_decision_transformer_graphs_its_four_inputs():
    """The RL app's network takes (returns, states, actions, timesteps): graphed steps against eager ones (no dropout)."""
    from apps.rl.model import DecisionTransformer

    g = torch.Generator("cuda").manual_seed(0)
    inputs = [(torch.randn(8, 10, 1, device="cuda", generator=g), torch.randn(8, 10, 3, device="cuda", generator=g),
               torch.rand(8, 10, 1, device="cuda", generator=g) * 4 - 2, torch.arange(10, device="cuda").expand(8, 10))
              for _ in range(3)]  # fmt: skip

    def train(graphs: bool):
        torch.manual_seed(0)
        net = DecisionTransformer(3, 1, [0.0] * 3, [1.0] * 3, [2.0], 100.0, 200, {"name": "gated_deltanet", "options": {}},
                                  "gated_deltanet", d_model=64, depth=2, dropout=0.0).cuda()  # fmt: skip
        optimizer = torch.optim.AdamW(net.parameters(), 1e-3)
        graphed = GraphedForward.install(net) if graphs else None
        losses = []
        for returns, states, actions, timesteps in inputs:
            loss = (net(returns, states, actions, timesteps) - actions).square().mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
        return losses, graphed

    eager_losses, _ = train(False)
    losses, graphed = train(True)
    assert graphed.replays == 3
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(eager_losses), rtol=1e-4, atol=1e-5)
