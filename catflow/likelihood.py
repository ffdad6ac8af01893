"""The semi-discrete likelihood bound and its Monte Carlo estimator.

The path is a Gaussian diffusion with signal t and noise 1 - t,
SNR(t) = t^2 / (1 - t)^2, and its t = 0 marginal N(0, I) is the prior exactly.
For any t1 in (0, 1) and a window of tokens y:

    -log p(y) <= integral_0^t1 t/(1 - t)^3 E||e_y - pi(x_t, t)||^2 dt + E[-log p_dec(y | x_t1)]

with ||.||^2 summed over positions and vocabulary (t/(1 - t)^3 = SNR'(t) / 2).
The decoder is pi(x_t1, t1) for a base model and the one-jump endpoint
mu(x_t1, t1, 1) for a CFM. Every t1 gives a valid bound; the estimator shares
its samples across a grid of t1 and reports each, plus the minimum.

Estimator, per window (all in nats, float32):
- the integral is importance sampled: K times t_j on (0, t_max) from the
  balance-heuristic mixture of a uniform-in-t share and a uniform-in-tau share
  (tau concentrates samples where the posterior changes; the uniform share keeps
  the weights bounded where tau'(t) ~ 0, which matters for large V), drawn
  stratified, each weighted by t/(1 - t)^3 / q(t) and restricted to t_j < t1;
- the decoder term is averaged over fresh noise draws at each t1.
Random numbers for window w come from fold_in(key, w) only, so numbers do not
depend on batch size or request order. Standard errors are taken across windows.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from catflow import paths
from catflow.parallel import partitioning

# logits_fn(params, x, tau_s, tau_t, segment_ids, positions) -> float32 logits (B, L, V_pad).
WindowLogitsFn = Callable[..., jax.Array]


@dataclasses.dataclass(frozen=True)
class BoundOptions:
  """Settings of the Monte Carlo bound estimator."""

  tau1_grid: tuple[float, ...] = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)  # t1 grid, in decodability time.
  num_time_samples: int = 32  # K: importance samples of t per window for the integral.
  num_decoder_samples: int = 2  # Noise draws per window for each decoder term.
  uniform_share: float = 0.25  # Share of the K samples drawn uniform in t (the rest uniform in tau).
  decoder: str = "base"  # "base": pi(x_t1, t1); "cfm": mu(x_t1, t1, 1).

  def __post_init__(self):
    grid = tuple(float(value) for value in self.tau1_grid)
    if not grid or any(not 0.0 < value < 1.0 for value in grid) or list(grid) != sorted(set(grid)):
      raise ValueError(f"tau1_grid={self.tau1_grid} must be strictly increasing values in (0, 1)")
    if self.num_time_samples < 1 or self.num_decoder_samples < 1:
      raise ValueError(f"num_time_samples={self.num_time_samples} and num_decoder_samples="
                       f"{self.num_decoder_samples} must both be at least 1")
    if not 0.0 < self.uniform_share <= 1.0:
      raise ValueError(f"uniform_share={self.uniform_share} must be in (0, 1]: without uniform-in-t "
                       "samples the importance weights are unbounded where tau'(t) ~ 0")
    if self.decoder not in ("base", "cfm"):
      raise ValueError(f"decoder={self.decoder!r} is not 'base' or 'cfm'")
    object.__setattr__(self, "tau1_grid", grid)


def integral_weight(t: jax.Array) -> jax.Array:
  """Returns t / (1 - t)^3, half the derivative of SNR(t) = t^2 / (1 - t)^2."""
  return t / paths.one_minus(t) ** 3


def proposal_times(key: jax.Array, count: int, uniform_count: int, t_max: float, tau_max: float,
                   vocab_size: int) -> tuple[jax.Array, jax.Array]:
  """Draws count times on (0, t_max) and their mixture density q(t).

  uniform_count times are stratified uniform in t, the rest stratified uniform
  in tau on (0, tau_max). The density is the balance-heuristic mixture
  q = (n_t q_t + n_tau q_tau) / count, which keeps sum f(t_i) / (count q(t_i))
  unbiased for the integral of f over (0, t_max).
  """
  key_t, key_tau = jax.random.split(key)
  tau_count = count - uniform_count
  t_uniform = _stratified(key_t, uniform_count) * t_max
  t_tau = paths.t_from_tau(_stratified(key_tau, tau_count) * tau_max, vocab_size)
  t = jnp.concatenate([t_uniform, t_tau])
  share = uniform_count / count
  density = share / t_max + (1.0 - share) * paths.dtau_dt(t, vocab_size) / tau_max
  return t, density


def _stratified(key: jax.Array, count: int) -> jax.Array:
  """Returns one uniform per 1/count bin of [0, 1] (not permuted)."""
  return (jnp.arange(count) + jax.random.uniform(key, (count,))) / max(count, 1)


@functools.partial(jax.jit, static_argnames=("logits_fn", "options", "vocab_size",
                                             "padded_vocab_size"))
def _window_terms(logits_fn, params, tokens, segment_ids, positions, score_mask, window_keys, *,
                  options: BoundOptions,
                  vocab_size: int, padded_vocab_size: int):
  """Returns (integral (W, G), decoder (W, G)) summed over each window's real tokens."""
  windows, length = tokens.shape
  mask = ((segment_ids > 0) & score_mask).astype(jnp.float32)
  one_hot = jax.nn.one_hot(tokens, padded_vocab_size, dtype=jnp.float32)
  tau1 = jnp.asarray(options.tau1_grid, jnp.float32)
  t1 = paths.t_from_tau(tau1, vocab_size)
  tau_max = float(options.tau1_grid[-1])
  t_max = float(paths.t_from_tau_numpy(tau_max, vocab_size))
  samples = options.num_time_samples
  uniform_count = int(round(samples * options.uniform_share))

  def window_times(key):
    return proposal_times(jax.random.fold_in(key, 0), samples, uniform_count, t_max, tau_max,
                          vocab_size)

  times, densities = jax.vmap(window_times)(window_keys)  # (W, K)

  def noise(index, salt):
    keys = jax.vmap(lambda key: jax.random.fold_in(jax.random.fold_in(key, salt), index))(window_keys)
    return jax.vmap(lambda key: paths.sample_source(key, (length, padded_vocab_size), vocab_size))(keys)

  def integral_step(index, total):
    t = times[:, index]
    tau = paths.tau_from_t(t, vocab_size)
    x_t = paths.interpolate(noise(index, 1), tokens, t)
    pi = jax.nn.softmax(logits_fn(params, x_t, tau, tau, segment_ids, positions), axis=-1)
    squared_error = jnp.sum(jnp.sum(jnp.square(one_hot - pi), axis=-1) * mask, axis=-1)  # (W,)
    value = integral_weight(t) * squared_error / densities[:, index]
    return total + value[:, None] * (t[:, None] < t1[None, :]) / samples

  integral = jax.lax.fori_loop(0, samples, integral_step, jnp.zeros((windows, tau1.size)))

  def decoder_step(index, total):
    grid_index, draw = index // options.num_decoder_samples, index % options.num_decoder_samples
    t = jnp.full((windows,), t1[grid_index])
    tau = jnp.full((windows,), tau1[grid_index])
    x_t = paths.interpolate(noise(index, 2), tokens, t)
    tau_target = tau if options.decoder == "base" else jnp.ones_like(tau)
    log_probs = jax.nn.log_softmax(logits_fn(params, x_t, tau, tau_target, segment_ids, positions), axis=-1)
    nll = -jnp.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0]
    value = jnp.sum(nll * mask, axis=-1) / options.num_decoder_samples
    del draw
    return total.at[:, grid_index].add(value)

  decoder = jax.lax.fori_loop(0, tau1.size * options.num_decoder_samples, decoder_step,
                              jnp.zeros((windows, tau1.size)))
  return partitioning.replicate_in_mesh((integral, decoder))


@dataclasses.dataclass
class BoundResult:
  """Per-window bound terms and their summaries (all nats; per token unless named)."""

  tau1_grid: tuple[float, ...]
  t1_grid: tuple[float, ...]
  integral: np.ndarray  # (W, G) integral term summed over each window's tokens.
  decoder: np.ndarray  # (W, G) decoder term summed over each window's tokens.
  num_tokens: np.ndarray  # (W,) real tokens per window.

  @property
  def per_window(self) -> np.ndarray:
    """(W, G) bound per window, nats summed over its tokens."""
    return self.integral + self.decoder

  def per_token(self) -> tuple[np.ndarray, np.ndarray]:
    """Returns (mean, standard error) per t1 of total nats / total tokens (ratio estimator)."""
    return ratio_mean_and_error(self.per_window, self.num_tokens)

  @property
  def best_index(self) -> int:
    """Index of the t1 with the lowest estimated bound.

    NOTE: a minimum over noisy estimates is biased low. The grid's estimates
    share their samples, so the bias is likely a fraction of one standard
    error, but it is not measured. Each entry of `summary()["per_tau1"]` is
    unbiased, and so is a t1 chosen on other data.
    """
    return int(np.argmin(self.per_token()[0]))

  def summary(self) -> dict:
    mean, error = self.per_token()
    best = self.best_index
    return {
        "nats_per_token": float(mean[best]),
        "nats_per_token_stderr": float(error[best]),
        "bits_per_token": float(mean[best] / math.log(2)),
        "bits_per_token_stderr": float(error[best] / math.log(2)),
        "perplexity": float(math.exp(mean[best])),
        "best_tau1": self.tau1_grid[best],
        "best_t1": self.t1_grid[best],
        "num_windows": int(self.num_tokens.size),
        "num_tokens": int(self.num_tokens.sum()),
        "per_tau1": [{"tau1": tau1, "t1": t1, "nats_per_token": float(m),
                      "nats_per_token_stderr": float(e)}
                     for tau1, t1, m, e in zip(self.tau1_grid, self.t1_grid, mean, error)],
    }


def ratio_mean_and_error(totals: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Returns sum(totals) / sum(counts) and its delta-method standard error across windows.

  totals has shape (W,) or (W, G); counts has shape (W,).
  """
  totals = np.asarray(totals, np.float64)
  counts = np.asarray(counts, np.float64)
  if counts.size == 0 or counts.sum() <= 0:
    raise ValueError("the bound needs at least one window with real tokens; got none")
  if totals.ndim == 2:
    counts_b = counts[:, None]
  else:
    counts_b = counts
  mean = totals.sum(axis=0) / counts.sum()
  windows = counts.size
  if windows < 2:
    return mean, np.full_like(mean, np.nan)
  residual = (totals - mean * counts_b) / counts.mean()
  error = np.sqrt(np.var(residual, axis=0, ddof=1) / windows)
  return mean, error


def estimate_bound(logits_fn: WindowLogitsFn, params, windows: Iterable[dict], key: jax.Array, *,
                   vocab_size: int, padded_vocab_size: int, options: BoundOptions) -> BoundResult:
  """Estimates the bound on batches of windows.

  Args:
    logits_fn: the model, (params, x, tau_s, tau_t, segment_ids, positions) -> logits.
      It is a static argument of the jitted estimator, so pass the same hashable
      function on every call (a module-level function, a bound Module.apply, or
      a functools.partial of one) to avoid recompiling.
    params: the model's parameters (any pytree), passed to logits_fn.
    windows: batches, each a dict with 'tokens', 'segment_ids', 'positions' (B, L)
      and 'index' (B,) global window indices that seed the random numbers.
      An optional boolean 'score_mask' (B, L) restricts the sums to some
      positions (for example a continuation after its context); every real
      position is still noised and seen by the model. Windows with equal
      'index' share their times and noise.
    key: PRNG key of the evaluation.
  """
  integrals, decoders, counts = [], [], []
  for batch in windows:
    window_keys = jax.vmap(lambda index: jax.random.fold_in(key, index))(
        jnp.asarray(batch["index"], jnp.uint32))
    score_mask = batch.get("score_mask")
    if score_mask is None:
      score_mask = np.ones(np.shape(batch["tokens"]), bool)
    integral, decoder = _window_terms(
        logits_fn, params, jnp.asarray(batch["tokens"]), jnp.asarray(batch["segment_ids"]),
        jnp.asarray(batch["positions"]), jnp.asarray(score_mask, bool), window_keys,
        options=options, vocab_size=vocab_size, padded_vocab_size=padded_vocab_size)
    integrals.append(np.asarray(integral))
    decoders.append(np.asarray(decoder))
    scored = (np.asarray(batch["segment_ids"]) > 0) & np.asarray(score_mask, bool)
    counts.append(scored.sum(axis=-1))
  if not counts:
    raise ValueError("the bound needs at least one window; the evaluation set is empty")
  t1 = paths.t_from_tau_numpy(options.tau1_grid, vocab_size)
  return BoundResult(tau1_grid=options.tau1_grid, t1_grid=tuple(float(v) for v in t1),
                     integral=np.concatenate(integrals), decoder=np.concatenate(decoders),
                     num_tokens=np.concatenate(counts))
