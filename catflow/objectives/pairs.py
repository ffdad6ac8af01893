"""Shared structure of the flow-map objectives: row groups and the diagonal share.

Every distillation objective splits the global batch into rows of static size:
diagonal rows (s = t, the base cross-entropy on data), endpoint rows forced to
(s, t) = (0, 1), and off-diagonal rows with gap d ~ U(0, 1), s ~ U(0, 1 - d),
t = s + d in tau. Only the off-diagonal loss differs between objectives.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from catflow import paths
from catflow.objectives import common


def row_counts(batch_size: int, options: common.ObjectiveOptions) -> tuple[int, int, int]:
  """Returns (diagonal, endpoint, off_diagonal) row counts for one global batch."""
  diagonal = int(round(batch_size * options.diagonal_fraction))
  endpoint = int(round(batch_size * options.endpoint_fraction))
  endpoint = min(endpoint, batch_size - diagonal)
  return diagonal, endpoint, batch_size - diagonal - endpoint


def sample_pair_times(key: jax.Array, batch_size: int, vocab_size: int,
                      options: common.ObjectiveOptions):
  """Draws (tau_s, tau_t, is_diagonal) for a global batch, rows grouped as in the module doc."""
  diagonal, endpoint, off_diagonal = row_counts(batch_size, options)
  key_diagonal, key_gap, key_start = jax.random.split(key, 3)
  tau_diagonal, _ = paths.sample_times(key_diagonal, max(diagonal, 1), vocab_size,
                                       options.time_distribution, **options.time_kwargs())
  gap = paths.stratified_uniform(key_gap, max(off_diagonal, 1))
  start = jax.random.uniform(key_start, gap.shape) * (1.0 - gap)
  tau_s = jnp.concatenate([tau_diagonal[:diagonal], jnp.zeros((endpoint,)), start[:off_diagonal]])
  tau_t = jnp.concatenate([tau_diagonal[:diagonal], jnp.ones((endpoint,)),
                           jnp.minimum(start + gap, 1.0)[:off_diagonal]])
  tau_s = jnp.minimum(tau_s, options.max_tau)
  is_diagonal = jnp.arange(batch_size) < diagonal
  return tau_s, tau_t, is_diagonal


def split_rows(tree: dict, start: int) -> dict:
  """Returns the rows from start on of every array in a dict."""
  return {name: value[start:] for name, value in tree.items()}
