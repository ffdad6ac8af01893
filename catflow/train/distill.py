"""`catflow distill`: self-distil a base flow model into a Categorical Flow Map."""

from __future__ import annotations

import pathlib

import ml_collections

from catflow.train import trainer


def distillation_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Returns a copy of config with the distill block applied to the shared training fields.

  The experiment config keeps one set of optimisation fields for the base run;
  distillation takes its step count, learning rate, warmup and objective from
  config.distill.
  """
  derived = ml_collections.ConfigDict(config.to_dict())
  derived.num_steps = config.distill.num_steps
  derived.optimizer.learning_rate = config.distill.learning_rate
  derived.optimizer.warmup_steps = config.distill.warmup_steps
  derived.objective.name = config.distill.objective
  return derived


def run(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, **kwargs) -> trainer.TrainResult:
  """Distils the base run in config.distill.base_workdir into a CFM in workdir."""
  return trainer.run(distillation_config(config), workdir, kind="cfm", **kwargs)
