"""The training loop shared by `catflow train` (base model) and `catflow distill` (CFM).

`run(config, workdir, kind)` reads top to bottom: logging, mesh, input, model
and optimizer, sharding, update step, checkpointing, loop. The two kinds
differ only in where the model and its first parameters come from:

- kind="base": the model config comes from `config.model` (vocabulary size from
  the tokenizer) and the parameters are initialised at random;
- kind="cfm": the model config and tokenizer come from the base checkpoint in
  `config.distill.base_workdir`, with `two_time=True`; the parameters start as
  the base run's EMA params plus a zero-initialised second time embedding.

Re-running with the same workdir resumes from its latest checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import pathlib
import time

from absl import logging
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

import catflow
from catflow import objectives
from catflow.data import pipeline
from catflow.data import tokenizers
from catflow.models.config import ModelConfig
from catflow.models.transformer import FlowTransformer
from catflow.objectives import common as objective_common
from catflow.parallel import distributed
from catflow.parallel import mesh as mesh_lib
from catflow.parallel import partitioning
from catflow.train import checkpoint as checkpoint_lib
from catflow.train import state as state_lib
from catflow.train import step as step_lib


class NonFiniteError(FloatingPointError):
  """Raised when a loss or gradient norm stops being finite."""


@dataclasses.dataclass
class TrainResult:
  """What a finished run returns: its workdir, last step and last logged metrics."""

  workdir: pathlib.Path
  step: int
  metrics: dict
  model_config: ModelConfig
  meta: dict


def model_config_from(config: ml_collections.ConfigDict, vocab_size: int) -> ModelConfig:
  """Builds the ModelConfig from config.model, taking the vocabulary size from the tokenizer."""
  values = dict(config.model.to_dict())
  configured = values.pop("vocab_size", 0)
  if configured and configured != vocab_size:
    raise ValueError(f"model.vocab_size={configured} disagrees with the tokenizer's {vocab_size} "
                     "tokens; set model.vocab_size=0 to take it from the tokenizer")
  return ModelConfig.from_dict({**values, "vocab_size": vocab_size})


init_variables = step_lib.init_variables


def abstract_params(model: FlowTransformer, length: int):
  """Returns the boxed params as ShapeDtypeStructs, without allocating them."""
  return jax.eval_shape(functools.partial(init_variables, model, length=length), jax.random.key(0))


def params_shardings(model: FlowTransformer, length: int, mesh, rules=partitioning.DEFAULT_RULES):
  """Returns NamedShardings for the params, from their logical annotations."""
  return partitioning.logical_sharding(abstract_params(model, length), mesh, rules)


def abstract_with_shardings(abstract_tree, shardings):
  """Combines shape/dtype structs and shardings into restore targets."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract_tree, shardings)


def merge_params(base: dict, fresh: dict) -> dict:
  """Returns fresh with every leaf present in base replaced by base's value.

  Used to start a CFM from a base model: the shared weights come from the base
  run, and only the new second time embedding keeps its fresh initialisation.
  """
  flat_base = flax.traverse_util.flatten_dict(base)
  flat_fresh = flax.traverse_util.flatten_dict(fresh)
  for path, value in flat_base.items():
    if path not in flat_fresh:
      raise ValueError(f"base checkpoint parameter {'/'.join(path)} has no counterpart in the CFM")
    if flat_fresh[path].shape != value.shape:
      raise ValueError(f"base parameter {'/'.join(path)} has shape {value.shape}, the CFM expects "
                       f"{flat_fresh[path].shape}")
    flat_fresh[path] = value
  return flax.traverse_util.unflatten_dict(flat_fresh)


def _describe_run(config, kind: str, model_config: ModelConfig, tokenizer, step: int,
                  corpus_summary: dict, extra: dict) -> dict:
  return {
      "kind": kind,
      "step": int(step),
      "catflow_version": catflow.__version__,
      "config": json.loads(config.to_json_best_effort()),
      "model_config": model_config.to_dict(),
      "tokenizer": {"identity": tokenizer.identity(), "spec": tokenizer.spec()},
      "time": {"parameterization": "tau", "vocab_size": model_config.vocab_size,
               "training_distribution": config.objective.time_distribution},
      "corpus": corpus_summary,
      **extra,
  }


def load_base_for_distillation(config, mesh):
  """Reads the base run named by config.distill.base_workdir: meta, tokenizer, EMA params."""
  base_workdir = config.distill.base_workdir
  if not base_workdir:
    raise ValueError("catflow distill needs --config.distill.base_workdir=DIR, the workdir of a "
                     "finished `catflow train` run")
  base_checkpointer = checkpoint_lib.Checkpointer(checkpoint_lib.checkpoint_dir(base_workdir),
                                                  read_only=True)
  step = config.distill.base_step if config.distill.base_step >= 0 else None
  meta = base_checkpointer.restore_meta(step)
  if meta.get("kind") != "base":
    raise ValueError(f"{base_workdir} holds a {meta.get('kind')!r} checkpoint; distillation "
                     "starts from a base model trained with `catflow train`")
  base_model_config = ModelConfig.from_dict(meta["model_config"])
  base_model = FlowTransformer(base_model_config)
  shardings = params_shardings(base_model, config.data.seq_len, mesh)
  abstract = abstract_with_shardings(nn.unbox(abstract_params(base_model, config.data.seq_len)),
                                     shardings)
  ema = base_checkpointer.restore_ema(meta["step"], abstract)
  base_checkpointer.close()
  tokenizer = tokenizers.tokenizer_from_spec(meta["tokenizer"]["spec"])
  return meta, base_model_config, tokenizer, ema


def run(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, kind: str = "base",
        *, allow_tokenizer_mismatch: bool = False) -> TrainResult:
  """Trains a base model (kind="base") or distils a CFM (kind="cfm") in workdir."""
  if kind not in ("base", "cfm"):
    raise ValueError(f"kind={kind!r} is not 'base' or 'cfm'")
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  run_start = time.time()

  # ---------------------------------------------------------------------------
  # Logging.
  # ---------------------------------------------------------------------------
  logging.info("catflow %s run in %s with config:\n%s", kind, workdir, config)
  if distributed.is_primary():
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
  metrics_path = workdir / "metrics.jsonl"

  # ---------------------------------------------------------------------------
  # Mesh.
  # ---------------------------------------------------------------------------
  mesh = mesh_lib.build_mesh(config.mesh.to_dict())
  logging.info("Mesh %s over %d devices (%s)", dict(mesh.shape), mesh.size, jax.devices()[0].platform)

  # ---------------------------------------------------------------------------
  # Model config and tokenizer (base: from config; cfm: from the base checkpoint).
  # ---------------------------------------------------------------------------
  data_options = pipeline.DataOptions.from_mapping(config.data.to_dict())
  batch_size = int(config.batch_size)
  base_meta, base_ema, base_tokenizer = None, None, None
  resumed_meta = _latest_meta(workdir)
  if kind == "cfm" and resumed_meta is not None and resumed_meta.get("kind") == "cfm":
    # A CFM run that already has a checkpoint resumes from it alone: its own
    # description names the model, the tokenizer and the base it started from.
    base_model_config = ModelConfig.from_dict(resumed_meta["model_config"]).replace(two_time=False)
    base_tokenizer = tokenizers.tokenizer_from_spec(resumed_meta["tokenizer"]["spec"])
    base_meta = resumed_meta["base"]
  elif kind == "cfm":
    base_meta, base_model_config, base_tokenizer, base_ema = load_base_for_distillation(config, mesh)
  data = pipeline.open_training_data(
      data_options, batch_size, tokenizer=base_tokenizer,
      allow_tokenizer_mismatch=allow_tokenizer_mismatch,
      what=f"distillation data vs base checkpoint {config.distill.base_workdir}",
      process_index=jax.process_index(), process_count=jax.process_count())
  tokenizer = data.tokenizer
  if kind == "cfm":
    model_config = base_model_config.replace(two_time=True)
  else:
    model_config = model_config_from(config, tokenizer.vocab_size)
  model = FlowTransformer(model_config)
  logging.info("Data %s: %d train and %d validation tokens, tokenizer %s (%d ids), %s stream",
               data.name, data.num_train_tokens, data.num_validation_tokens, tokenizer.name,
               tokenizer.vocab_size, "step-indexed" if data.step_indexed else "online-packed")

  # ---------------------------------------------------------------------------
  # Input.
  # ---------------------------------------------------------------------------
  mesh_lib.check_divisibility(mesh, global_batch_size=batch_size, num_heads=model_config.num_heads,
                              padded_vocab_size=model_config.padded_vocab_size,
                              mlp_dim=model_config.resolved_mlp_dim,
                              embed_dim=model_config.embed_dim)
  if jax.process_count() > 1 and mesh_lib.batch_divisor(mesh) % jax.process_count():
    raise ValueError(
        f"{jax.process_count()} processes share {mesh_lib.batch_divisor(mesh)} batch shards "
        f"(data x fsdp of mesh {dict(mesh.shape)}); each process must hold whole batch shards, so "
        "make data x fsdp a multiple of the process count")
  data_iterator = data.iterator
  batch_sharding = partitioning.batch_sharding(mesh)

  # ---------------------------------------------------------------------------
  # Model, objective and optimizer.
  # ---------------------------------------------------------------------------
  objective_options = objective_common.ObjectiveOptions.from_mapping(config.objective.to_dict())
  objective_common.check_model_supports(objective_options, model)
  loss_fn = objectives.get(objective_options.name, model_config)
  if kind == "base" and objective_options.name not in ("base", "autoregressive"):
    raise ValueError(f"catflow train trains the base or autoregressive objective; objective.name="
                     f"{objective_options.name!r} belongs to `catflow distill`")
  if objective_options.name == "autoregressive" and not model_config.causal:
    raise ValueError("objective.name='autoregressive' needs --config.model.causal=True")
  if kind == "cfm" and objective_options.name in ("base", "autoregressive"):
    raise ValueError("catflow distill needs a distillation objective; set objective.name='psd'")
  num_steps = int(config.num_steps)
  for name in ("num_steps", "checkpoint_every", "log_every", "max_checkpoints_to_keep"):
    if int(config[name]) < 1:
      raise ValueError(f"{name}={config[name]} must be a positive number of steps")
  optimizer = state_lib.build_optimizer(config.optimizer.to_dict(), num_steps)
  learning_rate = state_lib.learning_rate_schedule(config.optimizer.to_dict(), num_steps)

  # ---------------------------------------------------------------------------
  # Sharding: logical annotations -> NamedShardings on this mesh.
  # ---------------------------------------------------------------------------
  seq_len = data_options.seq_len
  layout = step_lib.state_layout(model, optimizer, seq_len, mesh)
  state_shardings = layout.shardings
  num_params = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(layout.abstract.params))
  logging.info("Model: %s parameters, padded vocabulary %d", f"{num_params:,}",
               model_config.padded_vocab_size)

  # ---------------------------------------------------------------------------
  # Update step.
  # ---------------------------------------------------------------------------
  grad_accum_steps = int(config.get("grad_accum_steps", 1))
  if batch_size % (grad_accum_steps * mesh_lib.batch_divisor(mesh)):
    raise ValueError(
        f"batch_size={batch_size} is not divisible by {mesh_lib.batch_divisor(mesh)} batch shards "
        f"x {grad_accum_steps} accumulation steps; choose a multiple of "
        f"{mesh_lib.batch_divisor(mesh) * grad_accum_steps}")
  train_step = step_lib.make_train_step(
      model, loss_fn, objective_options, optimizer, learning_rate, seed=int(config.seed),
      ema_decay=float(config.ema_decay), grad_accum_steps=grad_accum_steps)

  with jax.set_mesh(mesh), nn.logical_axis_rules(partitioning.DEFAULT_RULES):
    jitted_step = jax.jit(train_step, in_shardings=(state_shardings, batch_sharding),
                          out_shardings=(state_shardings, None), donate_argnums=(0,))

    # -------------------------------------------------------------------------
    # Checkpointing: resume, or initialise.
    # -------------------------------------------------------------------------
    checkpointer = checkpoint_lib.Checkpointer(
        checkpoint_lib.checkpoint_dir(workdir), max_to_keep=int(config.max_checkpoints_to_keep),
        save_interval_steps=int(config.checkpoint_every))
    extra_meta = {}
    if kind == "cfm" and base_ema is None:
      extra_meta["base"] = base_meta
    elif kind == "cfm":
      extra_meta["base"] = {"workdir": str(pathlib.Path(config.distill.base_workdir).absolute()),
                            "step": base_meta["step"]}
    latest = checkpointer.latest_step()
    if latest is not None:
      saved_meta = checkpointer.restore_meta(latest)
      check_resume_compatible(saved_meta, kind, model_config, tokenizer, workdir)
      target = layout.abstract_with_shardings()
      # A step-indexed stream resumes from the step alone, whatever the process count.
      restored, ema = checkpointer.restore(
          latest, abstract_state=_state_item(target), abstract_ema=target.ema_params,
          data_iterator=None if data.step_indexed else data_iterator)
      if data.step_indexed:
        data_iterator.set_state({"step": latest})
      state = state_lib.TrainState(step=restored["step"], params=restored["params"],
                                   opt_state=restored["opt_state"], ema_params=ema)
      if distributed.is_primary():
        _truncate_metrics(metrics_path, latest)
      logging.info("Resuming %s run at step %d of %d", kind, latest, num_steps)
    else:
      start = time.time()
      state = jax.jit(lambda key: nn.unbox(layout.init(key)), out_shardings=state_shardings)(
          jax.random.fold_in(jax.random.key(int(config.seed)), 1_000_003))
      if kind == "cfm":
        params = merge_params(base_ema, state.params)
        params = jax.device_put(params, state_shardings.params)
        # The EMA gets its own buffers: the step donates both trees.
        state = state.replace(params=params, ema_params=jax.tree.map(jnp.copy, params),
                              opt_state=jax.jit(optimizer.init,
                                                out_shardings=state_shardings.opt_state)(params))
        logging.info("Initialised the CFM from the base EMA params of step %d (%s); the gap "
                     "embedding starts at zero", base_meta["step"], config.distill.base_workdir)
      logging.info("Initialised a fresh %s model in %.1f s", kind, time.time() - start)

    # -------------------------------------------------------------------------
    # Loop.
    # -------------------------------------------------------------------------
    step = int(state.step)
    metrics_host: dict[str, float] = {}
    if step >= num_steps:
      logging.info("Run in %s is already at step %d >= num_steps=%d; nothing to train",
                   workdir, step, num_steps)
    log_every = max(1, int(config.log_every))
    tokens_per_step = batch_size * seq_len
    window_start, window_steps = time.time(), 0
    compile_start = time.time()
    while step < num_steps:
      # An online stream yields the global batch and every process keeps its rows.
      batch = next(data_iterator)
      if not data.step_indexed:
        batch = distributed.process_rows(batch)
      batch = {name: jax.make_array_from_process_local_data(
          batch_sharding, batch[name], (batch_size, seq_len)) for name in pipeline.FEATURES}
      state, metrics = jitted_step(state, batch)
      step += 1
      window_steps += 1
      if step == 1 or (latest is not None and step == latest + 1):
        jax.block_until_ready(state.step)
        logging.info("First step (compile included) took %.1f s", time.time() - compile_start)
        window_start, window_steps = time.time(), 0

      if step % log_every == 0 or step == num_steps:
        metrics_host = {name: float(value) for name, value in jax.device_get(metrics).items()}
        if not math.isfinite(metrics_host["loss"]) or not math.isfinite(metrics_host["grad_norm"]):
          raise NonFiniteError(
              f"non-finite loss {metrics_host['loss']} or gradient norm "
              f"{metrics_host['grad_norm']} at step {step}; the last saved checkpoint "
              f"(step {checkpointer.latest_step()}) is kept. Lower optimizer.learning_rate or "
              "check the input data")
        elapsed = time.time() - window_start
        steps_per_second = window_steps / elapsed if elapsed > 0 and window_steps else float("nan")
        metrics_host.update(step=step, steps_per_second=steps_per_second,
                            tokens_per_second=steps_per_second * tokens_per_step,
                            wall_seconds=time.time() - run_start)
        window_start, window_steps = time.time(), 0
        logging.info("step %d/%d loss %.4f grad_norm %.3f lr %.2e %.2f steps/s %.0f tokens/s",
                     step, num_steps, metrics_host["loss"], metrics_host["grad_norm"],
                     metrics_host["learning_rate"], steps_per_second,
                     metrics_host["tokens_per_second"])
        if distributed.is_primary():
          with metrics_path.open("a") as handle:
            handle.write(json.dumps(metrics_host) + "\n")

      if step % int(config.checkpoint_every) == 0 or step == num_steps:
        if not bool(state_lib.all_finite(state.params)):
          raise NonFiniteError(f"non-finite parameters at step {step}; not saving. The last "
                               f"saved checkpoint (step {checkpointer.latest_step()}) is kept")
        meta = _describe_run(config, kind, model_config, tokenizer, step, data.summary, extra_meta)
        checkpointer.save(step, state=_state_item(state), ema=state.ema_params,
                          data_iterator=data_iterator, meta=meta, force=(step == num_steps))

    final_meta = _describe_run(config, kind, model_config, tokenizer, step, data.summary,
                               extra_meta)
    checkpointer.close()
  logging.info("Finished %s run in %s at step %d after %.1f s", kind, workdir, step,
               time.time() - run_start)
  return TrainResult(workdir=workdir, step=step, metrics=metrics_host, model_config=model_config,
                     meta=final_meta)


def _latest_meta(workdir: pathlib.Path) -> dict | None:
  """Returns the description of the workdir's latest checkpoint, or None without one."""
  directory = checkpoint_lib.checkpoint_dir(workdir)
  if not directory.exists():
    return None
  checkpointer = checkpoint_lib.Checkpointer(directory, read_only=True)
  try:
    latest = checkpointer.latest_step()
    return None if latest is None else checkpointer.restore_meta(latest)
  finally:
    checkpointer.close()


def _truncate_metrics(path: pathlib.Path, last_step: int):
  """Drops logged metrics after the restored step, which the resumed run logs again."""
  if not path.exists():
    return
  kept = []
  for number, line in enumerate(path.read_text().splitlines(), start=1):
    if not line.strip():
      continue
    try:
      entry = json.loads(line)
    except json.JSONDecodeError:
      logging.warning("Dropping unreadable line %d of %s (an interrupted write)", number, path)
      continue
    if entry.get("step", 0) <= last_step:
      kept.append(line)
  path.write_text("".join(line + "\n" for line in kept))


def _state_item(state: state_lib.TrainState) -> dict:
  """The 'state' checkpoint item: everything but the EMA, which is its own item."""
  return {"step": state.step, "params": state.params, "opt_state": state.opt_state}


def check_resume_compatible(saved_meta: dict, kind: str, model_config: ModelConfig, tokenizer,
                            workdir: pathlib.Path):
  """Rejects resuming a workdir whose checkpoint belongs to another model or tokenizer."""
  if saved_meta.get("kind") != kind:
    raise ValueError(f"{workdir} holds a {saved_meta.get('kind')!r} run, not a {kind!r} run; "
                     "use a fresh workdir")
  saved = saved_meta["model_config"]
  current = model_config.to_dict()
  differing = sorted(name for name in set(saved) | set(current) if saved.get(name) != current.get(name))
  if differing:
    details = ", ".join(f"{name}: saved {saved.get(name)!r} vs config {current.get(name)!r}"
                        for name in differing)
    raise ValueError(f"cannot resume {workdir}: the model config differs ({details}); use a fresh "
                     "workdir or restore the original settings")
  tokenizers.check_same_tokenizer(saved_meta["tokenizer"]["identity"], tokenizer.identity(),
                                  what=f"resumed run in {workdir}")
