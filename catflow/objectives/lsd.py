"""LSD: scaled Lagrangian self-distillation of a Categorical Flow Map.

Along the true flow, (1 - t) dX_{s,t}(x)/dt = pi_t(X) - X with X = X_{s,t}(x).
LSD regresses the left side, differentiated in t by jax.jvp through the
network, on the teacher's right side:

    loss = ||(1 - t) dX_{s,t}(x_s)/dt - (stop_gradient(pi_t(X)) - X)||^2,

summed over the vocabulary and averaged over real tokens of the off-diagonal
rows. Diagonal rows train the base cross-entropy on data; target times are
kept at tau_t <= max_tau.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from catflow import flow_map
from catflow import paths
from catflow.objectives import common
from catflow.objectives import ecld
from catflow.objectives import pairs


def loss_fn(params, batch, key: jax.Array, *, model, options: common.ObjectiveOptions,
            teacher_params=None):
  """Returns (loss, metrics) of LSD self-distillation."""
  mask = common.token_mask(batch)
  diagonal, _, _ = pairs.row_counts(batch["tokens"].shape[0], options)

  # 1. Sample (s, t) pairs and build x_s.
  teacher_params, tau_s, tau_t, t_s, t_t, inputs = ecld.prepare(
      params, batch, key, model=model, options=options, teacher_params=teacher_params)

  # 2. Diagonal rows: the base cross-entropy on data.
  data_cross_entropy = ecld.diagonal_cross_entropy(params, batch, inputs, tau_s, model=model,
                                                   rows=diagonal)

  # 3. Off-diagonal rows: X_{s,t}(x_s) and its time derivative.
  off_batch = pairs.split_rows(batch, diagonal)
  x_s = pairs.split_rows(inputs, diagonal)["x"]
  s, t = t_s[diagonal:], t_t[diagonal:]
  mu, mu_dot = ecld.student_mean_and_time_derivative(params, off_batch, {"x": x_s},
                                                     tau_s[diagonal:], t, model=model)
  x_t = flow_map.flow_map(x_s, s, t, mu)
  # d/dt [((1 - t) x + (t - s) mu) / (1 - s)] = (mu - x + (t - s) dmu/dt) / (1 - s).
  one_minus_s = paths.one_minus(s)[:, None, None]
  x_t_dot = (mu - x_s + (t - s)[:, None, None] * mu_dot) / one_minus_s

  # 4. The teacher's velocity target and the squared residual.
  target = ecld.teacher_endpoint(teacher_params, off_batch, jax.lax.stop_gradient(x_t),
                                 tau_t[diagonal:], model=model)
  residual = (1.0 - t)[:, None, None] * x_t_dot - (target - x_t)
  squared_error = jnp.sum(jnp.square(residual), axis=-1)
  per_token = jnp.concatenate([data_cross_entropy, squared_error], axis=0)
  loss = common.masked_mean(per_token, mask)
  metrics = {
      "diagonal_cross_entropy": common.masked_mean(data_cross_entropy, mask[:diagonal]),
      "lagrangian_residual": common.masked_mean(squared_error, mask[diagonal:]),
  }
  return loss, metrics
