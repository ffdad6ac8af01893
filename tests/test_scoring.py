"""Tests of benchmark scoring, perplexity suites and generative perplexity with flow models."""

import dataclasses
import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import catflow
from catflow.data import tokenizers
from catflow.evaluate import genppl
from catflow.evaluate import loading
from catflow.evaluate import scoring
from catflow.evaluate import suites
from catflow.evaluate import tasks
from catflow import likelihood
from catflow import paths
from catflow.models.config import ModelConfig
from catflow.models.transformer import FlowTransformer
from catflow.parallel import mesh as mesh_lib
from catflow.train import trainer

ALPHABET = "".join(chr(code) for code in range(32, 127)) + "\n"


def _loaded(causal=False, two_time=False, seed=0):
  tokenizer = tokenizers.CharTokenizer(ALPHABET)
  config = ModelConfig(vocab_size=tokenizer.vocab_size, num_layers=1, embed_dim=32, num_heads=2,
                       time_features=16, causal=causal, two_time=two_time)
  model = FlowTransformer(config)
  params = nn.unbox(trainer.init_variables(model, jax.random.key(seed), 16))
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  params = jax.tree.unflatten(treedef, [leaf + 0.05 * jax.random.normal(key, leaf.shape)
                                        for leaf, key in zip(leaves, keys)])
  meta = {"catflow_version": catflow.__version__}
  return loading.LoadedModel(workdir=None, step=0, kind="cfm" if two_time else "base", meta=meta,
                             model_config=config, model=model, params=params, tokenizer=tokenizer,
                             mesh=mesh_lib.build_mesh({"data": -1}))


def _requests(tokenizer, pairs, max_length=48):
  return [tasks.build_request(tokenizer, context, continuation, max_length)
          for context, continuation in pairs]


class _IidOracle:
  """Stands in for the network: the exact posterior of i.i.d. tokens with prior p."""

  def __init__(self, config: ModelConfig, log_prior: np.ndarray):
    self.config = config
    self.log_prior = jnp.asarray(log_prior, jnp.float32)

  def apply(self, variables, x, tau_s, tau_t, segment_ids, positions):
    del variables, tau_t, segment_ids, positions
    t = paths.t_from_tau(tau_s, self.config.vocab_size)[:, None]
    return paths.oracle_logits(x, t, self.log_prior)


def test_benchmark_score_is_bound_on_continuation():
  # For i.i.d. tokens the context carries no information, so the bound on the
  # continuation is -log p(continuation) in expectation. Scoring the context
  # too would shift every score by -log p(context).
  tokenizer = tokenizers.CharTokenizer(ALPHABET)
  config = ModelConfig(vocab_size=tokenizer.vocab_size, vocab_multiple=16)
  rng = np.random.default_rng(30)
  prior = rng.dirichlet(np.full(config.vocab_size, 2.0))
  log_prior = np.full(config.padded_vocab_size, -np.inf)
  log_prior[:config.vocab_size] = np.log(prior)
  loaded = loading.LoadedModel(workdir=None, step=0, kind="base", meta={}, model_config=config,
                               model=_IidOracle(config, log_prior), params={},
                               tokenizer=tokenizer, mesh=mesh_lib.build_mesh({"data": -1}))
  requests = []
  for _ in range(64):
    ids = rng.choice(config.vocab_size, size=12, p=prior)
    requests.append(tasks.Request(context_ids=ids[:8].astype(np.int32),
                                  continuation_ids=ids[8:].astype(np.int32), truncated=0))
  scorer = scoring.FlowRequestScorer(loaded, max_length=16, tau1=0.95, num_time_samples=16)
  scores = scorer.score(requests, list(range(len(requests))))
  difference = np.array([score.log_likelihood - log_prior[request.continuation_ids].sum()
                         for score, request in zip(scores, requests)])
  # The oracle's bound is tight, so the mean difference is 0 within 3 standard
  # errors, far from the -log p(context) (over 20 nats) that a wrong mask adds.
  standard_error = difference.std(ddof=1) / math.sqrt(difference.size)
  assert abs(difference.mean()) < 3 * standard_error + 0.02
  assert standard_error < 0.5


def test_windows_score_only_the_continuation():
  loaded = _loaded()
  requests = _requests(loaded.tokenizer, [("Hello", " world"), ("A b", " c")])
  scorer = scoring.FlowRequestScorer(loaded, max_length=48, num_time_samples=2)
  windows = scorer.windows(requests, [0, 1])
  np.testing.assert_array_equal(windows["score_mask"][0, :5], False)
  np.testing.assert_array_equal(windows["score_mask"][0, 5:11], True)
  np.testing.assert_array_equal(windows["score_mask"][0, 11:], False)
  assert windows["segment_ids"][1].sum() == 5


def test_choices_of_one_item_share_their_noise():
  loaded = _loaded()
  scorer = scoring.FlowRequestScorer(loaded, max_length=48, num_time_samples=4)
  pair = ("The cat sat on the", " mat")
  requests = _requests(loaded.tokenizer, [pair, pair, pair])
  scores = scorer.score(requests, [7, 7, 8])
  assert scores[0].log_likelihood == scores[1].log_likelihood
  assert scores[0].log_likelihood != scores[2].log_likelihood
  assert all(math.isfinite(score.log_likelihood) and score.log_likelihood < 0 for score in scores)


def test_scores_bitwise_identical_across_groupings_and_orders():
  # One compiled batch shape scores every request, so a request's score depends
  # only on the request and its item key.
  loaded = _loaded()
  pairs = [("one two", " three"), ("four five", " six"), ("seven", " eight nine"),
           ("ten", " eleven"), ("twelve", " thirteen")]
  requests = _requests(loaded.tokenizer, pairs)
  keys = [0, 1, 2, 3, 4]
  scorer = scoring.FlowRequestScorer(loaded, max_length=48, num_time_samples=4, batch_size=4)
  together = [score.log_likelihood for score in scorer.score(requests, keys)]
  pairs_of_two = []
  for start in range(0, 5, 2):
    pairs_of_two += [score.log_likelihood
                     for score in scorer.score(requests[start:start + 2], keys[start:start + 2])]
  assert pairs_of_two == together
  order = [3, 0, 4, 1, 2]
  shuffled = scorer.score([requests[i] for i in order], [keys[i] for i in order])
  assert [score.log_likelihood for score in shuffled] == [together[i] for i in order]


def test_benchmark_identical_across_request_batch_sizes(shared_data):
  loaded = _loaded()
  scorer = scoring.FlowRequestScorer(loaded, max_length=256, num_time_samples=2, batch_size=8)
  results = [tasks.evaluate_task("copa", scorer, loaded.tokenizer, max_length=256,
                                 data_dir=str(shared_data), limit=6, batch_size=size,
                                 request_order=order)
             for size, order in ((12, "as_loaded"), (1, "as_loaded"), (5, "shuffled"))]
  for other in results[1:]:
    for metric in ("acc", "acc_norm_chars", "acc_norm_bytes"):
      assert other[metric] == results[0][metric]


def test_greedy_correct_flags_per_request():
  loaded = _loaded()
  scorer = scoring.FlowRequestScorer(loaded, max_length=48, num_time_samples=2, greedy_steps=4)
  requests = _requests(loaded.tokenizer, [("abc", " d"), ("xyz", " w")])
  scores = scorer.score(requests, [0, 1])
  assert all(isinstance(score.greedy_correct, bool) for score in scores)


def test_benchmark_runs_on_real_items(shared_data):
  loaded = _loaded()
  result = suites.benchmark(loaded, "piqa", max_length=256, tau1=0.9, num_time_samples=2, seed=0,
                            batch_size=8, limit=4, data_dir=str(shared_data))
  assert result["num_items"] == 4
  for metric in ("acc", "acc_norm_chars", "acc_norm_bytes"):
    assert 0.0 <= result[metric] <= 1.0
  assert result["num_time_samples"] == 2
  json.dumps(result)


def test_lambada_uses_greedy_decoding(shared_data):
  loaded = _loaded()
  result = suites.benchmark(loaded, "lambada_openai", max_length=512, tau1=0.9, num_time_samples=2,
                            seed=0, batch_size=4, limit=3, greedy_steps=4,
                            data_dir=str(shared_data))
  assert result["num_items"] == 3
  assert 0.0 <= result["acc"] <= 1.0
  assert math.isfinite(result["ppl"])


def test_perplexity_scores_every_token_once(tmp_path):
  loaded = _loaded()
  text = "the quick brown fox jumps over the lazy dog\n" * 5
  path = tmp_path / "text.txt"
  path.write_text(text)
  options = likelihood.BoundOptions(tau1_grid=(0.8, 0.95), num_time_samples=2)
  result = suites.perplexity(loaded, str(path), block_size=32, stride=16, options=options, seed=0,
                             batch_size=8)
  assert result["num_scored_tokens"] == len(text)
  assert result["windows"]["stride"] == 16
  assert result["set"]["num_words"] == 45
  np.testing.assert_allclose(math.log(result["word_perplexity"]),
                             result["nats_per_token"] * len(text) / 45, rtol=1e-6)
  np.testing.assert_allclose(result["bits_per_character"], result["bits_per_token"], rtol=1e-6)


def test_perplexity_bits_per_byte_counts_utf8_bytes(tmp_path):
  loaded = _loaded()
  text = "caf\u00e9 na\u00efve \u00fcber\n" * 4  # 3 two-byte characters per line.
  path = tmp_path / "text.txt"
  path.write_text(text, encoding="utf-8")
  options = likelihood.BoundOptions(tau1_grid=(0.9,), num_time_samples=2)
  result = suites.perplexity(loaded, str(path), block_size=32, stride=32, options=options, seed=0,
                             batch_size=8)
  num_bytes = len(text.encode("utf-8"))
  assert num_bytes == len(text) + 12
  total_bits = result["nats_per_token"] * result["num_scored_tokens"] / math.log(2)
  np.testing.assert_allclose(result["bits_per_byte"], total_bits / num_bytes, rtol=1e-6)
  np.testing.assert_allclose(result["bits_per_character"], total_bits / len(text), rtol=1e-6)


def test_perplexity_rejects_empty_set(tmp_path):
  loaded = _loaded()
  path = tmp_path / "empty.txt"
  path.write_text("")
  with pytest.raises(ValueError, match="empty evaluation set"):
    suites.perplexity(loaded, str(path), block_size=32, stride=16,
                      options=likelihood.BoundOptions(num_time_samples=1), seed=0, batch_size=8)


def test_catflow_scorer_matches_direct_computation():
  loaded = _loaded(causal=True)
  scorer = genppl.CatflowCausalScorer(loaded, max_length=16, stride=8)
  texts = ["hello there, general", "ab"]
  results = scorer.token_nll(texts)
  # Direct: one window per text shorter than max_length, every token scored
  # (the first after the BOS input).
  from catflow.objectives import autoregressive  # pylint: disable=import-outside-toplevel
  ids = loaded.tokenizer.encode(texts[1])
  batch = {"tokens": ids[None], "segment_ids": np.ones_like(ids)[None],
           "positions": np.arange(len(ids))[None]}
  logits = autoregressive.token_logits(loaded.params, batch, model=loaded.model)
  log_probs = jax.nn.log_softmax(logits[0])
  expected = -float(log_probs[0, ids[0]] + log_probs[1, ids[1]])
  np.testing.assert_allclose(results[1][0], expected, rtol=1e-5)
  assert results[1][1:] == (2, 2)
  assert results[0][1] == len(texts[0])


def test_catflow_scorer_windows_start_with_bos():
  from catflow.objectives import autoregressive  # pylint: disable=import-outside-toplevel
  loaded = _loaded(causal=True)
  text = "to be or not to be, that is"  # 27 tokens: windows [0, 16), [8, 24), [16, 27).
  ids = loaded.tokenizer.encode(text)
  total, scored, count = genppl.CatflowCausalScorer(loaded, max_length=16,
                                                    stride=8).token_nll([text])[0]
  assert scored == len(text)
  assert count == len(text)

  def window_nll(start, first_scored):
    # A window on its own: BOS, then its tokens, as in a training piece.
    tokens = ids[start:start + 16]
    batch = {"tokens": tokens[None], "segment_ids": np.ones_like(tokens)[None],
             "positions": np.arange(len(tokens))[None]}
    logits = autoregressive.token_logits(loaded.params, batch, model=loaded.model)
    nll = -np.take_along_axis(np.asarray(jax.nn.log_softmax(logits[0])), tokens[:, None], -1)
    return float(nll[first_scored:].sum())

  expected = window_nll(0, 0) + window_nll(8, 8) + window_nll(16, 8)
  np.testing.assert_allclose(total, expected, rtol=1e-5)


def test_catflow_scorer_rejects_pre_bos_checkpoint():
  loaded = _loaded(causal=True)
  old = dataclasses.replace(loaded, meta={"catflow_version": "0.1.0"})
  with pytest.raises(ValueError, match="trained by catflow 0.1.0, whose autoregressive objective "
                     "had no BOS input"):
    genppl.CatflowCausalScorer(old, max_length=16)


def test_generative_perplexity_independent_of_order():
  loaded = _loaded(causal=True)
  scorer = genppl.CatflowCausalScorer(loaded, max_length=16, stride=8)
  texts = ["a long sample that needs two windows or more", "short", "medium length text"]
  first = genppl.generative_perplexity(texts, scorer)
  second = genppl.generative_perplexity(texts[::-1], scorer)
  np.testing.assert_allclose(first["gen_ppl"], second["gen_ppl"], rtol=1e-6)
  assert first["scored_tokens"] == sum(len(text) for text in texts)
  assert first["scorer_tokens"] == sum(len(text) for text in texts)


def test_generative_perplexity_pools_tokens():
  # exp(total NLL / total tokens), not the mean of per-sample perplexities.
  loaded = _loaded(causal=True)
  scorer = genppl.CatflowCausalScorer(loaded, max_length=16, stride=8)
  texts = ["a long sample that needs two windows or more", "short", "qqqq zzz"]
  per_text = scorer.token_nll(texts)
  pooled = math.exp(sum(nll for nll, _, _ in per_text) / sum(count for _, count, _ in per_text))
  mean_of_samples = np.mean([math.exp(nll / count) for nll, count, _ in per_text])
  result = genppl.generative_perplexity(texts, scorer)
  np.testing.assert_allclose(result["gen_ppl"], pooled, rtol=1e-6)
  assert abs(pooled - mean_of_samples) > 1e-3 * pooled


def test_scorer_must_be_causal():
  with pytest.raises(ValueError, match="not a causal model"):
    genppl.CatflowCausalScorer(_loaded(), max_length=16)


def test_generative_perplexity_rejects_no_samples():
  with pytest.raises(ValueError, match="at least one sample"):
    genppl.generative_perplexity([], genppl.CatflowCausalScorer(_loaded(causal=True), 16))


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory, shared_data):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  directory = tmp_path_factory.mktemp("tiny_gpt2")
  tokenizer = transformers.GPT2TokenizerFast(
      vocab=str(shared_data / "gpt2_bpe" / "encoder.json"),
      merges=str(shared_data / "gpt2_bpe" / "vocab.bpe"))
  assert tokenizer("Hello world")["input_ids"] == [15496, 995]
  torch.manual_seed(0)
  config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=32,
                                   vocab_size=len(tokenizer))
  transformers.GPT2LMHeadModel(config).save_pretrained(directory)
  tokenizer.save_pretrained(directory)
  return directory


def test_huggingface_scorer_sliding_window(tiny_gpt2):
  import torch  # pylint: disable=import-outside-toplevel
  scorer = genppl.HuggingFaceCausalScorer(str(tiny_gpt2), stride=16)
  assert scorer.max_length == 32
  short = "Hello world, this is a test."
  long = " ".join(["the cat sat on the mat and looked around"] * 8)
  results = scorer.token_nll([short, long])
  ids = scorer.encode(short)
  # A short text fits one window: BOS then every token scored.
  with torch.no_grad():
    inputs = torch.as_tensor(np.concatenate([[scorer.bos], ids])[None])
    log_probs = torch.log_softmax(scorer.model(inputs).logits[0, :-1].float(), dim=-1)
    expected = -log_probs.gather(1, inputs[0, 1:, None])[:, 0].sum().item()
  np.testing.assert_allclose(results[0][0], expected, rtol=1e-5)
  assert results[0][1] == len(ids)
  long_ids = scorer.encode(long)
  assert len(long_ids) > 32
  assert results[1][1] == len(long_ids)  # Scored with a sliding context, never truncated.
  first = genppl.generative_perplexity([short, long], scorer)
  second = genppl.generative_perplexity([long, short], scorer)
  np.testing.assert_allclose(first["gen_ppl"], second["gen_ppl"], rtol=1e-6)
