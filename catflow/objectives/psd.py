"""Semigroup (PSD) self-distillation of a Categorical Flow Map, forward passes only.

Rows of the batch come in three groups of static size:
- diagonal rows (s = t): the base cross-entropy on data, which keeps mu(x, t, t)
  the endpoint of the base flow;
- endpoint rows with (s, t) = (0, 1): one-step generation trained directly;
- off-diagonal rows: gap d ~ U(0, 1), s ~ U(0, 1 - d), t = s + d in tau.

For an off-diagonal row with u the midpoint of s and t in tau:

    mu_su  = mu_T(x_s, s, u),          X_su = X_{s,u}(x_s),
    mu_ut  = mu_T(X_su, u, t),
    lambda = (1 - t)(u - s) / ((1 - u)(t - s)),
    target = stop_gradient(lambda mu_su + (1 - lambda) mu_ut),
    loss   = CE(target, mu(x_s, s, t)),

with mu_T the teacher: the student's own weights under stop_gradient, or their
EMA. The weights follow from X_{s,t} = X_{u,t} o X_{s,u}, and the target is a
convex combination, so it stays on the simplex.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from catflow import flow_map
from catflow import paths
from catflow.objectives import common
from catflow.objectives import pairs


def teacher_target(teacher_params, batch, inputs_s, tau_s, tau_t, *, model, vocab_size):
  """Returns the PSD target lambda mu_su + (1 - lambda) mu_ut (no gradient)."""
  tau_u = 0.5 * (tau_s + tau_t)
  t_s = paths.t_from_tau(tau_s, vocab_size)
  t_u = paths.t_from_tau(tau_u, vocab_size)
  t_t = jnp.where(tau_t >= 1.0, 1.0, paths.t_from_tau(tau_t, vocab_size))

  mu_su = jax.nn.softmax(common.apply_model(model, teacher_params, inputs_s, tau_s, tau_u, batch))
  if "x" in inputs_s:
    inputs_u = {"x": flow_map.flow_map(inputs_s["x"], t_s, t_u, mu_su)}
  else:
    mu_projected = mu_su @ teacher_params["input_kernel"].astype(jnp.float32)
    inputs_u = {"x_projected": flow_map.flow_map(inputs_s["x_projected"], t_s, t_u, mu_projected)}
  mu_ut = jax.nn.softmax(common.apply_model(model, teacher_params, inputs_u, tau_u, tau_t, batch))

  weight = flow_map.psd_weight(t_s, t_u, t_t)[:, None, None]
  return jax.lax.stop_gradient(weight * mu_su + (1.0 - weight) * mu_ut)


def loss_fn(params, batch, key: jax.Array, *, model, options: common.ObjectiveOptions,
            teacher_params=None):
  """Returns (loss, metrics) of PSD self-distillation."""
  cfg = model.config
  tokens = batch["tokens"]
  mask = common.token_mask(batch)
  batch_size = tokens.shape[0]
  diagonal, _, _ = pairs.row_counts(batch_size, options)
  key_time, key_noise = jax.random.split(key)
  if options.teacher == "ema":
    if teacher_params is None:
      raise ValueError("objective.teacher='ema' needs the EMA params passed as teacher_params")
    if options.projected_input:
      raise ValueError("objective.projected_input=True needs objective.teacher='student': "
                       "the EMA teacher has its own input kernel")
  else:
    teacher_params = jax.lax.stop_gradient(params)

  # 1. Sample (s, t) pairs: diagonal, endpoint and off-diagonal rows.
  tau_s, tau_t, is_diagonal = pairs.sample_pair_times(key_time, batch_size, cfg.vocab_size, options)
  t_s = paths.t_from_tau(tau_s, cfg.vocab_size)

  # 2. Build x_s from data.
  inputs_s = common.noisy_inputs(params, batch, key_noise, t_s, model=model, options=options)

  # 3. Teacher targets on the off-diagonal rows only.
  off = slice(diagonal, batch_size)
  off_batch = pairs.split_rows(batch, diagonal)
  off_inputs = pairs.split_rows(inputs_s, diagonal)
  target = teacher_target(teacher_params, off_batch, off_inputs, tau_s[off], tau_t[off],
                          model=model, vocab_size=cfg.vocab_size)

  # 4. Student forward on every row.
  logits = common.apply_model(model, params, inputs_s, tau_s, tau_t, batch)

  # 5. Cross-entropy: data on the diagonal, the teacher's target elsewhere.
  data_cross_entropy = common.cross_entropy_with_tokens(logits[:diagonal], tokens[:diagonal])
  distill_cross_entropy = common.cross_entropy_with_distribution(logits[off], target)
  per_token = jnp.concatenate([data_cross_entropy, distill_cross_entropy], axis=0)
  loss = common.masked_mean(per_token, mask)

  distill_kl = distill_cross_entropy - common.entropy(target)
  metrics = {
      "diagonal_cross_entropy": common.masked_mean(data_cross_entropy, mask[:diagonal]),
      "distill_cross_entropy": common.masked_mean(distill_cross_entropy, mask[off]),
      "distill_kl": common.masked_mean(distill_kl, mask[off]),
      "diagonal_rows": jnp.sum(is_diagonal).astype(jnp.float32),
  }
  return loss, metrics
