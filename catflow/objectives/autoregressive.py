"""Next-token cross-entropy on the flow backbone with causal attention.

This trains the autoregressive scorer used to measure the generative
perplexity of samples offline. The backbone receives clean one-hot inputs at
t = 1 (tau = 1) and attends causally. The input at position i is the
previous token of the same piece, and at the first position of every piece a
BOS input (the zero vector, written as id `BOS`), so position i predicts
token i from everything before it in the piece, the first token included:

    loss = mean over real tokens y_i of -log softmax(f(shift(e_y), 1, 1))_i[y_i].

A piece is a document, or a row-sized part of a longer one: packing gives
each piece its own segment id, so most BOS inputs start mid-document.
Catflow's vocabularies have no BOS token, and the zero input plays its part
without taking a vocabulary slot.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from catflow.objectives import common

# The input id of the start of a document: `jax.nn.one_hot` maps it to zeros.
BOS = -1


def shifted_inputs(tokens: jax.Array, segment_ids: jax.Array) -> jax.Array:
  """Returns the (B, L) input ids: the previous token of the piece, BOS at its start."""
  previous = jnp.pad(tokens[:, :-1], ((0, 0), (1, 0)), constant_values=BOS)
  same_document = jnp.pad(segment_ids[:, 1:] == segment_ids[:, :-1], ((0, 0), (1, 0)),
                          constant_values=False)
  return jnp.where(same_document, previous, BOS)


def token_logits(params, batch, *, model) -> jax.Array:
  """Returns logits (B, L, V_pad); position i scores batch["tokens"][:, i]."""
  cfg = model.config
  inputs = shifted_inputs(batch["tokens"], batch["segment_ids"])
  x = jax.nn.one_hot(inputs, cfg.padded_vocab_size, dtype=jnp.float32)
  tau = jnp.ones((inputs.shape[0],), jnp.float32)
  return common.apply_model(model, params, {"x": x}, tau, tau, batch)


def token_mask(batch) -> jax.Array:
  """Returns the (B, L) float mask of real (non-padding) tokens."""
  return (batch["segment_ids"] > 0).astype(jnp.float32)


def loss_fn(params, batch, key: jax.Array, *, model, options: common.ObjectiveOptions,
            teacher_params=None):
  """Returns (loss, metrics) of next-token prediction; key and teacher are unused."""
  del key, options, teacher_params
  if not model.config.causal:
    raise ValueError("objective.name='autoregressive' needs model.causal=True")
  if model.config.output_skip:
    raise ValueError("objective.name='autoregressive' runs the network at t = 1, where the output "
                     "skip t x / (1 - t)^2 diverges; set model.output_skip=False")
  logits = token_logits(params, batch, model=model)
  cross_entropy = common.cross_entropy_with_tokens(logits, batch["tokens"])
  loss = common.masked_mean(cross_entropy, token_mask(batch))
  return loss, {"cross_entropy": loss}
