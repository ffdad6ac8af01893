"""The flow transformer f(x, tau_s, tau_t) -> float32 logits over the padded vocabulary.

A bidirectional transformer with RoPE and adaLN-Zero conditioning on two time
inputs. The base flow model uses the diagonal tau_s = tau_t = tau and has only
the first time embedding; a Categorical Flow Map adds a second embedding of the
gap tau_t - tau_s whose output layer starts at zero, so a CFM initialised from a
base model computes exactly the base model's endpoint on every (s, t).

Input layer: the network sees the state x_t (B, L, V_pad) through
(x_t @ W) * scale(t) with scale(t) = 1 / sqrt(t^2 + (1 - t)^2 V), the inverse of
the expected norm of x_t, because |x_t| varies by a factor of about sqrt(V) over
[0, 1]. Because x enters only through x @ W, callers may pass the projection
`x_projected = x @ W` instead of x (the d-dimensional shortcut; see
`catflow.models.projected`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from catflow import paths
from catflow.models import layers
from catflow.models.config import ModelConfig


def expected_norm_scale(t: jax.Array, vocab_size: int) -> jax.Array:
  """Returns 1 / sqrt(t^2 + (1 - t)^2 V), the inverse expected norm of x_t."""
  return jax.lax.rsqrt(t**2 + (1.0 - t) ** 2 * vocab_size)


def _as_time_grid(tau: jax.Array, batch: int) -> jax.Array:
  """Reshapes a (B,) or (B, L) time to (B, 1) or (B, L)."""
  tau = jnp.asarray(tau, jnp.float32)
  if tau.ndim == 0:
    tau = jnp.broadcast_to(tau, (batch,))
  return tau[:, None] if tau.ndim == 1 else tau


class FlowTransformer(nn.Module):
  """The network f of the flow model and of the Categorical Flow Map."""

  config: ModelConfig

  def setup(self):
    cfg = self.config
    self.input_kernel = self.param(
        "input_kernel",
        nn.with_logical_partitioning(nn.initializers.normal(1.0), ("vocab", "embed")),
        (cfg.padded_vocab_size, cfg.embed_dim))
    if cfg.input_posterior:
      self.posterior_kernel = self.param(
          "posterior_kernel",
          nn.with_logical_partitioning(nn.initializers.normal(1.0), ("vocab", "embed")),
          (cfg.padded_vocab_size, cfg.embed_dim))
    if cfg.self_conditioning:
      self.self_condition_kernel = self.param(
          "self_condition_kernel",
          nn.with_logical_partitioning(nn.initializers.zeros_init(), ("vocab", "embed")),
          (cfg.padded_vocab_size, cfg.embed_dim))
    if cfg.position_embedding == "learned":
      self.position_table = self.param(
          "position_embedding",
          nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "embed")),
          (cfg.max_length, cfg.embed_dim))
    self.time_embedding = layers.TimeEmbedding(cfg, name="time_embedding")
    if cfg.two_time:
      self.gap_embedding = layers.TimeEmbedding(cfg, zero_output=True, name="gap_embedding")
    if cfg.modulation == "shared":
      self.shared_modulation = layers.Modulation(cfg, 6, name="shared_modulation")
    self.blocks = layers.BlockStack(cfg, name="blocks")
    self.final_modulation = layers.Modulation(cfg, 2, name="final_modulation")
    output_init = (nn.initializers.zeros_init() if cfg.zero_init_blocks
                   else nn.initializers.normal(cfg.embed_dim**-0.5))
    self.output_layer = nn.Dense(
        cfg.padded_vocab_size, dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(output_init, ("embed", "vocab")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("vocab",)),
        name="output")
    if cfg.learned_loss_weight:
      self.loss_weight = layers.LogVarianceNet(cfg, name="loss_weight")

  def project_input(self, x: jax.Array) -> jax.Array:
    """Returns x @ W, the only way the input layer sees the state (float32)."""
    return jnp.einsum("...v,vd->...d", x.astype(jnp.float32), self.input_kernel)

  def input_weights(self) -> jax.Array:
    """Returns W, the (V_pad, d) input kernel."""
    return self.input_kernel

  def loss_log_variance(self, tau: jax.Array) -> jax.Array:
    """Returns u(tau) of the learned loss weighting w = exp(-u) L + u, clipped."""
    cfg = self.config
    if not cfg.learned_loss_weight:
      raise ValueError("loss_log_variance needs a model with learned_loss_weight=True")
    return jnp.clip(self.loss_weight(tau), -cfg.loss_weight_clip, cfg.loss_weight_clip)

  def __call__(self, x: jax.Array | None, tau_s: jax.Array, tau_t: jax.Array | None = None,
               segment_ids: jax.Array | None = None, positions: jax.Array | None = None,
               *, x_projected: jax.Array | None = None,
               self_condition_rows: jax.Array | None = None) -> jax.Array:
    """Returns float32 logits (B, L, V_pad); padded vocabulary entries are masked.

    Args:
      x: the state x_s, shape (B, L, V_pad), or None when x_projected is given.
      tau_s: decodability time of the state, shape (B,) or (B, L).
      tau_t: target time of a flow-map jump (CFM only), same shape as tau_s.
        None means the diagonal tau_t = tau_s.
      segment_ids: (B, L) int document ids of packed rows, 0 for padding.
        None means one document per row with no padding.
      positions: (B, L) int position of each token inside its document.
        None means 0..L-1.
      x_projected: x @ W, shape (B, L, d), in place of x.
      self_condition_rows: with self_conditioning, a (B,) 0/1 mask of the rows
        whose second pass sees the first pass's estimate; None means every row
        (the setting for sampling and evaluation).
    """
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)

    # Inputs and their defaults.
    if (x is None) == (x_projected is None):
      raise ValueError("pass exactly one of x (the state) and x_projected (x @ W)")
    batch, length = (x if x is not None else x_projected).shape[:2]
    if x is not None and x.shape[-1] != cfg.padded_vocab_size:
      raise ValueError(f"state has {x.shape[-1]} vocabulary coordinates, the model expects "
                       f"padded_vocab_size={cfg.padded_vocab_size}")
    if x_projected is not None and not cfg.supports_projected_input:
      raise ValueError("x_projected needs a model that sees x only through x @ W; "
                       "set input_posterior=False and output_skip=False")
    if segment_ids is None:
      segment_ids = jnp.ones((batch, length), jnp.int32)
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    tau_s = _as_time_grid(tau_s, batch)
    tau_t = tau_s if tau_t is None else _as_time_grid(tau_t, batch)
    t_s = paths.t_from_tau(tau_s, cfg.vocab_size)[..., None]  # (B, 1 or L, 1)
    real = (segment_ids > 0)[..., None].astype(dtype)

    # Time conditioning: (B, 1, d) for per-sequence times, (B, L, d) per position.
    condition = self.time_embedding(tau_s)
    if cfg.two_time:
      condition = condition + self.gap_embedding(tau_t - tau_s)
    condition = condition.astype(dtype)

    # Input layer.
    projected = self.project_input(x) if x_projected is None else x_projected.astype(jnp.float32)
    if cfg.input_scaling == "expected_norm":
      projected = projected * expected_norm_scale(t_s, cfg.vocab_size)
    hidden = projected
    if cfg.input_posterior:
      local_logits = paths.mask_padded_logits(t_s * x / paths.one_minus(t_s) ** 2, cfg.vocab_size)
      hidden = hidden + jax.nn.softmax(local_logits, axis=-1) @ self.posterior_kernel
    if cfg.position_embedding == "learned":
      hidden = hidden + jnp.take(self.position_table, jnp.minimum(positions, cfg.max_length - 1),
                                 axis=0)
    hidden = layers.constrain(hidden.astype(dtype), ("act_batch", "act_length", "act_embed"))

    # Transformer blocks and output layer; with self-conditioning, twice.
    mask = layers.attention_mask(segment_ids, causal=cfg.causal)
    block_condition = condition
    if cfg.modulation == "shared":
      block_condition = jnp.concatenate(self.shared_modulation(condition), axis=-1)
    trunk = lambda hidden: self._trunk(hidden, condition, block_condition, mask, positions, real,
                                       t_s, x)
    if cfg.self_conditioning:
      rows = jnp.ones((batch,), dtype) if self_condition_rows is None else self_condition_rows
      estimate = jax.lax.stop_gradient(jax.nn.softmax(trunk(hidden), axis=-1))
      estimate = estimate * rows.astype(jnp.float32)[:, None, None]
      hidden = hidden + (estimate @ self.self_condition_kernel).astype(dtype)
    logits = trunk(hidden)
    if cfg.learned_loss_weight and self.is_initializing():
      self.loss_log_variance(tau_s[:, 0])
    return logits

  def _trunk(self, hidden, condition, block_condition, mask, positions, real, t_s, x) -> jax.Array:
    """Runs the blocks and the output layer; returns masked float32 logits."""
    cfg = self.config
    hidden = self.blocks(hidden * real, block_condition, mask, positions, real)
    shift, scale = self.final_modulation(condition)
    hidden = layers.normalize(hidden) * (1 + scale) + shift
    logits = self.output_layer(hidden.astype(jnp.float32))
    if cfg.output_skip:
      logits = logits + t_s * x.astype(jnp.float32) / paths.one_minus(t_s) ** 2
    logits = layers.constrain(logits, ("act_batch", "act_length", "act_vocab"))
    return paths.mask_padded_logits(logits, cfg.vocab_size)
