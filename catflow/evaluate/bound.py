"""The likelihood bound of a trained model on validation windows, beside a unigram baseline.

Reports nats and bits per token and per character, each with its standard
error across windows, and the paired per-window difference to a unigram model
fitted on the training split (add-one smoothing), which says whether the model
learned more than letter frequencies.
"""

from __future__ import annotations

import math
import time

from absl import logging
import jax
import numpy as np
import tqdm

from catflow import likelihood
from catflow.data import pipeline
from catflow.evaluate import loading
from catflow.parallel import mesh as mesh_lib
from catflow.parallel import partitioning

LN2 = math.log(2.0)


def unigram_log_probs(counts: np.ndarray) -> np.ndarray:
  """Returns log p of the add-one smoothed unigram model of the training counts."""
  counts = np.asarray(counts, np.float64) + 1.0
  return np.log(counts / counts.sum())


def unigram_entropy_bits(counts: np.ndarray) -> float:
  """Returns the entropy in bits of the empirical unigram distribution (no smoothing)."""
  p = np.asarray(counts, np.float64)
  p = p[p > 0] / p.sum()
  return float(-(p * np.log2(p)).sum())


def window_unigram_nll(windows: dict, log_probs: np.ndarray) -> np.ndarray:
  """Returns the unigram NLL (nats) of every window, summed over its real tokens."""
  mask = windows["segment_ids"] > 0
  return np.where(mask, -log_probs[windows["tokens"]], 0.0).sum(axis=-1)


def window_characters(windows: dict, tokenizer) -> np.ndarray:
  """Returns the number of characters each window's real tokens decode to."""
  counts = []
  for tokens, segments in zip(windows["tokens"], windows["segment_ids"]):
    counts.append(len(tokenizer.decode(tokens[segments > 0])))
  return np.asarray(counts, np.float64)


def bound_options_from(eval_config, kind: str) -> likelihood.BoundOptions:
  return likelihood.BoundOptions(
      tau1_grid=tuple(eval_config.tau1_grid), num_time_samples=int(eval_config.num_time_samples),
      num_decoder_samples=int(eval_config.num_decoder_samples),
      decoder="cfm" if kind == "cfm" else "base")


def compute_bound(loaded: loading.LoadedModel, windows: dict, options: likelihood.BoundOptions,
                  *, seed: int, batch_size: int) -> likelihood.BoundResult:
  """Estimates the bound of a loaded model on windows, batches sharded over the mesh.

  Every batch is padded to exactly batch_size rows (rounded up to a multiple of
  the mesh's batch shards), so one compiled program scores every window, and a
  window's numbers depend only on the window: they are bitwise identical
  whatever other windows share its batch and in whichever order they come.
  """
  shards = mesh_lib.batch_divisor(loaded.mesh)
  if batch_size % shards:
    batch_size = -(-batch_size // shards) * shards
    logging.info("Evaluation batch size rounded up to %d, a multiple of %d batch shards",
                 batch_size, shards)
  sharding = partitioning.batch_sharding(loaded.mesh)

  def batches():
    total = -(-len(windows["tokens"]) // batch_size)
    for batch in tqdm.tqdm(pipeline.iterate_batches(windows, batch_size), total=total,
                           desc="bound", unit="batch", leave=False, disable=total < 4):
      padded, _ = loading.pad_batch(batch, batch_size)
      yield {name: (jax.device_put(value, sharding) if name != "index" else value)
             for name, value in padded.items()}

  with jax.set_mesh(loaded.mesh):
    result = likelihood.estimate_bound(
        loaded.logits_fn, loaded.params, batches(), jax.random.key(seed),
        vocab_size=loaded.model_config.vocab_size,
        padded_vocab_size=loaded.model_config.padded_vocab_size, options=options)
  real = len(windows["tokens"])
  result.integral, result.decoder = result.integral[:real], result.decoder[:real]
  result.num_tokens = result.num_tokens[:real]
  return result


def summarize(result: likelihood.BoundResult, windows: dict, tokenizer,
              unigram_log_prob: np.ndarray | None = None) -> dict:
  """Returns the bound per token and per character, and the paired unigram difference."""
  summary = result.summary()
  best = result.best_index
  totals = result.per_window[:, best]
  characters = window_characters(windows, tokenizer)
  per_char, per_char_error = likelihood.ratio_mean_and_error(totals, characters)
  summary.update({
      "bits_per_character": float(per_char / LN2),
      "bits_per_character_stderr": float(per_char_error / LN2),
      "num_characters": int(characters.sum()),
  })
  if unigram_log_prob is not None:
    unigram = window_unigram_nll(windows, unigram_log_prob)
    unigram_per_char, unigram_error = likelihood.ratio_mean_and_error(unigram, characters)
    difference, difference_error = likelihood.ratio_mean_and_error(totals - unigram, characters)
    summary["unigram"] = {
        "bits_per_character": float(unigram_per_char / LN2),
        "bits_per_character_stderr": float(unigram_error / LN2),
        # Bound minus unigram NLL, paired per window: negative means the model is better.
        "difference_bits_per_character": float(difference / LN2),
        "difference_stderr": float(difference_error / LN2),
        "difference_in_stderrs": float(difference / difference_error)
        if difference_error > 0 else float("nan"),
    }
  return summary


def evaluate_run(loaded: loading.LoadedModel, corpus: pipeline.TokenizedCorpus,
                 data_options: pipeline.DataOptions, eval_config) -> dict:
  """Scores a loaded model on the validation windows of its corpus."""
  start = time.time()
  max_windows = int(eval_config.num_windows) or None
  windows = pipeline.validation_windows(corpus, data_options, max_windows=max_windows)
  options = bound_options_from(eval_config, loaded.kind)
  result = compute_bound(loaded, windows, options, seed=int(eval_config.seed),
                         batch_size=int(eval_config.batch_size))
  summary = summarize(result, windows, loaded.tokenizer,
                      unigram_log_probs(corpus.unigram_counts()))
  summary.update({"kind": loaded.kind, "step": loaded.step, "workdir": str(loaded.workdir),
                  "num_time_samples": options.num_time_samples, "seed": int(eval_config.seed),
                  "wall_seconds": time.time() - start})
  logging.info("Bound of %s step %d on %d windows: %.4f +- %.4f bits/char (unigram %.4f)",
               loaded.kind, loaded.step, summary["num_windows"], summary["bits_per_character"],
               summary["bits_per_character_stderr"], summary["unigram"]["bits_per_character"])
  return summary
