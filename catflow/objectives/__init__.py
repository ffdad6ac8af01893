"""Training objectives, one module each, all with the signature of `objectives.common`."""

from __future__ import annotations

from catflow.models.config import ModelConfig
from catflow.objectives import autoregressive
from catflow.objectives import base
from catflow.objectives import ecld
from catflow.objectives import lsd
from catflow.objectives import psd

OBJECTIVES = {
    "base": base.loss_fn,
    "psd": psd.loss_fn,
    "ecld": ecld.loss_fn,
    "lsd": lsd.loss_fn,
    "autoregressive": autoregressive.loss_fn,
}

# Objectives that differentiate the network with respect to time by jax.jvp.
JVP_OBJECTIVES = frozenset({"ecld", "lsd"})


def get(name: str, model_config: ModelConfig):
  """Returns the loss function of an objective, checked against the model's attention."""
  if name not in OBJECTIVES:
    raise ValueError(f"objective {name!r} is not one of {sorted(OBJECTIVES)}")
  if name in JVP_OBJECTIVES and not model_config.supports_jvp:
    raise ValueError(f"objective {name!r} needs forward-mode autodiff through attention, which "
                     f"model.attention={model_config.attention!r} does not support; use "
                     "attention='xla' or a forward-pass objective such as 'psd'")
  if name not in ("base", "autoregressive") and not model_config.two_time:
    raise ValueError(f"objective {name!r} trains a flow map and needs a model with two_time=True")
  return OBJECTIVES[name]
