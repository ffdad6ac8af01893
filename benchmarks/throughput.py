r"""Training-step and sampling throughput of a config on the local devices, with MFU.

  python benchmarks/throughput.py --config=experiments/configs/shakespeare_char.py \
      --steps=30 --distill [--peak_flops_per_device=1.97e14]

Times the trainer's own jitted step (`make_train_step`: loss, gradients,
clipping, AdamW, EMA, with the config's shardings) on synthetic token batches
after one warm-up step, for the base objective and, with --distill, for PSD
distillation. It also times the Euler sampler (128 steps) and the 4-step
flow-map sampler. Model FLOPs per token are the analytic 6 N plus attention
scores (forward and backward); model FLOPs utilisation (MFU) divides the
achieved model FLOP/s by --peak_flops_per_device times the device count. A
PSD step runs three forward passes and one backward, so its MFU counts only
the student's share. Results are printed as one JSON object; record them in
benchmarks/RESULTS.md with the machine they came from.
"""

from __future__ import annotations

import json
import platform
import time

from absl import app
from absl import flags
import flax.linen as nn
import jax
from ml_collections import config_flags
import numpy as np

from catflow import objectives
from catflow.evaluate import loading
from catflow.evaluate import samples
from catflow.models.transformer import FlowTransformer
from catflow.objectives import common
from catflow.parallel import mesh as mesh_lib
from catflow.parallel import partitioning
from catflow.train import state as state_lib
from catflow.train import step as step_lib
from catflow.train import trainer

config_flags.DEFINE_config_file("config", None, "Experiment config file.")
flags.DEFINE_integer("steps", 30, "Timed training steps.")
flags.DEFINE_integer("vocab_size", 85, "Vocabulary size of the synthetic batches.")
flags.DEFINE_bool("distill", False, "Also time the PSD distillation step.")
flags.DEFINE_float("peak_flops_per_device", 0.0,
                   "Peak FLOP/s of one device in the compute dtype, for MFU; 0 skips MFU.")


def model_flops_per_token(model_config, num_params: int, seq_len: int) -> float:
  """Returns 6 N + 12 layers x seq_len x heads x head_dim (forward and backward)."""
  return float(6 * num_params + 12 * model_config.num_layers * seq_len
               * model_config.num_heads * model_config.resolved_head_dim)


def _time_training(config, kind: str, steps: int, vocab_size: int):
  """Times the trainer's step; returns (result, params, model)."""
  mesh = mesh_lib.build_mesh(config.mesh.to_dict())
  model_config = trainer.model_config_from(config, vocab_size)
  if kind == "cfm":
    model_config = model_config.replace(two_time=True)
  model = FlowTransformer(model_config)
  name = config.distill.objective if kind == "cfm" else "base"
  options = common.ObjectiveOptions.from_mapping(dict(config.objective.to_dict(), name=name))
  loss_fn = objectives.get(name, model_config)
  num_steps = int(config.num_steps)
  optimizer = state_lib.build_optimizer(config.optimizer.to_dict(), num_steps)
  schedule = state_lib.learning_rate_schedule(config.optimizer.to_dict(), num_steps)
  batch_size, seq_len = int(config.batch_size), int(config.data.seq_len)
  layout = step_lib.state_layout(model, optimizer, seq_len, mesh)
  train_step = step_lib.make_train_step(
      model, loss_fn, options, optimizer, schedule, seed=0, ema_decay=float(config.ema_decay),
      grad_accum_steps=int(config.get("grad_accum_steps", 1)))

  rng = np.random.default_rng(0)
  batch = {"tokens": rng.integers(0, vocab_size, (batch_size, seq_len)).astype(np.int32),
           "segment_ids": np.ones((batch_size, seq_len), np.int32),
           "positions": np.tile(np.arange(seq_len, dtype=np.int32), (batch_size, 1))}
  with jax.set_mesh(mesh), nn.logical_axis_rules(partitioning.DEFAULT_RULES):
    batch_sharding = partitioning.batch_sharding(mesh)
    batch = jax.device_put(batch, batch_sharding)
    state = jax.jit(lambda key: nn.unbox(layout.init(key)),
                    out_shardings=layout.shardings)(jax.random.key(0))
    jitted = jax.jit(train_step, in_shardings=(layout.shardings, batch_sharding),
                     out_shardings=(layout.shardings, None), donate_argnums=(0,))
    start = time.time()
    state, metrics = jitted(state, batch)
    jax.block_until_ready(metrics)
    first_step_seconds = time.time() - start
    start = time.time()
    for _ in range(steps):
      state, metrics = jitted(state, batch)
    jax.block_until_ready(metrics)
    seconds = time.time() - start

  num_params = int(sum(leaf.size for leaf in jax.tree.leaves(state.params)))
  tokens_per_second = steps * batch_size * seq_len / seconds
  flops_per_token = model_flops_per_token(model_config, num_params, seq_len)
  result = {"kind": kind, "objective": name, "steps_per_second": steps / seconds,
            "tokens_per_second": tokens_per_second, "first_step_seconds": first_step_seconds,
            "batch_size": batch_size, "seq_len": seq_len, "parameters": num_params,
            "model_flops_per_token": flops_per_token,
            "model_flops_per_second": tokens_per_second * flops_per_token}
  peak = flags.FLAGS.peak_flops_per_device
  if peak > 0:
    result["mfu"] = result["model_flops_per_second"] / (peak * mesh.size)
  return result, state.params, model


def _time_sampling(params, model, mesh, steps: int, num_samples: int, seq_len: int) -> dict:
  loaded = loading.LoadedModel(workdir=None, step=0, kind="cfm" if model.config.two_time else "base",
                               meta={}, model_config=model.config, model=model, params=params,
                               tokenizer=None, mesh=mesh)
  samples.generate(loaded, num_samples=num_samples, num_steps=steps, length=seq_len, seed=0,
                   batch_size=num_samples)
  _, seconds = samples.generate(loaded, num_samples=num_samples, num_steps=steps, length=seq_len,
                                seed=1, batch_size=num_samples)
  return {"sampler": "flow_map" if model.config.two_time else "euler", "steps": steps,
          "num_samples": num_samples, "seconds": seconds}


def main(argv):
  del argv
  config = flags.FLAGS.config
  mesh = mesh_lib.build_mesh(config.mesh.to_dict())
  results = {"machine": platform.processor() or platform.machine(),
             "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}"}
  base, params, model = _time_training(config, "base", flags.FLAGS.steps, flags.FLAGS.vocab_size)
  results["base_step"] = base
  results["euler_128"] = _time_sampling(params, model, mesh, 128, 32, int(config.data.seq_len))
  if flags.FLAGS.distill:
    cfm, cfm_params, cfm_model = _time_training(config, "cfm", flags.FLAGS.steps,
                                                flags.FLAGS.vocab_size)
    results["psd_step"] = cfm
    results["flow_map_4"] = _time_sampling(cfm_params, cfm_model, mesh, 4, 32,
                                           int(config.data.seq_len))
  print(json.dumps(results, indent=2))


if __name__ == "__main__":
  app.run(main)
