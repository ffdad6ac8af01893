"""Tests of meshes, logical sharding rules and the vocabulary-parallel cross-entropy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from catflow.parallel import mesh as mesh_lib
from catflow.parallel import vocab_parallel


def _reference_cross_entropy(logits, targets):
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 2, 2), (1, 1, 8), (2, 4, 1), (4, 1, 2)])
def test_vocab_parallel_cross_entropy_matches_reference(shape):
  mesh = mesh_lib.build_mesh(shape)
  logits = 4 * jax.random.normal(jax.random.key(0), (16, 8, 64))
  targets = jax.random.randint(jax.random.key(1), (16, 8), 0, 64)
  expected = _reference_cross_entropy(logits, targets)
  got = jax.jit(lambda l, t: vocab_parallel.cross_entropy(l, t, mesh))(logits, targets)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_vocab_parallel_cross_entropy_gradients():
  mesh = mesh_lib.build_mesh((2, 1, 4))
  logits = 3 * jax.random.normal(jax.random.key(2), (4, 6, 32))
  targets = jax.random.randint(jax.random.key(3), (4, 6), 0, 32)
  expected = jax.grad(lambda l: jnp.sum(_reference_cross_entropy(l, targets)))(logits)
  got = jax.jit(jax.grad(lambda l: jnp.sum(vocab_parallel.cross_entropy(l, targets, mesh))))(logits)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_vocab_parallel_cross_entropy_rejects_indivisible_vocabulary():
  mesh = mesh_lib.build_mesh((1, 1, 8))
  with pytest.raises(ValueError, match="not divisible by the tensor axis of size 8"):
    vocab_parallel.cross_entropy(jnp.zeros((8, 2, 60)), jnp.zeros((8, 2), jnp.int32), mesh)


def test_resolve_mesh_shape_fills_one_axis():
  assert mesh_lib.resolve_mesh_shape({"data": -1}, 8) == (8, 1, 1)
  assert mesh_lib.resolve_mesh_shape({"data": 2, "fsdp": -1, "tensor": 2}, 8) == (2, 2, 2)
  assert mesh_lib.resolve_mesh_shape((1, 1, -1), 8) == (1, 1, 8)


@pytest.mark.parametrize("shape,message", [
    ({"data": -1, "fsdp": -1}, "more than one -1"),
    ({"data": 3, "fsdp": -1}, "not divisible by 3"),
    ({"data": 2, "fsdp": 2, "tensor": 1}, "uses 4 devices but 8 are available"),
    ({"pipeline": 2}, "not among"),
    ({"data": 0}, "not positive"),
])
def test_resolve_mesh_shape_errors(shape, message):
  with pytest.raises(ValueError, match=message):
    mesh_lib.resolve_mesh_shape(shape, 8)


def test_build_mesh_uses_auto_axes():
  mesh = mesh_lib.build_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert all(kind == jax.sharding.AxisType.Auto for kind in mesh.axis_types)


def test_check_divisibility_names_numbers():
  mesh = mesh_lib.build_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  with pytest.raises(ValueError, match="global batch size 6 is not divisible by the 4 batch shards"):
    mesh_lib.check_divisibility(mesh, global_batch_size=6, num_heads=4, padded_vocab_size=128,
                                mlp_dim=512, embed_dim=128)
  with pytest.raises(ValueError, match="num_heads=3 is not divisible by the tensor axis of size 2"):
    mesh_lib.check_divisibility(mesh, global_batch_size=8, num_heads=3, padded_vocab_size=128,
                                mlp_dim=512, embed_dim=128)


def test_base_objective_uses_vocab_parallel_loss_under_tensor_mesh():
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  from catflow.models.config import ModelConfig  # pylint: disable=import-outside-toplevel
  from catflow.models.transformer import FlowTransformer  # pylint: disable=import-outside-toplevel
  from catflow.objectives import base, common  # pylint: disable=import-outside-toplevel
  from catflow.parallel import partitioning  # pylint: disable=import-outside-toplevel
  from catflow.train import trainer  # pylint: disable=import-outside-toplevel

  model = FlowTransformer(ModelConfig(vocab_size=30, vocab_multiple=32, num_layers=1, embed_dim=16,
                                      num_heads=4, time_features=16))
  params = nn.unbox(trainer.init_variables(model, jax.random.key(0), 8))
  params = jax.tree.map(lambda leaf: leaf + 0.1 * jax.random.normal(jax.random.key(1), leaf.shape),
                        params)
  batch = {"tokens": jax.random.randint(jax.random.key(2), (8, 8), 0, 30),
           "segment_ids": jnp.ones((8, 8), jnp.int32),
           "positions": jnp.tile(jnp.arange(8), (8, 1))}
  options = common.ObjectiveOptions()
  loss_fn = lambda p: base.loss_fn(p, batch, jax.random.key(3), model=model, options=options)[0]
  expected = jax.jit(loss_fn)(params)
  mesh = mesh_lib.build_mesh((2, 1, 4))
  with jax.set_mesh(mesh), nn.logical_axis_rules(partitioning.DEFAULT_RULES):
    text = jax.jit(loss_fn).lower(params).as_text()
    got = jax.jit(loss_fn)(params)
  assert "shard_map" in text or "sdy.manual_computation" in text
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def _loss_and_grads_on_mesh(mesh, model, params, batch, loss_fn, options):
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  from catflow.parallel import partitioning  # pylint: disable=import-outside-toplevel
  from catflow.train import trainer  # pylint: disable=import-outside-toplevel

  shardings = trainer.params_shardings(model, 16, mesh)
  with jax.set_mesh(mesh), nn.logical_axis_rules(partitioning.DEFAULT_RULES):
    placed = jax.device_put(params, shardings)
    placed_batch = jax.device_put(batch, partitioning.batch_sharding(mesh))

    def loss_of(p, b):
      return loss_fn(p, b, jax.random.key(5), model=model, options=options)[0]

    step = jax.jit(jax.value_and_grad(loss_of), in_shardings=(shardings, None),
                   out_shardings=(None, shardings))
    return step(placed, placed_batch)


@pytest.mark.parametrize("objective", ["base", "psd"])
def test_sharded_step_matches_one_device(objective):
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  from catflow import objectives  # pylint: disable=import-outside-toplevel
  from catflow.models.config import ModelConfig  # pylint: disable=import-outside-toplevel
  from catflow.models.transformer import FlowTransformer  # pylint: disable=import-outside-toplevel
  from catflow.objectives import common  # pylint: disable=import-outside-toplevel
  from catflow.train import trainer  # pylint: disable=import-outside-toplevel

  config = ModelConfig(vocab_size=50, vocab_multiple=64, num_layers=2, embed_dim=32, num_heads=4,
                       mlp_dim=64, time_features=16, two_time=objective == "psd")
  model = FlowTransformer(config)
  params = nn.unbox(trainer.init_variables(model, jax.random.key(0), 16))
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = jax.tree.unflatten(treedef, [leaf + 0.05 * jax.random.normal(key, leaf.shape)
                                        for leaf, key in zip(leaves, keys)])
  batch = {"tokens": jax.random.randint(jax.random.key(2), (8, 16), 0, 50),
           "segment_ids": jnp.ones((8, 16), jnp.int32).at[:, 12:].set(2),
           "positions": jnp.tile(jnp.arange(16), (8, 1))}
  options = common.ObjectiveOptions(name=objective)
  loss_fn = objectives.get(objective, config)

  single = mesh_lib.build_mesh((1, 1, 1), devices=jax.devices()[:1])
  reference_loss, reference_grads = _loss_and_grads_on_mesh(single, model, params, batch, loss_fn,
                                                            options)
  for shape in ((8, 1, 1), (2, 4, 1), (2, 2, 2)):
    loss, grads = _loss_and_grads_on_mesh(mesh_lib.build_mesh(shape), model, params, batch,
                                          loss_fn, options)
    np.testing.assert_allclose(loss, reference_loss, rtol=1e-5, err_msg=str(shape))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6,
                                                         err_msg=str(shape)),
                 grads, reference_grads)


def test_hybrid_mesh_puts_slices_on_the_data_axis():
  mesh = mesh_lib.build_mesh({"slices": 2, "data": 1, "fsdp": 2, "tensor": 2})
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  devices = jax.devices()
  # Slice 0 (the first four devices) is data index 0; FSDP and tensor stay inside a slice.
  first_slice = {device.id for device in mesh.devices[0].ravel()}
  assert first_slice == {device.id for device in devices[:4]}
  second_slice = {device.id for device in mesh.devices[1].ravel()}
  assert second_slice == {device.id for device in devices[4:]}


def test_hybrid_mesh_rejects_uneven_slices():
  with pytest.raises(ValueError, match="cannot form 3 equal slices"):
    mesh_lib.build_mesh({"slices": 3, "data": -1})


def _tiny_model_and_batch(**changes):
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  from catflow.models.config import ModelConfig  # pylint: disable=import-outside-toplevel
  from catflow.models.transformer import FlowTransformer  # pylint: disable=import-outside-toplevel
  from catflow.train import trainer  # pylint: disable=import-outside-toplevel

  config = ModelConfig(vocab_size=30, vocab_multiple=32, num_layers=2, embed_dim=32, num_heads=4,
                       time_features=16, **changes)
  model = FlowTransformer(config)
  params = nn.unbox(trainer.init_variables(model, jax.random.key(0), 8))
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = jax.tree.unflatten(treedef, [leaf + 0.05 * jax.random.normal(key, leaf.shape)
                                        for leaf, key in zip(leaves, keys)])
  batch = {"tokens": jax.random.randint(jax.random.key(2), (8, 8), 0, 30),
           "segment_ids": jnp.ones((8, 8), jnp.int32),
           "positions": jnp.tile(jnp.arange(8), (8, 1))}
  return model, params, batch


def test_gradient_accumulation_averages_microbatches():
  import optax  # pylint: disable=import-outside-toplevel
  from catflow import objectives  # pylint: disable=import-outside-toplevel
  from catflow.objectives import common  # pylint: disable=import-outside-toplevel
  from catflow.train import state as state_lib  # pylint: disable=import-outside-toplevel
  from catflow.train import step as step_lib  # pylint: disable=import-outside-toplevel

  model, params, batch = _tiny_model_and_batch()
  options = common.ObjectiveOptions()
  loss_fn = objectives.get("base", model.config)
  optimizer = optax.sgd(1.0)
  state = state_lib.TrainState(step=jnp.int32(3), params=params, opt_state=optimizer.init(params),
                               ema_params=params)
  step = step_lib.make_train_step(model, loss_fn, options, optimizer, lambda s: 1.0, seed=7,
                                  ema_decay=0.9, grad_accum_steps=2)
  new_state, metrics = jax.jit(step)(state, batch)

  # By hand: microbatch m holds rows m, m + 2, ... and gets fold_in(fold_in(key(7), step), m);
  # SGD(1) subtracts the mean gradient.
  key = jax.random.fold_in(jax.random.key(7), 3)
  results = [jax.value_and_grad(lambda p, m=m: loss_fn(
      p, jax.tree.map(lambda x: x[m::2], batch), jax.random.fold_in(key, m),
      model=model, options=options)[0])(params) for m in range(2)]
  expected_loss = (results[0][0] + results[1][0]) / 2
  expected_params = jax.tree.map(lambda p, a, b: p - (a + b) / 2, params, results[0][1],
                                 results[1][1])
  np.testing.assert_allclose(metrics["loss"], expected_loss, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               new_state.params, expected_params)


def test_bfloat16_compute_keeps_float32_weights_and_logits():
  from catflow.models.transformer import FlowTransformer  # pylint: disable=import-outside-toplevel
  from catflow.objectives import base, common  # pylint: disable=import-outside-toplevel

  model, params, batch = _tiny_model_and_batch()
  bf16 = FlowTransformer(model.config.replace(dtype="bfloat16"))
  options = common.ObjectiveOptions()
  loss32 = base.loss_fn(params, batch, jax.random.key(3), model=model, options=options)[0]
  loss16 = base.loss_fn(params, batch, jax.random.key(3), model=bf16, options=options)[0]
  assert loss16.dtype == jnp.float32
  # bfloat16 keeps 8 bits of mantissa: the losses agree to a few parts in a thousand.
  np.testing.assert_allclose(loss16, loss32, rtol=2e-2)
  grads = jax.grad(lambda p: base.loss_fn(p, batch, jax.random.key(3), model=bf16,
                                          options=options)[0])(params)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(grads))
  x = jnp.zeros((2, 8, 32))
  assert bf16.apply({"params": params}, x, jnp.array([0.3, 0.6])).dtype == jnp.float32
