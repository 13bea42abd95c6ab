"""Decision Transformer over any core mixer (Chen et al., 2021), and its behaviour-cloning twin.

A trajectory becomes tokens (R_1, s_1, a_1, R_2, s_2, a_2, ...): return-to-go, state and action, each
linearly embedded plus a learned embedding of its timestep. A causal `core.Backbone` (any mixer or hybrid)
reads them and a tanh head predicts a_t from the output at s_t. Without return conditioning the tokens are
(s_1, a_1, s_2, ...): behaviour cloning with the same network.

The normalisation travels with the weights (buffers, so every checkpoint has it): states are standardised
with the data set's mean and std, returns-to-go divided by `return_scale`, actions scaled to [-1, 1] by the
environment's bounds. Inputs and outputs are in the environment's own units.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import core


class DecisionTransformer(nn.Module):
    """(returns_to_go (B, T, 1), states (B, T, obs_dim), actions (B, T, act_dim), timesteps (B, T)) ->
    predicted actions (B, T, act_dim); the prediction at step t sees R_<=t, s_<=t and a_<t only.

    Args:
        obs_dim, act_dim: sizes of the environment's observations and actions.
        state_mean, state_std: (obs_dim,) statistics of the data set's observations.
        action_high: (act_dim,) bounds of the actions (the action space is [-high, high]).
        return_scale: returns-to-go are divided by it (about the scale of an episode's return).
        max_timestep: size of the timestep embedding; later steps share its last entry.
        mixer: {"name": registered mixer, "options": its keyword options} (config group model/mixer).
        layers: the backbone's layer pattern: the mixer's name or a hybrid such as [mamba2, attention].
        d_model, depth, mlp_expand: backbone size (see `core.Backbone`).
        dropout: on the token embeddings.
        return_conditioned: False drops the return tokens (behaviour cloning).
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        state_mean: np.ndarray,
        state_std: np.ndarray,
        action_high: np.ndarray,
        return_scale: float,
        max_timestep: int,
        mixer: Mapping[str, Any],
        layers: str | Sequence[str | Mapping[str, Any]],
        d_model: int = 128,
        depth: int = 3,
        mlp_expand: float = 2.0,
        dropout: float = 0.1,
        return_conditioned: bool = True,
    ) -> None:
        super().__init__()
        self.obs_dim, self.act_dim, self.max_timestep = obs_dim, act_dim, max_timestep
        self.return_conditioned = return_conditioned
        self.tokens_per_step = 3 if return_conditioned else 2
        self.register_buffer("state_mean", torch.as_tensor(state_mean, dtype=torch.float32).reshape(obs_dim))
        self.register_buffer("state_std", torch.as_tensor(state_std, dtype=torch.float32).reshape(obs_dim))
        self.register_buffer("action_high", torch.as_tensor(action_high, dtype=torch.float32).reshape(act_dim))
        self.register_buffer("return_scale", torch.tensor(float(return_scale)))
        self.embed_return = nn.Linear(1, d_model) if return_conditioned else None
        self.embed_state = nn.Linear(obs_dim, d_model)
        self.embed_action = nn.Linear(act_dim, d_model)
        self.embed_timestep = nn.Embedding(max_timestep, d_model)
        self.embed_norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.backbone = core.Backbone(
            d_model, depth, layers=layers, mixer_options={mixer["name"]: dict(mixer.get("options") or {})},
            mlp_expand=mlp_expand,
        )
        if not self.backbone.causal:
            raise ValueError(f"a Decision Transformer needs causal mixers; {self.backbone.layer_names} include a non-causal one")
        self.head = nn.Linear(d_model, act_dim)

    def embed(self, layer: nn.Linear, values: Tensor, timesteps: Tensor) -> Tensor:
        """layer(values) plus the timestep embedding: values (B, T, features), timesteps (B, T) -> (B, T, d_model)."""
        return layer(values) + self.embed_timestep(timesteps.clamp(0, self.max_timestep - 1))

    def embed_actions(self, actions: Tensor, timesteps: Tensor) -> Tensor:
        return self.embed(self.embed_action, actions / self.action_high, timesteps)

    def step_tokens(self, returns: Tensor, states: Tensor, actions: Tensor, timesteps: Tensor) -> list[Tensor]:
        """The embedded tokens of each step in order ([R,] s, a), each (B, T, d_model)."""
        tokens = [self.embed(self.embed_state, (states - self.state_mean) / self.state_std, timesteps),
                  self.embed_actions(actions, timesteps)]
        if self.embed_return is not None:
            tokens.insert(0, self.embed(self.embed_return, returns / self.return_scale, timesteps))
        return tokens

    def action_from(self, h: Tensor) -> Tensor:
        """Backbone output at state tokens (..., d_model) -> actions (..., act_dim) within the bounds."""
        return torch.tanh(self.head(h)) * self.action_high

    def forward(self, returns: Tensor, states: Tensor, actions: Tensor, timesteps: Tensor) -> Tensor:
        self.check_inputs(states, actions)
        tokens = torch.stack(self.step_tokens(returns, states, actions, timesteps), dim=2)  # [B, T, n, D]
        h, _ = self.backbone(self.dropout(self.embed_norm(tokens.flatten(1, 2))))  # [B, T*n, D]
        state_index = self.tokens_per_step - 2
        return self.action_from(h.unflatten(1, (states.shape[1], self.tokens_per_step))[:, :, state_index])

    def step(
        self, returns: Tensor, states: Tensor, timestep: int, previous_actions: Tensor | None, cache: list[Any] | None
    ) -> tuple[Tensor, list[Any]]:
        """One environment step for B environments with the backbone's state (O(1) per step for recurrent
        mixers, a KV cache for attention): feeds a_{t-1} (unless t is the first step), R_t and s_t.

        returns (B, 1), states (B, obs_dim), previous_actions (B, act_dim) or None at the first step, cache: the
        backbone state after the previous step (None at the first). Returns (actions (B, act_dim), cache).
        """
        if (previous_actions is None) != (cache is None):
            raise ValueError("pass previous_actions and cache together: both None at an episode's first step, both set after")
        self.check_inputs(states[:, None], None)
        batch = states.shape[0]
        times = torch.full((batch, 1), timestep, dtype=torch.long, device=states.device)
        blank = states.new_zeros(batch, 1, self.act_dim)
        *observed, _ = self.step_tokens(returns[:, None], states[:, None], blank, times)  # [R_t,] s_t
        if previous_actions is not None:
            observed.insert(0, self.embed_actions(previous_actions[:, None], times - 1))
        h, cache = self.backbone(self.dropout(self.embed_norm(torch.cat(observed, dim=1))), cache)
        return self.action_from(h[:, -1]), cache

    def check_inputs(self, states: Tensor, actions: Tensor | None) -> None:
        """ValueError unless states are (B, T, obs_dim) and actions (B, T, act_dim) of this model."""
        if states.ndim != 3 or states.shape[-1] != self.obs_dim:
            raise ValueError(
                f"states must be (batch, time, {self.obs_dim}), got {tuple(states.shape)}; the model was trained on "
                f"observations of {self.obs_dim} features (another environment or data set?)"
            )
        if actions is not None and tuple(actions.shape) != (*states.shape[:2], self.act_dim):
            raise ValueError(f"actions must be (batch, time, {self.act_dim}) like the states, got {tuple(actions.shape)}")
