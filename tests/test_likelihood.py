"""Tests of the semi-discrete likelihood bound and its Monte Carlo estimator."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from catflow import likelihood
from catflow import paths

VOCAB = 12
PADDED = 16
LENGTH = 16


@pytest.fixture(scope="module")
def prior():
  p = np.random.default_rng(0).dirichlet(np.full(VOCAB, 0.5))
  log_prior = np.full(PADDED, -np.inf)
  log_prior[:VOCAB] = np.log(p)
  return p, jnp.asarray(log_prior, jnp.float32)


def oracle_logits(log_prior, x, tau_s, tau_t, segment_ids, positions):
  """The exact posterior of i.i.d. tokens; as a CFM it is mu(x, s, t) = pi_s(x)."""
  del tau_t, segment_ids, positions
  return paths.oracle_logits(x, paths.t_from_tau(tau_s, VOCAB)[:, None], log_prior)


def _windows(p, num_windows, seed=1, length=LENGTH):
  tokens = np.random.default_rng(seed).choice(VOCAB, size=(num_windows, length), p=p)
  return {"tokens": tokens.astype(np.int32),
          "segment_ids": np.ones_like(tokens, np.int32),
          "positions": np.tile(np.arange(length, dtype=np.int32), (num_windows, 1)),
          "index": np.arange(num_windows)}


def _batches(windows, batch_size, order=None):
  order = np.arange(len(windows["tokens"])) if order is None else order
  for start in range(0, len(order), batch_size):
    rows = order[start:start + batch_size]
    yield {name: value[rows] for name, value in windows.items()}


def _estimate(log_prior, windows, batch_size=64, order=None, options=None, seed=0):
  options = options or likelihood.BoundOptions(num_time_samples=32)
  return likelihood.estimate_bound(oracle_logits, log_prior, _batches(windows, batch_size, order),
                                   jax.random.key(seed), vocab_size=VOCAB, padded_vocab_size=PADDED,
                                   options=options)


@pytest.fixture(scope="module")
def oracle_result(prior):
  p, log_prior = prior
  windows = _windows(p, 384)
  return windows, _estimate(log_prior, windows)


def test_oracle_bound_equals_entropy_for_every_t1(prior, oracle_result):
  # With the exact posterior the bound is tight: E[bound] = E[-log p(y)] = H(p) per token.
  # Each of the six t1 values is checked at 3.5 standard errors (a fixed seed, so no flakes).
  p, _ = prior
  entropy = -np.sum(p * np.log(p))
  _, result = oracle_result
  mean, stderr = result.per_token()
  assert np.all(stderr > 0)
  for tau1, m, e in zip(result.tau1_grid, mean, stderr):
    assert abs(m - entropy) < 3.5 * e, f"tau1={tau1}: bound {m:.4f} vs entropy {entropy:.4f} +- {e:.4f}"


def test_oracle_bound_equals_window_nll(prior, oracle_result):
  # Tight per window too: the bound minus the exact -log p(y) has mean 0, checked
  # with the paired standard error, which excludes the data's own variance.
  p, _ = prior
  windows, result = oracle_result
  exact = -np.log(p[windows["tokens"]]).sum(axis=-1)
  difference = result.per_window - exact[:, None]
  mean = difference.mean(axis=0)
  stderr = difference.std(axis=0, ddof=1) / np.sqrt(len(exact))
  assert np.all(np.abs(mean) < 3.5 * stderr)


def test_uninformed_model_bound_is_larger(prior):
  # A posterior that ignores x (the prior itself) is a valid but looser bound.
  p, log_prior = prior
  windows = _windows(p, 128)

  def prior_only(log_prior, x, tau_s, tau_t, segment_ids, positions):
    del tau_s, tau_t, segment_ids, positions
    return jnp.broadcast_to(jnp.maximum(log_prior, paths.MASKED_LOGIT), x.shape)

  loose = likelihood.estimate_bound(prior_only, log_prior, _batches(windows, 64), jax.random.key(0),
                                    vocab_size=VOCAB, padded_vocab_size=PADDED,
                                    options=likelihood.BoundOptions(num_time_samples=16))
  tight = _estimate(log_prior, windows, options=likelihood.BoundOptions(num_time_samples=16))
  loose_mean, loose_error = loose.per_token()
  tight_mean, tight_error = tight.per_token()
  gap = loose_mean - tight_mean
  assert np.all(gap > 3 * np.sqrt(loose_error**2 + tight_error**2))


def test_bound_independent_of_batch_size_and_order(prior):
  # Random numbers depend only on the window index. XLA compiles a different
  # program per batch shape, so values agree to float32 rounding, not bitwise.
  p, log_prior = prior
  windows = _windows(p, 48)
  options = likelihood.BoundOptions(num_time_samples=8)
  reference = _estimate(log_prior, windows, batch_size=48, options=options)
  by_16 = _estimate(log_prior, windows, batch_size=16, options=options)
  np.testing.assert_allclose(reference.per_window, by_16.per_window, rtol=1e-6)
  order = np.random.default_rng(2).permutation(48)
  shuffled = _estimate(log_prior, windows, batch_size=12, order=order, options=options)
  np.testing.assert_allclose(reference.per_window[order], shuffled.per_window, rtol=1e-6)
  by_12 = _estimate(log_prior, windows, batch_size=12, options=options)
  np.testing.assert_array_equal(by_12.per_window[order], shuffled.per_window)


def test_bound_depends_on_seed(prior):
  p, log_prior = prior
  windows = _windows(p, 16)
  options = likelihood.BoundOptions(num_time_samples=4)
  first = _estimate(log_prior, windows, options=options, seed=0)
  again = _estimate(log_prior, windows, options=options, seed=0)
  other = _estimate(log_prior, windows, options=options, seed=1)
  np.testing.assert_array_equal(first.per_window, again.per_window)
  assert not np.array_equal(first.per_window, other.per_window)


def test_padding_tokens_do_not_count(prior):
  p, log_prior = prior
  windows = _windows(p, 8)
  padded = {name: value.copy() for name, value in windows.items()}
  padded["segment_ids"][:, 10:] = 0
  options = likelihood.BoundOptions(num_time_samples=4)
  result = _estimate(log_prior, padded, options=options)
  np.testing.assert_array_equal(result.num_tokens, np.full(8, 10))
  # Changing the padded tokens changes nothing.
  padded_other = {name: value.copy() for name, value in padded.items()}
  padded_other["tokens"][:, 10:] = (padded_other["tokens"][:, 10:] + 1) % VOCAB
  other = _estimate(log_prior, padded_other, options=options)
  np.testing.assert_array_equal(result.per_window, other.per_window)


def test_cfm_decoder_uses_one_jump_endpoint(prior):
  # A CFM still at its initialisation, mu(x, s, t) = pi_s(x), decodes like the base model.
  p, log_prior = prior
  windows = _windows(p, 32)
  base = _estimate(log_prior, windows, options=likelihood.BoundOptions(num_time_samples=4))
  cfm = _estimate(log_prior, windows,
                  options=likelihood.BoundOptions(num_time_samples=4, decoder="cfm"))
  np.testing.assert_allclose(base.per_window, cfm.per_window, rtol=1e-6)

  calls = []
  times = []

  def recording(log_prior, x, tau_s, tau_t, segment_ids, positions):
    calls.append(tau_t)
    jax.debug.callback(lambda s, t: times.append((np.asarray(s), np.asarray(t))), tau_s, tau_t)
    return oracle_logits(log_prior, x, tau_s, tau_t, segment_ids, positions)

  likelihood.estimate_bound(recording, log_prior, _batches(windows, 32), jax.random.key(0),
                            vocab_size=VOCAB, padded_vocab_size=PADDED,
                            options=likelihood.BoundOptions(num_time_samples=1, decoder="cfm",
                                                            tau1_grid=(0.5,)))
  assert len(calls) == 2  # One traced call for the integral, one for the decoder.
  # The integral evaluates the diagonal mu(x, t, t), and the decoder jumps from
  # tau1 = 0.5 to tau = 1 in one step.
  diagonal = [(s, t) for s, t in times if np.allclose(s, t)]
  jumps = [(s, t) for s, t in times if not np.allclose(s, t)]
  assert diagonal
  assert jumps
  for s, t in jumps:
    np.testing.assert_allclose(s, 0.5, rtol=1e-6)
    np.testing.assert_array_equal(t, 1.0)


def test_proposal_density_integrates_to_one():
  t_max = float(paths.t_from_tau_numpy(0.98, VOCAB))
  t, density = likelihood.proposal_times(jax.random.key(0), 4096, 1024, t_max, 0.98, VOCAB)
  # Unbiasedness on a known integral: int_0^t_max 1 dt = t_max.
  np.testing.assert_allclose(np.mean(1.0 / np.asarray(density)), t_max, rtol=0.02)
  # int_0^t_max t^2 dt = t_max^3 / 3.
  np.testing.assert_allclose(np.mean(np.asarray(t) ** 2 / np.asarray(density)), t_max**3 / 3,
                             rtol=0.02)
  assert float(t.min()) >= 0.0 and float(t.max()) <= t_max


def test_integral_weight_is_half_snr_derivative():
  t = jnp.linspace(0.05, 0.9, 7)
  snr = lambda t: t**2 / (1 - t) ** 2
  np.testing.assert_allclose(likelihood.integral_weight(t), 0.5 * jax.vmap(jax.grad(snr))(t),
                             rtol=1e-5)


def test_ratio_mean_and_error_exact():
  totals = np.array([2.0, 4.0, 6.0, 8.0])
  counts = np.array([1.0, 2.0, 3.0, 4.0])
  mean, error = likelihood.ratio_mean_and_error(totals, counts)
  assert mean == pytest.approx(2.0)
  assert error == pytest.approx(0.0)
  mean, error = likelihood.ratio_mean_and_error(np.array([1.0, 3.0]), np.array([1.0, 1.0]))
  assert mean == pytest.approx(2.0)
  assert error == pytest.approx(1.0)  # std (ddof=1) = sqrt(2), / sqrt(2) windows.


def test_empty_evaluation_set_raises(prior):
  _, log_prior = prior
  with pytest.raises(ValueError, match="empty"):
    likelihood.estimate_bound(oracle_logits, log_prior, iter([]), jax.random.key(0),
                              vocab_size=VOCAB, padded_vocab_size=PADDED,
                              options=likelihood.BoundOptions())
  with pytest.raises(ValueError, match="at least one window"):
    likelihood.ratio_mean_and_error(np.zeros(0), np.zeros(0))


@pytest.mark.parametrize("kwargs,message", [
    ({"tau1_grid": ()}, "strictly increasing"),
    ({"tau1_grid": (0.5, 0.4)}, "strictly increasing"),
    ({"tau1_grid": (0.5, 1.0)}, r"in \(0, 1\)"),
    ({"num_time_samples": 0}, "at least 1"),
    ({"uniform_share": 1.5}, r"uniform_share=1.5"),
    ({"decoder": "ar"}, "'base' or 'cfm'"),
])
def test_bound_options_validation(kwargs, message):
  with pytest.raises(ValueError, match=message):
    likelihood.BoundOptions(**kwargs)


def test_summary_reports_minimum_over_grid(oracle_result):
  _, result = oracle_result
  summary = result.summary()
  mean, _ = result.per_token()
  assert summary["nats_per_token"] == pytest.approx(float(mean.min()))
  assert summary["bits_per_token"] == pytest.approx(float(mean.min()) / np.log(2))
  assert len(summary["per_tau1"]) == len(result.tau1_grid)
  assert summary["num_tokens"] == 384 * LENGTH
