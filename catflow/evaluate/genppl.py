"""Generative perplexity of samples under a causal scorer.

Samples are decoded to text, re-encoded with the scorer's own tokenizer and
scored token by token; the result is

    gen_ppl = exp(total NLL / total scored tokens),

summed over all samples, so it does not depend on batch size or order. Long
samples are scored with a sliding context (never truncated): windows of the
scorer's maximum length start every `stride` tokens and each token is scored
once, with up to max_length - 1 tokens of context.

Scorers:
- `CatflowCausalScorer`: a causal transformer trained with catflow
  (`objective.name="autoregressive"`, `model.causal=True`) on the same corpus.
  Every token is scored, the first after the BOS input that starts every
  training piece (catflow's vocabularies have no BOS token; see
  `catflow.objectives.autoregressive`).
- `HuggingFaceCausalScorer`: any causal LM saved in a local directory
  (`transformers`, needs the `hf` extra). Every token is scored after the
  model's BOS token (GPT-2 uses <|endoftext|>).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from catflow.evaluate import loading
from catflow.evaluate import perplexity_data
from catflow.objectives import autoregressive


class TextScorer(Protocol):
  """Scores texts with a causal language model."""

  name: str

  def encode(self, text: str) -> np.ndarray: ...

  def token_nll(self, texts: Sequence[str]) -> list[tuple[float, int, int]]:
    """Returns (total NLL in nats, scored tokens, all tokens) per text."""


def generative_perplexity(texts: Sequence[str], scorer: TextScorer,
                          sample_tokens: Sequence[int] | None = None) -> dict:
  """Returns exp(total NLL / total scored tokens) with both tokenizers' token counts."""
  if not texts:
    raise ValueError("generative perplexity needs at least one sample; got none")
  results = scorer.token_nll(texts)
  total_nll = float(sum(nll for nll, _, _ in results))
  scored = int(sum(count for _, count, _ in results))
  if scored == 0:
    raise ValueError("no token of the samples could be scored; the samples are too short")
  return {
      "scorer": scorer.name,
      "gen_ppl": math.exp(total_nll / scored),
      "nats_per_token": total_nll / scored,
      "total_nll": total_nll,
      "scored_tokens": scored,
      "scorer_tokens": int(sum(count for _, _, count in results)),
      "sample_tokens": int(sum(sample_tokens)) if sample_tokens is not None else None,
      "num_samples": len(texts),
  }


# The first catflow version whose autoregressive objective starts pieces with BOS.
_FIRST_BOS_VERSION = (0, 2)


def _version_tuple(version: str) -> tuple[int, ...]:
  """Returns the leading numeric fields of a version string ("0.2.0" -> (0, 2, 0))."""
  fields = []
  for field in version.split("."):
    if not field.isdigit():
      break
    fields.append(int(field))
  return tuple(fields)


@dataclasses.dataclass
class CatflowCausalScorer:
  """A catflow model trained with the autoregressive objective, used as a scorer."""

  loaded: loading.LoadedModel
  max_length: int
  stride: int | None = None  # Window step; None means max_length // 2.
  name: str = "catflow autoregressive"

  def __post_init__(self):
    if self.stride is not None and not 1 <= self.stride < self.max_length:
      raise ValueError(f"stride={self.stride} must be in [1, max_length={self.max_length}): "
                       "overlapping windows give every token after the first window at least "
                       "max_length - stride tokens of context")
    if not self.loaded.model_config.causal:
      raise ValueError(f"{self.loaded.workdir} is not a causal model; train the scorer with "
                       "--config.model.causal=True --config.objective.name=autoregressive")
    version = str(self.loaded.meta.get("catflow_version", "0"))
    if _version_tuple(version) < _FIRST_BOS_VERSION:
      raise ValueError(f"{self.loaded.workdir} was trained by catflow {version}, whose "
                       "autoregressive objective had no BOS input, so its scores would be wrong; "
                       "retrain the scorer with this version of catflow")

  def encode(self, text: str) -> np.ndarray:
    return self.loaded.tokenizer.encode(text)

  def token_nll(self, texts: Sequence[str]) -> list[tuple[float, int, int]]:
    stride = self.stride or max(1, self.max_length // 2)
    results = []
    for text in texts:
      ids = self.encode(text)
      if ids.size == 0:
        results.append((0.0, 0, 0))
        continue
      # Every window starts with a BOS input, as every training piece does, so
      # a window after the first scores only tokens that have context in it.
      cut = perplexity_data.windows(ids, self.max_length, stride)
      nll = _window_nll(self.loaded.model, self.loaded.params, jnp.asarray(cut.tokens),
                        jnp.asarray(cut.valid.astype(np.int32)), jnp.asarray(cut.scored))
      results.append((float(nll), int(cut.scored.sum()), int(ids.size)))
    return results


@functools.partial(jax.jit, static_argnames=("model",))
def _window_nll(model, params, tokens, valid, scored):
  """Sums -log p(token_j | BOS, tokens before j) over the scored positions of each window."""
  batch = {"tokens": tokens, "segment_ids": valid,
           "positions": jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)}
  logits = autoregressive.token_logits(params, batch, model=model)
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0]
  return jnp.sum(nll * scored)


class HuggingFaceCausalScorer:
  """A Hugging Face causal LM from a local directory (no download)."""

  def __init__(self, directory: str, *, stride: int | None = None, device: str = "cpu"):
    try:
      import torch  # pylint: disable=import-outside-toplevel
      import transformers  # pylint: disable=import-outside-toplevel
    except ImportError as error:
      raise ImportError("the Hugging Face scorer needs torch and transformers: "
                        "pip install -e '.[hf]'") from error
    self._torch = torch
    self.tokenizer = transformers.AutoTokenizer.from_pretrained(directory, local_files_only=True)
    self.model = transformers.AutoModelForCausalLM.from_pretrained(
        directory, local_files_only=True, dtype=torch.float32).to(device).eval()
    self.device = device
    self.name = f"huggingface:{directory}"
    self.max_length = int(getattr(self.model.config, "n_positions", None) or
                          getattr(self.model.config, "max_position_embeddings"))
    self.stride = stride or max(1, self.max_length // 2)
    if not 1 <= self.stride < self.max_length:
      raise ValueError(f"stride={self.stride} must be in [1, {self.max_length}), the model's "
                       "context length, so that every token is scored with context")
    bos = self.tokenizer.bos_token_id
    if bos is None:
      bos = self.tokenizer.eos_token_id
    if bos is None:
      raise ValueError(f"the tokenizer in {directory} has neither a BOS nor an EOS token to start "
                       "the context")
    self.bos = int(bos)

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self.tokenizer(text, add_special_tokens=False)["input_ids"], np.int64)

  def token_nll(self, texts: Sequence[str]) -> list[tuple[float, int, int]]:
    torch = self._torch
    results = []
    for text in texts:
      ids = self.encode(text)
      if ids.size == 0:
        results.append((0.0, 0, 0))
        continue
      sequence = np.concatenate([[self.bos], ids])
      cut = perplexity_data.windows(sequence, self.max_length, self.stride)
      scored = cut.scored.copy()
      scored[:, 0] = False  # BOS, or a token the previous window scored with context.
      total = 0.0
      with torch.no_grad():
        for row, mask, valid in zip(cut.tokens, scored, cut.valid):
          length = int(valid.sum())
          inputs = torch.as_tensor(row[None, :length], dtype=torch.long, device=self.device)
          logits = self.model(inputs).logits.float()
          log_probs = torch.log_softmax(logits[0, :-1], dim=-1)
          nll = -log_probs.gather(1, inputs[0, 1:, None])[:, 0].cpu().numpy()
          total += float(np.sum(nll[mask[1:length]]))
      results.append((total, int(scored.sum()), int(ids.size)))
    return results
