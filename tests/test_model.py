"""Tests of the flow transformer: shapes, masks, conditioning, input layer, annotations."""

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from catflow import paths
from catflow.models import layers
from catflow.models.config import ModelConfig
from catflow.models.transformer import FlowTransformer
from catflow.models.transformer import expected_norm_scale
from catflow.train import trainer

VOCAB = 10
LENGTH = 12


def _config(**changes):
  values = dict(vocab_size=VOCAB, vocab_multiple=16, num_layers=2, embed_dim=32, num_heads=4,
                time_features=32)
  values.update(changes)
  return ModelConfig(**values)


def _init(config, seed=0):
  model = FlowTransformer(config)
  params = nn.unbox(trainer.init_variables(model, jax.random.key(seed), LENGTH))
  # Zero-initialised output layers make every network constant at initialisation;
  # perturb all parameters so that the tests see a generic function.
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed + 100), len(leaves))
  leaves = [leaf + 0.05 * jax.random.normal(key, leaf.shape) for leaf, key in zip(leaves, keys)]
  return model, jax.tree.unflatten(treedef, leaves)


def _state(batch=2, seed=1, config=None):
  padded = (config or _config()).padded_vocab_size
  return paths.sample_source(jax.random.key(seed), (batch, LENGTH, padded), VOCAB)


def test_logits_shape_dtype_and_padding_mask():
  for dtype in ("float32", "bfloat16"):
    config = _config(dtype=dtype)
    model, params = _init(config)
    logits = model.apply({"params": params}, _state(config=config), jnp.array([0.2, 0.7]))
    assert logits.shape == (2, LENGTH, 16)
    assert logits.dtype == jnp.float32
    assert np.all(np.asarray(logits[..., VOCAB:]) == paths.MASKED_LOGIT)
    assert np.all(np.isfinite(np.asarray(logits[..., :VOCAB])))


def test_padded_vocab_size():
  assert ModelConfig(vocab_size=85).padded_vocab_size == 128
  assert ModelConfig(vocab_size=128).padded_vocab_size == 128
  assert ModelConfig(vocab_size=50257).padded_vocab_size == 50304
  assert ModelConfig(vocab_size=50257, vocab_multiple=1).padded_vocab_size == 50257


def test_attention_never_crosses_documents():
  model, params = _init(_config())
  x = _state(batch=1)
  segment_ids = jnp.array([[1] * 5 + [2] * 7])
  positions = jnp.array([list(range(5)) + list(range(7))])
  tau = jnp.array([0.5])
  logits = model.apply({"params": params}, x, tau, None, segment_ids, positions)
  changed = x.at[0, 7].add(3.0)  # A token of document 2.
  changed_logits = model.apply({"params": params}, changed, tau, None, segment_ids, positions)
  np.testing.assert_array_equal(logits[0, :5], changed_logits[0, :5])
  assert not np.allclose(logits[0, 5:], changed_logits[0, 5:])


def test_padding_never_attends_or_is_attended():
  model, params = _init(_config())
  x = _state(batch=1)
  segment_ids = jnp.array([[1] * 9 + [0] * 3])
  tau = jnp.array([0.4])
  logits = model.apply({"params": params}, x, tau, None, segment_ids)
  changed = x.at[0, 10].add(5.0)
  changed_logits = model.apply({"params": params}, changed, tau, None, segment_ids)
  np.testing.assert_array_equal(logits[0, :9], changed_logits[0, :9])


def test_attention_mask_rows():
  mask = np.asarray(layers.attention_mask(jnp.array([[1, 1, 2, 0]])))[0, 0]
  expected = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]], bool)
  np.testing.assert_array_equal(mask, expected)


def test_rope_relative_positions():
  # Attention scores under RoPE depend only on the offset between positions.
  q = jax.random.normal(jax.random.key(0), (1, 1, 1, 8))
  k = jax.random.normal(jax.random.key(1), (1, 1, 1, 8))

  def score(i, j):
    return float(jnp.sum(layers.rope(q, jnp.array([[i]]), 10000.0) *
                         layers.rope(k, jnp.array([[j]]), 10000.0)))

  assert score(3, 1) == pytest.approx(score(10, 8), rel=1e-5)
  assert score(3, 1) != pytest.approx(score(3, 2), rel=1e-3)


def test_cfm_with_base_params_equals_base_everywhere():
  base_config = _config()
  base_model, base_params = _init(base_config)
  cfm_model = FlowTransformer(base_config.replace(two_time=True))
  fresh = nn.unbox(trainer.init_variables(cfm_model, jax.random.key(3), LENGTH))
  cfm_params = trainer.merge_params(base_params, fresh)
  x = _state()
  tau_s = jnp.array([0.1, 0.6])
  base_logits = base_model.apply({"params": base_params}, x, tau_s)
  for tau_t in (tau_s, jnp.array([0.5, 0.9]), jnp.ones(2)):
    cfm_logits = cfm_model.apply({"params": cfm_params}, x, tau_s, tau_t)
    np.testing.assert_allclose(cfm_logits, base_logits, rtol=1e-5, atol=1e-5)


def test_cfm_depends_on_target_time_once_trained():
  model, params = _init(_config(two_time=True))
  x = _state()
  tau_s = jnp.array([0.1, 0.6])
  near = model.apply({"params": params}, x, tau_s, tau_s + 0.1)
  far = model.apply({"params": params}, x, tau_s, jnp.ones(2))
  assert not np.allclose(near, far)


def test_per_position_times_match_per_sequence_times():
  model, params = _init(_config())
  x = _state()
  tau = jnp.array([0.3, 0.8])
  per_sequence = model.apply({"params": params}, x, tau)
  per_position = model.apply({"params": params}, x, jnp.broadcast_to(tau[:, None], (2, LENGTH)))
  np.testing.assert_allclose(per_sequence, per_position, rtol=1e-5, atol=1e-5)


def test_projected_input_equals_full_state():
  model, params = _init(_config())
  x = _state()
  tau = jnp.array([0.3, 0.8])
  full = model.apply({"params": params}, x, tau)
  projection = model.apply({"params": params}, x, method=FlowTransformer.project_input)
  shortcut = model.apply({"params": params}, None, tau, x_projected=projection)
  np.testing.assert_allclose(full, shortcut, rtol=1e-5, atol=1e-5)


def test_projected_input_rejected_for_nonlinear_input():
  model, params = _init(_config(input_posterior=True))
  with pytest.raises(ValueError, match="input_posterior=False"):
    model.apply({"params": params}, None, jnp.array([0.5]),
                x_projected=jnp.zeros((1, LENGTH, 32)))


def test_input_scaling_normalises_state_norm():
  # E|x_t|^2 = t^2 + (1 - t)^2 V, so the scaled state has unit expected squared norm.
  vocab = 50
  for t in (0.05, 0.5, 0.95):
    x0 = paths.sample_source(jax.random.key(4), (1, 4000, vocab), vocab)
    x_t = paths.interpolate(x0, jnp.zeros((1, 4000), jnp.int32), jnp.array([t]))
    scaled = x_t * expected_norm_scale(jnp.float32(t), vocab)
    np.testing.assert_allclose(np.mean(np.sum(np.square(scaled), -1)), 1.0, rtol=0.03)


@pytest.mark.parametrize("changes", [
    dict(input_posterior=True), dict(output_skip=True), dict(position_embedding="learned"),
    dict(mlp_activation="swiglu"), dict(scan_layers=False), dict(learned_loss_weight=True),
    dict(attention="dot_product_attention"), dict(modulation="shared"),
    dict(zero_init_blocks=False), dict(self_conditioning=True),
])
def test_options_build_and_run(changes):
  config = _config(**changes)
  model, params = _init(config)
  logits = model.apply({"params": params}, _state(config=config), jnp.array([0.3, 0.9]))
  assert np.all(np.isfinite(np.asarray(logits[..., :VOCAB])))


def test_dot_product_attention_matches_xla():
  model, params = _init(_config(attention="xla"))
  other = FlowTransformer(_config(attention="dot_product_attention"))
  x = _state()
  segment_ids = jnp.array([[1] * 6 + [2] * 4 + [0] * 2] * 2)
  tau = jnp.array([0.3, 0.9])
  np.testing.assert_allclose(model.apply({"params": params}, x, tau, None, segment_ids),
                             other.apply({"params": params}, x, tau, None, segment_ids),
                             rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("policy", ["minimal", "full", "save_attention_and_mlp"])
def test_remat_policies_keep_values_and_gradients(policy):
  config = _config()
  model, params = _init(config)
  remat_model = FlowTransformer(config.replace(remat_policy=policy))
  x = _state()
  tau = jnp.array([0.3, 0.9])

  def loss(model, params):
    return jnp.mean(jax.nn.log_softmax(model.apply({"params": params}, x, tau))[..., 0])

  np.testing.assert_allclose(loss(model, params), loss(remat_model, params), rtol=1e-6)
  gradients = jax.grad(lambda p: loss(model, p))(params)
  remat_gradients = jax.grad(lambda p: loss(remat_model, p))(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), gradients,
               remat_gradients)


def test_scan_and_unrolled_layers_are_the_same_function():
  config = _config()
  scanned, params = _init(config)
  unrolled = FlowTransformer(config.replace(scan_layers=False))
  stacked = params["blocks"]["layers"]["block"]
  unrolled_params = dict(params)
  unrolled_params["blocks"] = {
      f"block_{i}": jax.tree.map(lambda leaf: leaf[i], stacked) for i in range(config.num_layers)}
  x = _state()
  tau = jnp.array([0.3, 0.9])
  np.testing.assert_allclose(scanned.apply({"params": params}, x, tau),
                             unrolled.apply({"params": unrolled_params}, x, tau), rtol=1e-5,
                             atol=1e-5)


def test_every_parameter_has_logical_axes():
  model = FlowTransformer(_config(two_time=True, learned_loss_weight=True))
  boxed = trainer.init_variables(model, jax.random.key(0), LENGTH)
  specs = nn.get_partition_spec(boxed)
  flat_specs = flax.traverse_util.flatten_dict(specs)
  flat_values = flax.traverse_util.flatten_dict(nn.unbox(boxed))
  for path, value in flat_values.items():
    spec = flat_specs[path]
    assert len(spec) == value.ndim, f"{'/'.join(path)}: spec {spec} for shape {value.shape}"
  assert flat_specs[("input_kernel",)] == jax.sharding.PartitionSpec("vocab", "embed")
  query = flat_specs[("blocks", "layers", "block", "attention", "query", "kernel")]
  assert query == jax.sharding.PartitionSpec("layers", "embed", "heads", "kv")


@pytest.mark.parametrize("changes,message", [
    (dict(vocab_size=1), "vocab_size=1"),
    (dict(embed_dim=30, num_heads=4), "not divisible by num_heads=4"),
    (dict(remat_policy="sometimes"), "remat_policy='sometimes'"),
    (dict(attention="flash"), "attention='flash'"),
    (dict(dtype="float16"), "dtype='float16'"),
])
def test_model_config_validation(changes, message):
  with pytest.raises(ValueError, match=message):
    _config(**changes)


def test_model_config_round_trip_and_unknown_keys():
  config = _config(two_time=True)
  assert ModelConfig.from_dict(config.to_dict()) == config
  with pytest.raises(ValueError, match="unknown model config keys"):
    ModelConfig.from_dict({**config.to_dict(), "depth": 3})


def test_learned_loss_weight_starts_at_zero():
  model, _ = _init(_config(learned_loss_weight=True))
  fresh = nn.unbox(trainer.init_variables(model, jax.random.key(0), LENGTH))
  u = model.apply({"params": fresh}, jnp.array([0.1, 0.5, 0.9]),
                  method=FlowTransformer.loss_log_variance)
  np.testing.assert_array_equal(u, 0.0)
