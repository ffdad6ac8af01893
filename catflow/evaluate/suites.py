"""Evaluation suites of `catflow evaluate`: perplexity sets and zero-shot benchmarks.

Perplexity: a text set (PTB, WikiText-2 or any .txt file) is tokenised with the
checkpoint's tokenizer and cut into windows of `block_size` tokens starting
every `stride` tokens, and each token is scored exactly once. With stride =
block_size (the default) the windows are disjoint and the total is a bound on
-log p of the text as independent blocks. With a smaller stride each window
sums only the terms of its scored tokens, with the earlier tokens of the
window noised alongside them: a bound-based score, not a bound. From the totals
come bits per token, token perplexity, word-level perplexity (total nats over
the set's words) and bits per character and per byte.

Benchmarks: every choice is scored by the bound terms of its continuation
(`scoring.FlowRequestScorer`) and aggregated by `tasks.evaluate_task`.
"""

from __future__ import annotations

import math
import time

from absl import logging
import numpy as np

from catflow import likelihood
from catflow.evaluate import bound
from catflow.evaluate import loading
from catflow.evaluate import perplexity_data
from catflow.evaluate import scoring
from catflow.evaluate import tasks

LN2 = math.log(2.0)


def perplexity(loaded: loading.LoadedModel, name: str, *, block_size: int, stride: int,
               options: likelihood.BoundOptions, seed: int, batch_size: int,
               data_dir: str | None = None) -> dict:
  """Scores one text set; returns every metric with its standard error."""
  start = time.time()
  text_set = perplexity_data.load_text_set(name, data_dir)
  token_ids = loaded.tokenizer.encode(text_set.text)
  cut = perplexity_data.windows(token_ids, block_size, stride)
  windows = {"tokens": cut.tokens, "segment_ids": cut.valid.astype(np.int32),
             "positions": np.tile(np.arange(block_size, dtype=np.int32), (cut.num_windows, 1)),
             "score_mask": cut.scored, "index": np.arange(cut.num_windows)}
  result = bound.compute_bound(loaded, windows, options, seed=seed, batch_size=batch_size)
  if int(result.num_tokens.sum()) != len(token_ids):
    raise RuntimeError(f"scored {int(result.num_tokens.sum())} tokens of {len(token_ids)}")
  best = result.best_index
  totals = result.per_window[:, best]
  nats_per_token, token_error = likelihood.ratio_mean_and_error(totals, result.num_tokens)
  total_nats = float(totals.sum())
  word_count = text_set.num_words_for_perplexity
  summary = {
      "set": text_set.counts(),
      "windows": cut.settings(),
      "num_scored_tokens": int(result.num_tokens.sum()),
      "nats_per_token": float(nats_per_token),
      "nats_per_token_stderr": float(token_error),
      "bits_per_token": float(nats_per_token / LN2),
      "bits_per_token_stderr": float(token_error / LN2),
      "token_perplexity": float(math.exp(nats_per_token)),
      "word_perplexity": float(math.exp(total_nats / word_count)),
      "bits_per_character": total_nats / LN2 / text_set.num_chars,
      "bits_per_byte": total_nats / LN2 / text_set.num_bytes,
      "best_tau1": result.tau1_grid[best],
      "per_tau1": result.summary()["per_tau1"],
      "wall_seconds": time.time() - start,
  }
  # Standard errors of the per-word and per-character rates scale with the per-token one.
  scale = len(token_ids) / LN2
  summary["bits_per_character_stderr"] = float(token_error * scale / text_set.num_chars)
  summary["bits_per_byte_stderr"] = float(token_error * scale / text_set.num_bytes)
  logging.info("%s: %.4f +- %.4f bits/token, word perplexity %.1f (%d tokens, %d windows)", name,
               summary["bits_per_token"], summary["bits_per_token_stderr"],
               summary["word_perplexity"], len(token_ids), cut.num_windows)
  return summary


def benchmark(loaded: loading.LoadedModel, name: str, *, max_length: int, tau1: float,
              num_time_samples: int, seed: int, batch_size: int, limit: int | None = None,
              greedy_steps: int = 32, data_dir: str | None = None) -> dict:
  """Runs one zero-shot benchmark with the bound as the choice score."""
  start = time.time()
  scorer = scoring.FlowRequestScorer(
      loaded, max_length=max_length, tau1=tau1, num_time_samples=num_time_samples, seed=seed,
      batch_size=batch_size, greedy_steps=greedy_steps if name == "lambada_openai" else 0)
  result = tasks.evaluate_task(name, scorer, loaded.tokenizer, max_length=max_length,
                               data_dir=data_dir, limit=limit, batch_size=batch_size)
  result.update({"score": "minus the bound terms of the continuation tokens (a bound-based score)",
                 "tau1": tau1, "num_time_samples": num_time_samples, "seed": seed,
                 "mode": "joint noising of context and continuation; shared per-item noise",
                 "wall_seconds": time.time() - start})
  return result
