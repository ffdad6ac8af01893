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
