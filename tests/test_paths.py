"""Tests of the probability path, the oracle posterior and the decodability time."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from catflow import paths


def _prior(vocab_size, padded_vocab_size, seed=0):
  p = np.random.default_rng(seed).dirichlet(np.ones(vocab_size))
  log_prior = np.full(padded_vocab_size, -np.inf)
  log_prior[:vocab_size] = np.log(p)
  return p, jnp.asarray(log_prior, jnp.float32)


def test_interpolate_endpoints():
  key = jax.random.key(0)
  x0 = paths.sample_source(key, (2, 5, 8), 8)
  tokens = jnp.array([[0, 1, 2, 3, 4], [7, 6, 5, 4, 3]])
  np.testing.assert_array_equal(paths.interpolate(x0, tokens, jnp.zeros(2)), x0)
  np.testing.assert_array_equal(paths.interpolate(x0, tokens, jnp.ones(2)),
                                jax.nn.one_hot(tokens, 8))


def test_interpolate_per_position_times():
  x0 = paths.sample_source(jax.random.key(1), (1, 3, 4), 4)
  tokens = jnp.array([[0, 1, 2]])
  t = jnp.array([[0.0, 0.5, 1.0]])
  x_t = paths.interpolate(x0, tokens, t)
  np.testing.assert_allclose(x_t[0, 0], x0[0, 0])
  np.testing.assert_allclose(x_t[0, 1], 0.5 * x0[0, 1] + 0.5 * jax.nn.one_hot(1, 4), rtol=1e-6)
  np.testing.assert_allclose(x_t[0, 2], jax.nn.one_hot(2, 4))


def test_source_is_zero_on_padded_ids():
  x0 = paths.sample_source(jax.random.key(2), (4, 16, 12), 9)
  assert np.all(np.asarray(x0[..., 9:]) == 0.0)
  assert np.all(np.asarray(x0[..., :9]) != 0.0)


def test_oracle_posterior_matches_bayes_rule():
  # Posterior by direct Bayes: p(y = k | x) ∝ p_k N(x; t e_k, (1 - t)^2 I).
  vocab_size = 6
  p, log_prior = _prior(vocab_size, vocab_size, seed=3)
  rng = np.random.default_rng(4)
  for t in (0.1, 0.5, 0.9):
    x = rng.normal(size=(3, vocab_size))
    log_likelihood = np.stack([
        stats.multivariate_normal(mean=t * np.eye(vocab_size)[k], cov=(1 - t) ** 2).logpdf(x)
        for k in range(vocab_size)], axis=-1)
    expected = np.exp(log_likelihood + np.log(p))
    expected /= expected.sum(axis=-1, keepdims=True)
    got = paths.oracle_posterior(jnp.asarray(x[None], jnp.float32), jnp.float32(t), log_prior)[0]
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-6)


def test_oracle_posterior_zero_on_padded_ids():
  _, log_prior = _prior(5, 8)
  x = paths.sample_source(jax.random.key(5), (2, 3, 8), 5)
  pi = paths.oracle_posterior(x, jnp.array([0.3, 0.8]), log_prior)
  assert np.all(np.asarray(pi[..., 5:]) == 0.0)
  np.testing.assert_allclose(pi.sum(-1), 1.0, rtol=1e-6)


def test_velocity_finite_at_one():
  x = jnp.ones((1, 2, 3))
  pi = jnp.full((1, 2, 3), 1 / 3)
  v = paths.velocity(pi, x, jnp.ones((1,)))
  assert np.all(np.isfinite(np.asarray(v)))
  np.testing.assert_allclose(paths.velocity(pi, x, jnp.full((1,), 0.5)), (pi - x) / 0.5)


def test_mask_padded_logits():
  logits = jnp.zeros((2, 6))
  masked = paths.mask_padded_logits(logits, 4)
  assert masked.dtype == jnp.float32
  assert np.all(np.asarray(masked[:, 4:]) == paths.MASKED_LOGIT)
  assert np.all(np.asarray(jax.nn.softmax(masked)[:, 4:]) == 0.0)


def test_argmax_probability_binary_closed_form():
  # For V = 2, argmax x_t = y iff z_other - z_y < t / (1 - t): P = Phi(t / ((1 - t) sqrt 2)).
  t = np.array([0.0, 0.05, 0.3, 0.6, 0.9, 0.99])
  expected = stats.norm.cdf(t / (1 - t) / np.sqrt(2))
  np.testing.assert_allclose(paths.argmax_probability(t, 2), expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("vocab_size", [17, 300])
def test_argmax_probability_monte_carlo(vocab_size):
  rng = np.random.default_rng(6)
  draws = 40_000
  for t in (0.3, 0.55):
    x = (1 - t) * rng.standard_normal((draws, vocab_size))
    x[:, 0] += t
    empirical = np.mean(x.argmax(axis=1) == 0)
    expected = paths.argmax_probability(np.array(t), vocab_size)
    stderr = np.sqrt(expected * (1 - expected) / draws)
    assert abs(empirical - expected) < 4 * stderr


@pytest.mark.parametrize("vocab_size", [2, 85, 50257])
def test_decodability_time_endpoints_and_monotone(vocab_size):
  t_grid, tau_grid = paths.decodability_table(vocab_size)
  assert tau_grid[0] == 0.0
  assert tau_grid[-1] == 1.0
  assert np.all(np.diff(tau_grid) > 0)
  assert t_grid[0] == 0.0 and t_grid[-1] == 1.0


def test_decodability_table_built_once_per_vocabulary():
  assert paths.decodability_table(85) is paths.decodability_table(85)
  assert paths.decodability_table(85) is not paths.decodability_table(86)


@pytest.mark.parametrize("vocab_size", [2, 85, 50257])
def test_tau_and_t_are_inverse(vocab_size):
  tau = jnp.linspace(0.0, 1.0, 101)
  np.testing.assert_allclose(paths.tau_from_t(paths.t_from_tau(tau, vocab_size), vocab_size), tau,
                             atol=2e-5)
  t = jnp.linspace(0.0, 0.95, 96)
  roundtrip = paths.t_from_tau(paths.tau_from_t(t, vocab_size), vocab_size)
  # Away from the flat ends of tau(t) the inverse recovers t.
  informative = (paths.tau_from_t(t, vocab_size) > 1e-3) & (paths.tau_from_t(t, vocab_size) < 0.999)
  np.testing.assert_allclose(roundtrip[informative], t[informative], atol=1e-4)


def test_decodability_band_for_large_vocabulary():
  # For V = 50k the argmax only becomes informative for t in roughly [0.65, 0.87].
  t_low, t_high = paths.t_from_tau_numpy([0.01, 0.99], 50257)
  assert 0.6 < t_low < 0.68
  assert 0.85 < t_high < 0.9


def test_tau_matches_definition():
  vocab_size = 85
  t = np.array([0.2, 0.5, 0.7])
  probability = paths.argmax_probability(t, vocab_size)
  expected = (vocab_size * probability - 1) / (vocab_size - 1)
  # Linear interpolation on the 2049-point table is accurate to a few 1e-5.
  np.testing.assert_allclose(paths.tau_from_t(jnp.asarray(t, jnp.float32), vocab_size), expected,
                             atol=5e-5)


def test_dtau_dt_matches_finite_difference():
  vocab_size = 85
  t = np.linspace(0.25, 0.8, 12)
  step = 1e-3
  numeric = (paths.tau_from_t(jnp.asarray(t + step, jnp.float32), vocab_size)
             - paths.tau_from_t(jnp.asarray(t - step, jnp.float32), vocab_size)) / (2 * step)
  np.testing.assert_allclose(paths.dtau_dt(jnp.asarray(t, jnp.float32), vocab_size), numeric,
                             rtol=2e-2)


def test_stratified_uniform_one_draw_per_bin():
  for batch in (1, 7, 64):
    u = np.asarray(paths.stratified_uniform(jax.random.key(batch), batch))
    bins = np.sort(np.floor(u * batch).astype(int))
    np.testing.assert_array_equal(bins, np.arange(batch))


def test_stratified_uniform_is_permuted():
  u = np.asarray(paths.stratified_uniform(jax.random.key(0), 64))
  assert not np.all(np.diff(u) > 0)


def test_sample_times_tau_uniform():
  tau, t = paths.sample_times(jax.random.key(1), 256, 85)
  np.testing.assert_allclose(paths.tau_from_t(t, 85), tau, atol=1e-4)
  assert float(tau.max()) <= 0.9999
  assert float(tau.min()) >= 0.0
  # Stratified and uniform in tau: one draw in each 1/256 bin of tau.
  bins = np.floor(np.sort(np.asarray(tau)) * 256).astype(int)
  np.testing.assert_array_equal(bins, np.arange(256))


def test_sample_times_t_uniform_and_logit_normal():
  _, t = paths.sample_times(jax.random.key(2), 512, 85, "t_uniform")
  t = np.sort(np.asarray(t))
  # Times above t(max_tau) are clipped to it; below, one draw per 1/512 bin.
  t_max = paths.t_from_tau_numpy(0.9999, 85)
  assert t.max() <= t_max * (1 + 1e-4)
  below = t[t < t_max - 1.0 / 512]
  np.testing.assert_array_equal(np.floor(below * 512).astype(int), np.arange(below.size))
  _, t = paths.sample_times(jax.random.key(3), 4096, 85, "logit_normal", logit_mean=0.5,
                            logit_std=0.8)
  logits = np.log(np.asarray(t)) - np.log1p(-np.asarray(t))
  assert abs(np.median(logits) - 0.5) < 0.05
  assert abs(np.std(logits) - 0.8) < 0.05


def test_sample_times_rejects_unknown_distribution():
  with pytest.raises(ValueError, match="'beta' is not one of 'tau_uniform', 'tau_power', 't_uniform', 'logit_normal'"):
    paths.sample_times(jax.random.key(0), 4, 85, "beta")
