"""`catflow plan`: parameter count, per-device memory and FLOPs of a config, without a step.

The train step is lowered and compiled ahead of time for the configured mesh
(on fake CPU devices when the real ones are absent), so the numbers come from
XLA's own analysis of the partitioned program:

- parameters: from `jax.eval_shape` of the initialiser;
- params / optimizer state / EMA bytes per device: each leaf's shard shape
  under its NamedSharding;
- activations: `compiled.memory_analysis().temp_size_in_bytes` (XLA's scratch
  buffers for one step, which hold the activations kept for the backward pass);
- FLOPs per token: `compiled.cost_analysis()["flops"]` of one device's program,
  times the device count, over the tokens of one global batch. XLA counts the
  body of a loop once, so with scan_layers=True the FLOPs come from a second
  compilation of the same step with the layers unrolled.

NOTE: XLA's CPU backend plans memory for CPU; a TPU or GPU compilation of the
same program fuses and schedules differently, so treat the activation bytes as
an estimate of the accelerator's and the parameter and optimizer bytes as exact.
"""

from __future__ import annotations

import math
import time

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from catflow import objectives
from catflow.models.transformer import FlowTransformer
from catflow.objectives import common as objective_common
from catflow.parallel import mesh as mesh_lib
from catflow.parallel import partitioning
from catflow.train import state as state_lib
from catflow.train import step as step_lib
from catflow.train import trainer

GIB = 1024**3


def plan(config: ml_collections.ConfigDict, *, kind: str = "base") -> dict:
  """Compiles one train step of config on the current devices and returns its budget."""
  if not config.model.vocab_size:
    raise ValueError("catflow plan needs model.vocab_size set in the config (the tokenizer is not "
                     "loaded); e.g. --config.model.vocab_size=50257")
  mesh = mesh_lib.build_mesh(config.mesh.to_dict())
  model_config = trainer.model_config_from(config, int(config.model.vocab_size))
  if kind == "cfm":
    model_config = model_config.replace(two_time=True)
  batch_size, seq_len = int(config.batch_size), int(config.data.seq_len)
  grad_accum_steps = int(config.get("grad_accum_steps", 1))
  mesh_lib.check_divisibility(mesh, global_batch_size=batch_size, num_heads=model_config.num_heads,
                              padded_vocab_size=model_config.padded_vocab_size,
                              mlp_dim=model_config.resolved_mlp_dim,
                              embed_dim=model_config.embed_dim)

  start = time.time()
  compiled, layout = _compile_step(config, model_config, mesh, kind)
  compile_seconds = time.time() - start
  memory = compiled.memory_analysis()
  flops_program = compiled
  if model_config.scan_layers:
    flops_program, _ = _compile_step(config, model_config.replace(scan_layers=False), mesh, kind)
  cost = flops_program.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost

  num_params = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(layout.abstract.params))
  tokens = batch_size * seq_len
  flops_per_device = float(cost.get("flops", float("nan")))
  params_bytes = layout.bytes_per_device("params")
  optimizer_bytes = layout.bytes_per_device("opt_state")
  ema_bytes = layout.bytes_per_device("ema_params")
  activation_bytes = int(memory.temp_size_in_bytes)
  result = {
      "kind": kind,
      "mesh": dict(mesh.shape),
      "devices": mesh.size,
      "parameters": int(num_params),
      "padded_vocab_size": model_config.padded_vocab_size,
      "global_batch": batch_size,
      "seq_len": seq_len,
      "grad_accum_steps": grad_accum_steps,
      "tokens_per_step": tokens,
      "compute_dtype": model_config.dtype,
      "remat_policy": model_config.remat_policy,
      "bytes_per_device": {
          "params": params_bytes,
          "optimizer_state": optimizer_bytes,
          "ema_params": ema_bytes,
          "activations_and_temporaries": activation_bytes,
          "total": params_bytes + optimizer_bytes + ema_bytes + activation_bytes,
      },
      "flops_per_step_per_device": flops_per_device,
      "flops_per_token": flops_per_device * mesh.size / tokens,
      # 6 N per token for the matmuls of forward + backward, plus attention scores.
      "analytic_flops_per_token": 6 * num_params + 12 * model_config.num_layers * seq_len
                                  * model_config.num_heads * model_config.resolved_head_dim,
      "compile_seconds": compile_seconds,
  }
  logging.info("Planned %s step: %s parameters, %.2f GiB per device", kind, f"{num_params:,}",
               result["bytes_per_device"]["total"] / GIB)
  return result


def _compile_step(config, model_config, mesh, kind: str):
  """Lowers and compiles one train step; returns (compiled, state layout)."""
  model = FlowTransformer(model_config)
  batch_size, seq_len = int(config.batch_size), int(config.data.seq_len)
  objective_name = "base" if kind == "base" else config.distill.objective
  options = objective_common.ObjectiveOptions.from_mapping(
      dict(config.objective.to_dict(), name=objective_name))
  loss_fn = objectives.get(objective_name, model_config)
  optimizer = state_lib.build_optimizer(config.optimizer.to_dict(), int(config.num_steps))
  schedule = state_lib.learning_rate_schedule(config.optimizer.to_dict(), int(config.num_steps))
  layout = step_lib.state_layout(model, optimizer, seq_len, mesh)
  train_step = step_lib.make_train_step(
      model, loss_fn, options, optimizer, schedule, seed=int(config.seed),
      ema_decay=float(config.ema_decay), grad_accum_steps=int(config.get("grad_accum_steps", 1)))
  batch_sharding = partitioning.batch_sharding(mesh)
  abstract_batch = {name: jax.ShapeDtypeStruct((batch_size, seq_len), jnp.int32,
                                               sharding=batch_sharding)
                    for name in ("tokens", "segment_ids", "positions")}
  with jax.set_mesh(mesh), nn.logical_axis_rules(partitioning.DEFAULT_RULES):
    lowered = jax.jit(train_step, in_shardings=(layout.shardings, batch_sharding),
                      out_shardings=(layout.shardings, None), donate_argnums=(0,)).lower(
                          layout.abstract_with_shardings(), abstract_batch)
    return lowered.compile(), layout


def format_plan(result: dict) -> str:
  """Renders a plan as a short table."""
  memory = result["bytes_per_device"]
  lines = [
      f"{result['kind']} model on mesh {result['mesh']} ({result['devices']} devices)",
      f"parameters:            {result['parameters']:,} ({result['parameters'] / 1e9:.3f} B)",
      f"global batch:          {result['global_batch']} x {result['seq_len']} tokens "
      f"= {result['tokens_per_step']:,} tokens/step, {result['grad_accum_steps']} microbatch(es)",
      f"compute dtype / remat: {result['compute_dtype']} / {result['remat_policy']}",
      "per-device memory:",
  ]
  for name in ("params", "optimizer_state", "ema_params", "activations_and_temporaries", "total"):
    lines.append(f"  {name:<28} {memory[name] / GIB:8.3f} GiB")
  lines += [
      f"FLOPs per token (XLA): {result['flops_per_token'] / 1e9:.2f} GFLOP",
      f"FLOPs per token (6N + attention): {result['analytic_flops_per_token'] / 1e9:.2f} GFLOP",
      f"compile time:          {result['compile_seconds']:.1f} s",
  ]
  return "\n".join(lines)
