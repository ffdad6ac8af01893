"""Vocabulary-parallel cross-entropy with `jax.shard_map`.

When the logits are split over the 'tensor' axis along the vocabulary, a
plain log_softmax would gather the whole (B, L, V) array on every device. The
per-shard program below keeps each device on its own slice of the vocabulary:

1. every shard takes the max of its logits; a pmax over 'tensor' gives the
   global max (for a stable exponent);
2. every shard sums exp(logit - max); a psum gives the partition function;
3. the shard that owns the target id contributes its logit; a psum gives it to all.

cross_entropy = log(sum exp) + max - logit[target], in float32. The batch stays
split over ('data', 'fsdp'), exactly as the activations are.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

_BATCH = ("data", "fsdp")


def _local_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Per-shard program: logits (b, l, V / tensor), targets (b, l) global ids."""
  logits = logits.astype(jnp.float32)
  shard_size = logits.shape[-1]
  offset = jax.lax.axis_index("tensor") * shard_size

  local_max = jnp.max(logits, axis=-1)
  global_max = jax.lax.pmax(jax.lax.stop_gradient(local_max), "tensor")
  sum_exp = jax.lax.psum(jnp.sum(jnp.exp(logits - global_max[..., None]), axis=-1), "tensor")

  local_ids = targets - offset
  owned = (local_ids >= 0) & (local_ids < shard_size)
  picked = jnp.take_along_axis(logits, jnp.clip(local_ids, 0, shard_size - 1)[..., None], axis=-1)
  target_logit = jax.lax.psum(jnp.where(owned, picked[..., 0], 0.0), "tensor")
  return jnp.log(sum_exp) + global_max - target_logit


def ambient_tensor_size() -> int:
  """Returns the 'tensor' axis size of the mesh set by jax.set_mesh (1 without one)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or "tensor" not in mesh.shape:
    return 1
  return mesh.shape["tensor"]


def cross_entropy(logits: jax.Array, targets: jax.Array,
                  mesh: jax.sharding.Mesh | jax.sharding.AbstractMesh | None = None) -> jax.Array:
  """Returns -log softmax(logits)[targets] per position, (B, L) float32, vocab-parallel.

  Args:
    logits: (B, L, V) with V divisible by the mesh's 'tensor' size.
    targets: (B, L) int token ids.
    mesh: a mesh with axes ('data', 'fsdp', 'tensor'); None means the mesh set
      by jax.set_mesh.
  """
  if mesh is None:
    mesh = jax.sharding.get_abstract_mesh()
  tensor = mesh.shape["tensor"]
  if logits.shape[-1] % tensor:
    raise ValueError(f"vocabulary of {logits.shape[-1]} logits is not divisible by the tensor axis "
                     f"of size {tensor}; pad the vocabulary to a multiple of {tensor}")
  batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if logits.shape[0] % batch_shards:
    raise ValueError(f"batch of {logits.shape[0]} rows is not divisible by the {batch_shards} "
                     "batch shards (data x fsdp)")
  program = jax.shard_map(
      _local_cross_entropy, mesh=mesh,
      in_specs=(P(_BATCH, None, "tensor"), P(_BATCH, None)),
      out_specs=P(_BATCH, None), check_vma=True)
  return program(logits, targets)
