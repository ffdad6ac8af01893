"""ECLD: endpoint-consistent Lagrangian self-distillation of a Categorical Flow Map.

The true flow map satisfies the Lagrangian identity (differentiate
X_{s,t}(x) = ((1 - t)/(1 - s)) x + gamma mu(x, s, t) in t and use
dX/dt = (pi_t(X) - X) / (1 - t)):

    mu(x, s, t) + (1 - t) gamma d mu(x, s, t)/dt = pi_t(X_{s,t}(x)),   gamma = (t - s)/(1 - s).

ECLD trains both parts separately on the off-diagonal rows:

    loss = a CE(stop_gradient(pi_t(X)), mu(x_s, s, t)) + b ||(1 - t) gamma d mu(x_s, s, t)/dt||^2,

with pi_t the teacher's diagonal endpoint, X = X_{s,t}(x_s) and the time
derivative taken by forward-mode autodiff (jax.jvp) through the network.
Diagonal rows train the base cross-entropy on data. Target times are kept
at tau_t <= max_tau, because pi_t and 1 - t need t < 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from catflow import flow_map
from catflow import paths
from catflow.objectives import common
from catflow.objectives import pairs


def student_logits_and_time_derivative(params, batch, inputs, tau_s, t, *, model):
  """Returns (logits of mu(x, s, t), their d/dt), the derivative by jax.jvp through the network."""
  vocab_size = model.config.vocab_size

  def logits_of_time(time):
    tau_t = paths.tau_from_t(time, vocab_size)
    return common.apply_model(model, params, inputs, tau_s, tau_t, batch)

  return jax.jvp(logits_of_time, (t,), (jnp.ones_like(t),))


def student_mean_and_time_derivative(params, batch, inputs, tau_s, t, *, model):
  """Returns (mu(x, s, t), d mu / dt), the derivative by jax.jvp through the network."""
  logits, logits_dot = student_logits_and_time_derivative(params, batch, inputs, tau_s, t,
                                                          model=model)
  mu = jax.nn.softmax(logits, axis=-1)
  # Softmax Jacobian-vector product: d mu = mu * (d logits - <mu, d logits>).
  mu_dot = mu * (logits_dot - jnp.sum(mu * logits_dot, axis=-1, keepdims=True))
  return mu, mu_dot


def teacher_endpoint(teacher_params, batch, x, tau, *, model) -> jax.Array:
  """Returns stop_gradient(pi_t(x)), the teacher's diagonal endpoint at tau."""
  logits = common.apply_model(model, teacher_params, {"x": x}, tau, tau, batch)
  return jax.lax.stop_gradient(jax.nn.softmax(logits, axis=-1))


def prepare(params, batch, key, *, model, options: common.ObjectiveOptions, teacher_params):
  """Shared steps of the JVP objectives: times, x_s and the teacher choice."""
  if options.projected_input:
    raise ValueError(f"objective.name={options.name!r} compares V-dimensional states; set "
                     "objective.projected_input=False")
  if options.teacher == "ema":
    if teacher_params is None:
      raise ValueError("objective.teacher='ema' needs the EMA params passed as teacher_params")
  else:
    teacher_params = jax.lax.stop_gradient(params)
  cfg = model.config
  key_time, key_noise = jax.random.split(key)
  tau_s, tau_t, _ = pairs.sample_pair_times(key_time, batch["tokens"].shape[0], cfg.vocab_size,
                                            options)
  tau_t = jnp.minimum(tau_t, options.max_tau)
  t_s = paths.t_from_tau(tau_s, cfg.vocab_size)
  t_t = paths.t_from_tau(tau_t, cfg.vocab_size)
  inputs = common.noisy_inputs(params, batch, key_noise, t_s, model=model, options=options)
  return teacher_params, tau_s, tau_t, t_s, t_t, inputs


def diagonal_cross_entropy(params, batch, inputs, tau, *, model, rows: int):
  """Returns the per-token data cross-entropy of the first `rows` (diagonal) rows."""
  head = {name: value[:rows] for name, value in batch.items()}
  head_inputs = {name: value[:rows] for name, value in inputs.items()}
  logits = common.apply_model(model, params, head_inputs, tau[:rows], tau[:rows], head)
  return common.cross_entropy_with_tokens(logits, head["tokens"])


def loss_fn(params, batch, key: jax.Array, *, model, options: common.ObjectiveOptions,
            teacher_params=None):
  """Returns (loss, metrics) of ECLD self-distillation."""
  mask = common.token_mask(batch)
  diagonal, _, _ = pairs.row_counts(batch["tokens"].shape[0], options)

  # 1. Sample (s, t) pairs and build x_s.
  teacher_params, tau_s, tau_t, t_s, t_t, inputs = prepare(
      params, batch, key, model=model, options=options, teacher_params=teacher_params)

  # 2. Diagonal rows: the base cross-entropy on data.
  data_cross_entropy = diagonal_cross_entropy(params, batch, inputs, tau_s, model=model,
                                              rows=diagonal)

  # 3. Off-diagonal rows: mu, d mu / dt, and the teacher's endpoint at X_{s,t}(x_s).
  off_batch = pairs.split_rows(batch, diagonal)
  off_inputs = pairs.split_rows(inputs, diagonal)
  s, t = t_s[diagonal:], t_t[diagonal:]
  logits, logits_dot = student_logits_and_time_derivative(params, off_batch, off_inputs,
                                                          tau_s[diagonal:], t, model=model)
  mu = jax.nn.softmax(logits, axis=-1)
  mu_dot = mu * (logits_dot - jnp.sum(mu * logits_dot, axis=-1, keepdims=True))
  x_t = flow_map.flow_map(off_inputs["x"], s, t, jax.lax.stop_gradient(mu))
  target = teacher_endpoint(teacher_params, off_batch, x_t, tau_t[diagonal:], model=model)

  # 4. Loss: a CE(target, mu) + b ||(1 - t) gamma d mu / dt||^2.
  gamma = (t - s) / paths.one_minus(s)
  scaled_derivative = ((1.0 - t) * gamma)[:, None, None] * mu_dot
  endpoint_cross_entropy = common.cross_entropy_with_distribution(logits, target)
  derivative_penalty = jnp.sum(jnp.square(scaled_derivative), axis=-1)
  off_loss = (options.ecld_cross_entropy_weight * endpoint_cross_entropy
              + options.ecld_derivative_weight * derivative_penalty)
  per_token = jnp.concatenate([data_cross_entropy, off_loss], axis=0)
  loss = common.masked_mean(per_token, mask)
  off_mask = mask[diagonal:]
  metrics = {
      "diagonal_cross_entropy": common.masked_mean(data_cross_entropy, mask[:diagonal]),
      "endpoint_cross_entropy": common.masked_mean(endpoint_cross_entropy, off_mask),
      "derivative_penalty": common.masked_mean(derivative_penalty, off_mask),
  }
  return loss, metrics
