"""Loading a trained model (base or CFM) from a workdir for evaluation and sampling.

Only the EMA params are restored (no optimizer state), onto the mesh given by
the caller, and the model is rebuilt from the checkpoint's own description.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from typing import Any

from absl import logging
import flax.linen as nn
import jax
import numpy as np

from catflow.data import tokenizers
from catflow.models.config import ModelConfig
from catflow.models.transformer import FlowTransformer
from catflow.parallel import partitioning
from catflow.train import checkpoint as checkpoint_lib
from catflow.train import trainer


@dataclasses.dataclass
class LoadedModel:
  """A restored model: its description, network, EMA params and tokenizer."""

  workdir: pathlib.Path
  step: int
  kind: str  # "base" or "cfm".
  meta: dict
  model_config: ModelConfig
  model: FlowTransformer
  params: Any
  tokenizer: Any
  mesh: jax.sharding.Mesh

  @property
  def is_cfm(self) -> bool:
    return self.kind == "cfm"

  @functools.cached_property
  def logits_fn(self):
    """logits(params, x, tau_s, tau_t, segment_ids, positions), one object per model.

    It is a static argument of jitted evaluators, so returning the same object
    on every access lets them reuse their compiled programs.
    """
    return functools.partial(apply_logits, self.model)


def apply_logits(model: FlowTransformer, params, x, tau_s, tau_t, segment_ids, positions):
  """Runs the network; a base model ignores tau_t (it is defined on the diagonal)."""
  tau_t = tau_t if model.config.two_time else None
  return model.apply({"params": params}, x, tau_s, tau_t, segment_ids, positions)


def load(workdir: str | pathlib.Path, mesh: jax.sharding.Mesh, step: int | None = None,
         seq_len: int = 128, *, expected_tokenizer: dict | None = None,
         allow_tokenizer_mismatch: bool = False) -> LoadedModel:
  """Restores the EMA params of a catflow run onto mesh.

  Args:
    workdir: the run's workdir (its checkpoints are in WORKDIR/checkpoints).
    mesh: the mesh to place the params on.
    step: checkpoint step; None means the latest.
    seq_len: a sequence length used only to build the abstract parameter tree.
    expected_tokenizer: a tokenizer identity the checkpoint must match.
    allow_tokenizer_mismatch: skip that check.
  """
  workdir = pathlib.Path(workdir)
  checkpointer = checkpoint_lib.Checkpointer(checkpoint_lib.checkpoint_dir(workdir), read_only=True)
  meta = checkpointer.restore_meta(step)
  model_config = ModelConfig.from_dict(meta["model_config"])
  if expected_tokenizer is not None and not allow_tokenizer_mismatch:
    tokenizers.check_same_tokenizer(meta["tokenizer"]["identity"], expected_tokenizer,
                                    what=f"checkpoint in {workdir}")
  model = FlowTransformer(model_config)
  shardings = trainer.params_shardings(model, seq_len, mesh, partitioning.DEFAULT_RULES)
  abstract = trainer.abstract_with_shardings(nn.unbox(trainer.abstract_params(model, seq_len)),
                                             shardings)
  params = checkpointer.restore_ema(meta["step"], abstract)
  checkpointer.close()
  tokenizer = tokenizers.tokenizer_from_spec(meta["tokenizer"]["spec"])
  logging.info("Loaded %s model of step %d from %s (EMA params, %s)", meta["kind"], meta["step"],
               workdir, tokenizer.name)
  return LoadedModel(workdir=workdir, step=int(meta["step"]), kind=meta["kind"], meta=meta,
                     model_config=model_config, model=model, params=params, tokenizer=tokenizer,
                     mesh=mesh)


def pad_batch(batch: dict, multiple: int) -> tuple[dict, int]:
  """Pads every array of a batch along axis 0 to a multiple; padded rows are all padding.

  Returns (padded batch, number of real rows). Padded rows have segment id 0,
  so they carry no tokens, and an 'index' past every real one.
  """
  rows = len(batch["tokens"])
  padded_rows = -(-rows // multiple) * multiple
  if padded_rows == rows:
    return batch, rows
  padded = {}
  for name, value in batch.items():
    pad_width = [(0, padded_rows - rows)] + [(0, 0)] * (value.ndim - 1)
    value = np.asarray(value)
    if name == "index":
      padded[name] = np.concatenate([value, np.arange(padded_rows - rows) + value.max() + 1])
    else:
      padded[name] = np.pad(value, pad_width)
  return padded, rows
