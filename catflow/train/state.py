"""The train state and the optimizer.

The state holds float32 master weights, float32 optimizer moments and an EMA of
the weights. Checkpoints store the EMA as its own item so that distillation
and evaluation can restore it without the optimizer state.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import optax

# Parameters with these names get weight decay: every dense and attention
# kernel. Embedding tables (input_kernel, posterior_kernel,
# self_condition_kernel, position_embedding), biases and modulation offsets do not.
_DECAYED_NAMES = ("kernel",)


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: number of updates applied.
  params: Any
  opt_state: Any
  ema_params: Any


def learning_rate_schedule(options: Mapping[str, Any], num_steps: int) -> optax.Schedule:
  """Linear warmup to `learning_rate`, then cosine, linear or constant decay.

  The decay runs from the end of warmup to num_steps and ends at
  learning_rate * min_learning_rate_ratio.
  """
  peak = float(options["learning_rate"])
  warmup = int(options["warmup_steps"])
  floor = peak * float(options["min_learning_rate_ratio"])
  decay_steps = max(num_steps - warmup, 1)
  decay = options["decay"]
  if decay == "cosine":
    after = optax.cosine_decay_schedule(peak, decay_steps, alpha=floor / peak if peak else 0.0)
  elif decay == "linear":
    after = optax.linear_schedule(peak, floor, decay_steps)
  elif decay == "constant":
    after = optax.constant_schedule(peak)
  else:
    raise ValueError(f"optimizer.decay={decay!r} is not 'cosine', 'linear' or 'constant'")
  if warmup <= 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def weight_decay_mask(params) -> Any:
  """Returns a tree of booleans: True for the parameters that get weight decay."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params) if isinstance(
      params, flax.core.FrozenDict) else params)
  mask = {path: path[-1] in _DECAYED_NAMES for path in flat}
  return flax.traverse_util.unflatten_dict(mask)


def build_optimizer(options: Mapping[str, Any], num_steps: int) -> optax.GradientTransformation:
  """AdamW with warmup and decay, global-norm clipping, and decay on kernels only."""
  schedule = learning_rate_schedule(options, num_steps)
  clip = float(options["grad_clip"])
  return optax.chain(
      optax.clip_by_global_norm(clip) if clip > 0 else optax.identity(),
      optax.adamw(schedule, b1=float(options["b1"]), b2=float(options["b2"]),
                  eps=float(options["eps"]), weight_decay=float(options["weight_decay"]),
                  mask=weight_decay_mask),
  )


def ema_update(ema_params, params, step: jax.Array, decay: float):
  """Returns the EMA after one update, with decay min(decay, (1 + step) / (10 + step)).

  The warm-up of the decay lets short runs use the EMA too: after 10 steps the
  EMA averages roughly the last half of training, not the random initialisation.
  """
  step = step.astype(jnp.float32)
  effective = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
  return jax.tree.map(lambda e, p: effective * e + (1.0 - effective) * p.astype(e.dtype),
                      ema_params, params)


def all_finite(tree) -> jax.Array:
  """Returns a boolean scalar: True when every leaf of the tree is finite."""
  leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)
            if jnp.issubdtype(leaf.dtype, jnp.floating)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)
