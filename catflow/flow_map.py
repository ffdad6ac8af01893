"""Flow maps X_{s,t}, their composition weights, and the samplers.

The flow map moves a state from time s to time t >= s along the flow:

    X_{s,t}(x) = ((1 - t)/(1 - s)) x + ((t - s)/(1 - s)) mu(x, s, t),

with mu = softmax(f(x, tau_s, tau_t)) a point of the simplex. X_{s,s} is the
identity, mu(x, t, t) is the base model's endpoint pi_t(x), and X_{s,1}(x) =
mu(x, s, 1) lands on the simplex. Only 1 - s is ever divided by, and s < 1 on
every sampling grid.

Samplers take `logits_fn(state, tau_s, tau_t) -> float32 logits`; for a base
model tau_t is ignored (or equal to tau_s). The state is either the
V-dimensional x ("vocab" space) or its projection h = x @ W ("projected"
space, see `catflow.models.projected`): every update has the form
state <- a state + b mu, which commutes with the projection.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from catflow import paths

LogitsFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def flow_map(x: jax.Array, s: jax.Array, t: jax.Array, mu: jax.Array) -> jax.Array:
  """Returns X_{s,t}(x) = ((1 - t)/(1 - s)) x + ((t - s)/(1 - s)) mu.

  s and t are per sequence (B,) or per position (B, L); x and mu have a
  trailing vocabulary (or projected) axis.
  """
  s = _expand_time(s, x.ndim)
  t = _expand_time(t, x.ndim)
  one_minus_s = paths.one_minus(s)
  return ((1.0 - t) / one_minus_s) * x + ((t - s) / one_minus_s) * mu.astype(x.dtype)


def flow_map_coefficients(s: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Returns (a, b) with X_{s,t}(x) = a x + b mu."""
  one_minus_s = paths.one_minus(s)
  return (1.0 - t) / one_minus_s, (t - s) / one_minus_s


def psd_weight(s: jax.Array, u: jax.Array, t: jax.Array) -> jax.Array:
  """Returns lambda = (1 - t)(u - s) / ((1 - u)(t - s)), the semigroup weight.

  From X_{s,t} = X_{u,t} o X_{s,u}: mu(x, s, t) = lambda mu(x, s, u) +
  (1 - lambda) mu(X_{s,u}(x), u, t), and lambda lies in [0, 1] for s <= u <= t.
  For t = s the limit is ill defined and the weight is taken at a gap of 1e-6.
  """
  gap = jnp.maximum(t - s, 1e-6)
  return jnp.clip((1.0 - t) * (u - s) / (paths.one_minus(u) * gap), 0.0, 1.0)


def _expand_time(time: jax.Array, ndim: int) -> jax.Array:
  time = jnp.asarray(time, jnp.float32)
  return time.reshape(time.shape + (1,) * (ndim - time.ndim))


# -----------------------------------------------------------------------------
# The exact flow map of the oracle (i.i.d. tokens with a known prior).
# -----------------------------------------------------------------------------


def oracle_flow_map_mean(x: jax.Array, s: jax.Array, t: jax.Array, log_prior: jax.Array,
                         num_substeps: int = 256) -> jax.Array:
  """Returns mu(x, s, t) of the exact flow of the oracle posterior, by RK4.

  With r = 1 / (1 - t) and y = x r, the flow ODE dx/dt = (pi_t(x) - x)/(1 - t)
  becomes dy/dr = softmax(log p + (r - 1) y), and
  mu(x, s, t) = (y(r_t) - y(r_s)) / (r_t - r_s), the 1/(1-t)^2-weighted average of pi
  along the path. RK4 runs on a grid uniform in log r. For t = 1 the integral
  stops at 1 - t = 1e-6, where the posterior is one-hot to float32 precision.
  Where s = t it returns the limit, the posterior pi_t(x).

  Args:
    x: state at time s, (..., V_pad).
    s, t: times broadcastable to x.shape[:-1], s <= t.
    log_prior: (V_pad,) log p.
    num_substeps: RK4 steps.
  """
  s = _expand_time(s, x.ndim)
  t = jnp.minimum(_expand_time(t, x.ndim), 1.0 - 1e-6)
  r_s = 1.0 / paths.one_minus(s)
  r_t = 1.0 / paths.one_minus(t)
  log_r_s, log_r_t = jnp.log(r_s), jnp.log(r_t)
  step = (log_r_t - log_r_s) / num_substeps
  log_prior = jnp.maximum(log_prior.astype(jnp.float32), paths.MASKED_LOGIT)

  y_s = x.astype(jnp.float32) * r_s

  def derivative(log_r, increment):
    # d(y - y_s)/d(log r) = r dy/dr. Integrating the increment, not y itself,
    # avoids cancellation in (y_t - y_s) when t - s is small.
    r = jnp.exp(log_r)
    return r * jax.nn.softmax(log_prior + (r - 1.0) * (y_s + increment), axis=-1)

  def rk4_step(index, increment):
    log_r = log_r_s + index * step
    k1 = derivative(log_r, increment)
    k2 = derivative(log_r + step / 2, increment + step / 2 * k1)
    k3 = derivative(log_r + step / 2, increment + step / 2 * k2)
    k4 = derivative(log_r + step, increment + step * k3)
    return increment + step / 6 * (k1 + 2 * k2 + 2 * k3 + k4)

  increment = jax.lax.fori_loop(0, num_substeps, rk4_step, jnp.zeros_like(y_s))
  mean = increment / jnp.maximum(r_t - r_s, 1e-12)
  posterior = jax.nn.softmax(log_prior + (r_s - 1.0) * y_s, axis=-1)
  return jnp.where(t > s, mean, posterior)


# -----------------------------------------------------------------------------
# Sampling grids and state spaces.
# -----------------------------------------------------------------------------


def time_grid(num_steps: int | None = None, vocab_size: int | None = None,
              tau_grid: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Returns (tau_grid, t_grid) from 0 to 1, uniform in tau unless tau_grid is given.

  Raises ValueError for num_steps <= 0 or a tau_grid that does not start at 0,
  end at 1 and strictly increase.
  """
  if vocab_size is None:
    raise ValueError("time_grid needs vocab_size to map tau to t")
  if tau_grid is None:
    if num_steps is None or int(num_steps) != num_steps or num_steps <= 0:
      raise ValueError(f"num_steps={num_steps!r} must be a positive integer number of steps")
    tau = np.linspace(0.0, 1.0, int(num_steps) + 1)
  else:
    tau = np.asarray(tau_grid, dtype=np.float64)
    if tau.ndim != 1 or tau.size < 2:
      raise ValueError(f"tau_grid={list(tau_grid)} needs at least two times, from 0 to 1")
    if tau[0] != 0.0 or tau[-1] != 1.0:
      raise ValueError(f"tau_grid={tau.tolist()} must start at 0.0 and end at 1.0")
    if np.any(np.diff(tau) <= 0):
      raise ValueError(f"tau_grid={tau.tolist()} must be strictly increasing; "
                       "sampling moves from noise (0) to data (1)")
    if num_steps is not None and num_steps != tau.size - 1:
      raise ValueError(f"num_steps={num_steps} disagrees with tau_grid of {tau.size - 1} steps")
  t = paths.t_from_tau_numpy(tau, vocab_size)
  t[0], t[-1] = 0.0, 1.0
  return tau, t


class StateSpace(Protocol):
  """Where the sampler's state lives: the vocabulary or its projection x @ W."""

  def initial(self, key: jax.Array, batch: int, length: int) -> jax.Array: ...

  def embed(self, mu: jax.Array) -> jax.Array: ...


class VocabSpace:
  """The state is x itself, (B, L, V_pad), with zeros on padded ids."""

  def __init__(self, vocab_size: int, padded_vocab_size: int):
    self.vocab_size = vocab_size
    self.padded_vocab_size = padded_vocab_size

  def initial(self, key, batch, length):
    return paths.sample_source(key, (batch, length, self.padded_vocab_size), self.vocab_size)

  def embed(self, mu):
    return mu


def _categorical(key: jax.Array, logits: jax.Array, temperature: float) -> jax.Array:
  """Draws tokens from softmax(logits / temperature) with float32 Gumbel noise.

  Uniforms are drawn in float32 on [tiny, 1) with a spacing of 2^-23, so the
  Gumbel tail reaches -log(-log(1 - 2^-23)) ~ 15.9: bfloat16 noise would stop
  near 5 and visibly lower the entropy of the draws.
  """
  logits = logits.astype(jnp.float32) / temperature
  uniform = jax.random.uniform(key, logits.shape, jnp.float32,
                               minval=jnp.finfo(jnp.float32).tiny, maxval=1.0)
  gumbel = -jnp.log(-jnp.log(uniform))
  return jnp.argmax(logits + gumbel, axis=-1)


def decode_tokens(logits: jax.Array, key: jax.Array | None = None,
                  temperature: float = 0.0) -> jax.Array:
  """Returns argmax tokens (temperature 0) or a categorical draw; padded ids never win."""
  if temperature < 0:
    raise ValueError(f"temperature={temperature} must be >= 0 (0 means argmax)")
  if temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  if key is None:
    raise ValueError("a categorical draw (temperature > 0) needs a PRNG key")
  return _categorical(key, logits, temperature).astype(jnp.int32)


# -----------------------------------------------------------------------------
# Samplers.
# -----------------------------------------------------------------------------


def euler_sample(logits_fn: LogitsFn, key: jax.Array, space: StateSpace, batch: int, length: int,
                 num_steps: int, vocab_size: int, tau_grid: Sequence[float] | None = None,
                 temperature: float = 0.0,
                 endpoint_temperature: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """Samples a base model with Euler steps on a grid uniform in tau.

      z <- z + (t_{i+1} - t_i) (pi(z, t_i) - z) / (1 - t_i),

  and the last step returns pi(z, t_{N-1}) (the Euler step to t = 1 lands
  exactly on the endpoint). endpoint_temperature < 1 sharpens every pi to
  softmax(logits / endpoint_temperature), trading diversity for likelier
  tokens; 1 follows the learned flow. Returns (tokens (B, L), final logits).
  """
  taus, ts = time_grid(num_steps, vocab_size, tau_grid)
  key_init, key_decode = jax.random.split(key)
  state = space.initial(key_init, batch, length)
  taus32, ts32 = jnp.asarray(taus, jnp.float32), jnp.asarray(ts, jnp.float32)

  def step(index, state):
    tau = jnp.full((batch,), taus32[index])
    pi = jax.nn.softmax(logits_fn(state, tau, tau) / endpoint_temperature, axis=-1)
    a, b = flow_map_coefficients(ts32[index], ts32[index + 1])
    return a * state + b * space.embed(pi)

  state = jax.lax.fori_loop(0, len(taus) - 2, step, state)
  last = jnp.full((batch,), taus32[-2])
  logits = logits_fn(state, last, last) / endpoint_temperature
  return decode_tokens(logits, key_decode, temperature), logits


def flow_map_sample(logits_fn: LogitsFn, key: jax.Array, space: StateSpace, batch: int, length: int,
                    num_steps: int, vocab_size: int, tau_grid: Sequence[float] | None = None,
                    stochastic: bool = False, temperature: float = 0.0,
                    endpoint_temperature: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """Samples a Categorical Flow Map in num_steps jumps (k = 1, 2, 4, 8, or any k > 0).

      z <- X_{t_i, t_{i+1}}(z) = a z + b mu(z, t_i, t_{i+1}),

  and the last jump returns mu(z, t_{k-1}, 1). With stochastic=True each
  intermediate state is re-noised instead: z <- (1 - t_{i+1}) x0' + t_{i+1} mu(z, t_i, 1),
  a fresh draw of the path at t_{i+1} around the one-jump endpoint.
  endpoint_temperature sharpens every mu as in euler_sample.
  Returns (tokens (B, L), final logits (B, L, V_pad)).
  """
  taus, ts = time_grid(num_steps, vocab_size, tau_grid)
  keys = jax.random.split(key, len(taus) + 1)
  state = space.initial(keys[0], batch, length)
  for index in range(len(taus) - 2):
    tau_s = jnp.full((batch,), taus[index], jnp.float32)
    if stochastic:
      tau_end = jnp.ones((batch,), jnp.float32)
      mu = jax.nn.softmax(logits_fn(state, tau_s, tau_end) / endpoint_temperature, axis=-1)
      t_next = jnp.float32(ts[index + 1])
      state = (1.0 - t_next) * space.initial(keys[index + 1], batch, length) + t_next * space.embed(mu)
    else:
      tau_t = jnp.full((batch,), taus[index + 1], jnp.float32)
      mu = jax.nn.softmax(logits_fn(state, tau_s, tau_t) / endpoint_temperature, axis=-1)
      a, b = flow_map_coefficients(jnp.float32(ts[index]), jnp.float32(ts[index + 1]))
      state = a * state + b * space.embed(mu)
  tau_s = jnp.full((batch,), taus[-2], jnp.float32)
  logits = logits_fn(state, tau_s, jnp.ones((batch,), jnp.float32)) / endpoint_temperature
  return decode_tokens(logits, keys[-1], temperature), logits


def euler_inpaint(logits_fn: LogitsFn, key: jax.Array, tokens: jax.Array, known: jax.Array,
                  num_steps: int, vocab_size: int, padded_vocab_size: int,
                  two_time: bool = False) -> jax.Array:
  """Fills the unknown positions of `tokens` given the known ones; returns argmax tokens.

  The known positions follow their own noising path x_t = (1 - t) x0 + t e_y
  (the same x0 throughout), and the unknown ones move with the model's steps
  (Euler steps of a base model, or flow-map jumps of a CFM when two_time).
  Every model call sees a state that is consistent with one path through the
  known tokens, as during training. Known positions are returned unchanged.

  Args:
    logits_fn: (state, tau_s, tau_t) -> logits, as for the samplers.
    tokens: (B, L) token ids; the unknown positions' values are ignored.
    known: (B, L) boolean, True where the token is given.
  """
  taus, ts = time_grid(num_steps, vocab_size)
  batch, length = tokens.shape
  x0 = paths.sample_source(key, (batch, length, padded_vocab_size), vocab_size)
  one_hot = jax.nn.one_hot(tokens, padded_vocab_size, dtype=jnp.float32)
  known = known[..., None]

  def clamp(state, t):
    return jnp.where(known, (1.0 - t) * x0 + t * one_hot, state)

  state = x0
  for index in range(len(taus) - 2):
    state = clamp(state, jnp.float32(ts[index]))
    tau_s = jnp.full((batch,), taus[index], jnp.float32)
    tau_t = jnp.full((batch,), taus[index + 1], jnp.float32) if two_time else tau_s
    mean = jax.nn.softmax(logits_fn(state, tau_s, tau_t), axis=-1)
    a, b = flow_map_coefficients(jnp.float32(ts[index]), jnp.float32(ts[index + 1]))
    state = a * state + b * mean
  state = clamp(state, jnp.float32(ts[-2]))
  tau_s = jnp.full((batch,), taus[-2], jnp.float32)
  tau_t = jnp.ones((batch,), jnp.float32) if two_time else tau_s
  filled = decode_tokens(logits_fn(state, tau_s, tau_t))
  return jnp.where(known[..., 0], tokens, filled)
