"""Unconditional samples and their quality metrics.

- Unigram entropy: per sample, of its own token counts, in nats, then averaged
  over samples. Low entropy exposes repetitive samples that a likelihood-based
  score would rate well.
- Word fraction: the share of generated words (whitespace-separated, with
  punctuation stripped from both ends, lower-cased) that occur in the training
  text; a crude, offline check of whether samples are made of real words.
"""

from __future__ import annotations

import dataclasses
import functools
import string
import time
from typing import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from catflow import flow_map
from catflow.evaluate import loading
from catflow.models import projected
from catflow.parallel import mesh as mesh_lib
from catflow.parallel import partitioning

_PUNCTUATION = string.punctuation + "\u2018\u2019\u201c\u201d"


def unigram_entropy(tokens: np.ndarray) -> float:
  """Returns the entropy (nats) of one sample's empirical token distribution."""
  counts = np.bincount(np.asarray(tokens).ravel())
  p = counts[counts > 0] / counts.sum()
  return float(-(p * np.log(p)).sum())


def words(text: str) -> list[str]:
  """Splits text on whitespace, strips punctuation at both ends, lower-cases, drops empties."""
  stripped = (word.strip(_PUNCTUATION).lower() for word in text.split())
  return [word for word in stripped if word]


def word_vocabulary(text: str) -> frozenset[str]:
  return frozenset(words(text))


def word_fraction(texts: Iterable[str], vocabulary: frozenset[str]) -> tuple[float, int]:
  """Returns (share of words found in vocabulary, number of words)."""
  generated = [word for text in texts for word in words(text)]
  if not generated:
    return 0.0, 0
  return sum(word in vocabulary for word in generated) / len(generated), len(generated)


@dataclasses.dataclass
class SampleReport:
  """Samples from one source with their metrics."""

  source: str
  steps: int | None
  texts: list[str]
  entropies: list[float]
  word_fraction: float
  num_words: int
  wall_seconds: float

  def summary(self, num_texts: int = 3, max_chars: int = 200) -> dict:
    return {
        "source": self.source,
        "steps": self.steps,
        "num_samples": len(self.texts),
        "mean_unigram_entropy_nats": float(np.mean(self.entropies)) if self.entropies else
                                     float("nan"),
        "word_fraction": self.word_fraction,
        "num_words": self.num_words,
        "wall_seconds": self.wall_seconds,
        "examples": [text[:max_chars] for text in self.texts[:num_texts]],
    }


def report_for(source: str, steps: int | None, token_rows: Sequence[np.ndarray], tokenizer,
               vocabulary: frozenset[str], wall_seconds: float) -> SampleReport:
  """Decodes token rows and measures their entropy and word fraction."""
  texts = [tokenizer.decode(row) for row in token_rows]
  entropies = [unigram_entropy(row) for row in token_rows]
  fraction, count = word_fraction(texts, vocabulary)
  return SampleReport(source=source, steps=steps, texts=texts, entropies=entropies,
                      word_fraction=fraction, num_words=count, wall_seconds=wall_seconds)


@functools.partial(jax.jit, static_argnames=("model", "num_steps", "batch", "length",
                                             "projected_state", "temperature",
                                             "endpoint_temperature"))
def _sample_batch(model, params, key, *, num_steps: int, batch: int, length: int,
                  projected_state: bool, temperature: float, endpoint_temperature: float):
  cfg = model.config
  segment_ids = jnp.ones((batch, length), jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
  if projected_state:
    space = projected.ProjectedSpace(params["input_kernel"], cfg.vocab_size)
  else:
    space = flow_map.VocabSpace(cfg.vocab_size, cfg.padded_vocab_size)

  def logits_fn(state, tau_s, tau_t):
    inputs = {"x_projected": state} if projected_state else {"x": state}
    tau_t = tau_t if cfg.two_time else None
    return model.apply({"params": params}, inputs.get("x"), tau_s, tau_t, segment_ids, positions,
                       x_projected=inputs.get("x_projected"))

  sampler = flow_map.flow_map_sample if cfg.two_time else flow_map.euler_sample
  tokens, _ = sampler(logits_fn, key, space, batch, length, num_steps, cfg.vocab_size,
                      temperature=temperature, endpoint_temperature=endpoint_temperature)
  return partitioning.replicate_in_mesh(tokens)


def generate(loaded: loading.LoadedModel, *, num_samples: int, num_steps: int, length: int,
             seed: int, batch_size: int, projected_state: bool | None = None,
             temperature: float = 0.0,
             endpoint_temperature: float = 1.0) -> tuple[np.ndarray, float]:
  """Samples num_samples rows of length tokens; returns (tokens, wall seconds).

  A base model uses the Euler sampler with num_steps steps, a CFM the flow-map
  sampler with num_steps jumps. The samples are reproducible for a fixed seed
  and batch size. The state lives in d dimensions (h = x @ W) whenever the
  model allows it, unless projected_state says otherwise.
  """
  if num_samples < 1:
    raise ValueError(f"num_samples={num_samples} must be positive")
  if projected_state is None:
    projected_state = loaded.model_config.supports_projected_input
  shards = mesh_lib.batch_divisor(loaded.mesh)
  batch_size = -(-min(batch_size, num_samples) // shards) * shards
  start = time.time()
  rows = []
  with jax.set_mesh(loaded.mesh):
    for first in range(0, num_samples, batch_size):
      # One key per batch, derived from the index of its first sample.
      key = jax.random.fold_in(jax.random.key(seed), first)
      tokens = _sample_batch(loaded.model, loaded.params, key, num_steps=num_steps,
                             batch=batch_size, length=length, projected_state=projected_state,
                             temperature=temperature, endpoint_temperature=endpoint_temperature)
      rows.append(np.asarray(tokens))
  tokens = np.concatenate(rows)[:num_samples]
  return tokens, time.time() - start
