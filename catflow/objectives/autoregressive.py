"""Next-token cross-entropy on the flow backbone with causal attention.

This trains the autoregressive scorer used to measure the generative
perplexity of samples offline. The backbone sees the clean one-hot tokens at
t = 1 (tau = 1), attends causally, and the logits at position i predict the
token at position i + 1 of the same document:

    loss = mean over real next-token pairs of -log softmax(f(e_y, 1, 1))_i[y_{i+1}].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from catflow.objectives import common


def next_token_logits(params, batch, *, model) -> jax.Array:
  """Returns logits (B, L, V_pad); position i scores the token at i + 1."""
  cfg = model.config
  x = jax.nn.one_hot(batch["tokens"], cfg.padded_vocab_size, dtype=jnp.float32)
  tau = jnp.ones((batch["tokens"].shape[0],), jnp.float32)
  return common.apply_model(model, params, {"x": x}, tau, tau, batch)


def next_token_mask(batch) -> jax.Array:
  """Returns the (B, L - 1) mask of positions whose next token is in the same document."""
  segments = batch["segment_ids"]
  return ((segments[:, :-1] == segments[:, 1:]) & (segments[:, :-1] > 0)).astype(jnp.float32)


def loss_fn(params, batch, key: jax.Array, *, model, options: common.ObjectiveOptions,
            teacher_params=None):
  """Returns (loss, metrics) of next-token prediction; key and teacher are unused."""
  del key, options, teacher_params
  if not model.config.causal:
    raise ValueError("objective.name='autoregressive' needs model.causal=True")
  logits = next_token_logits(params, batch, model=model)
  cross_entropy = common.cross_entropy_with_tokens(logits[:, :-1], batch["tokens"][:, 1:])
  loss = common.masked_mean(cross_entropy, next_token_mask(batch))
  return loss, {"cross_entropy": loss}
