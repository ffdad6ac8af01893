"""Tests for catflow.train: the training loop, resuming, checkpoints and distillation.

Every run trains the tiny "local" variant of experiments/configs/shakespeare_char.py
on a synthetic corpus written into a temporary directory, with real Orbax
checkpoints on disk. Module-scoped fixtures train one base run and one CFM
that most tests share; tests that change a run work on a copy of its workdir.
"""

import dataclasses
import functools
import importlib.util
import json
import pathlib
import random
import shutil
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from catflow.data import pipeline
from catflow.evaluate import loading
from catflow.models.config import ModelConfig
from catflow.models.transformer import FlowTransformer
from catflow.parallel import mesh as mesh_lib
from catflow.train import checkpoint as checkpoint_lib
from catflow.train import distill
from catflow.train import trainer

_CONFIG_PATH = pathlib.Path(__file__).resolve().parents[1] / "experiments/configs/shakespeare_char.py"
_NUM_STEPS = 8
_SEQ_LEN = 32
_WORDS = ("to be or not that is the question whether tis nobler in mind suffer slings and "
          "arrows of outrageous fortune take arms against a sea troubles by opposing end them "
          "die sleep no more").split()


def write_corpus(path: pathlib.Path, num_lines: int = 300) -> pathlib.Path:
  """Writes a deterministic text of short lines of words."""
  rng = random.Random(0)
  lines = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 9)))
           for _ in range(num_lines)]
  path.write_text("\n".join(lines) + "\n")
  return path


def local_config(corpus: pathlib.Path, cache_dir: pathlib.Path):
  """Returns the "local" config, shrunk further to 8 steps of 8 rows of 32 tokens.

  The learning rate is constant after a 2-step warmup, so the schedule does
  not depend on num_steps and a run stopped at num_steps / 2 can be extended.
  """
  spec = importlib.util.spec_from_file_location("shakespeare_char", _CONFIG_PATH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("local")
  config.data.corpus = str(corpus)
  config.data.cache_dir = str(cache_dir)
  config.data.seq_len = _SEQ_LEN
  config.num_steps = _NUM_STEPS
  config.optimizer.warmup_steps = 2
  config.optimizer.decay = "constant"
  config.log_every = 1
  config.checkpoint_every = _NUM_STEPS // 2
  config.max_checkpoints_to_keep = 5
  config.distill.num_steps = 4
  config.distill.warmup_steps = 1
  return config


def read_metrics(workdir: pathlib.Path) -> list[dict]:
  lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
  return [json.loads(line) for line in lines]


def checkpoint_steps(workdir: pathlib.Path) -> list[int]:
  checkpointer = checkpoint_lib.Checkpointer(checkpoint_lib.checkpoint_dir(workdir),
                                             read_only=True)
  steps = checkpointer.all_steps()
  checkpointer.close()
  return sorted(steps)


def read_meta(workdir: pathlib.Path, step: int | None = None) -> dict:
  checkpointer = checkpoint_lib.Checkpointer(checkpoint_lib.checkpoint_dir(workdir),
                                             read_only=True)
  meta = checkpointer.restore_meta(step)
  checkpointer.close()
  return meta


def all_devices_mesh(shape: dict | None = None) -> jax.sharding.Mesh:
  return mesh_lib.build_mesh(shape or {"data": -1})


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory) -> pathlib.Path:
  directory = tmp_path_factory.mktemp("trainer")
  write_corpus(directory / "corpus.txt")
  return directory


@pytest.fixture
def config(module_dir):
  return local_config(module_dir / "corpus.txt", module_dir / "cache")


@pytest.fixture(scope="module")
def base_run(module_dir) -> trainer.TrainResult:
  """An uninterrupted base run of _NUM_STEPS steps."""
  config = local_config(module_dir / "corpus.txt", module_dir / "cache")
  return trainer.run(config, module_dir / "base", kind="base")


@pytest.fixture(scope="module")
def resumed_run(module_dir, base_run) -> pathlib.Path:
  """The same run stopped at _NUM_STEPS / 2, then re-run in the same workdir to _NUM_STEPS."""
  del base_run  # The base run goes first, so both runs share its tokenisation cache.
  config = local_config(module_dir / "corpus.txt", module_dir / "cache")
  workdir = module_dir / "resumed"
  config.num_steps = _NUM_STEPS // 2
  trainer.run(config, workdir, kind="base")
  config.num_steps = _NUM_STEPS
  trainer.run(config, workdir, kind="base")
  return workdir


@pytest.fixture(scope="module")
def cfm_run(module_dir, base_run) -> trainer.TrainResult:
  config = local_config(module_dir / "corpus.txt", module_dir / "cache")
  config.distill.base_workdir = str(base_run.workdir)
  return distill.run(config, module_dir / "cfm")


def copy_workdir(source: pathlib.Path, destination: pathlib.Path) -> pathlib.Path:
  shutil.copytree(source, destination)
  return destination


# -----------------------------------------------------------------------------
# A base run and its checkpoints.
# -----------------------------------------------------------------------------


@pytest.mark.slow
def test_base_run_result(base_run):
  assert base_run.step == _NUM_STEPS
  assert base_run.metrics["step"] == _NUM_STEPS
  assert np.isfinite(base_run.metrics["loss"])
  assert base_run.meta["kind"] == "base"


@pytest.mark.slow
def test_base_run_logs_every_step(base_run):
  metrics = read_metrics(base_run.workdir)
  assert [entry["step"] for entry in metrics] == list(range(1, _NUM_STEPS + 1))
  assert all(np.isfinite(entry["loss"]) for entry in metrics)
  # Warmup: the rate is 0 at the first update and reaches the peak at step 3.
  assert metrics[0]["learning_rate"] == 0.0
  peak = base_run.meta["config"]["optimizer"]["learning_rate"]
  assert metrics[2]["learning_rate"] == pytest.approx(peak)


@pytest.mark.slow
def test_checkpoint_steps(base_run):
  assert checkpoint_steps(base_run.workdir) == [_NUM_STEPS // 2, _NUM_STEPS]


@pytest.mark.slow
def test_checkpoint_has_four_items(base_run):
  step_dir = checkpoint_lib.checkpoint_dir(base_run.workdir) / str(_NUM_STEPS)
  names = {path.name for path in step_dir.iterdir() if path.is_dir()}
  assert set(checkpoint_lib.ITEMS) <= names
  assert set(checkpoint_lib.ITEMS) == {"state", "ema", "data", "meta"}


@pytest.mark.slow
def test_checkpoint_meta_describes_run(base_run, config):
  meta = read_meta(base_run.workdir)
  data_options = pipeline.DataOptions.from_mapping(config.data.to_dict())
  corpus_tokenizer = pipeline.load_tokenized(data_options).tokenizer
  assert meta["kind"] == "base"
  assert meta["step"] == _NUM_STEPS
  assert meta["config"]["num_steps"] == _NUM_STEPS
  assert meta["config"]["data"]["corpus"] == config.data.corpus
  assert meta["model_config"] == base_run.model_config.to_dict()
  assert meta["model_config"]["two_time"] is False
  assert meta["model_config"]["num_layers"] == 2
  assert meta["tokenizer"]["identity"] == corpus_tokenizer.identity()
  assert meta["tokenizer"]["spec"] == corpus_tokenizer.spec()
  assert meta["tokenizer"]["identity"]["name"] == "char"
  assert meta["time"]["parameterization"] == "tau"
  assert meta["time"]["vocab_size"] == meta["model_config"]["vocab_size"]
  assert meta["time"]["training_distribution"] == "tau_uniform"
  assert "catflow_version" in meta


@pytest.mark.slow
def test_checkpoint_meta_at_earlier_step(base_run):
  assert read_meta(base_run.workdir, _NUM_STEPS // 2)["step"] == _NUM_STEPS // 2


@pytest.mark.slow
def test_checkpoint_missing_step(base_run):
  checkpointer = checkpoint_lib.Checkpointer(checkpoint_lib.checkpoint_dir(base_run.workdir),
                                             read_only=True)
  with pytest.raises(FileNotFoundError, match=r"checkpoint step 5 not found .*available steps: "
                     r"\[4, 8\]"):
    checkpointer.restore_meta(5)
  checkpointer.close()


@pytest.mark.slow
@pytest.mark.parametrize("change", ["rename", "unwrap"])
def test_restore_layout_mismatch_error(base_run, change):
  # A parameter tree renamed since the checkpoint was written, as a catflow
  # upgrade that moves a kernel does, raises an error that names the fix.
  checkpointer = checkpoint_lib.Checkpointer(checkpoint_lib.checkpoint_dir(base_run.workdir),
                                             read_only=True)
  loaded = loading.load(base_run.workdir, all_devices_mesh(), seq_len=_SEQ_LEN)
  abstract = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype),
                          loaded.params)
  if change == "rename":
    changed = dict(abstract, renamed_layer=abstract.pop(next(iter(abstract))))
  else:  # A kernel that was a bare leaf before it moved into a submodule.
    changed = dict(abstract, output=abstract["output"]["kernel"])
  with pytest.raises(ValueError, match=r"checkpoint step 8 in .* train state .* does not match .*"
                     r"restore it with the config and version recorded in its meta item"):
    checkpointer.restore_ema(_NUM_STEPS, changed)
  checkpointer.close()


@pytest.mark.slow
def test_loaded_ema_is_finite(base_run):
  loaded = loading.load(base_run.workdir, all_devices_mesh(), seq_len=_SEQ_LEN)
  assert loaded.kind == "base"
  assert loaded.step == _NUM_STEPS
  assert loaded.model_config == base_run.model_config
  leaves = jax.tree.leaves(loaded.params)
  assert leaves
  assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in leaves)


# -----------------------------------------------------------------------------
# Resuming.
# -----------------------------------------------------------------------------


@pytest.mark.slow
def test_resume_identical_losses(base_run, resumed_run):
  uninterrupted = read_metrics(base_run.workdir)
  resumed = read_metrics(resumed_run)
  assert [entry["step"] for entry in resumed] == list(range(1, _NUM_STEPS + 1))
  assert [entry["loss"] for entry in resumed] == [entry["loss"] for entry in uninterrupted]
  assert ([entry["grad_norm"] for entry in resumed]
          == [entry["grad_norm"] for entry in uninterrupted])


@pytest.mark.slow
def test_resume_identical_params(base_run, resumed_run):
  mesh = all_devices_mesh()
  uninterrupted = loading.load(base_run.workdir, mesh, seq_len=_SEQ_LEN)
  resumed = loading.load(resumed_run, mesh, seq_len=_SEQ_LEN)
  assert resumed.step == _NUM_STEPS
  flat_uninterrupted = jax.tree_util.tree_leaves_with_path(uninterrupted.params)
  flat_resumed = jax.tree_util.tree_leaves_with_path(resumed.params)
  assert [path for path, _ in flat_resumed] == [path for path, _ in flat_uninterrupted]
  for (path, left), (_, right) in zip(flat_resumed, flat_uninterrupted):
    np.testing.assert_array_equal(np.asarray(left), np.asarray(right),
                                  err_msg=jax.tree_util.keystr(path))


@pytest.mark.slow
def test_resume_checkpoint_steps(resumed_run):
  assert checkpoint_steps(resumed_run) == [_NUM_STEPS // 2, _NUM_STEPS]


@pytest.mark.slow
def test_rerun_finished_does_nothing(base_run, config, tmp_path):
  workdir = copy_workdir(base_run.workdir, tmp_path / "base")
  metrics_before = (workdir / "metrics.jsonl").read_bytes()
  result = trainer.run(config, workdir, kind="base")
  assert result.step == _NUM_STEPS
  assert result.metrics == {}
  assert (workdir / "metrics.jsonl").read_bytes() == metrics_before
  assert checkpoint_steps(workdir) == [_NUM_STEPS // 2, _NUM_STEPS]


@pytest.mark.slow
def test_resume_changed_model_config(base_run, config, tmp_path):
  workdir = copy_workdir(base_run.workdir, tmp_path / "base")
  config.model.num_layers = 3
  with pytest.raises(ValueError, match=r"cannot resume .*the model config differs "
                     r"\(num_layers: saved 2 vs config 3\)"):
    trainer.run(config, workdir, kind="base")


@pytest.mark.slow
def test_resume_base_workdir_as_cfm(base_run, config, tmp_path):
  workdir = copy_workdir(base_run.workdir, tmp_path / "base")
  config.distill.base_workdir = str(base_run.workdir)
  with pytest.raises(ValueError, match=r"holds a 'base' run, not a 'cfm' run"):
    distill.run(config, workdir)


# -----------------------------------------------------------------------------
# Input checks that fail before compiling.
# -----------------------------------------------------------------------------


def test_batch_not_divisible_by_data_shards(config, tmp_path):
  config.batch_size = 6
  with pytest.raises(ValueError, match=r"global batch size 6 is not divisible by the 8 batch "
                     r"shards \(data=8 x fsdp=1\)"):
    trainer.run(config, tmp_path / "run", kind="base")
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_heads_not_divisible_by_tensor_axis(config, tmp_path):
  config.mesh.data = 2
  config.mesh.tensor = 4
  with pytest.raises(ValueError, match=r"num_heads=2 is not divisible by the tensor axis of "
                     r"size 4"):
    trainer.run(config, tmp_path / "run", kind="base")
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_unknown_kind(config, tmp_path):
  with pytest.raises(ValueError, match=r"kind='student' is not 'base' or 'cfm'"):
    trainer.run(config, tmp_path / "run", kind="student")


def test_train_rejects_distillation_objective(config, tmp_path):
  config.objective.name = "psd"
  with pytest.raises(ValueError, match=r"objective 'psd' trains a flow map"):
    trainer.run(config, tmp_path / "run", kind="base")


def test_model_vocab_size_disagrees(config, tmp_path):
  config.model.vocab_size = 7
  with pytest.raises(ValueError, match=r"model.vocab_size=7 disagrees with the tokenizer's"):
    trainer.run(config, tmp_path / "run", kind="base")


# -----------------------------------------------------------------------------
# Non-finite losses.
# -----------------------------------------------------------------------------


@dataclasses.dataclass
class NonFiniteRun:
  """A copy of the base run continued with a diverging learning rate."""

  workdir: pathlib.Path
  error: trainer.NonFiniteError


@pytest.fixture(scope="module")
def non_finite_run(module_dir, base_run) -> NonFiniteRun:
  workdir = copy_workdir(base_run.workdir, module_dir / "diverged")
  config = local_config(module_dir / "corpus.txt", module_dir / "cache")
  # A rate of 1e30 moves the parameters by up to about 1e30 at step 9, so the
  # loss of step 10 is not finite.
  config.optimizer.learning_rate = 1e30
  config.num_steps = _NUM_STEPS + 4
  with pytest.raises(trainer.NonFiniteError) as error:
    trainer.run(config, workdir, kind="base")
  return NonFiniteRun(workdir=workdir, error=error.value)


@pytest.mark.slow
def test_non_finite_loss_message(non_finite_run):
  message = str(non_finite_run.error)
  assert f"at step {_NUM_STEPS + 2}; the last saved checkpoint (step {_NUM_STEPS}) is kept" in (
      message)
  assert "Lower optimizer.learning_rate" in message


@pytest.mark.slow
def test_non_finite_loss_keeps_checkpoint(non_finite_run):
  assert checkpoint_steps(non_finite_run.workdir) == [_NUM_STEPS // 2, _NUM_STEPS]
  loaded = loading.load(non_finite_run.workdir, all_devices_mesh(), seq_len=_SEQ_LEN)
  assert loaded.step == _NUM_STEPS
  assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(loaded.params))


@pytest.mark.slow
def test_resume_after_failure_logs_each_step_once(non_finite_run, config, tmp_path):
  # The failed run logged step 9 before step 10 diverged. Resuming from the
  # checkpoint of step 8 trains step 9 again.
  workdir = copy_workdir(non_finite_run.workdir, tmp_path / "diverged")
  config.num_steps = _NUM_STEPS + 2
  trainer.run(config, workdir, kind="base")
  steps = [entry["step"] for entry in read_metrics(workdir)]
  assert steps == list(range(1, _NUM_STEPS + 3))


# -----------------------------------------------------------------------------
# Meshes.
# -----------------------------------------------------------------------------


@pytest.mark.slow
def test_mesh_does_not_change_losses(base_run, config, tmp_path):
  config.mesh.data = 2
  config.mesh.fsdp = 2
  config.mesh.tensor = 2
  result = trainer.run(config, tmp_path / "run", kind="base")
  assert result.step == _NUM_STEPS
  sharded = [entry["loss"] for entry in read_metrics(tmp_path / "run")]
  data_parallel = [entry["loss"] for entry in read_metrics(base_run.workdir)]
  np.testing.assert_allclose(sharded, data_parallel, rtol=1e-5)


# -----------------------------------------------------------------------------
# Distillation.
# -----------------------------------------------------------------------------


@pytest.mark.slow
def test_cfm_meta_points_to_base(base_run, cfm_run):
  meta = read_meta(cfm_run.workdir)
  assert meta["kind"] == "cfm"
  assert meta["step"] == 4
  assert meta["base"]["step"] == _NUM_STEPS
  assert meta["base"]["workdir"] == str(base_run.workdir.absolute())
  assert meta["tokenizer"] == read_meta(base_run.workdir)["tokenizer"]


@pytest.mark.slow
def test_cfm_model_config_is_base_with_two_times(base_run, cfm_run):
  meta = read_meta(cfm_run.workdir)
  expected = dict(base_run.model_config.to_dict(), two_time=True)
  assert meta["model_config"] == expected


@pytest.mark.slow
def test_cfm_uses_distill_schedule(config, cfm_run):
  meta = read_meta(cfm_run.workdir)
  assert meta["config"]["num_steps"] == 4
  assert meta["config"]["objective"]["name"] == "psd"
  assert meta["config"]["optimizer"]["learning_rate"] == pytest.approx(
      config.distill.learning_rate)
  assert config.distill.learning_rate != config.optimizer.learning_rate
  metrics = read_metrics(cfm_run.workdir)
  assert [entry["step"] for entry in metrics] == [1, 2, 3, 4]
  assert all(np.isfinite(entry["loss"]) for entry in metrics)


def test_distillation_config_copies(config):
  derived = distill.distillation_config(config)
  assert derived.num_steps == config.distill.num_steps
  assert derived.optimizer.learning_rate == config.distill.learning_rate
  assert derived.optimizer.warmup_steps == config.distill.warmup_steps
  assert derived.objective.name == "psd"
  assert config.num_steps == _NUM_STEPS
  assert config.objective.name == "base"


@pytest.mark.slow
def test_distill_base_at_earlier_step(base_run, config):
  config.distill.base_workdir = str(base_run.workdir)
  config.distill.base_step = _NUM_STEPS // 2
  meta, model_config, tokenizer, _ = trainer.load_base_for_distillation(config,
                                                                         all_devices_mesh())
  assert meta["step"] == _NUM_STEPS // 2
  assert model_config == base_run.model_config
  assert tokenizer.identity() == meta["tokenizer"]["identity"]


@pytest.mark.slow
def test_distill_base_missing_step(base_run, config):
  config.distill.base_workdir = str(base_run.workdir)
  config.distill.base_step = 5
  with pytest.raises(FileNotFoundError, match=r"checkpoint step 5 not found"):
    trainer.load_base_for_distillation(config, all_devices_mesh())


def test_distill_without_base_workdir(config, tmp_path):
  with pytest.raises(ValueError, match=r"catflow distill needs --config.distill.base_workdir"):
    distill.run(config, tmp_path / "cfm")


def test_distill_base_without_checkpoint(config, tmp_path):
  (tmp_path / "empty").mkdir()
  config.distill.base_workdir = str(tmp_path / "empty")
  with pytest.raises(FileNotFoundError, match=r"no checkpoint found in .*empty/checkpoints"):
    distill.run(config, tmp_path / "cfm")


@pytest.mark.slow
def test_distill_tokenizer_mismatch(base_run, config, tmp_path):
  other_corpus = tmp_path / "other.txt"
  other_corpus.write_text("xyz zyx\n" * 200)
  config.data.corpus = str(other_corpus)
  config.distill.base_workdir = str(base_run.workdir)
  with pytest.raises(ValueError, match=r"does not match the one recorded in distillation data "
                     r"vs base checkpoint"):
    distill.run(config, tmp_path / "cfm")
  assert not (tmp_path / "cfm" / "checkpoints").exists()


@pytest.mark.slow
def test_distill_from_cfm_rejected(cfm_run, config, tmp_path):
  config.distill.base_workdir = str(cfm_run.workdir)
  with pytest.raises(ValueError, match=r"holds a 'cfm' checkpoint; distillation starts from a "
                     r"base model"):
    distill.run(config, tmp_path / "cfm")


# -----------------------------------------------------------------------------
# The CFM at initialisation computes the base model.
# -----------------------------------------------------------------------------


@dataclasses.dataclass
class InitialCfm:
  """A trained base model and a CFM with the parameters the trainer starts it from."""

  base_config: ModelConfig
  base_params: dict
  cfm_params: dict
  base_logits: Callable  # (x, tau) -> logits of the base model.
  cfm_logits: Callable  # (x, tau_s, tau_t) -> logits of the CFM.


@pytest.fixture(scope="module")
def initial_cfm(base_run) -> InitialCfm:
  loaded = loading.load(base_run.workdir, all_devices_mesh(), seq_len=_SEQ_LEN)
  base_params = jax.device_get(loaded.params)
  cfm_model = FlowTransformer(loaded.model_config.replace(two_time=True))
  init = jax.jit(functools.partial(trainer.init_variables, cfm_model, length=_SEQ_LEN))
  fresh = jax.device_get(nn.unbox(init(jax.random.key(1))))
  cfm_params = trainer.merge_params(base_params, fresh)
  base_logits = jax.jit(lambda x, tau: loaded.model.apply({"params": base_params}, x, tau))
  cfm_logits = jax.jit(lambda x, tau_s, tau_t: cfm_model.apply({"params": cfm_params}, x, tau_s,
                                                               tau_t))
  return InitialCfm(base_config=loaded.model_config, base_params=base_params,
                    cfm_params=cfm_params, base_logits=base_logits, cfm_logits=cfm_logits)


def _random_state(model_config: ModelConfig, key: jax.Array, batch: int = 2) -> jax.Array:
  x = jax.random.normal(key, (batch, _SEQ_LEN, model_config.padded_vocab_size))
  return jnp.where(jnp.arange(model_config.padded_vocab_size) < model_config.vocab_size, x, 0.0)


@pytest.mark.slow
def test_initial_cfm_keeps_base_params(initial_cfm):
  flat_cfm = dict(jax.tree_util.tree_leaves_with_path(initial_cfm.cfm_params))
  for path, value in jax.tree_util.tree_leaves_with_path(initial_cfm.base_params):
    np.testing.assert_array_equal(flat_cfm[path], value, err_msg=jax.tree_util.keystr(path))
  assert set(initial_cfm.cfm_params) - set(initial_cfm.base_params) == {"gap_embedding"}


@pytest.mark.slow
def test_initial_cfm_gap_output_zero(initial_cfm):
  output = initial_cfm.cfm_params["gap_embedding"]["output"]
  assert not np.any(np.asarray(output["kernel"]))
  assert not np.any(np.asarray(output["bias"]))


@pytest.mark.slow
def test_initial_cfm_diagonal_equals_base(initial_cfm):
  x = _random_state(initial_cfm.base_config, jax.random.key(2))
  tau = jnp.asarray([0.3, 0.8])
  base_logits = np.asarray(initial_cfm.base_logits(x, tau))
  cfm_logits = np.asarray(initial_cfm.cfm_logits(x, tau, tau))
  # A trained base model has non-zero output weights, so its logits vary.
  assert np.std(base_logits[..., :initial_cfm.base_config.vocab_size]) > 0
  np.testing.assert_array_equal(cfm_logits, base_logits)


@pytest.mark.slow
@pytest.mark.parametrize("tau_s, tau_t", [(0.0, 1.0), (0.2, 0.5), (0.5, 0.9), (0.9, 1.0)])
def test_initial_cfm_jump_equals_base(initial_cfm, tau_s, tau_t):
  x = _random_state(initial_cfm.base_config, jax.random.key(3))
  tau_s_batch, tau_t_batch = jnp.full((2,), tau_s), jnp.full((2,), tau_t)
  base_logits = np.asarray(initial_cfm.base_logits(x, tau_s_batch))
  cfm_logits = np.asarray(initial_cfm.cfm_logits(x, tau_s_batch, tau_t_batch))
  np.testing.assert_array_equal(cfm_logits, base_logits)


def test_merge_params_unknown_base_leaf():
  fresh = {"dense": {"kernel": np.zeros((2, 2))}}
  base = {"dense": {"kernel": np.ones((2, 2))}, "extra": {"bias": np.ones(2)}}
  with pytest.raises(ValueError, match=r"base checkpoint parameter extra/bias has no "
                     r"counterpart in the CFM"):
    trainer.merge_params(base, fresh)


def test_merge_params_shape_mismatch():
  fresh = {"dense": {"kernel": np.zeros((2, 3))}}
  base = {"dense": {"kernel": np.ones((2, 2))}}
  with pytest.raises(ValueError, match=r"base parameter dense/kernel has shape \(2, 2\), the CFM "
                     r"expects \(2, 3\)"):
    trainer.merge_params(base, fresh)


def test_merge_params_keeps_new_leaves():
  fresh = {"dense": {"kernel": np.zeros((2, 2))}, "gap": {"bias": np.full(2, 5.0)}}
  base = {"dense": {"kernel": np.ones((2, 2))}}
  merged = trainer.merge_params(base, fresh)
  np.testing.assert_array_equal(merged["dense"]["kernel"], np.ones((2, 2)))
  np.testing.assert_array_equal(merged["gap"]["bias"], np.full(2, 5.0))


def test_weight_decay_covers_every_kernel_and_no_embedding():
  import flax  # pylint: disable=import-outside-toplevel
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  from catflow.models.config import ModelConfig  # pylint: disable=import-outside-toplevel
  from catflow.models.transformer import FlowTransformer  # pylint: disable=import-outside-toplevel
  from catflow.train import state as state_lib  # pylint: disable=import-outside-toplevel

  model = FlowTransformer(ModelConfig(vocab_size=10, num_layers=2, embed_dim=16, num_heads=2,
                                      time_features=16, two_time=True))
  params = nn.unbox(trainer.init_variables(model, jax.random.key(0), 8))
  mask = flax.traverse_util.flatten_dict(state_lib.weight_decay_mask(params))
  decayed = sorted("/".join(path) for path, flag in mask.items() if flag)
  undecayed = sorted("/".join(path) for path, flag in mask.items() if not flag)
  assert "blocks/layers/block/attention/output/kernel" in decayed
  assert "blocks/layers/block/attention/query/kernel" in decayed
  assert "blocks/layers/block/mlp/wi/kernel" in decayed
  assert "input_kernel" in undecayed
  assert all(not name.endswith("bias") for name in decayed)
