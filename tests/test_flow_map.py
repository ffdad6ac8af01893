"""Tests of flow maps, the semigroup weights and the samplers, on the oracle posterior."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from catflow import flow_map
from catflow import paths
from catflow.models import projected

VOCAB = 12
PADDED = 16


@pytest.fixture(scope="module")
def prior():
  p = np.random.default_rng(0).dirichlet(np.full(VOCAB, 0.7))
  log_prior = np.full(PADDED, -np.inf)
  log_prior[:VOCAB] = np.log(p)
  return p, jnp.asarray(log_prior, jnp.float32)


def _oracle_endpoint_logits(log_prior, state, tau_s, tau_t):
  del tau_t
  t = paths.t_from_tau(tau_s, VOCAB)[:, None]
  return paths.oracle_logits(state, t, log_prior)


def _oracle_flow_map_logits(log_prior, state, tau_s, tau_t):
  s = paths.t_from_tau(tau_s, VOCAB)[:, None]
  t = jnp.where(tau_t >= 1.0, 1.0, paths.t_from_tau(tau_t, VOCAB))[:, None]
  mu = flow_map.oracle_flow_map_mean(state, s, t, log_prior, num_substeps=160)
  return paths.mask_padded_logits(jnp.log(jnp.maximum(mu, 1e-30)), VOCAB)


def _total_variation(tokens, p):
  counts = np.bincount(np.asarray(tokens).ravel(), minlength=PADDED) / np.asarray(tokens).size
  return 0.5 * np.abs(counts[:VOCAB] - p).sum(), counts[VOCAB:].sum()


def _tv_tolerance(num_draws):
  # E[TV] of an empirical distribution is about sum_k sqrt(p_k (1 - p_k) / n) * sqrt(2 / pi) / 2;
  # sqrt(V / n) bounds it, and 3x that is a loose but derived ceiling.
  return 3 * np.sqrt(VOCAB / num_draws)


def _random_simplex(key, shape):
  return jax.nn.softmax(3 * jax.random.normal(key, shape), axis=-1)


def test_flow_map_identity_at_equal_times():
  x = jax.random.normal(jax.random.key(0), (3, 4, PADDED))
  mu = _random_simplex(jax.random.key(1), (3, 4, PADDED))
  s = jnp.array([0.0, 0.4, 0.9])
  np.testing.assert_array_equal(flow_map.flow_map(x, s, s, mu), x)


def test_oracle_flow_map_mean_on_diagonal_is_posterior(prior):
  _, log_prior = prior
  x = jax.random.normal(jax.random.key(4), (3, 4, PADDED))
  t = jnp.array([0.0, 0.4, 0.9])
  mean = flow_map.oracle_flow_map_mean(x, t, t, log_prior)
  expected = paths.oracle_posterior(x, t[:, None], log_prior)
  np.testing.assert_allclose(mean, expected, rtol=1e-5, atol=1e-7)
  # Just off the diagonal, the integrated mean tends to the same limit.
  near = flow_map.oracle_flow_map_mean(x, t, t + 1e-3, log_prior)
  np.testing.assert_allclose(near, expected, atol=2e-2)


def test_flow_map_to_one_is_the_endpoint():
  x = jax.random.normal(jax.random.key(2), (3, 4, PADDED))
  mu = _random_simplex(jax.random.key(3), (3, 4, PADDED))
  s = jnp.array([0.0, 0.4, 0.9])
  np.testing.assert_allclose(flow_map.flow_map(x, s, jnp.ones(3), mu), mu, atol=1e-7)


def test_flow_map_coefficients_match_formula():
  a, b = flow_map.flow_map_coefficients(jnp.float32(0.2), jnp.float32(0.7))
  np.testing.assert_allclose(a, 0.3 / 0.8, rtol=1e-6)
  np.testing.assert_allclose(b, 0.5 / 0.8, rtol=1e-6)


def test_psd_weight_formula_and_range():
  s, u, t = jnp.float32(0.1), jnp.float32(0.4), jnp.float32(0.8)
  np.testing.assert_allclose(flow_map.psd_weight(s, u, t), (0.2 * 0.3) / (0.6 * 0.7), rtol=1e-6)
  np.testing.assert_allclose(flow_map.psd_weight(s, s, t), 0.0)
  np.testing.assert_allclose(flow_map.psd_weight(s, u, jnp.float32(1.0)), 0.0)


def test_oracle_flow_map_mean_matches_fine_euler(prior):
  _, log_prior = prior
  x = paths.sample_source(jax.random.key(4), (2, 8, PADDED), VOCAB)
  s, t = 0.2, 0.75
  mu = flow_map.oracle_flow_map_mean(x, jnp.full((2,), s), jnp.full((2,), t), log_prior, 256)

  # Reference: 20000 Euler steps of dx/dt = (pi_t(x) - x) / (1 - t) in float64.
  def euler(x):
    grid = np.linspace(s, t, 20001)
    prior64 = np.where(np.isfinite(np.asarray(log_prior)), np.asarray(log_prior, np.float64), -np.inf)
    for t0, t1 in zip(grid[:-1], grid[1:]):
      logits = prior64 + t0 * x / (1 - t0) ** 2
      pi = np.exp(logits - logits.max(-1, keepdims=True))
      pi /= pi.sum(-1, keepdims=True)
      x = x + (t1 - t0) * (pi - x) / (1 - t0)
    return x

  x_t = euler(np.asarray(x, np.float64))
  expected_mu = ((1 - s) * x_t - (1 - t) * np.asarray(x, np.float64)) / (t - s)
  np.testing.assert_allclose(mu, expected_mu, atol=2e-3)


def test_oracle_flow_map_mean_on_simplex(prior):
  _, log_prior = prior
  x = paths.sample_source(jax.random.key(5), (2, 8, PADDED), VOCAB)
  mu = flow_map.oracle_flow_map_mean(x, jnp.full((2,), 0.1), jnp.full((2,), 0.9), log_prior, 128)
  np.testing.assert_allclose(mu.sum(-1), 1.0, atol=1e-4)
  assert float(mu.min()) >= -1e-6
  assert np.all(np.asarray(mu[..., VOCAB:]) == 0.0)


def test_psd_weights_compose_two_oracle_steps(prior):
  # mu(x, s, t) = lambda mu(x, s, u) + (1 - lambda) mu(X_{s,u}(x), u, t) for the exact flow.
  _, log_prior = prior
  x = paths.sample_source(jax.random.key(6), (4, 8, PADDED), VOCAB)
  for s, u, t in ((0.0, 0.3, 0.6), (0.2, 0.5, 0.85), (0.4, 0.45, 0.8)):
    s_, u_, t_ = (jnp.full((4,), value) for value in (s, u, t))
    mu_st = flow_map.oracle_flow_map_mean(x, s_, t_, log_prior, 512)
    mu_su = flow_map.oracle_flow_map_mean(x, s_, u_, log_prior, 512)
    x_u = flow_map.flow_map(x, s_, u_, mu_su)
    mu_ut = flow_map.oracle_flow_map_mean(x_u, u_, t_, log_prior, 512)
    weight = flow_map.psd_weight(jnp.float32(s), jnp.float32(u), jnp.float32(t))
    composed = weight * mu_su + (1 - weight) * mu_ut
    np.testing.assert_allclose(composed, mu_st, atol=2e-4)
    # The composed map itself: X_{u,t}(X_{s,u}(x)) = X_{s,t}(x).
    np.testing.assert_allclose(flow_map.flow_map(x_u, u_, t_, mu_ut),
                               flow_map.flow_map(x, s_, t_, mu_st), atol=2e-4)


@pytest.mark.parametrize("num_steps", [0, -1, 2.5])
def test_time_grid_rejects_bad_step_counts(num_steps):
  with pytest.raises(ValueError, match="positive integer"):
    flow_map.time_grid(num_steps, VOCAB)


@pytest.mark.parametrize("grid,message", [
    ([0.0, 0.6, 0.5, 1.0], "strictly increasing"),
    ([0.0, 0.5, 0.5, 1.0], "strictly increasing"),
    ([0.1, 0.5, 1.0], "start at 0.0"),
    ([0.0, 0.5, 0.9], "end at 1.0"),
    ([1.0], "at least two"),
])
def test_time_grid_rejects_bad_grids(grid, message):
  with pytest.raises(ValueError, match=message):
    flow_map.time_grid(None, VOCAB, grid)


def test_time_grid_uniform_in_tau():
  tau, t = flow_map.time_grid(4, VOCAB)
  np.testing.assert_allclose(tau, [0.0, 0.25, 0.5, 0.75, 1.0])
  assert t[0] == 0.0 and t[-1] == 1.0
  assert np.all(np.diff(t) > 0)


def _euler(log_prior, num_steps, batch=256, length=64, seed=1):
  space = flow_map.VocabSpace(VOCAB, PADDED)
  sampler = jax.jit(functools.partial(
      flow_map.euler_sample, functools.partial(_oracle_endpoint_logits, log_prior), space=space,
      batch=batch, length=length, num_steps=num_steps, vocab_size=VOCAB))
  return sampler(jax.random.key(seed))[0]


def _flow_map_sampler(log_prior, num_steps, batch=256, length=64, seed=1, **kwargs):
  space = flow_map.VocabSpace(VOCAB, PADDED)
  sampler = jax.jit(functools.partial(
      flow_map.flow_map_sample, functools.partial(_oracle_flow_map_logits, log_prior), space=space,
      batch=batch, length=length, num_steps=num_steps, vocab_size=VOCAB, **kwargs))
  return sampler(jax.random.key(seed))[0]


def test_euler_reproduces_oracle_distribution(prior):
  p, log_prior = prior
  tokens = _euler(log_prior, 128)
  total_variation, padded_mass = _total_variation(tokens, p)
  assert padded_mass == 0.0
  assert total_variation < _tv_tolerance(tokens.size)


def test_euler_converges_to_exact_flow(prior):
  # The same noise through the exact flow map (1 jump) and through Euler:
  # agreement rises with the number of Euler steps.
  _, log_prior = prior
  exact = np.asarray(_flow_map_sampler(log_prior, 1, batch=64))
  agreement = [np.mean(np.asarray(_euler(log_prior, steps, batch=64)) == exact)
               for steps in (4, 32, 256)]
  assert agreement[0] < agreement[1] <= agreement[2]
  assert agreement[2] > 0.98


@pytest.mark.parametrize("num_steps", [1, 2, 3, 4, 8])
def test_flow_map_sampler_exact_for_any_step_count(prior, num_steps):
  p, log_prior = prior
  tokens = np.asarray(_flow_map_sampler(log_prior, num_steps, batch=128))
  total_variation, padded_mass = _total_variation(tokens, p)
  assert padded_mass == 0.0
  assert total_variation < _tv_tolerance(tokens.size)


def test_flow_map_sampler_consistent_across_step_counts(prior):
  # An exact flow map composes: 1, 2 and 4 jumps move the same noise to the same tokens.
  _, log_prior = prior
  one = np.asarray(_flow_map_sampler(log_prior, 1, batch=32))
  for num_steps in (2, 4):
    assert np.mean(np.asarray(_flow_map_sampler(log_prior, num_steps, batch=32)) == one) > 0.995


def test_stochastic_flow_map_sampler_keeps_distribution(prior):
  p, log_prior = prior
  tokens = np.asarray(_flow_map_sampler(log_prior, 4, batch=128, stochastic=True))
  total_variation, _ = _total_variation(tokens, p)
  assert total_variation < _tv_tolerance(tokens.size)


def test_flow_map_sampler_custom_grid(prior):
  p, log_prior = prior
  tokens = np.asarray(_flow_map_sampler(log_prior, None, batch=64, tau_grid=(0.0, 0.3, 0.9, 1.0)))
  total_variation, _ = _total_variation(tokens, p)
  assert total_variation < _tv_tolerance(tokens.size)


def test_projected_space_sampler_matches_vocab_space(prior):
  # With an orthogonal input kernel W (d = V_pad), h = x @ W carries all of x,
  # and the sampler in d dimensions reproduces the V-dimensional one.
  _, log_prior = prior
  kernel = jnp.linalg.qr(jax.random.normal(jax.random.key(7), (PADDED, PADDED)))[0]
  kernel = kernel.at[VOCAB:].set(0.0)

  def logits_from_projection(h, tau_s, tau_t):
    return _oracle_endpoint_logits(log_prior, h @ kernel.T, tau_s, tau_t)

  batch, length = 8, 16
  key = jax.random.key(8)
  x0 = paths.sample_source(key, (batch, length, PADDED), VOCAB)

  class FixedVocab(flow_map.VocabSpace):
    def initial(self, key, batch, length):
      return x0

  class FixedProjected(projected.ProjectedSpace):
    def initial(self, key, batch, length):
      return x0 @ self.kernel

  vocab_tokens, _ = flow_map.euler_sample(
      functools.partial(_oracle_endpoint_logits, log_prior), key, FixedVocab(VOCAB, PADDED),
      batch, length, 16, VOCAB)
  projected_tokens, _ = flow_map.euler_sample(
      logits_from_projection, key, FixedProjected(kernel, VOCAB), batch, length, 16, VOCAB)
  np.testing.assert_array_equal(vocab_tokens, projected_tokens)


def test_decode_tokens_never_picks_padding():
  logits = paths.mask_padded_logits(jnp.zeros((4, 32, PADDED)), VOCAB)
  for temperature in (0.0, 1.0, 5.0):
    tokens = flow_map.decode_tokens(logits, jax.random.key(9), temperature)
    assert int(tokens.max()) < VOCAB


def test_categorical_draws_match_softmax_entropy():
  # Float32 Gumbel noise reproduces the categorical distribution, tail included.
  logits = jnp.log(jnp.array([0.5, 0.3, 0.15, 0.05 - 1e-4, 1e-4]))
  draws = flow_map.decode_tokens(jnp.broadcast_to(logits, (200_000, 5)), jax.random.key(10), 1.0)
  frequencies = np.bincount(np.asarray(draws), minlength=5) / 200_000
  expected = np.exp(np.asarray(logits))
  stderr = np.sqrt(expected * (1 - expected) / 200_000)
  assert np.all(np.abs(frequencies - expected) < 4 * stderr + 1e-6)


def test_decode_tokens_rejects_negative_temperature():
  with pytest.raises(ValueError, match="temperature=-1"):
    flow_map.decode_tokens(jnp.zeros((1, 3)), jax.random.key(0), -1.0)


def test_inpainting_keeps_known_and_samples_the_rest(prior):
  # For i.i.d. tokens the unknown positions are independent of the known ones,
  # so their argmax tokens follow the prior; known positions are returned as given.
  p, log_prior = prior
  tokens = jax.random.randint(jax.random.key(11), (128, 32), 0, VOCAB)
  known = jnp.arange(32)[None, :] < 12
  known = jnp.broadcast_to(known, tokens.shape)
  filled = jax.jit(functools.partial(
      flow_map.euler_inpaint, functools.partial(_oracle_endpoint_logits, log_prior),
      num_steps=64, vocab_size=VOCAB, padded_vocab_size=PADDED))(jax.random.key(12), tokens, known)
  np.testing.assert_array_equal(np.asarray(filled)[:, :12], np.asarray(tokens)[:, :12])
  total_variation, padded_mass = _total_variation(np.asarray(filled)[:, 12:], p)
  assert padded_mass == 0.0
  assert total_variation < _tv_tolerance(filled[:, 12:].size)
