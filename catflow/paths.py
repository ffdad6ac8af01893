"""The probability path over one-hot tokens, its posterior and the decodability time.

Conventions (time 0 is noise, time 1 is data):

    x_t = (1 - t) x0 + t e_y,        x0 ~ N(0, I),  e_y the one-hot of token y.

A state has shape (..., L, V): one V-vector per position. A padded vocabulary
(V_pad > V real tokens) keeps the padded coordinates of every state at exactly
zero: they are never noised, never predicted and never sampled, so a model over
V_pad coordinates is the same mathematical object as one over V.

The posterior ("endpoint") pi_t(x) = E[e_y | x_t = x] has a closed form when the
tokens are i.i.d. with a known prior p (the *oracle*):

    pi_t(x)_k = softmax_k(log p_k + t x_k / (1 - t)^2).

The decodability time tau(t) = (V P(t) - 1) / (V - 1), with P(t) the probability
that argmax x_t = y, maps t in [0, 1] monotonically onto [0, 1]. Networks are
conditioned on tau and training times are drawn uniformly in tau by default,
because for a large V the argmax of x_t only becomes informative in a narrow
band of t.
"""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special as scipy_special

# Every division by (1 - t) uses max(1 - t, ONE_MINUS_T_MIN). Times are kept at
# most 1 - ONE_MINUS_T_MIN by the samplers, so the guard only matters at t = 1.
ONE_MINUS_T_MIN = 1e-6

# Logit value for padded vocabulary entries: finite so that 0 * logit stays 0 in
# cross-entropies, and far below any real logit so that softmax gives exactly 0.
MASKED_LOGIT = -1e9

TimeDistribution = Literal["tau_uniform", "tau_power", "t_uniform", "logit_normal"]


def one_minus(t: jax.Array) -> jax.Array:
  """Returns 1 - t clipped below at ONE_MINUS_T_MIN, the guarded denominator."""
  return jnp.maximum(1.0 - t, ONE_MINUS_T_MIN)


def vocab_mask(vocab_size: int, padded_vocab_size: int | None = None) -> jax.Array:
  """Returns a float32 vector of length padded_vocab_size: 1 on real ids, 0 on padding."""
  padded_vocab_size = padded_vocab_size or vocab_size
  if padded_vocab_size < vocab_size:
    raise ValueError(
        f"padded_vocab_size={padded_vocab_size} is smaller than vocab_size={vocab_size}; "
        "the padded vocabulary must contain every real token id")
  return (jnp.arange(padded_vocab_size) < vocab_size).astype(jnp.float32)


def sample_source(key: jax.Array, shape: tuple[int, ...], vocab_size: int,
                  dtype=jnp.float32) -> jax.Array:
  """Draws x0 ~ N(0, I) over the real vocabulary; padded coordinates are 0.

  `shape` ends with the padded vocabulary size; `vocab_size` is the number of
  real token ids.
  """
  noise = jax.random.normal(key, shape, dtype)
  return noise * vocab_mask(vocab_size, shape[-1]).astype(dtype)


def interpolate(x0: jax.Array, tokens: jax.Array, t: jax.Array) -> jax.Array:
  """Returns x_t = (1 - t) x0 + t e_y.

  Args:
    x0: source noise, shape (..., L, V_pad).
    tokens: token ids y, shape (..., L).
    t: time, broadcastable to (..., L) (one time per sequence or per position).
  """
  t = broadcast_time(t, tokens.shape)[..., None].astype(x0.dtype)
  e_y = jax.nn.one_hot(tokens, x0.shape[-1], dtype=x0.dtype)
  return (1.0 - t) * x0 + t * e_y


def oracle_logits(x: jax.Array, t: jax.Array, log_prior: jax.Array) -> jax.Array:
  """Returns the oracle posterior logits log p_k + t x_k / (1 - t)^2 in float32.

  Args:
    x: state x_t, shape (..., L, V_pad).
    t: time, broadcastable to (..., L).
    log_prior: log p over the padded vocabulary, shape (V_pad,); padded entries
      may be -inf or any value below MASKED_LOGIT and come out as MASKED_LOGIT.
  """
  t = broadcast_time(t, x.shape[:-1])[..., None].astype(jnp.float32)
  logits = log_prior.astype(jnp.float32) + t * x.astype(jnp.float32) / one_minus(t) ** 2
  return jnp.maximum(logits, MASKED_LOGIT)


def oracle_posterior(x: jax.Array, t: jax.Array, log_prior: jax.Array) -> jax.Array:
  """Returns pi_t(x) = softmax(log p + t x / (1 - t)^2) for i.i.d. tokens with prior p."""
  return jax.nn.softmax(oracle_logits(x, t, log_prior), axis=-1)


def velocity(pi: jax.Array, x: jax.Array, t: jax.Array) -> jax.Array:
  """Returns v_t(x) = (pi_t(x) - x) / (1 - t) with the guarded denominator."""
  t = broadcast_time(t, x.shape[:-1])[..., None].astype(x.dtype)
  return (pi.astype(x.dtype) - x) / one_minus(t)


def mask_padded_logits(logits: jax.Array, vocab_size: int) -> jax.Array:
  """Sets the logits of padded vocabulary ids to MASKED_LOGIT (float32)."""
  logits = logits.astype(jnp.float32)
  real = jnp.arange(logits.shape[-1]) < vocab_size
  return jnp.where(real, logits, MASKED_LOGIT)


def broadcast_time(t: jax.Array, batch_shape: tuple[int, ...]) -> jax.Array:
  """Broadcasts a per-sequence (B,) or per-position (B, L) time to batch_shape."""
  t = jnp.asarray(t)
  if t.ndim < len(batch_shape) and t.ndim > 0:
    t = t.reshape(t.shape + (1,) * (len(batch_shape) - t.ndim))
  return jnp.broadcast_to(t, batch_shape)


# -----------------------------------------------------------------------------
# Decodability time tau <-> t.
# -----------------------------------------------------------------------------


def argmax_probability(t: np.ndarray, vocab_size: int, num_points: int = 4001) -> np.ndarray:
  """Returns P(t) = E_z[Phi(z + t / (1 - t))^(V - 1)], the chance that argmax x_t = y.

  Computed in float64 by the trapezoidal rule on a dense z grid over [-12, 12]
  (the integrand can be a sharp step for large V, where Gauss-Hermite nodes
  are too sparse). At t = 1 the value is 1.

  Args:
    t: times in [0, 1], any shape.
    vocab_size: number of real tokens V >= 2.
    num_points: z grid size.
  """
  if vocab_size < 2:
    raise ValueError(f"vocab_size={vocab_size} must be at least 2 for a decodability time")
  t = np.asarray(t, dtype=np.float64)
  z = np.linspace(-12.0, 12.0, num_points)
  log_density = -0.5 * z**2 - 0.5 * np.log(2.0 * np.pi)
  with np.errstate(divide="ignore"):
    shift = np.where(t < 1.0, t / np.maximum(1.0 - t, 1e-300), np.inf)
  log_phi = scipy_special.log_ndtr(z[None, :] + shift.reshape(-1, 1))
  integrand = np.exp((vocab_size - 1) * log_phi + log_density[None, :])
  probability = np.trapezoid(integrand, z, axis=-1)
  probability = np.where(t >= 1.0, 1.0, probability)
  return np.clip(probability, 0.0, 1.0).reshape(t.shape)


@functools.lru_cache(maxsize=32)
def decodability_table(vocab_size: int, num_points: int = 2049) -> tuple[np.ndarray, np.ndarray]:
  """Returns the lookup table (t_grid, tau_grid) for one vocabulary size, built once.

  The t grid is uniform in logit(t) over [-14, 14] plus the endpoints 0 and 1,
  which resolves the narrow band where tau rises for large V. tau is made
  strictly increasing (a float64 rounding guard) so it inverts by interpolation.
  """
  logits = np.linspace(-14.0, 14.0, num_points - 2)
  t_grid = np.concatenate([[0.0], 1.0 / (1.0 + np.exp(-logits)), [1.0]])
  probability = argmax_probability(t_grid, vocab_size)
  tau_grid = (vocab_size * probability - 1.0) / (vocab_size - 1.0)
  tau_grid[0], tau_grid[-1] = 0.0, 1.0
  tau_grid = np.maximum.accumulate(np.clip(tau_grid, 0.0, 1.0))
  tau_grid = tau_grid + np.arange(tau_grid.size) * 1e-12
  tau_grid = tau_grid / tau_grid[-1]
  return t_grid, tau_grid


def tau_from_t(t: jax.Array, vocab_size: int) -> jax.Array:
  """Maps time t to decodability time tau(t) by interpolating the cached table."""
  t_grid, tau_grid = decodability_table(vocab_size)
  return jnp.interp(t, jnp.asarray(t_grid, jnp.float32), jnp.asarray(tau_grid, jnp.float32))


def t_from_tau(tau: jax.Array, vocab_size: int) -> jax.Array:
  """Maps decodability time tau to time t = gamma(tau), the inverse of tau_from_t.

  The float32 copy of the table repeats values near tau = 1, so tau >= 1 is
  mapped to exactly t = 1 rather than through the interpolation.
  """
  t_grid, tau_grid = decodability_table(vocab_size)
  t = jnp.interp(tau, jnp.asarray(tau_grid, jnp.float32), jnp.asarray(t_grid, jnp.float32))
  return jnp.where(tau >= 1.0, 1.0, t)


def t_from_tau_numpy(tau, vocab_size: int) -> np.ndarray:
  """float64 numpy version of t_from_tau, for static values such as sampling grids."""
  t_grid, tau_grid = decodability_table(vocab_size)
  return np.interp(np.asarray(tau, np.float64), tau_grid, t_grid)


def dtau_dt(t: jax.Array, vocab_size: int) -> jax.Array:
  """Returns d tau / d t of the interpolated table (piecewise constant in t).

  This is the exact density, up to the factor 1 / tau_max, of times drawn as
  t_from_tau(uniform), because t_from_tau is the piecewise linear inverse of
  the same table.
  """
  t_grid, tau_grid = decodability_table(vocab_size)
  slopes = np.diff(tau_grid) / np.diff(t_grid)
  segment = jnp.clip(jnp.searchsorted(jnp.asarray(t_grid, jnp.float32), t, side="right") - 1,
                     0, slopes.size - 1)
  return jnp.asarray(slopes, jnp.float32)[segment]


# -----------------------------------------------------------------------------
# Training-time sampling.
# -----------------------------------------------------------------------------


def stratified_uniform(key: jax.Array, batch_size: int) -> jax.Array:
  """Draws one uniform from each of the batch_size bins of [0, 1], in random order.

  The draw depends only on the key and the global batch size, so every device
  of a mesh computes the same global vector.
  """
  key_offsets, key_permutation = jax.random.split(key)
  offsets = jax.random.uniform(key_offsets, (batch_size,), jnp.float32)
  bins = jax.random.permutation(key_permutation, batch_size)
  return (bins.astype(jnp.float32) + offsets) / batch_size


def times_from_uniform(u: jax.Array, vocab_size: int, distribution: TimeDistribution = "tau_uniform",
                       *, logit_mean: float = 0.0, logit_std: float = 1.0, power: float = 0.5,
                       max_tau: float = 1.0 - 1e-4) -> tuple[jax.Array, jax.Array]:
  """Maps uniforms u in [0, 1] to (tau, t) under the configured time distribution.

  - "tau_uniform": tau = u (training is spread evenly over the band where the
    argmax becomes informative).
  - "tau_power": density proportional to (1 - tau)^(-power) on [0, max_tau],
    power in [-4, 1] (power = 1: uniform in log(1 - tau)). A positive power
    moves training towards high tau, a negative one towards low tau.
  - "t_uniform": t = u.
  - "logit_normal": logit(t) ~ N(logit_mean, logit_std^2) by inverse CDF.

  Times are clipped to tau <= max_tau so that 1 - t stays away from 0.
  """
  if distribution == "tau_uniform":
    tau = jnp.minimum(u, max_tau)
    return tau, t_from_tau(tau, vocab_size)
  if distribution == "tau_power":
    tau = tau_power_inverse_cdf(u, power, max_tau)
    return tau, t_from_tau(tau, vocab_size)
  if distribution == "t_uniform":
    t = u
  elif distribution == "logit_normal":
    normal = jax.scipy.special.ndtri(jnp.clip(u, 1e-6, 1.0 - 1e-6))
    t = jax.nn.sigmoid(logit_mean + logit_std * normal)
  else:
    raise ValueError(f"time distribution {distribution!r} is not one of "
                     "'tau_uniform', 'tau_power', 't_uniform', 'logit_normal'")
  t = jnp.minimum(t, t_from_tau(jnp.float32(max_tau), vocab_size))
  return tau_from_t(t, vocab_size), t


def tau_power_inverse_cdf(u: jax.Array, power: float, max_tau: float) -> jax.Array:
  """Inverse CDF of the density proportional to (1 - tau)^(-power) on [0, max_tau]."""
  if not -4.0 <= power <= 1.0:
    raise ValueError(f"time power={power} must be in [-4, 1]")
  floor = 1.0 - max_tau
  if power == 1.0:
    return 1.0 - floor ** u
  exponent = 1.0 - power
  return 1.0 - (1.0 - u * (1.0 - floor**exponent)) ** (1.0 / exponent)


def sample_times(key: jax.Array, batch_size: int, vocab_size: int,
                 distribution: TimeDistribution = "tau_uniform", **kwargs) -> tuple[jax.Array, jax.Array]:
  """Draws stratified training times for a global batch; returns (tau, t), each (B,)."""
  return times_from_uniform(stratified_uniform(key, batch_size), vocab_size, distribution, **kwargs)
