r"""Zero-shot multiple-choice and cloze benchmarks, independent of any model.

This module turns every (context, continuation) pair of a benchmark item into
token ids (`build_request`), and aggregates per-request
log-likelihoods into accuracies (`aggregate`). A model enters only through a
`RequestScorer`, and `evaluate_task` runs the whole chain.

The benchmark files, their prompt formats and the task registry (`TASKS`,
`load_task`) are in `catflow.evaluate.task_files`. `Item` and `load_task` are
also importable from here.

Accuracy follows lm-eval: `acc` is the argmax of the summed log-likelihood of
the continuation tokens. `acc_norm_chars` and `acc_norm_bytes` divide it by
the length of the answer text without the leading delimiter, which is what
lm-eval's `acc_norm` (characters) and `acc_bytes` measure. LAMBADA reports the
fraction of targets whose every token is the greedy choice, and a perplexity.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
import functools
import math
import os
from typing import Any, Protocol, runtime_checkable

from absl import logging
import numpy as np
import tqdm

from catflow.data import tokenizers
from catflow.evaluate.task_files import ACC
from catflow.evaluate.task_files import ACC_NORM_BYTES
from catflow.evaluate.task_files import ACC_NORM_CHARS
from catflow.evaluate.task_files import get_task
from catflow.evaluate.task_files import Item
from catflow.evaluate.task_files import load_task
from catflow.evaluate.task_files import NATS_PER_TOKEN
from catflow.evaluate.task_files import PPL
from catflow.evaluate.task_files import TaskSpec

REQUEST_ORDERS = ("longest_first", "as_loaded", "shuffled")


# ---------------------------------------------------------------------------
# Requests: token ids of one (context, continuation) pair.


@dataclasses.dataclass(frozen=True, eq=False)
class Request:
  """Token ids of one continuation to score given its context.

  `context_ids` followed by `continuation_ids` is the tokenisation of
  context + continuation, after dropping `truncated` tokens from the left.

  Attributes:
    context_ids: 1-D int32 ids of the context. May be empty.
    continuation_ids: 1-D int32 ids whose log-likelihood is scored. Never
      empty.
    truncated: Number of context tokens dropped from the left to fit
      `max_length`.
    num_chars: Characters of the text that the normalised accuracy divides by.
    num_bytes: UTF-8 bytes of that text.
  """

  context_ids: np.ndarray
  continuation_ids: np.ndarray
  truncated: int
  num_chars: int = 0
  num_bytes: int = 0

  @property
  def length(self) -> int:
    """Total number of tokens, context plus continuation."""
    return len(self.context_ids) + len(self.continuation_ids)


def _read_only_ids(ids: np.ndarray) -> np.ndarray:
  array = np.array(ids, dtype=np.int32)
  array.setflags(write=False)
  return array


def _common_prefix_length(first: np.ndarray, second: np.ndarray) -> int:
  size = min(len(first), len(second))
  differences = np.flatnonzero(first[:size] != second[:size])
  return int(differences[0]) if differences.size else size


def _build_request(
    encode: Callable[[str], np.ndarray],
    context: str,
    continuation: str,
    max_length: int,
    normalization_text: str | None,
    item_name: str,
) -> Request:
  """Implements `build_request` with an `encode` that callers may memoise."""
  if max_length < 1:
    raise ValueError(f"max_length must be at least 1, got {max_length}")

  # As lm-eval does, trailing whitespace of the context moves to the start of
  # the continuation, so that "Answer: " + "yes" is tokenised as "Answer:" +
  # " yes".
  stripped = context.rstrip()
  moved = context[len(stripped) :]
  context = stripped
  continuation = moved + continuation
  if not continuation:
    raise ValueError(
        f"{item_name}: the continuation is empty, so there is nothing to score"
    )
  if normalization_text is None:
    normalization_text = continuation

  context_ids = np.asarray(encode(context))
  whole_ids = np.asarray(encode(context + continuation))
  # The context keeps only the tokens that both encodings share. A token that
  # spans the join (GPT-2 encodes "Hello" as [15496] but "Helloworld!" as
  # [39, 5037, 1764, 0]) belongs to the continuation.
  shared = _common_prefix_length(context_ids, whole_ids)
  continuation_ids = whole_ids[shared:]
  context_ids = whole_ids[:shared]
  if continuation_ids.size == 0:
    raise ValueError(
        f"{item_name}: the continuation {continuation!r} produced no tokens of"
        " its own"
    )
  if continuation_ids.size > max_length:
    raise ValueError(
        f"{item_name}: the continuation has {continuation_ids.size} tokens,"
        f" more than max_length={max_length}; raise max_length, because"
        " scoring a cut continuation would give a wrong answer"
    )

  truncated = max(0, len(whole_ids) - max_length)
  context_ids = context_ids[truncated:]
  return Request(
      context_ids=_read_only_ids(context_ids),
      continuation_ids=_read_only_ids(continuation_ids),
      truncated=truncated,
      num_chars=len(normalization_text),
      num_bytes=len(normalization_text.encode("utf-8")),
  )


def build_request(
    tokenizer: tokenizers.Tokenizer,
    context: str,
    continuation: str,
    max_length: int,
    *,
    normalization_text: str | None = None,
    item_name: str = "request",
) -> Request:
  """Tokenises a (context, continuation) pair for log-likelihood scoring.

  Trailing whitespace of the context moves to the start of the continuation.
  The continuation tokens are those of the whole string after its longest
  common token prefix with the context's own encoding. If the whole exceeds
  `max_length` tokens, tokens are dropped from the left of the context.
  Special-token text such as "<|endoftext|>" is encoded as ordinary text,
  because GPT2BPETokenizer never encodes text as the end-of-text id.

  Args:
    tokenizer: A catflow tokenizer.
    context: Text the continuation is conditioned on.
    continuation: Text whose log-likelihood is scored.
    max_length: Maximum number of tokens of context plus continuation.
    normalization_text: Text whose length `Request.num_chars` and
      `Request.num_bytes` record. Defaults to the continuation after the
      whitespace move.
    item_name: Names the request in error messages.

  Returns:
    The request.

  Raises:
    ValueError: The continuation is empty after the whitespace move, or has
      more than `max_length` tokens.
  """
  return _build_request(
      tokenizer.encode,
      context,
      continuation,
      max_length,
      normalization_text,
      item_name,
  )


def build_item_requests(
    tokenizer: tokenizers.Tokenizer,
    item: Item,
    max_length: int,
    *,
    encode: Callable[[str], np.ndarray] | None = None,
) -> list[Request]:
  """Builds one request per choice of `item`.

  Each request records the length of the choice's answer text, which the
  normalised accuracies divide by.
  """
  encode = encode or tokenizer.encode
  return [
      _build_request(
          encode,
          context,
          continuation,
          max_length,
          choice,
          f"{item.task} item {item.index} choice {choice_index}",
      )
      for choice_index, (context, continuation, choice) in enumerate(
          zip(item.contexts, item.continuations, item.choices)
      )
  ]


# ---------------------------------------------------------------------------
# Scores and metrics.


@dataclasses.dataclass(frozen=True)
class RequestScore:
  """A scorer's result for one request.

  Attributes:
    log_likelihood: Log-likelihood of the continuation tokens in nats, summed
      over tokens; higher is better. For catflow flow models it is minus the
      continuation's bound terms, a bound-based score rather than an exact
      log-likelihood.
    num_tokens: Number of continuation tokens, `len(request.continuation_ids)`.
    num_chars: `request.num_chars`.
    num_bytes: `request.num_bytes`.
    greedy_correct: Whether every continuation token is the model's greedy
      choice. Required for LAMBADA, ignored elsewhere.
  """

  log_likelihood: float
  num_tokens: int
  num_chars: int
  num_bytes: int
  greedy_correct: bool | None = None

  @classmethod
  def for_request(
      cls,
      request: Request,
      log_likelihood: float,
      greedy_correct: bool | None = None,
  ) -> RequestScore:
    """Builds the score of `request`, copying its token and length counts."""
    return cls(
        log_likelihood=float(log_likelihood),
        num_tokens=len(request.continuation_ids),
        num_chars=request.num_chars,
        num_bytes=request.num_bytes,
        greedy_correct=greedy_correct,
    )


def _proportion(correct: np.ndarray) -> tuple[float, float]:
  """Returns the mean of 0/1 outcomes and its standard error sqrt(p(1-p)/n)."""
  p = float(np.mean(correct))
  return p, math.sqrt(p * (1.0 - p) / correct.size)


def _check_scores(
    items: Sequence[Item],
    scores: Sequence[RequestScore],
    requests: Sequence[Request] | None,
) -> None:
  expected = sum(item.num_choices for item in items)
  if len(scores) != expected:
    raise ValueError(
        f"got {len(scores)} scores for {len(items)} items with {expected}"
        " choices in total; pass one score per choice, item by item"
    )
  if requests is not None and len(requests) != expected:
    raise ValueError(
        f"got {len(requests)} requests for {expected} choices; pass the"
        " requests in the same order as the scores"
    )
  for position, score in enumerate(scores):
    if not math.isfinite(score.log_likelihood):
      raise ValueError(
          f"score {position} has log_likelihood {score.log_likelihood}; a"
          " scorer must return a finite number"
      )
    if score.num_tokens < 1 or score.num_chars < 1 or score.num_bytes < 1:
      raise ValueError(
          f"score {position} has num_tokens={score.num_tokens},"
          f" num_chars={score.num_chars}, num_bytes={score.num_bytes}; all"
          " must be at least 1. Build scores with RequestScore.for_request"
      )


def aggregate(
    task: str,
    items: Sequence[Item],
    scores: Sequence[RequestScore],
    *,
    requests: Sequence[Request] | None = None,
) -> dict[str, Any]:
  """Turns per-request scores into the task's metrics.

  Multiple-choice tasks predict the argmax over choices of the summed
  log-likelihood (`acc`), of the log-likelihood per character of the answer
  text (`acc_norm_chars`) and per UTF-8 byte (`acc_norm_bytes`). Ties go to
  the lowest choice index, as `np.argmax` breaks them. Each accuracy comes
  with "{name}_stderr" = sqrt(p(1-p)/n).

  LAMBADA reports `acc`, the fraction of items whose `greedy_correct` is true
  (every target token right), `ppl` = exp(-sum of log-likelihoods / items),
  which is lm-eval's lambada perplexity, and `nats_per_token` = -sum of
  log-likelihoods / target tokens. With the bound-based scores of flow models,
  `ppl` and `nats_per_token` are computed from those scores, not from exact
  log-likelihoods.

  Args:
    task: Task name. Decides which metrics are computed.
    items: The scored items.
    scores: One score per choice, in item order and then choice order.
    requests: The requests in the same order. When given, the result counts
      the requests whose context was truncated.

  Returns:
    A dict with "task", "num_items", "num_requests", the task's metrics and
    their standard errors, and "num_truncated_requests" when `requests` is
    given.

  Raises:
    ValueError: Counts do not match, an item belongs to another task, a score
      is not finite, or LAMBADA lacks `greedy_correct`.
  """
  spec = get_task(task)
  if not items:
    raise ValueError(
        f"{task}: no items to aggregate; an empty evaluation set is an error,"
        " never a number"
    )
  for item in items:
    if item.task != spec.name:
      raise ValueError(
          f"item {item.index} belongs to task {item.task!r}, not {spec.name!r}"
      )
  _check_scores(items, scores, requests)

  result: dict[str, Any] = {
      "task": spec.name,
      "num_items": len(items),
      "num_requests": len(scores),
  }
  if requests is not None:
    result["num_truncated_requests"] = sum(
        request.truncated > 0 for request in requests
    )

  if spec.name == "lambada_openai":
    result.update(_lambada_metrics(items, scores))
  else:
    result.update(_multiple_choice_metrics(spec, items, scores))
  return result


def _lambada_metrics(
    items: Sequence[Item], scores: Sequence[RequestScore]
) -> dict[str, float]:
  for item, score in zip(items, scores):
    if score.greedy_correct is None:
      raise ValueError(
          f"lambada_openai item {item.index} has greedy_correct=None; the"
          " scorer must report whether every target token is the greedy choice"
      )
  correct = np.array([bool(score.greedy_correct) for score in scores])
  log_likelihood = math.fsum(score.log_likelihood for score in scores)
  num_tokens = sum(score.num_tokens for score in scores)
  acc, acc_stderr = _proportion(correct)
  return {
      ACC: acc,
      f"{ACC}_stderr": acc_stderr,
      PPL: math.exp(-log_likelihood / len(items)),
      NATS_PER_TOKEN: -log_likelihood / num_tokens,
      "num_target_tokens": num_tokens,
  }


def _multiple_choice_metrics(
    spec: TaskSpec, items: Sequence[Item], scores: Sequence[RequestScore]
) -> dict[str, float]:
  denominators = {
      ACC: lambda score: 1.0,
      ACC_NORM_CHARS: lambda score: float(score.num_chars),
      ACC_NORM_BYTES: lambda score: float(score.num_bytes),
  }
  correct = {name: [] for name in spec.metrics}
  offset = 0
  for item in items:
    item_scores = scores[offset : offset + item.num_choices]
    offset += item.num_choices
    for name in spec.metrics:
      values = np.array([
          score.log_likelihood / denominators[name](score)
          for score in item_scores
      ])
      # np.argmax returns the first maximum, so ties go to the lowest index.
      correct[name].append(int(np.argmax(values)) == item.label)

  result = {}
  for name in spec.metrics:
    value, stderr = _proportion(np.array(correct[name]))
    result[name] = value
    result[f"{name}_stderr"] = stderr
  return result


# ---------------------------------------------------------------------------
# Scoring with a model.


@runtime_checkable
class RequestScorer(Protocol):
  """Scores requests with a model."""

  def score(
      self, requests: Sequence[Request], item_keys: Sequence[int]
  ) -> list[RequestScore]:
    """Returns one score per request, in the order of `requests`.

    Args:
      requests: A batch of requests, possibly from several items and in any
        order.
      item_keys: The item index of each request. Requests of one item share
        a key, so a stochastic scorer can seed its random numbers from the key
        and give every choice of an item the same noise, independent of how
        requests are batched.
    """
    ...


def _request_order(
    requests: Sequence[Request], order: str, seed: int
) -> np.ndarray:
  """Returns the permutation in which `evaluate_task` presents requests."""
  if order == "as_loaded":
    return np.arange(len(requests))
  if order == "longest_first":
    # Sorting by length fills batches with requests of similar length. The
    # stable sort keeps file order among equal lengths.
    lengths = np.array([request.length for request in requests])
    return np.argsort(-lengths, kind="stable")
  if order == "shuffled":
    return np.random.default_rng(seed).permutation(len(requests))
  raise ValueError(
      f"unknown request_order {order!r}; use one of {list(REQUEST_ORDERS)}"
  )


def _check_batch_scores(
    batch: Sequence[Request], batch_scores: Any, first_position: int
) -> None:
  if not isinstance(batch_scores, Sequence) or len(batch_scores) != len(batch):
    size = len(batch_scores) if isinstance(batch_scores, Sequence) else "no"
    raise ValueError(
        f"the scorer returned {size} scores for a batch of {len(batch)}"
        " requests; it must return one RequestScore per request"
    )
  for offset, (request, score) in enumerate(zip(batch, batch_scores)):
    if not isinstance(score, RequestScore):
      raise ValueError(
          f"the scorer returned {type(score).__name__} for request"
          f" {first_position + offset}; it must return RequestScore objects"
      )
    expected = (len(request.continuation_ids), request.num_chars,
                request.num_bytes)
    found = (score.num_tokens, score.num_chars, score.num_bytes)
    if found != expected:
      raise ValueError(
          f"the score of request {first_position + offset} has (num_tokens,"
          f" num_chars, num_bytes) = {found}, but the request has {expected};"
          " build scores with RequestScore.for_request(request, ...)"
      )


def evaluate_task(
    task_name: str,
    scorer: RequestScorer,
    tokenizer: tokenizers.Tokenizer,
    *,
    max_length: int,
    data_dir: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    batch_size: int,
    request_order: str = "longest_first",
    seed: int = 0,
) -> dict[str, Any]:
  """Loads a task, scores every choice with `scorer` and aggregates.

  The result does not depend on `batch_size` or `request_order` as long as
  the scorer gives each request the same score in any batch.

  Args:
    task_name: A key of `TASKS`.
    scorer: The model's `RequestScorer`.
    tokenizer: The model's tokenizer.
    max_length: Maximum tokens of context plus continuation per request.
    data_dir: The data folder. None reads CATFLOW_DATA_DIR.
    limit: Evaluate only the first `limit` items.
    batch_size: Number of requests per `scorer.score` call.
    request_order: "longest_first" (fewest padding tokens), "as_loaded", or
      "shuffled" with `seed`, which checks that a scorer is order-independent.
    seed: Seed of the "shuffled" order.

  Returns:
    `aggregate`'s dict plus "max_length" and "tokenizer" (its `identity()`).

  Raises:
    FileNotFoundError: A data file is missing.
    ValueError: Invalid data, a request that cannot be built, or scorer
      output that does not match the requests.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be at least 1, got {batch_size}")
  items = load_task(task_name, data_dir=data_dir, limit=limit)

  # Choices of one item usually share the context, so each context is
  # encoded once.
  encode = functools.lru_cache(maxsize=16)(tokenizer.encode)
  requests: list[Request] = []
  item_keys: list[int] = []
  for item in items:
    item_requests = build_item_requests(
        tokenizer, item, max_length, encode=encode
    )
    requests.extend(item_requests)
    item_keys.extend([item.index] * len(item_requests))

  order = _request_order(requests, request_order, seed)
  logging.info(
      "Scoring %s: %d items, %d requests, batch size %d, order %s.",
      task_name,
      len(items),
      len(requests),
      batch_size,
      request_order,
  )
  scores: list[RequestScore | None] = [None] * len(requests)
  batches = range(0, len(order), batch_size)
  for start in tqdm.tqdm(batches, desc=task_name, unit="batch", leave=False,
                         disable=len(batches) < 2):
    positions = order[start : start + batch_size].tolist()
    batch = [requests[position] for position in positions]
    batch_scores = scorer.score(
        batch, [item_keys[position] for position in positions]
    )
    _check_batch_scores(batch, batch_scores, start)
    for position, score in zip(positions, batch_scores):
      scores[position] = score

  result = aggregate(task_name, items, scores, requests=requests)
  if result["num_truncated_requests"]:
    logging.warning(
        "%s: %d of %d requests had their context truncated to max_length=%d.",
        task_name,
        result["num_truncated_requests"],
        len(requests),
        max_length,
    )
  result["max_length"] = max_length
  result["tokenizer"] = tokenizer.identity()
  logging.info("Finished %s: %s", task_name, result)
  return result
