"""A thin wrapper over Orbax's CheckpointManager that logs what it saved and restored.

A catflow checkpoint step has four items:

- `state`: step, float32 params and optimizer state (restored to resume);
- `ema`: the EMA params alone, so that distillation and evaluation restore
  them without materialising the optimizer state;
- `data`: the Grain iterator position of the training stream, one file per
  process;
- `meta`: a JSON description of the run (resolved config, model config,
  tokenizer identity and spec, time parameterisation, step, model kind).

Restores always take abstract targets (`jax.ShapeDtypeStruct` with shardings
built from the current mesh), so a checkpoint saved on one mesh loads on
another. The trainer never calls Orbax directly.
"""

from __future__ import annotations

import pathlib
import time
from typing import Any

from absl import logging
import grain
import orbax.checkpoint as ocp

ITEMS = ("state", "ema", "data", "meta")


class Checkpointer:
  """Saves and restores catflow checkpoints under one directory."""

  def __init__(self, directory: str | pathlib.Path, *, max_to_keep: int = 3,
               save_interval_steps: int = 1, read_only: bool = False):
    self.directory = pathlib.Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, save_interval_steps=save_interval_steps,
        create=not read_only, read_only=read_only)
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)
    if read_only:
      logging.info("Checkpointer at %s (read only)", self.directory)
    else:
      logging.info("Checkpointer at %s: keeps the last %d steps, saves every %d steps",
                   self.directory, max_to_keep, save_interval_steps)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, *, state, ema, data_iterator, meta: dict, force: bool = False) -> bool:
    """Saves all four items at step; returns whether a save happened."""
    start = time.time()
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state), ema=ocp.args.StandardSave(ema),
        data=grain.checkpoint.CheckpointSave(data_iterator), meta=ocp.args.JsonSave(meta))
    saved = self._manager.save(step, args=args, force=force)
    if saved:
      self._manager.wait_until_finished()
      logging.info("Saved checkpoint step %d to %s in %.1f s", step, self.directory,
                   time.time() - start)
    return saved

  def restore(self, step: int, *, abstract_state, abstract_ema, data_iterator) -> tuple[Any, Any]:
    """Restores state, EMA and (unless data_iterator is None) the data position at step."""
    start = time.time()
    items = {"state": ocp.args.StandardRestore(abstract_state),
             "ema": ocp.args.StandardRestore(abstract_ema)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self._restore_items(step, items)
    logging.info("Restored checkpoint step %d (%s) from %s in %.1f s", step, ", ".join(items),
                 self.directory, time.time() - start)
    return restored["state"], restored["ema"]

  def restore_ema(self, step: int | None, abstract_ema) -> Any:
    """Restores only the EMA params (no optimizer state) at step, or at the latest step."""
    step = self._resolve_step(step)
    start = time.time()
    restored = self._restore_items(step, {"ema": ocp.args.StandardRestore(abstract_ema)})
    logging.info("Restored EMA params of step %d from %s in %.1f s", step, self.directory,
                 time.time() - start)
    return restored["ema"]

  def restore_meta(self, step: int | None = None) -> dict:
    """Returns the JSON description saved at step, or at the latest step."""
    step = self._resolve_step(step)
    return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def _restore_items(self, step: int, items: dict) -> dict:
    try:
      return self._manager.restore(step, args=ocp.args.Composite(**items))
    except ValueError as error:
      message = str(error).lower()
      if "structure" not in message or "match" not in message:
        raise
      raise ValueError(
          f"checkpoint step {step} in {self.directory} contains a train state (parameters or "
          "optimizer state) that does not match the one built from the current config and "
          "catflow version. It was written by another model or optimizer config or an older "
          "catflow, so restore it with the config and "
          "version recorded in its meta item, or use a new workdir. Orbax reports: "
          f"{error}") from error

  def _resolve_step(self, step: int | None) -> int:
    if step is None:
      step = self.latest_step()
    if step is None:
      raise FileNotFoundError(f"no checkpoint found in {self.directory}; train a model there "
                              "first or pass the workdir of a finished run")
    if step not in self._manager.all_steps():
      raise FileNotFoundError(f"checkpoint step {step} not found in {self.directory}; "
                              f"available steps: {self.all_steps()}")
    return step

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()


def checkpoint_dir(workdir: str | pathlib.Path) -> pathlib.Path:
  """Returns where a run keeps its checkpoints: WORKDIR/checkpoints."""
  return pathlib.Path(workdir) / "checkpoints"
