"""The train state layout on a mesh and the jitted update step, shared by training and planning."""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from catflow.models.transformer import FlowTransformer
from catflow.objectives import common as objective_common
from catflow.parallel import partitioning
from catflow.train import state as state_lib


def init_variables(model: FlowTransformer, key: jax.Array, length: int):
  """Returns the boxed (logically annotated) params of a freshly initialised model."""
  cfg = model.config
  x = jnp.zeros((1, length, cfg.padded_vocab_size), jnp.float32)
  tau = jnp.zeros((1,), jnp.float32)
  return model.init(key, x, tau, tau if cfg.two_time else None)["params"]


@dataclasses.dataclass
class StateLayout:
  """How the train state lives on a mesh."""

  init: Callable[[jax.Array], state_lib.TrainState]  # key -> boxed TrainState.
  abstract: state_lib.TrainState  # ShapeDtypeStructs, unboxed.
  shardings: state_lib.TrainState  # NamedShardings from the logical annotations.

  def abstract_with_shardings(self) -> state_lib.TrainState:
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        self.abstract, self.shardings)

  def bytes_per_device(self, tree_name: str) -> int:
    """Bytes one device holds of params, opt_state or ema_params."""
    abstract = getattr(self.abstract, tree_name)
    shardings = getattr(self.shardings, tree_name)
    total = 0
    for leaf, sharding in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings)):
      total += jnp.dtype(leaf.dtype).itemsize * math.prod(sharding.shard_shape(leaf.shape))
    return int(total)


def state_layout(model: FlowTransformer, optimizer: optax.GradientTransformation, seq_len: int,
                 mesh: jax.sharding.Mesh, rules=partitioning.DEFAULT_RULES) -> StateLayout:
  """Builds the abstract train state and its shardings without allocating it."""

  def init(key):
    params = init_variables(model, key, seq_len)
    return state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                opt_state=optimizer.init(params), ema_params=params)

  boxed = jax.eval_shape(init, jax.random.key(0))
  shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules)
  return StateLayout(init=init, abstract=nn.unbox(boxed), shardings=shardings)


def make_train_step(model: FlowTransformer, loss_fn, options: objective_common.ObjectiveOptions,
                    optimizer: optax.GradientTransformation, learning_rate: optax.Schedule, *,
                    seed: int, ema_decay: float, grad_accum_steps: int = 1):
  """Returns train_step(state, batch) -> (state, metrics).

  The step's random numbers come from fold_in(key(seed), step). With
  grad_accum_steps = k > 1 the global batch is split into k microbatches of
  every k-th row (row r goes to microbatch r mod k, so every device keeps its
  own rows), microbatch m uses fold_in(step key, m), and their gradients and
  metrics are averaged before one optimizer update. Times are then stratified
  within each microbatch rather than over the global batch.
  """
  base_key = jax.random.key(seed)
  use_ema_teacher = options.teacher == "ema"

  def loss_and_grads(params, teacher, batch, key):
    def loss_of(params):
      return loss_fn(params, batch, key, model=model, options=options, teacher_params=teacher)
    return jax.value_and_grad(loss_of, has_aux=True)(params)

  def train_step(state: state_lib.TrainState, batch):
    key = jax.random.fold_in(base_key, state.step)
    teacher = state.ema_params if use_ema_teacher else None
    if grad_accum_steps == 1:
      (loss, metrics), grads = loss_and_grads(state.params, teacher, batch, key)
    else:
      micro = jax.tree.map(
          lambda x: jnp.swapaxes(x.reshape((x.shape[0] // grad_accum_steps, grad_accum_steps)
                                           + x.shape[1:]), 0, 1),
          batch)

      def accumulate(carry, index):
        (loss, metrics), grads = loss_and_grads(
            state.params, teacher, jax.tree.map(lambda x: x[index], micro),
            jax.random.fold_in(key, index))
        return jax.tree.map(jnp.add, carry, ((loss, metrics), grads)), None

      zeros = jax.eval_shape(lambda: loss_and_grads(
          state.params, teacher, jax.tree.map(lambda x: x[0], micro), key))
      zeros = jax.tree.map(lambda leaf: jnp.zeros(leaf.shape, leaf.dtype), zeros)
      total, _ = jax.lax.scan(accumulate, zeros, jnp.arange(grad_accum_steps))
      (loss, metrics), grads = jax.tree.map(lambda x: x / grad_accum_steps, total)

    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = jax.tree.map(lambda p, u: p + u, state.params, updates)
    ema = state_lib.ema_update(state.ema_params, params, state.step, ema_decay)
    metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads),
                   learning_rate=learning_rate(state.step))
    return state_lib.TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                                ema_params=ema), metrics

  return train_step
