"""Tests for catflow.evaluate: the unigram baseline, sample metrics, loading, the bound, sampling.

The metric helpers are checked on hand-made arrays with exact expected values.
The bound and the samplers run on a tiny base model and its CFM, trained for a
few steps from the "local" variant of experiments/configs/shakespeare_char.py
on a synthetic corpus written into a temporary directory.
"""

import importlib.util
import math
import pathlib
import random

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from catflow.data import pipeline
from catflow.data import tokenizers
from catflow.evaluate import bound
from catflow.evaluate import loading
from catflow.evaluate import samples
from catflow.parallel import mesh as mesh_lib
from catflow.train import distill
from catflow.train import trainer

_CONFIG_PATH = pathlib.Path(__file__).resolve().parents[1] / "experiments/configs/shakespeare_char.py"
_SEQ_LEN = 32
_NUM_WINDOWS = 12  # Not a multiple of the 8 batch shards, so the last batch is padded.
_WORDS = ("now is the winter of our discontent made glorious summer by this sun york and all "
          "clouds that lowered upon house in deep bosom ocean buried").split()


# -----------------------------------------------------------------------------
# Unigram baseline.
# -----------------------------------------------------------------------------


def test_unigram_log_probs_add_one():
  np.testing.assert_allclose(bound.unigram_log_probs(np.array([3, 0, 1])),
                             np.log([4 / 7, 1 / 7, 2 / 7]), rtol=1e-15)


def test_unigram_log_probs_normalised():
  log_probs = bound.unigram_log_probs(np.array([10, 0, 0, 5, 1]))
  assert math.fsum(np.exp(log_probs)) == pytest.approx(1.0, abs=1e-15)


@pytest.mark.parametrize("counts, expected", [
    ([2, 2, 0, 4], 1.5),
    ([5], 0.0),
    ([1, 1, 1, 1, 0, 0, 0, 0], 2.0),
    ([0, 7, 0], 0.0),
])
def test_unigram_entropy_bits(counts, expected):
  assert bound.unigram_entropy_bits(np.array(counts)) == pytest.approx(expected, abs=1e-15)


def test_window_unigram_nll_ignores_padding():
  windows = {"tokens": np.array([[0, 1, 2, 0], [2, 2, 1, 1]]),
             "segment_ids": np.array([[1, 1, 2, 0], [1, 1, 0, 0]])}
  log_probs = np.log([0.5, 0.25, 0.25])
  np.testing.assert_allclose(bound.window_unigram_nll(windows, log_probs),
                             [5 * math.log(2), 4 * math.log(2)], rtol=1e-15)


def test_window_characters_counts_real_tokens():
  tokenizer = tokenizers.CharTokenizer("ab\n")
  windows = {"tokens": np.array([[0, 1, 2, 0], [1, 1, 0, 0]]),
             "segment_ids": np.array([[1, 1, 1, 0], [1, 0, 0, 0]])}
  np.testing.assert_array_equal(bound.window_characters(windows, tokenizer), [3.0, 1.0])


# -----------------------------------------------------------------------------
# Sample metrics.
# -----------------------------------------------------------------------------


def test_words_strips_punctuation_and_lowercases():
  text = "Hello, World! 'Tis \u201cQuoted\u201d don't -- ... \u00c9COLE\n(a)b)"
  assert samples.words(text) == ["hello", "world", "tis", "quoted", "don't", "\u00e9cole", "a)b"]


def test_words_empty_text():
  assert samples.words("  \n ... !! ") == []


def test_word_vocabulary():
  assert samples.word_vocabulary("The cat; the DOG.") == frozenset({"the", "cat", "dog"})


def test_word_fraction():
  vocabulary = frozenset({"the", "cat", "dog"})
  assert samples.word_fraction(["The cat sat.", "dog!"], vocabulary) == (0.75, 4)


def test_word_fraction_no_words():
  assert samples.word_fraction(["", " ,, "], frozenset({"the"})) == (0.0, 0)


@pytest.mark.parametrize("tokens, expected", [
    ([0, 0, 1, 1], math.log(2)),
    ([5, 5, 5], 0.0),
    ([0, 1, 2, 3], math.log(4)),
    ([3, 3, 3, 7], -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))),
])
def test_unigram_entropy(tokens, expected):
  assert samples.unigram_entropy(np.array(tokens)) == pytest.approx(expected, abs=1e-15)


def test_report_for_summary():
  tokenizer = tokenizers.CharTokenizer(" abt")
  rows = [tokenizer.encode("a bat"), tokenizer.encode("tab tt")]
  report = samples.report_for("test", 2, rows, tokenizer, frozenset({"a", "bat", "tab"}), 1.5)
  summary = report.summary(num_texts=1, max_chars=3)
  assert summary["source"] == "test"
  assert summary["steps"] == 2
  assert summary["num_samples"] == 2
  assert summary["word_fraction"] == 0.75
  assert summary["num_words"] == 4
  assert summary["wall_seconds"] == 1.5
  assert summary["examples"] == ["a b"]
  expected_entropy = np.mean([samples.unigram_entropy(row) for row in rows])
  assert summary["mean_unigram_entropy_nats"] == pytest.approx(expected_entropy, abs=1e-15)


# -----------------------------------------------------------------------------
# pad_batch.
# -----------------------------------------------------------------------------


def test_pad_batch_pads_rows():
  batch = {"tokens": np.arange(6, dtype=np.int32).reshape(3, 2) + 1,
           "segment_ids": np.ones((3, 2), np.int32),
           "index": np.array([5, 6, 7])}
  padded, rows = loading.pad_batch(batch, 4)
  assert rows == 3
  np.testing.assert_array_equal(padded["tokens"], [[1, 2], [3, 4], [5, 6], [0, 0]])
  np.testing.assert_array_equal(padded["segment_ids"], [[1, 1], [1, 1], [1, 1], [0, 0]])
  np.testing.assert_array_equal(padded["index"], [5, 6, 7, 8])


def test_pad_batch_several_padded_rows():
  batch = {"tokens": np.ones((1, 3), np.int32), "index": np.array([2])}
  padded, rows = loading.pad_batch(batch, 4)
  assert rows == 1
  assert padded["tokens"].shape == (4, 3)
  np.testing.assert_array_equal(padded["index"], [2, 3, 4, 5])


def test_pad_batch_already_multiple():
  batch = {"tokens": np.ones((4, 3), np.int32), "index": np.arange(4)}
  padded, rows = loading.pad_batch(batch, 2)
  assert rows == 4
  assert padded is batch


# -----------------------------------------------------------------------------
# A tiny trained base model and its CFM.
# -----------------------------------------------------------------------------


def _local_config(corpus: pathlib.Path, cache_dir: pathlib.Path) -> ml_collections.ConfigDict:
  spec = importlib.util.spec_from_file_location("shakespeare_char", _CONFIG_PATH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("local")
  config.data.corpus = str(corpus)
  config.data.cache_dir = str(cache_dir)
  config.data.seq_len = _SEQ_LEN
  config.data.validation_fraction = 0.1
  config.num_steps = 4
  config.optimizer.warmup_steps = 1
  config.checkpoint_every = 4
  config.log_every = 4
  config.distill.num_steps = 2
  config.distill.warmup_steps = 1
  config.eval.num_windows = _NUM_WINDOWS
  return config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Returns (config, base workdir, CFM workdir) of a 4-step base run and a 2-step CFM."""
  directory = tmp_path_factory.mktemp("evaluate")
  rng = random.Random(1)
  lines = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 9))) for _ in range(300)]
  (directory / "corpus.txt").write_text("\n".join(lines) + "\n")
  config = _local_config(directory / "corpus.txt", directory / "cache")
  trainer.run(config, directory / "base", kind="base")
  config.distill.base_workdir = str(directory / "base")
  distill.run(config, directory / "cfm")
  return config, directory / "base", directory / "cfm"


@pytest.fixture(scope="module")
def mesh():
  return mesh_lib.build_mesh({"data": -1})


@pytest.fixture(scope="module")
def base_model(runs, mesh) -> loading.LoadedModel:
  return loading.load(runs[1], mesh, seq_len=_SEQ_LEN)


@pytest.fixture(scope="module")
def cfm_model(runs, mesh) -> loading.LoadedModel:
  return loading.load(runs[2], mesh, seq_len=_SEQ_LEN)


@pytest.fixture(scope="module")
def corpus(runs, base_model) -> pipeline.TokenizedCorpus:
  options = pipeline.DataOptions.from_mapping(runs[0].data.to_dict())
  return pipeline.load_tokenized(options, tokenizer=base_model.tokenizer)


def _data_options(runs) -> pipeline.DataOptions:
  return pipeline.DataOptions.from_mapping(runs[0].data.to_dict())


def _eval_config(runs, batch_size: int) -> ml_collections.ConfigDict:
  eval_config = ml_collections.ConfigDict(runs[0].eval.to_dict())
  eval_config.batch_size = batch_size
  return eval_config


@pytest.fixture(scope="module")
def base_bounds(runs, base_model, corpus) -> dict[int, dict]:
  """The base model's bound summary at evaluation batch sizes 8 and 16."""
  return {batch_size: bound.evaluate_run(base_model, corpus, _data_options(runs),
                                         _eval_config(runs, batch_size))
          for batch_size in (8, 16)}


# -----------------------------------------------------------------------------
# Loading.
# -----------------------------------------------------------------------------


@pytest.mark.slow
def test_load_base(base_model, runs):
  assert base_model.kind == "base"
  assert not base_model.is_cfm
  assert base_model.step == 4
  assert base_model.workdir == runs[1]
  assert base_model.model_config.two_time is False
  assert base_model.tokenizer.identity() == base_model.meta["tokenizer"]["identity"]


@pytest.mark.slow
def test_load_cfm(cfm_model, base_model):
  assert cfm_model.kind == "cfm"
  assert cfm_model.is_cfm
  assert cfm_model.step == 2
  assert cfm_model.model_config == base_model.model_config.replace(two_time=True)
  assert cfm_model.tokenizer.identity() == base_model.tokenizer.identity()


@pytest.mark.slow
def test_load_earlier_missing_step(runs, mesh):
  with pytest.raises(FileNotFoundError, match=r"checkpoint step 3 not found .*available steps: "
                     r"\[4\]"):
    loading.load(runs[1], mesh, step=3, seq_len=_SEQ_LEN)


@pytest.mark.slow
def test_load_tokenizer_mismatch(runs, mesh):
  other = tokenizers.CharTokenizer("xyz").identity()
  with pytest.raises(ValueError, match=r"does not match the one recorded in checkpoint in "):
    loading.load(runs[1], mesh, seq_len=_SEQ_LEN, expected_tokenizer=other)
  loaded = loading.load(runs[1], mesh, seq_len=_SEQ_LEN, expected_tokenizer=other,
                        allow_tokenizer_mismatch=True)
  assert loaded.step == 4


@pytest.mark.slow
def test_base_logits_ignore_target_time(base_model):
  config = base_model.model_config
  x = jax.random.normal(jax.random.key(0), (1, _SEQ_LEN, config.padded_vocab_size))
  tau = jnp.asarray([0.4])
  segment_ids = jnp.ones((1, _SEQ_LEN), jnp.int32)
  positions = jnp.arange(_SEQ_LEN)[None]
  logits_fn = jax.jit(base_model.logits_fn)
  diagonal = logits_fn(base_model.params, x, tau, tau, segment_ids, positions)
  jump = logits_fn(base_model.params, x, tau, jnp.asarray([1.0]), segment_ids, positions)
  np.testing.assert_array_equal(np.asarray(jump), np.asarray(diagonal))


# -----------------------------------------------------------------------------
# The bound.
# -----------------------------------------------------------------------------


@pytest.mark.slow
def test_bound_finite(base_bounds):
  summary = base_bounds[8]
  for name in ("nats_per_token", "nats_per_token_stderr", "bits_per_token",
               "bits_per_character", "bits_per_character_stderr"):
    assert math.isfinite(summary[name]), name
  for name in ("bits_per_character", "bits_per_character_stderr",
               "difference_bits_per_character", "difference_stderr"):
    assert math.isfinite(summary["unigram"][name]), name
  assert summary["nats_per_token"] > 0
  assert summary["nats_per_token_stderr"] > 0


@pytest.mark.slow
def test_bound_counts_windows_and_tokens(base_bounds, runs, corpus):
  windows = pipeline.validation_windows(corpus, _data_options(runs), max_windows=_NUM_WINDOWS)
  num_tokens = int((windows["segment_ids"] > 0).sum())
  summary = base_bounds[8]
  assert summary["num_windows"] == _NUM_WINDOWS
  assert summary["num_tokens"] == num_tokens
  # One character per token with the char tokenizer.
  assert summary["num_characters"] == num_tokens
  assert summary["kind"] == "base"
  assert summary["step"] == 4
  assert summary["best_tau1"] in tuple(runs[0].eval.tau1_grid)


@pytest.mark.slow
def test_bound_unigram_baseline(base_bounds, runs, corpus):
  windows = pipeline.validation_windows(corpus, _data_options(runs), max_windows=_NUM_WINDOWS)
  log_probs = bound.unigram_log_probs(corpus.unigram_counts())
  nll = bound.window_unigram_nll(windows, log_probs)
  characters = (windows["segment_ids"] > 0).sum()
  expected = nll.sum() / characters / math.log(2)
  assert base_bounds[8]["unigram"]["bits_per_character"] == pytest.approx(expected, rel=1e-12)


@pytest.mark.slow
def test_bound_consistent_units(base_bounds):
  summary = base_bounds[8]
  assert summary["bits_per_token"] == pytest.approx(summary["nats_per_token"] / math.log(2),
                                                    rel=1e-12)
  # Characters and tokens coincide, so bits per character equal bits per token.
  assert summary["bits_per_character"] == pytest.approx(summary["bits_per_token"], rel=1e-9)
  assert summary["perplexity"] == pytest.approx(math.exp(summary["nats_per_token"]), rel=1e-12)


@pytest.mark.slow
def test_bound_independent_of_batch_size(base_bounds):
  small, large = base_bounds[8], base_bounds[16]
  for name in ("nats_per_token", "nats_per_token_stderr", "bits_per_character",
               "bits_per_character_stderr"):
    assert small[name] == pytest.approx(large[name], rel=1e-6), name
  for entry_small, entry_large in zip(small["per_tau1"], large["per_tau1"]):
    assert entry_small["nats_per_token"] == pytest.approx(entry_large["nats_per_token"],
                                                          rel=1e-6)
  assert (small["unigram"]["difference_bits_per_character"]
          == pytest.approx(large["unigram"]["difference_bits_per_character"], rel=1e-6))


@pytest.mark.slow
def test_bound_cfm_finite(runs, cfm_model, corpus):
  summary = bound.evaluate_run(cfm_model, corpus, _data_options(runs), _eval_config(runs, 16))
  assert summary["kind"] == "cfm"
  assert summary["step"] == 2
  assert summary["num_windows"] == _NUM_WINDOWS
  assert math.isfinite(summary["bits_per_character"])
  assert math.isfinite(summary["bits_per_character_stderr"])
  assert math.isfinite(summary["unigram"]["difference_bits_per_character"])


# -----------------------------------------------------------------------------
# Sampling.
# -----------------------------------------------------------------------------


def _generate(model: loading.LoadedModel, num_steps: int, **overrides):
  options = dict(num_samples=5, num_steps=num_steps, length=_SEQ_LEN, seed=0, batch_size=4)
  options.update(overrides)
  return samples.generate(model, **options)


def _assert_real_tokens(tokens: np.ndarray, model: loading.LoadedModel):
  assert tokens.shape == (5, _SEQ_LEN)
  assert np.issubdtype(tokens.dtype, np.integer)
  assert tokens.min() >= 0
  assert tokens.max() < model.tokenizer.vocab_size


@pytest.mark.slow
def test_generate_base_real_tokens(base_model):
  tokens, seconds = _generate(base_model, 4)
  _assert_real_tokens(tokens, base_model)
  assert seconds > 0


@pytest.mark.slow
@pytest.mark.parametrize("num_steps", [1, 2, 4, 3])
def test_generate_cfm_real_tokens(cfm_model, num_steps):
  tokens, _ = _generate(cfm_model, num_steps)
  _assert_real_tokens(tokens, cfm_model)


@pytest.mark.slow
def test_generate_with_temperature(cfm_model):
  tokens, _ = _generate(cfm_model, 1, temperature=1.0)
  _assert_real_tokens(tokens, cfm_model)


@pytest.mark.slow
def test_generate_reproducible(cfm_model):
  first, _ = _generate(cfm_model, 2)
  second, _ = _generate(cfm_model, 2)
  np.testing.assert_array_equal(first, second)


@pytest.mark.slow
def test_generate_decodes(cfm_model):
  tokens, _ = _generate(cfm_model, 1)
  texts = [cfm_model.tokenizer.decode(row) for row in tokens]
  assert [len(text) for text in texts] == [_SEQ_LEN] * 5


def test_generate_invalid_num_samples():
  with pytest.raises(ValueError, match=r"num_samples=0 must be positive"):
    samples.generate(None, num_samples=0, num_steps=1, length=4, seed=0, batch_size=1)
