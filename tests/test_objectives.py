"""Tests of the training objectives: the base cross-entropy and PSD self-distillation."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from catflow import flow_map
from catflow import objectives
from catflow import paths
from catflow.models.config import ModelConfig
from catflow.models.transformer import FlowTransformer
from catflow.objectives import base
from catflow.objectives import common
from catflow.objectives import pairs
from catflow.objectives import psd
from catflow.train import trainer

VOCAB = 12
LENGTH = 8


def _batch(batch_size=8, seed=0, padding=0):
  tokens = jax.random.randint(jax.random.key(seed), (batch_size, LENGTH), 0, VOCAB)
  segment_ids = jnp.ones((batch_size, LENGTH), jnp.int32)
  if padding:
    segment_ids = segment_ids.at[:, LENGTH - padding:].set(0)
  positions = jnp.broadcast_to(jnp.arange(LENGTH), (batch_size, LENGTH))
  return {"tokens": tokens, "segment_ids": segment_ids, "positions": positions}


def _model(**changes):
  config = ModelConfig(vocab_size=VOCAB, vocab_multiple=16, num_layers=1, embed_dim=16,
                       num_heads=2, time_features=16, **changes)
  model = FlowTransformer(config)
  params = nn.unbox(trainer.init_variables(model, jax.random.key(0), LENGTH))
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = jax.tree.unflatten(treedef, [leaf + 0.1 * jax.random.normal(key, leaf.shape)
                                        for leaf, key in zip(leaves, keys)])
  return model, params


class OracleFlowMap:
  """Stands in for the network: mu(x, s, t) of the exact flow of i.i.d. tokens with prior p."""

  def __init__(self, log_prior):
    self.config = ModelConfig(vocab_size=VOCAB, vocab_multiple=16, two_time=True)
    self.log_prior = log_prior

  def apply(self, variables, x, tau_s, tau_t, segment_ids, positions, x_projected=None):
    del variables, segment_ids, positions, x_projected
    s = paths.t_from_tau(tau_s, VOCAB)
    t = jnp.where(tau_t >= 1.0, 1.0, paths.t_from_tau(tau_t, VOCAB))
    mu = flow_map.oracle_flow_map_mean(x, s, t, self.log_prior, num_substeps=256)
    return paths.mask_padded_logits(jnp.log(jnp.maximum(mu, 1e-30)), VOCAB)


def test_base_loss_is_masked_mean_cross_entropy():
  model, params = _model()
  batch = _batch(padding=3)
  options = common.ObjectiveOptions()
  key = jax.random.key(2)
  loss, metrics = base.loss_fn(params, batch, key, model=model, options=options)

  # The same draws by hand: times, noise, forward, cross-entropy over real tokens.
  key_time, key_noise = jax.random.split(key)
  tau, t = paths.sample_times(key_time, 8, VOCAB)
  x0 = paths.sample_source(key_noise, (8, LENGTH, 16), VOCAB)
  logits = model.apply({"params": params}, paths.interpolate(x0, batch["tokens"], t), tau, tau,
                       batch["segment_ids"], batch["positions"])
  log_probs = jax.nn.log_softmax(logits)
  nll = -jnp.take_along_axis(log_probs, batch["tokens"][..., None], -1)[..., 0]
  expected = jnp.sum(nll[:, :LENGTH - 3]) / (8 * (LENGTH - 3))
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_allclose(metrics["cross_entropy"], expected, rtol=1e-5)


def test_base_loss_ignores_padding_tokens():
  model, params = _model()
  batch = _batch(padding=3)
  other = dict(batch, tokens=batch["tokens"].at[:, LENGTH - 3:].set(0))
  key = jax.random.key(3)
  options = common.ObjectiveOptions()
  np.testing.assert_array_equal(base.loss_fn(params, batch, key, model=model, options=options)[0],
                                base.loss_fn(params, other, key, model=model, options=options)[0])


def test_base_loss_projected_input_matches_distribution():
  # The d-dimensional shortcut draws x0 @ W directly; for V <= d it is the same draw.
  model, params = _model()
  batch = _batch()
  key = jax.random.key(4)
  full = base.loss_fn(params, batch, key, model=model, options=common.ObjectiveOptions())[0]
  shortcut = base.loss_fn(params, batch, key, model=model,
                          options=common.ObjectiveOptions(projected_input=True))[0]
  np.testing.assert_allclose(full, shortcut, rtol=1e-5)


def test_learned_weighting_starts_as_cross_entropy():
  model = FlowTransformer(ModelConfig(vocab_size=VOCAB, vocab_multiple=16, num_layers=1,
                                      embed_dim=16, num_heads=2, time_features=16,
                                      learned_loss_weight=True))
  params = nn.unbox(trainer.init_variables(model, jax.random.key(0), LENGTH))
  options = common.ObjectiveOptions(loss_weighting="learned")
  loss, metrics = base.loss_fn(params, _batch(), jax.random.key(5), model=model, options=options)
  np.testing.assert_allclose(loss, metrics["cross_entropy"], rtol=1e-6)
  grads = jax.grad(lambda p: base.loss_fn(p, _batch(), jax.random.key(5), model=model,
                                          options=options)[0])(params)
  assert float(jnp.abs(grads["loss_weight"]["output"]["bias"]).sum()) > 0


@pytest.mark.parametrize("bias, expected_u", [(0.7, 0.7), (100.0, "clip"), (-100.0, "-clip")])
def test_learned_weighting_value_and_clip(bias, expected_u):
  config = ModelConfig(vocab_size=VOCAB, vocab_multiple=16, num_layers=1, embed_dim=16,
                       num_heads=2, time_features=16, learned_loss_weight=True)
  model = FlowTransformer(config)
  params = nn.unbox(trainer.init_variables(model, jax.random.key(0), LENGTH))
  # The output layer of u starts at zero, so its bias alone sets u for every tau.
  params["loss_weight"]["output"]["bias"] = jnp.full_like(
      params["loss_weight"]["output"]["bias"], bias)
  if expected_u == "clip":
    expected_u = config.loss_weight_clip
  elif expected_u == "-clip":
    expected_u = -config.loss_weight_clip
  options = common.ObjectiveOptions(loss_weighting="learned")
  loss, metrics = base.loss_fn(params, _batch(), jax.random.key(5), model=model, options=options)
  np.testing.assert_allclose(metrics["loss_log_variance_mean"], expected_u, rtol=1e-6)
  expected = math.exp(-expected_u) * float(metrics["cross_entropy"]) + expected_u
  np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_power_weighting_normalised_and_monotone():
  tau = jnp.array([0.0, 0.5, 0.9, 0.99])
  weights = common.power_weights(tau, 1.0, 50.0)
  np.testing.assert_allclose(jnp.mean(weights), 1.0, rtol=1e-6)
  raw = np.array([1.0, 2.0, 10.0, 50.0])  # The last one clipped from 100.
  np.testing.assert_allclose(weights, raw / raw.mean(), rtol=1e-5)


def test_tau_power_distribution_matches_density():
  u = (jnp.arange(20000) + 0.5) / 20000
  for power in (0.0, 0.5, 1.0):
    tau = np.asarray(paths.tau_power_inverse_cdf(u, power, 0.999))
    assert tau.min() >= 0.0 and tau.max() <= 0.999
    # E[(1 - tau)^power] under density (1 - tau)^-power / Z equals 0.999 / Z.
    if power < 1.0:
      normaliser = (1 - 0.001 ** (1 - power)) / (1 - power)
    else:
      normaliser = -np.log(0.001)
    np.testing.assert_allclose(np.mean((1 - tau) ** power), 0.999 / normaliser, rtol=1e-3)


def test_objective_options_validation():
  with pytest.raises(ValueError, match="time_distribution='beta'"):
    common.ObjectiveOptions(time_distribution="beta")
  with pytest.raises(ValueError, match="loss_weighting='snr'"):
    common.ObjectiveOptions(loss_weighting="snr")
  with pytest.raises(ValueError, match="exceeds 1"):
    common.ObjectiveOptions(diagonal_fraction=0.8, endpoint_fraction=0.3)
  with pytest.raises(ValueError, match="unknown objective options"):
    common.ObjectiveOptions.from_mapping({"name": "base", "schedule": "cosine"})


def test_model_support_checks():
  model, _ = _model(input_posterior=True)
  with pytest.raises(ValueError, match="projected_input"):
    common.check_model_supports(common.ObjectiveOptions(projected_input=True), model)
  model, _ = _model()
  with pytest.raises(ValueError, match="learned_loss_weight=True"):
    common.check_model_supports(common.ObjectiveOptions(loss_weighting="learned"), model)
  with pytest.raises(ValueError, match="two_time=True"):
    objectives.get("psd", model.config)
  with pytest.raises(ValueError, match="is not one of"):
    objectives.get("meanflow", model.config)


def test_psd_row_counts():
  options = common.ObjectiveOptions(diagonal_fraction=0.25, endpoint_fraction=0.05)
  assert pairs.row_counts(64, options) == (16, 3, 45)
  assert pairs.row_counts(8, options) == (2, 0, 6)
  assert pairs.row_counts(8, common.ObjectiveOptions(diagonal_fraction=1.0,
                                                   endpoint_fraction=0.0)) == (8, 0, 0)


def test_psd_pair_times():
  options = common.ObjectiveOptions(diagonal_fraction=0.25, endpoint_fraction=0.125)
  tau_s, tau_t, is_diagonal = pairs.sample_pair_times(jax.random.key(6), 64, VOCAB, options)
  tau_s, tau_t, is_diagonal = map(np.asarray, (tau_s, tau_t, is_diagonal))
  assert is_diagonal.sum() == 16
  np.testing.assert_array_equal(tau_s[:16], tau_t[:16])
  np.testing.assert_array_equal(tau_s[16:24], 0.0)
  np.testing.assert_array_equal(tau_t[16:24], 1.0)
  assert np.all(tau_t[24:] > tau_s[24:])
  assert np.all((tau_s >= 0) & (tau_t <= 1))


def test_psd_pair_gap_and_start_distribution():
  # Off-diagonal rows: gap d stratified on U(0, 1), start s ~ U(0, 1 - d) given d.
  options = common.ObjectiveOptions(diagonal_fraction=0.0, endpoint_fraction=0.0)
  tau_s, tau_t, _ = map(np.asarray, pairs.sample_pair_times(jax.random.key(26), 2048, VOCAB,
                                                            options))
  gap = tau_t - tau_s
  bins = np.floor(np.sort(gap) * 2048).astype(int)
  np.testing.assert_array_equal(bins, np.arange(2048))
  # s / (1 - d) is uniform on (0, 1): its quartiles sit at 0.25, 0.5 and 0.75.
  relative_start = tau_s / (1.0 - gap)
  np.testing.assert_allclose(np.quantile(relative_start, [0.25, 0.5, 0.75]), [0.25, 0.5, 0.75],
                             atol=0.04)


def test_psd_target_equals_exact_flow_map_for_oracle():
  # With the exact flow of the oracle as teacher, the semigroup target is mu(x, s, t) itself.
  p = np.random.default_rng(7).dirichlet(np.full(VOCAB, 0.7))
  log_prior = np.full(16, -np.inf)
  log_prior[:VOCAB] = np.log(p)
  oracle = OracleFlowMap(jnp.asarray(log_prior, jnp.float32))
  batch = _batch(batch_size=6, seed=8)
  tau_s = jnp.array([0.0, 0.1, 0.3, 0.5, 0.2, 0.0])
  tau_t = jnp.array([1.0, 0.6, 0.9, 0.7, 0.25, 0.5])
  t_s = paths.t_from_tau(tau_s, VOCAB)
  x0 = paths.sample_source(jax.random.key(9), (6, LENGTH, 16), VOCAB)
  inputs = {"x": paths.interpolate(x0, batch["tokens"], t_s)}
  target = psd.teacher_target(None, batch, inputs, tau_s, tau_t, model=oracle, vocab_size=VOCAB)
  direct = jax.nn.softmax(oracle.apply(None, inputs["x"], tau_s, tau_t, None, None))
  np.testing.assert_allclose(target, direct, atol=3e-4)
  np.testing.assert_allclose(target.sum(-1), 1.0, atol=1e-5)


def test_psd_loss_is_zero_kl_for_oracle_student():
  p = np.random.default_rng(10).dirichlet(np.full(VOCAB, 0.7))
  log_prior = np.full(16, -np.inf)
  log_prior[:VOCAB] = np.log(p)
  oracle = OracleFlowMap(jnp.asarray(log_prior, jnp.float32))
  options = common.ObjectiveOptions(name="psd", diagonal_fraction=0.25, endpoint_fraction=0.125)
  _, metrics = psd.loss_fn({}, _batch(batch_size=8, seed=11), jax.random.key(12), model=oracle,
                           options=options)
  assert abs(float(metrics["distill_kl"])) < 1e-3
  assert float(metrics["diagonal_rows"]) == 2.0


class RecordingOracle(OracleFlowMap):
  """The oracle flow map, recording the (tau_s, tau_t) of every call."""

  def __init__(self, log_prior):
    super().__init__(log_prior)
    self.calls = []

  def apply(self, variables, x, tau_s, tau_t, segment_ids, positions, x_projected=None):
    self.calls.append((np.asarray(tau_s), np.asarray(tau_t)))
    return super().apply(variables, x, tau_s, tau_t, segment_ids, positions, x_projected)


def _prior_oracle(seed, oracle_type=OracleFlowMap):
  p = np.random.default_rng(seed).dirichlet(np.full(VOCAB, 0.7))
  log_prior = np.full(16, -np.inf)
  log_prior[:VOCAB] = np.log(p)
  return oracle_type(jnp.asarray(log_prior, jnp.float32))


def test_psd_teacher_steps_through_tau_midpoint():
  oracle = _prior_oracle(14, RecordingOracle)
  batch = _batch(batch_size=3, seed=15)
  tau_s = jnp.array([0.0, 0.1, 0.3])
  tau_t = jnp.array([1.0, 0.6, 0.5])
  x0 = paths.sample_source(jax.random.key(16), (3, LENGTH, 16), VOCAB)
  inputs = {"x": paths.interpolate(x0, batch["tokens"], paths.t_from_tau(tau_s, VOCAB))}
  psd.teacher_target(None, batch, inputs, tau_s, tau_t, model=oracle, vocab_size=VOCAB)
  (first_s, first_t), (second_s, second_t) = oracle.calls
  np.testing.assert_allclose(first_s, tau_s)
  np.testing.assert_allclose(first_t, [0.5, 0.35, 0.4], rtol=1e-6)
  np.testing.assert_allclose(second_s, [0.5, 0.35, 0.4], rtol=1e-6)
  np.testing.assert_allclose(second_t, tau_t)


def test_psd_loss_averages_data_and_distill_rows():
  oracle = _prior_oracle(17)
  options = common.ObjectiveOptions(name="psd", diagonal_fraction=0.25, endpoint_fraction=0.125)
  loss, metrics = psd.loss_fn({}, _batch(batch_size=8, seed=18), jax.random.key(19),
                              model=oracle, options=options)
  # 2 diagonal rows score the data and 6 rows the teacher's target, all tokens real.
  expected = (2 * metrics["diagonal_cross_entropy"] + 6 * metrics["distill_cross_entropy"]) / 8
  np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_psd_loss_trains_student_towards_teacher():
  model, params = _model(two_time=True)
  options = common.ObjectiveOptions(name="psd")
  batch = _batch(batch_size=16)
  loss, metrics = psd.loss_fn(params, batch, jax.random.key(13), model=model, options=options)
  assert np.isfinite(float(loss))
  assert float(metrics["distill_kl"]) >= -1e-5
  grads = jax.grad(lambda p: psd.loss_fn(p, batch, jax.random.key(13), model=model,
                                         options=options)[0])(params)
  assert float(jnp.abs(grads["gap_embedding"]["output"]["kernel"]).sum()) > 0


def test_psd_ema_teacher_requires_params():
  model, params = _model(two_time=True)
  with pytest.raises(ValueError, match="teacher_params"):
    psd.loss_fn(params, _batch(), jax.random.key(0), model=model,
                options=common.ObjectiveOptions(name="psd", teacher="ema"))


def _oracle_and_state(seed):
  p = np.random.default_rng(seed).dirichlet(np.full(VOCAB, 0.7))
  log_prior = np.full(16, -np.inf)
  log_prior[:VOCAB] = np.log(p)
  oracle = OracleFlowMap(jnp.asarray(log_prior, jnp.float32))
  batch = _batch(batch_size=4, seed=seed)
  tau_s = jnp.array([0.0, 0.1, 0.3, 0.5])
  tau_t = jnp.array([0.6, 0.5, 0.9, 0.7])
  x0 = paths.sample_source(jax.random.key(seed), (4, LENGTH, 16), VOCAB)
  x_s = paths.interpolate(x0, batch["tokens"], paths.t_from_tau(tau_s, VOCAB))
  return oracle, batch, x_s, tau_s, tau_t


def test_lagrangian_identity_holds_for_oracle_flow_map():
  # mu + (1 - t) gamma dmu/dt = pi_t(X_{s,t}(x)) along the exact flow: the ECLD target.
  from catflow.objectives import ecld  # pylint: disable=import-outside-toplevel
  oracle, batch, x_s, tau_s, tau_t = _oracle_and_state(14)
  s = paths.t_from_tau(tau_s, VOCAB)
  t = paths.t_from_tau(tau_t, VOCAB)
  mu, mu_dot = ecld.student_mean_and_time_derivative(None, batch, {"x": x_s}, tau_s, t, model=oracle)
  x_t = flow_map.flow_map(x_s, s, t, mu)
  pi_t = paths.oracle_posterior(x_t, t, oracle.log_prior)
  gamma = ((t - s) / (1 - s))[:, None, None]
  np.testing.assert_allclose(mu + (1 - t)[:, None, None] * gamma * mu_dot, pi_t, atol=2e-3)


@pytest.mark.parametrize("name", ["ecld", "lsd"])
def test_jvp_objectives_run_and_train(name):
  model, params = _model(two_time=True)
  options = common.ObjectiveOptions(name=name)
  loss_fn = objectives.get(name, model.config)
  batch = _batch(batch_size=8)
  loss, metrics = loss_fn(params, batch, jax.random.key(15), model=model, options=options)
  assert np.isfinite(float(loss))
  assert all(np.isfinite(float(value)) for value in metrics.values())
  grads = jax.grad(lambda p: loss_fn(p, batch, jax.random.key(15), model=model,
                                     options=options)[0])(params)
  assert float(jnp.abs(grads["gap_embedding"]["output"]["kernel"]).sum()) > 0


def test_jvp_objective_rejected_for_attention_without_forward_mode():
  config = ModelConfig(vocab_size=VOCAB, two_time=True, attention="cudnn")
  with pytest.raises(ValueError, match="forward-mode"):
    objectives.get("lsd", config)
  objectives.get("psd", config)  # Forward passes only: accepted.


def test_lsd_residual_vanishes_for_oracle_flow_map():
  from catflow.objectives import ecld  # pylint: disable=import-outside-toplevel
  oracle, batch, x_s, tau_s, tau_t = _oracle_and_state(16)
  s = paths.t_from_tau(tau_s, VOCAB)
  t = paths.t_from_tau(tau_t, VOCAB)
  mu, mu_dot = ecld.student_mean_and_time_derivative(None, batch, {"x": x_s}, tau_s, t, model=oracle)
  x_t = flow_map.flow_map(x_s, s, t, mu)
  x_t_dot = (mu - x_s + (t - s)[:, None, None] * mu_dot) / (1 - s)[:, None, None]
  residual = (1 - t)[:, None, None] * x_t_dot - (paths.oracle_posterior(x_t, t, oracle.log_prior) - x_t)
  assert float(jnp.max(jnp.abs(residual))) < 2e-3


def test_lsd_loss_vanishes_for_oracle_student():
  from catflow.objectives import lsd  # pylint: disable=import-outside-toplevel
  oracle = _prior_oracle(20)
  options = common.ObjectiveOptions(name="lsd", diagonal_fraction=0.25, endpoint_fraction=0.0)
  loss, metrics = lsd.loss_fn({}, _batch(batch_size=8, seed=21), jax.random.key(22),
                              model=oracle, options=options)
  assert float(metrics["lagrangian_residual"]) < 1e-4
  expected = (2 * metrics["diagonal_cross_entropy"] + 6 * metrics["lagrangian_residual"]) / 8
  np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_ecld_loss_weights_its_two_terms():
  from catflow.objectives import ecld  # pylint: disable=import-outside-toplevel
  oracle = _prior_oracle(23)
  options = common.ObjectiveOptions(name="ecld", diagonal_fraction=0.25, endpoint_fraction=0.0,
                                    ecld_cross_entropy_weight=0.7, ecld_derivative_weight=2.5)
  loss, metrics = ecld.loss_fn({}, _batch(batch_size=8, seed=24), jax.random.key(25),
                               model=oracle, options=options)
  off_loss = 0.7 * metrics["endpoint_cross_entropy"] + 2.5 * metrics["derivative_penalty"]
  expected = (2 * metrics["diagonal_cross_entropy"] + 6 * off_loss) / 8
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  assert float(metrics["derivative_penalty"]) > 0


def test_autoregressive_logits_never_see_later_tokens():
  from catflow.objectives import autoregressive  # pylint: disable=import-outside-toplevel
  model, params = _model(causal=True)
  batch = _batch(batch_size=2)
  logits = autoregressive.token_logits(params, batch, model=model)
  changed = dict(batch, tokens=batch["tokens"].at[:, 5].set((batch["tokens"][:, 5] + 1) % VOCAB))
  changed_logits = autoregressive.token_logits(params, changed, model=model)
  # Position i predicts token i from tokens before it: token 5 is first seen at 6.
  np.testing.assert_array_equal(logits[:, :6], changed_logits[:, :6])
  assert not np.allclose(logits[:, 6:], changed_logits[:, 6:])


def test_autoregressive_inputs_start_every_document_with_bos():
  from catflow.objectives import autoregressive  # pylint: disable=import-outside-toplevel
  tokens = jnp.array([[4, 5, 6, 7, 8, 9, 3, 3]])
  segments = jnp.array([[1, 1, 1, 2, 2, 2, 0, 0]])
  bos = autoregressive.BOS
  np.testing.assert_array_equal(autoregressive.shifted_inputs(tokens, segments),
                                [[bos, 4, 5, bos, 7, 8, bos, 3]])


def test_autoregressive_loss_scores_every_token_of_each_document():
  from catflow.objectives import autoregressive  # pylint: disable=import-outside-toplevel
  batch = _batch(batch_size=1)
  batch["segment_ids"] = jnp.array([[1, 1, 1, 2, 2, 2, 0, 0]])
  batch["positions"] = jnp.array([[0, 1, 2, 0, 1, 2, 0, 0]])
  np.testing.assert_array_equal(autoregressive.token_mask(batch), [[1, 1, 1, 1, 1, 1, 0, 0]])
  model, params = _model(causal=True)
  loss, _ = autoregressive.loss_fn(params, batch, jax.random.key(0), model=model,
                                   options=common.ObjectiveOptions(name="autoregressive"))
  logits = autoregressive.token_logits(params, batch, model=model)
  nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), batch["tokens"][..., None], -1)[..., 0]
  np.testing.assert_allclose(loss, jnp.mean(nll[0, :6]), rtol=1e-5)
  # The second document is scored as if it stood alone: nothing of the first
  # (not even its last token, the previous token in the row) reaches it.
  alone = {key: value[:, 3:6] for key, value in batch.items()}
  alone["segment_ids"] = jnp.ones_like(alone["segment_ids"])
  np.testing.assert_allclose(autoregressive.token_logits(params, alone, model=model),
                             logits[:, 3:6], rtol=1e-5, atol=1e-5)


def test_autoregressive_rejects_output_skip():
  from catflow.objectives import autoregressive  # pylint: disable=import-outside-toplevel
  model, params = _model(causal=True, output_skip=True)
  with pytest.raises(ValueError, match="set model.output_skip=False"):
    autoregressive.loss_fn(params, _batch(), jax.random.key(0), model=model,
                           options=common.ObjectiveOptions(name="autoregressive"))


def test_autoregressive_needs_causal_model():
  from catflow.objectives import autoregressive  # pylint: disable=import-outside-toplevel
  model, params = _model()
  with pytest.raises(ValueError, match="model.causal=True"):
    autoregressive.loss_fn(params, _batch(), jax.random.key(0), model=model,
                           options=common.ObjectiveOptions(name="autoregressive"))
