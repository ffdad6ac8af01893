"""Multi-process (multi-host) setup and the process's share of each global batch.

On a TPU pod every host runs the same command; `jax.distributed.initialize()`
finds the coordinator from the TPU environment by itself. Elsewhere (several
processes on one machine, GPU clusters without a scheduler integration) the
coordinator is given explicitly, by flags or by these environment variables:

  CATFLOW_COORDINATOR_ADDRESS  host:port of process 0's coordinator
  CATFLOW_NUM_PROCESSES        total number of processes
  CATFLOW_PROCESS_ID           this process's index, 0-based

On CPU the cross-process collectives use Gloo.
"""

from __future__ import annotations

import os

from absl import logging
import jax
import numpy as np

_ENV_ADDRESS = "CATFLOW_COORDINATOR_ADDRESS"
_ENV_COUNT = "CATFLOW_NUM_PROCESSES"
_ENV_INDEX = "CATFLOW_PROCESS_ID"


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, auto: bool = False) -> bool:
  """Starts jax.distributed when asked to; returns whether it is now running.

  Args:
    coordinator_address, num_processes, process_id: explicit settings; each
      falls back to its environment variable.
    auto: call jax.distributed.initialize() without arguments (TPU pods and
      clusters that JAX detects by itself) when nothing is given explicitly.
  """
  coordinator_address = coordinator_address or os.environ.get(_ENV_ADDRESS)
  if num_processes is None and os.environ.get(_ENV_COUNT):
    num_processes = int(os.environ[_ENV_COUNT])
  if process_id is None and os.environ.get(_ENV_INDEX):
    process_id = int(os.environ[_ENV_INDEX])
  explicit = (coordinator_address, num_processes, process_id)
  if all(value is None for value in explicit) and not auto:
    return False
  if not auto and any(value is None for value in explicit):
    raise ValueError(
        f"multi-process setup needs the coordinator address, the process count and this process's "
        f"id; got address={coordinator_address!r}, num_processes={num_processes!r}, "
        f"process_id={process_id!r}. Set {_ENV_ADDRESS}, {_ENV_COUNT} and {_ENV_INDEX}")
  if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS") == "cpu":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if auto and all(value is None for value in explicit):
    jax.distributed.initialize()
  else:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  logging.info("Process %d of %d started; %d local and %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


def process_rows(global_batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Returns this process's contiguous share of the rows of a global batch.

  Process p of P takes rows [p B / P, (p + 1) B / P), the rows that
  `jax.make_array_from_process_local_data` places on its devices when the
  batch axis is split over the mesh in device order.
  """
  count, index = jax.process_count(), jax.process_index()
  if count == 1:
    return global_batch
  rows = len(next(iter(global_batch.values())))
  if rows % count:
    raise ValueError(f"global batch of {rows} rows is not divisible by {count} processes")
  share = rows // count
  return {name: value[index * share:(index + 1) * share] for name, value in global_batch.items()}


def is_primary() -> bool:
  """Whether this process writes logs and files that exist once per run."""
  return jax.process_index() == 0
