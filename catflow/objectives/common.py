"""Pieces shared by the training objectives: options, inputs, cross-entropies, masked means.

Every objective has the signature

    loss_fn(params, batch, key, *, model, options, teacher_params=None) -> (loss, metrics)

where `batch` holds int32 arrays 'tokens', 'segment_ids' (0 = padding) and
'positions', each (B, L); `model` is a FlowTransformer; `loss` is a float32
scalar averaged over real tokens; `metrics` is a flat dict of float32 scalars.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from catflow import paths
from catflow.models import projected
from catflow.models.transformer import FlowTransformer
from catflow.parallel import vocab_parallel


@dataclasses.dataclass(frozen=True)
class ObjectiveOptions:
  """Options of the training objectives (the `objective` block of a config)."""

  name: str = "base"  # base | autoregressive (catflow train); psd | ecld | lsd (catflow distill).
  # Distribution of training times: tau_uniform | tau_power | t_uniform | logit_normal.
  time_distribution: str = "tau_uniform"
  time_power: float = 0.5  # tau_power only: density proportional to (1 - tau)^(-time_power).
  logit_mean: float = 0.0  # logit_normal only: mean of logit(t).
  logit_std: float = 1.0  # logit_normal only: std of logit(t).
  max_tau: float = 0.9999  # Training times are clipped to tau <= max_tau (keeps 1 - t > 0).
  # Loss weighting: "none"; "power" (w = (1 - tau)^(-weight_power), normalised
  # to mean 1 over the batch and clipped at max_weight); or "learned"
  # (w = exp(-u(tau)) CE + u(tau), needs a model with learned_loss_weight=True).
  loss_weighting: str = "none"
  weight_power: float = 0.5  # power weighting only.
  max_weight: float = 100.0  # power weighting only: largest weight before normalisation.
  # Self-conditioning models: share of rows whose second pass sees the first
  # pass's estimate during training (the others see zeros).
  self_conditioning_rate: float = 0.5
  # Build x_t @ W in d dimensions instead of x_t (exact; needs a model that
  # sees x only through x @ W).
  projected_input: bool = False
  # Distillation (psd): share of diagonal rows (s = t, base cross-entropy on data).
  diagonal_fraction: float = 0.25
  # Distillation: share of rows forced to (s, t) = (0, 1), trains one-step generation directly.
  endpoint_fraction: float = 0.05
  teacher: str = "student"  # Distillation teacher: "student" (stop_gradient) or "ema".
  ecld_cross_entropy_weight: float = 1.0  # ECLD: weight a of the endpoint cross-entropy.
  ecld_derivative_weight: float = 1.0  # ECLD: weight b of the time-derivative penalty.

  def __post_init__(self):
    if self.time_distribution not in ("tau_uniform", "tau_power", "t_uniform", "logit_normal"):
      raise ValueError(f"objective.time_distribution={self.time_distribution!r} is not one of "
                       "tau_uniform, tau_power, t_uniform, logit_normal")
    if not -4.0 <= self.time_power <= 1.0:
      raise ValueError(f"objective.time_power={self.time_power} must be in [-4, 1]")
    if self.loss_weighting not in ("none", "power", "learned"):
      raise ValueError(f"objective.loss_weighting={self.loss_weighting!r} is not 'none', 'power' "
                       "or 'learned'")
    if not 0.0 < self.max_tau <= 1.0 - 1e-6:
      raise ValueError(f"objective.max_tau={self.max_tau} must be in (0, 1 - 1e-6]")
    for name in ("diagonal_fraction", "endpoint_fraction"):
      value = getattr(self, name)
      if not 0.0 <= value <= 1.0:
        raise ValueError(f"objective.{name}={value} must be in [0, 1]")
    if self.diagonal_fraction + self.endpoint_fraction > 1.0:
      raise ValueError(f"objective.diagonal_fraction + objective.endpoint_fraction = "
                       f"{self.diagonal_fraction + self.endpoint_fraction} exceeds 1")
    if self.teacher not in ("student", "ema"):
      raise ValueError(f"objective.teacher={self.teacher!r} is not 'student' or 'ema'")

  @classmethod
  def from_mapping(cls, values: Mapping[str, Any]) -> "ObjectiveOptions":
    known = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ValueError(f"unknown objective options {unknown}; known options are {sorted(known)}")
    return cls(**dict(values))

  def time_kwargs(self) -> dict[str, Any]:
    return dict(logit_mean=self.logit_mean, logit_std=self.logit_std, power=self.time_power,
                max_tau=self.max_tau)


def check_model_supports(options: ObjectiveOptions, model: FlowTransformer):
  """Rejects option and model combinations that cannot train, before compilation."""
  cfg = model.config
  if options.projected_input and not cfg.supports_projected_input:
    raise ValueError("objective.projected_input=True needs a model that sees x only through x @ W; "
                     "set model.input_posterior=False and model.output_skip=False, or "
                     "objective.projected_input=False")
  if options.loss_weighting == "learned" and not cfg.learned_loss_weight:
    raise ValueError("objective.loss_weighting='learned' needs model.learned_loss_weight=True")


def noisy_inputs(params, batch, key: jax.Array, t: jax.Array, *, model: FlowTransformer,
                 options: ObjectiveOptions) -> dict[str, jax.Array]:
  """Builds the network input at time t: {'x': x_t} or {'x_projected': x_t @ W}."""
  cfg = model.config
  tokens = batch["tokens"]
  if options.projected_input:
    kernel = params["input_kernel"]
    noise = projected.projected_noise(key, kernel, cfg.vocab_size, tokens.shape)
    return {"x_projected": projected.projected_interpolate(noise, tokens, t, kernel)}
  x0 = paths.sample_source(key, tokens.shape + (cfg.padded_vocab_size,), cfg.vocab_size)
  return {"x": paths.interpolate(x0, tokens, t)}


def apply_model(model: FlowTransformer, params, inputs: Mapping[str, jax.Array], tau_s, tau_t,
                batch, self_condition_rows: jax.Array | None = None) -> jax.Array:
  """Runs the network on {'x': ...} or {'x_projected': ...}; returns float32 logits."""
  kwargs = {}
  if self_condition_rows is not None:
    kwargs["self_condition_rows"] = self_condition_rows
  return model.apply({"params": params}, inputs.get("x"), tau_s, tau_t, batch["segment_ids"],
                     batch["positions"], x_projected=inputs.get("x_projected"), **kwargs)


def self_condition_rows(key: jax.Array, model: FlowTransformer, batch_size: int,
                        options: "ObjectiveOptions") -> jax.Array | None:
  """Draws the training rows that use self-conditioning; None for models without it."""
  if not model.config.self_conditioning:
    return None
  return jax.random.bernoulli(key, options.self_conditioning_rate, (batch_size,)).astype(jnp.float32)


def cross_entropy_with_tokens(logits: jax.Array, tokens: jax.Array) -> jax.Array:
  """Returns -log softmax(logits)[y] per position, float32 (B, L).

  Under a mesh whose 'tensor' axis splits the vocabulary, the vocabulary-parallel
  shard_map program computes it without gathering the logits.
  """
  batch_shards = _ambient_batch_shards()
  if (vocab_parallel.ambient_tensor_size() > 1 and logits.ndim == 3
      and logits.shape[0] % batch_shards == 0):
    return vocab_parallel.cross_entropy(logits, tokens)
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0]


def _ambient_batch_shards() -> int:
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return 1
  return mesh.shape.get("data", 1) * mesh.shape.get("fsdp", 1)


def cross_entropy_with_distribution(logits: jax.Array, target: jax.Array) -> jax.Array:
  """Returns -sum_k target_k log softmax(logits)_k per position, float32 (B, L)."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.sum(target.astype(jnp.float32) * log_probs, axis=-1)


def entropy(probabilities: jax.Array) -> jax.Array:
  """Returns -sum p log p over the last axis, with 0 log 0 = 0."""
  p = probabilities.astype(jnp.float32)
  return -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=-1)


def power_weights(tau: jax.Array, power: float, max_weight: float) -> jax.Array:
  """Returns per-row weights (1 - tau)^(-power), clipped at max_weight, with batch mean 1."""
  weights = jnp.minimum((1.0 - tau) ** (-power), max_weight)
  return weights / jnp.mean(weights)


def token_mask(batch) -> jax.Array:
  """Returns the float32 (B, L) mask of real (non-padding) tokens."""
  return (batch["segment_ids"] > 0).astype(jnp.float32)


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  """Returns the mean of values over mask == 1 (0 when the mask is empty)."""
  return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def per_row_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  return jnp.sum(values * mask, axis=-1) / jnp.maximum(jnp.sum(mask, axis=-1), 1.0)


def binned_means(values_per_row: jax.Array, tau: jax.Array, num_bins: int = 4,
                 prefix: str = "ce_tau") -> dict[str, jax.Array]:
  """Averages a per-row value within num_bins equal tau bins (a training diagnostic).

  Bins without rows report NaN so that they are not mistaken for a zero loss.
  """
  index = jnp.clip((tau * num_bins).astype(jnp.int32), 0, num_bins - 1)
  metrics = {}
  for b in range(num_bins):
    in_bin = (index == b).astype(jnp.float32)
    count = jnp.sum(in_bin)
    metrics[f"{prefix}{b}"] = jnp.where(count > 0, jnp.sum(values_per_row * in_bin) /
                                        jnp.maximum(count, 1.0), jnp.nan)
  return metrics
