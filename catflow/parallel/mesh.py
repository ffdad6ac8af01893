"""Device meshes built from config.

A mesh has axes ('data', 'fsdp', 'tensor'). The config gives one size per axis
and at most one -1, which is filled with whatever devices remain. Meshes use
`AxisType.Auto`, under which Flax's logical constraints are sharding hints
for GSPMD rather than assertions.

A multi-slice (hybrid) mesh adds `slices: N` to the mesh config: the sizes
then describe one slice, and the 'data' axis is extended N times across the
slices, so only data-parallel gradient reductions cross the slow data-centre
network while FSDP and tensor collectives stay inside a slice.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType

from catflow.parallel.partitioning import MESH_AXES


def resolve_mesh_shape(shape: Mapping[str, int] | Sequence[int], num_devices: int) -> tuple[int, ...]:
  """Returns the (data, fsdp, tensor) sizes with the -1 axis filled.

  Raises ValueError naming the sizes when they do not multiply to num_devices.
  """
  if isinstance(shape, Mapping):
    unknown = sorted(set(shape) - set(MESH_AXES))
    if unknown:
      raise ValueError(f"mesh axes {unknown} are not among {MESH_AXES}")
    sizes = [int(shape.get(axis, 1)) for axis in MESH_AXES]
  else:
    sizes = [int(size) for size in shape]
    if len(sizes) != len(MESH_AXES):
      raise ValueError(f"mesh shape {tuple(sizes)} needs one size per axis {MESH_AXES}")
  if sizes.count(-1) > 1:
    raise ValueError(f"mesh shape {dict(zip(MESH_AXES, sizes))} has more than one -1 axis")
  if any(size == 0 or size < -1 for size in sizes):
    raise ValueError(f"mesh shape {dict(zip(MESH_AXES, sizes))} has a size that is not "
                     "positive or -1")
  if -1 in sizes:
    known = math.prod(size for size in sizes if size != -1)
    if num_devices % known:
      raise ValueError(f"mesh shape {dict(zip(MESH_AXES, sizes))} cannot fill its -1 axis: "
                       f"{num_devices} devices are not divisible by {known}")
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(f"mesh shape {dict(zip(MESH_AXES, sizes))} uses {math.prod(sizes)} devices "
                     f"but {num_devices} are available; make the sizes multiply to {num_devices} "
                     "or set one axis to -1")
  return tuple(sizes)


def build_mesh(shape: Mapping[str, int] | Sequence[int] | None = None,
               devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """Builds a ('data', 'fsdp', 'tensor') mesh with Auto axis types.

  Args:
    shape: sizes per axis, one of them may be -1, and optionally `slices`;
      None means all devices on 'data'.
    devices: the devices to use; None means jax.devices().
  """
  devices = list(devices) if devices is not None else jax.devices()
  if isinstance(shape, Mapping) and int(shape.get("slices", 1)) > 1:
    sizes = {axis: size for axis, size in shape.items() if axis != "slices"}
    return build_hybrid_mesh(sizes, int(shape["slices"]), devices)
  if isinstance(shape, Mapping):
    shape = {axis: size for axis, size in shape.items() if axis != "slices"}
  sizes = resolve_mesh_shape(shape or {"data": -1}, len(devices))
  if devices == jax.devices():
    return jax.make_mesh(sizes, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))
  return jax.sharding.Mesh(np.asarray(devices).reshape(sizes), MESH_AXES,
                           axis_types=(AxisType.Auto,) * len(MESH_AXES))


def slice_groups(devices: Sequence[jax.Device], num_slices: int) -> list[list[jax.Device]]:
  """Groups devices by slice: by `slice_index` on multi-slice TPUs, else in contiguous runs."""
  if all(getattr(device, "slice_index", None) is not None for device in devices):
    indices = sorted({device.slice_index for device in devices})
    groups = [[d for d in devices if d.slice_index == index] for index in indices]
    if len(groups) != num_slices:
      raise ValueError(f"mesh slices={num_slices} but the devices form {len(groups)} slices")
    return groups
  if len(devices) % num_slices:
    raise ValueError(f"{len(devices)} devices cannot form {num_slices} equal slices")
  size = len(devices) // num_slices
  return [list(devices[i * size:(i + 1) * size]) for i in range(num_slices)]


def build_hybrid_mesh(per_slice: Mapping[str, int], num_slices: int,
                      devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """Builds a multi-slice mesh: per-slice (data, fsdp, tensor), 'data' repeated across slices."""
  devices = list(devices) if devices is not None else jax.devices()
  groups = slice_groups(devices, num_slices)
  sizes = resolve_mesh_shape(per_slice, len(groups[0]))
  blocks = [np.asarray(group).reshape(sizes) for group in groups]
  array = np.concatenate(blocks, axis=0)  # The slice index is the outer part of 'data'.
  return jax.sharding.Mesh(array, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def batch_divisor(mesh: jax.sharding.Mesh) -> int:
  """Returns the number of batch shards: the product of the 'data' and 'fsdp' axes."""
  return mesh.shape["data"] * mesh.shape["fsdp"]


def check_divisibility(mesh: jax.sharding.Mesh, *, global_batch_size: int, num_heads: int,
                       padded_vocab_size: int, mlp_dim: int, embed_dim: int):
  """Rejects a configuration that does not divide the mesh, before compilation."""
  shards = batch_divisor(mesh)
  if global_batch_size % shards:
    raise ValueError(
        f"global batch size {global_batch_size} is not divisible by the {shards} batch shards "
        f"(data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']}); choose a multiple of {shards}")
  tensor = mesh.shape["tensor"]
  for name, value in (("num_heads", num_heads), ("padded vocabulary", padded_vocab_size),
                      ("mlp_dim", mlp_dim)):
    if value % tensor:
      raise ValueError(f"{name}={value} is not divisible by the tensor axis of size {tensor}; "
                       f"choose a multiple of {tensor} or a smaller tensor axis")
  fsdp = mesh.shape["fsdp"]
  if embed_dim % fsdp:
    raise ValueError(f"embed_dim={embed_dim} is not divisible by the fsdp axis of size {fsdp}")
