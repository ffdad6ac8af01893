r"""Training-step and sampling throughput of a config on the local devices.

  python benchmarks/throughput.py --config=experiments/configs/shakespeare_char.py \
      --steps=30 --distill

Measures steps/s and tokens/s of the jitted base training step (and of the PSD
distillation step with --distill) after one warm-up step, plus the time of the
Euler and flow-map samplers. Synthetic token batches are used, so no corpus is
read. Results are printed as one JSON line; record them in benchmarks/RESULTS.md
with the machine they came from.
"""

from __future__ import annotations

import json
import platform
import time

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
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
from catflow.train import trainer

config_flags.DEFINE_config_file("config", None, "Experiment config file.")
flags.DEFINE_integer("steps", 30, "Timed training steps.")
flags.DEFINE_integer("vocab_size", 85, "Vocabulary size of the synthetic batches.")
flags.DEFINE_bool("distill", False, "Also time the PSD distillation step.")


def _time_training(config, kind: str, steps: int, vocab_size: int) -> dict:
  mesh = mesh_lib.build_mesh(config.mesh.to_dict())
  model_config = trainer.model_config_from(config, vocab_size)
  if kind == "cfm":
    model_config = model_config.replace(two_time=True)
  model = FlowTransformer(model_config)
  options = common.ObjectiveOptions.from_mapping(
      dict(config.objective.to_dict(), name="psd" if kind == "cfm" else "base"))
  loss_fn = objectives.get(options.name, model_config)
  optimizer = state_lib.build_optimizer(config.optimizer.to_dict(), 1000)
  batch_size, seq_len = int(config.batch_size), int(config.data.seq_len)

  params = nn.unbox(trainer.init_variables(model, jax.random.key(0), seq_len))
  state = state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                               opt_state=optimizer.init(params),
                               ema_params=jax.tree.map(jnp.copy, params))

  def step(state, batch):
    key = jax.random.fold_in(jax.random.key(0), state.step)
    (loss, _), grads = jax.value_and_grad(
        lambda p: loss_fn(p, batch, key, model=model, options=options), has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = jax.tree.map(lambda p, u: p + u, state.params, updates)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), loss

  rng = np.random.default_rng(0)
  batch = {"tokens": rng.integers(0, vocab_size, (batch_size, seq_len)).astype(np.int32),
           "segment_ids": np.ones((batch_size, seq_len), np.int32),
           "positions": np.tile(np.arange(seq_len, dtype=np.int32), (batch_size, 1))}
  with jax.set_mesh(mesh), nn.logical_axis_rules(partitioning.DEFAULT_RULES):
    batch = jax.device_put(batch, partitioning.batch_sharding(mesh))
    jitted = jax.jit(step, donate_argnums=(0,))
    start = time.time()
    state, loss = jitted(state, batch)
    jax.block_until_ready(loss)
    compile_seconds = time.time() - start
    start = time.time()
    for _ in range(steps):
      state, loss = jitted(state, batch)
    jax.block_until_ready(loss)
    seconds = time.time() - start
  return {"kind": kind, "steps_per_second": steps / seconds,
          "tokens_per_second": steps * batch_size * seq_len / seconds,
          "first_step_seconds": compile_seconds, "batch_size": batch_size, "seq_len": seq_len,
          "parameters": int(sum(leaf.size for leaf in jax.tree.leaves(params)))}, state.params, model


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
