"""The base flow-model objective: cross-entropy of the endpoint on the diagonal.

    tau ~ stratified over the global batch,  t = gamma(tau),
    x_t = (1 - t) x0 + t e_y,                x0 ~ N(0, I),
    loss = mean over real tokens of -log softmax(f(x_t, tau, tau))[y].

With the power weighting (loss_weighting="power") each row's cross-entropy is
multiplied by (1 - tau)^(-weight_power), normalised to mean 1 over the batch.
With the learned weighting (loss_weighting="learned") each row's cross-entropy
L is replaced by exp(-u(tau)) L + u(tau), u a small zero-initialised MLP: the
optimum of u is log L, which evens out the gradient scale across times.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from catflow import paths
from catflow.objectives import common


def loss_fn(params, batch, key: jax.Array, *, model, options: common.ObjectiveOptions,
            teacher_params=None):
  """Returns (loss, metrics) of the base objective; teacher_params is unused."""
  del teacher_params
  cfg = model.config
  tokens = batch["tokens"]
  mask = common.token_mask(batch)
  key_time, key_noise, key_self_condition = jax.random.split(key, 3)

  # 1. Sample times, stratified over the global batch.
  tau, t = paths.sample_times(key_time, tokens.shape[0], cfg.vocab_size,
                              options.time_distribution, **options.time_kwargs())

  # 2. Build x_t (or x_t @ W).
  inputs = common.noisy_inputs(params, batch, key_noise, t, model=model, options=options)

  # 3. Forward on the diagonal.
  rows = common.self_condition_rows(key_self_condition, model, tokens.shape[0], options)
  logits = common.apply_model(model, params, inputs, tau, tau, batch, self_condition_rows=rows)

  # 4. Cross-entropy over real tokens, float32.
  cross_entropy = common.cross_entropy_with_tokens(logits, tokens)
  metrics = {"cross_entropy": common.masked_mean(cross_entropy, mask)}
  metrics.update(common.binned_means(common.per_row_mean(cross_entropy, mask), tau))
  if options.loss_weighting == "power":
    weights = common.power_weights(tau, options.weight_power, options.max_weight)
    loss = common.masked_mean(weights[:, None] * cross_entropy, mask)
  elif options.loss_weighting == "learned":
    u = model.apply({"params": params}, tau, method=type(model).loss_log_variance)
    weighted = jnp.exp(-u)[:, None] * cross_entropy + u[:, None]
    loss = common.masked_mean(weighted, mask)
    metrics["loss_log_variance_mean"] = jnp.mean(u)
  else:
    loss = metrics["cross_entropy"]
  return loss, metrics
