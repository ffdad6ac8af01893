"""Scoring benchmark requests and text with a flow model's likelihood bound.

A request (context tokens, continuation tokens) becomes one window: the context
followed by the continuation, padded to `max_length`. The whole window is
noised and seen by the model, as in training, and the bound terms are summed
over the continuation positions only. The score of a choice is minus that sum,
so higher is better. It is a bound-based score: the continuation's share of
a bound on the whole window, not itself a bound on log p(continuation | context),
because the context is noised together with the continuation.

All choices of one item use the window index of the item, so they share their
time draws and the noise at every position index. Where the choices share
their context, as in most tasks, the context positions get identical noise and
the differences between choices come from their tokens, not from Monte Carlo
noise. WinoGrande's choices differ in their context, so there the shared noise
lands on different tokens. Each request uses one fixed t1 (`tau1`) rather
than its own minimum over a grid.

LAMBADA also needs greedy correctness: the continuation is filled in by the
model's own sampler given the context (`flow_map.euler_inpaint`, argmax
decoding), and counts as correct when every target token comes out right.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from catflow import flow_map
from catflow import likelihood
from catflow.evaluate import bound
from catflow.evaluate import loading
from catflow.evaluate import tasks
from catflow.parallel import mesh as mesh_lib
from catflow.parallel import partitioning


@dataclasses.dataclass
class FlowRequestScorer:
  """Scores requests by the bound on their continuation tokens (implements RequestScorer)."""

  loaded: loading.LoadedModel
  max_length: int
  tau1: float = 0.95  # The one t1 of every request, in decodability time.
  num_time_samples: int = 16
  num_decoder_samples: int = 1
  seed: int = 0
  batch_size: int = 32
  greedy_steps: int = 0  # > 0: also decide greedy correctness with this many sampler steps.

  @property
  def options(self) -> likelihood.BoundOptions:
    return likelihood.BoundOptions(
        tau1_grid=(self.tau1,), num_time_samples=self.num_time_samples,
        num_decoder_samples=self.num_decoder_samples,
        decoder="cfm" if self.loaded.is_cfm else "base")

  def windows(self, requests: Sequence[tasks.Request], item_keys: Sequence[int]) -> dict:
    """Lays requests out as padded windows with a continuation score mask."""
    count = len(requests)
    tokens = np.zeros((count, self.max_length), np.int32)
    segment_ids = np.zeros((count, self.max_length), np.int32)
    score_mask = np.zeros((count, self.max_length), bool)
    for row, request in enumerate(requests):
      context, continuation = request.context_ids, request.continuation_ids
      length = len(context) + len(continuation)
      if length > self.max_length:
        raise ValueError(f"request of {length} tokens exceeds max_length={self.max_length}; build "
                         "requests with the same max_length")
      tokens[row, :length] = np.concatenate([context, continuation])
      segment_ids[row, :length] = 1
      score_mask[row, len(context):length] = True
    positions = np.tile(np.arange(self.max_length, dtype=np.int32), (count, 1))
    return {"tokens": tokens, "segment_ids": segment_ids, "positions": positions,
            "score_mask": score_mask, "index": np.asarray(item_keys, np.int64)}

  def score(self, requests: Sequence[tasks.Request],
            item_keys: Sequence[int]) -> list[tasks.RequestScore]:
    windows = self.windows(requests, item_keys)
    result = bound.compute_bound(self.loaded, windows, self.options, seed=self.seed,
                                 batch_size=self.batch_size)
    nats = result.per_window[:, 0]
    correct = self.greedy_correct(windows) if self.greedy_steps > 0 else [None] * len(requests)
    return [tasks.RequestScore.for_request(request, -float(value), greedy_correct=flag)
            for request, value, flag in zip(requests, nats, correct)]

  def greedy_correct(self, windows: dict) -> list[bool]:
    """Fills each continuation from its context; True when all its tokens come out right."""
    loaded = self.loaded
    shards = mesh_lib.batch_divisor(loaded.mesh)
    batch_size = -(-self.batch_size // shards) * shards
    results = []
    for start in range(0, len(windows["tokens"]), batch_size):
      batch = {name: value[start:start + batch_size] for name, value in windows.items()}
      padded, rows = loading.pad_batch(batch, batch_size)
      known = padded["segment_ids"] > 0
      known &= ~padded["score_mask"]
      keys = jnp.asarray(padded["index"], jnp.uint32)
      with jax.set_mesh(loaded.mesh):
        filled = _inpaint(loaded.model, loaded.params, jax.random.key(self.seed), keys,
                          jax.device_put(padded["tokens"], partitioning.batch_sharding(loaded.mesh)),
                          jnp.asarray(known), jnp.asarray(padded["segment_ids"]),
                          num_steps=self.greedy_steps)
      filled = np.asarray(filled)[:rows]
      for row in range(rows):
        where = batch["score_mask"][row]
        results.append(bool(np.array_equal(filled[row][where], batch["tokens"][row][where])))
    return results


@functools.partial(jax.jit, static_argnames=("model", "num_steps"))
def _inpaint(model, params, key, window_keys, tokens, known, segment_ids, *, num_steps: int):
  """Fills every row with its own noise, fold_in(key, row's window key), batched by vmap."""
  cfg = model.config
  positions = jnp.arange(tokens.shape[1], dtype=jnp.int32)[None]

  def fill_row(row_key, row_tokens, row_known, row_segments):
    def logits_fn(state, tau_s, tau_t):
      return loading.apply_logits(model, params, state, tau_s, tau_t, row_segments[None],
                                  positions)
    return flow_map.euler_inpaint(logits_fn, jax.random.fold_in(key, row_key), row_tokens[None],
                                  row_known[None], num_steps, cfg.vocab_size,
                                  cfg.padded_vocab_size, two_time=cfg.two_time)[0]

  return partitioning.replicate_in_mesh(jax.vmap(fill_row)(window_keys, tokens, known, segment_ids))
