"""Logical axis names and the one table that maps them onto mesh axes.

Parameters and activations are annotated with logical names in the model code
(`nn.with_logical_partitioning` for parameters, `nn.with_logical_constraint` for
activations). Parameter names and activation names are distinct, because a
parameter dimension such as 'embed' is sharded for FSDP while the activation
dimension 'act_embed' is replicated when the batch is already split:

  parameters:   vocab, embed, heads, kv, mlp, modulation, time, layers
  activations:  act_batch, act_length, act_embed, act_heads, act_kv, act_mlp, act_vocab

Mesh axes are ('data', 'fsdp', 'tensor'): the batch is split over data and
fsdp, parameters are split over fsdp along 'embed' (ZeRO-3 style), and
tensor parallelism splits heads, the MLP hidden dimension and the vocabulary.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

LogicalRules = Sequence[tuple[str, str | tuple[str, ...] | None]]

DEFAULT_RULES: LogicalRules = (
    # Activations.
    ("act_batch", ("data", "fsdp")),
    ("act_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv", None),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    # Parameters.
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv", None),
    ("mlp", "tensor"),
    ("modulation", "tensor"),
    ("time", None),
    ("layers", None),
)


def logical_sharding(tree, mesh: jax.sharding.Mesh, rules: LogicalRules = DEFAULT_RULES):
  """Maps a tree of logically partitioned values (or their specs) to NamedShardings."""
  specs = nn.get_partition_spec(tree)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def batch_sharding(mesh: jax.sharding.Mesh, ndim: int = 2) -> NamedSharding:
  """Returns the sharding of a (batch, length, ...) input array: batch over data and fsdp."""
  return NamedSharding(mesh, P(("data", "fsdp"), *([None] * (ndim - 1))))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def replicate_in_mesh(tree):
  """Constrains jit outputs to be replicated under the mesh set by jax.set_mesh.

  Every process can then read them with np.asarray, which a batch-sharded
  output of a multi-process run does not allow. Without a mesh it is a no-op.
  """
  if jax.sharding.get_abstract_mesh().empty:
    return tree
  return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, P()), tree)
