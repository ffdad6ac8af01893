"""Tests of the d-dimensional shortcut h = x @ W against the V-dimensional path."""

import jax
import jax.numpy as jnp
import numpy as np

from catflow import flow_map
from catflow import paths
from catflow.models import projected


def _kernel(padded_vocab, depth, vocab, seed=0):
  kernel = jax.random.normal(jax.random.key(seed), (padded_vocab, depth)) / np.sqrt(depth)
  return kernel.at[vocab:].set(3.0)  # Padded rows must never matter.


def test_small_vocabulary_uses_the_same_draw():
  kernel = _kernel(16, 32, 12)
  key = jax.random.key(1)
  direct = paths.sample_source(key, (4, 8, 16), 12) @ kernel
  np.testing.assert_allclose(projected.projected_noise(key, kernel, 12, (4, 8)), direct, rtol=1e-5,
                             atol=1e-6)


def test_large_vocabulary_noise_has_the_projected_covariance():
  # V_pad > d: the shortcut draws N(0, W_real^T W_real) from an eigendecomposition.
  # Compare with x0 @ W from the V-dimensional path: both sample covariances must
  # match W_real^T W_real within the sampling error of n draws.
  vocab, padded, depth, draws = 200, 256, 16, 20000
  kernel = _kernel(padded, depth, vocab)
  real = np.asarray(kernel[:vocab], np.float64)
  covariance = real.T @ real
  shortcut = np.asarray(projected.projected_noise(jax.random.key(2), kernel, vocab, (draws,)))
  full = np.asarray(paths.sample_source(jax.random.key(3), (draws, padded), vocab) @ kernel)
  scale = np.sqrt(np.outer(np.diag(covariance), np.diag(covariance)))
  # Entry-wise standard error of a sample covariance is about sqrt(S_ii S_jj / n) at most.
  tolerance = 5 * scale / np.sqrt(draws)
  for sample in (shortcut, full):
    assert np.all(np.abs(sample.mean(0)) < 5 * np.sqrt(np.diag(covariance) / draws))
    assert np.all(np.abs(np.cov(sample.T) - covariance) < tolerance)


def test_projected_interpolation_matches_full_state():
  vocab, padded, depth = 12, 16, 32
  kernel = _kernel(padded, depth, vocab)
  tokens = jax.random.randint(jax.random.key(4), (3, 8), 0, vocab)
  t = jnp.array([0.0, 0.4, 0.9])
  x0 = paths.sample_source(jax.random.key(5), (3, 8, padded), vocab)
  full = paths.interpolate(x0, tokens, t) @ kernel
  shortcut = projected.projected_interpolate(x0 @ kernel, tokens, t, kernel)
  np.testing.assert_allclose(shortcut, full, rtol=1e-5, atol=1e-5)


def test_projected_flow_map_update_commutes_with_projection():
  vocab, padded, depth = 12, 16, 32
  kernel = _kernel(padded, depth, vocab)
  space = projected.ProjectedSpace(kernel, vocab)
  x = paths.sample_source(jax.random.key(6), (2, 8, padded), vocab)
  mu = jax.nn.softmax(paths.mask_padded_logits(jax.random.normal(jax.random.key(7), (2, 8, padded)),
                                               vocab))
  s, t = jnp.array([0.1, 0.5]), jnp.array([0.6, 0.8])
  np.testing.assert_allclose(flow_map.flow_map(x @ kernel, s, t, space.embed(mu)),
                             flow_map.flow_map(x, s, t, mu) @ kernel, rtol=1e-5, atol=1e-5)


def test_padded_rows_of_the_kernel_never_matter():
  vocab, padded, depth = 200, 256, 16
  kernel = _kernel(padded, depth, vocab)
  other = kernel.at[vocab:].set(-7.0)
  key = jax.random.key(8)
  np.testing.assert_array_equal(projected.projected_noise(key, kernel, vocab, (4,)),
                                projected.projected_noise(key, other, vocab, (4,)))
