"""Tests of the 1.7B configuration and of `catflow plan` on fake devices."""

import importlib.util
import math
import pathlib

import flax.linen as nn
import jax
import ml_collections
import pytest

from catflow.models.transformer import FlowTransformer
from catflow.train import plan as plan_lib
from catflow.train import trainer

_CONFIG_PATH = pathlib.Path(__file__).parents[1] / "experiments" / "configs" / "flm_1p7b.py"


def _config(variant: str = "") -> ml_collections.ConfigDict:
  spec = importlib.util.spec_from_file_location("flm_1p7b", _CONFIG_PATH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


def _num_params(config: ml_collections.ConfigDict, two_time: bool = False) -> int:
  model_config = trainer.model_config_from(config, int(config.model.vocab_size))
  model = FlowTransformer(model_config.replace(two_time=two_time))
  abstract = jax.eval_shape(lambda key: nn.unbox(trainer.init_variables(model, key, 8)),
                            jax.random.key(0))
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(abstract))


def test_1p7b_parameter_count():
  num_params = _num_params(_config())
  assert abs(num_params - 1.7e9) / 1.7e9 < 0.03


def test_1p7b_scale_defaults():
  config = _config()
  model_config = trainer.model_config_from(config, int(config.model.vocab_size))
  assert model_config.num_layers == 24
  assert model_config.embed_dim == 2048
  assert model_config.num_heads == 16
  assert 48_000 <= model_config.vocab_size <= 52_000
  assert model_config.padded_vocab_size % 128 == 0
  assert 1024 <= config.data.seq_len <= 2048
  assert model_config.dtype == "bfloat16"
  assert (config.optimizer.b1, config.optimizer.b2) == (0.9, 0.95)
  assert config.optimizer.weight_decay == 0.1
  assert config.optimizer.grad_clip == 1.0
  assert config.optimizer.warmup_steps > 0
  assert 0.0 < config.ema_decay < 1.0
  assert math.prod(config.mesh.to_dict().values()) == 256


def test_1p7b_cfm_adds_only_the_gap_embedding():
  config = _config()
  extra = _num_params(config, two_time=True) - _num_params(config)
  assert 0 < extra < 0.01 * _num_params(config)


def test_plan_replicated_mesh_bytes():
  config = _config("local")
  result = plan_lib.plan(config)
  num_params = _num_params(config)
  assert result["parameters"] == num_params
  assert result["devices"] == jax.device_count()
  memory = result["bytes_per_device"]
  # A pure data-parallel mesh replicates float32 params, EMA and both Adam moments.
  assert memory["params"] == 4 * num_params
  assert memory["ema_params"] == 4 * num_params
  assert 8 * num_params <= memory["optimizer_state"] <= 8 * num_params + 64
  assert memory["activations_and_temporaries"] > 0
  assert memory["total"] == sum(value for name, value in memory.items() if name != "total")
  assert 0.5 < result["flops_per_token"] / result["analytic_flops_per_token"] < 3.0
  assert "parameters:" in plan_lib.format_plan(result)


def test_plan_sharded_mesh_splits_params():
  config = _config("local")
  config.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": 4, "tensor": 2})
  result = plan_lib.plan(config)
  total = 4 * result["parameters"]
  # FSDP x tensor split the kernels 8 ways, and only small vectors stay replicated.
  assert total / 8 <= result["bytes_per_device"]["params"] < total / 4


def test_plan_rejects_indivisible_heads():
  config = _config("local")
  config.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": 1, "tensor": 8})
  with pytest.raises(ValueError, match="num_heads=4"):
    plan_lib.plan(config)
