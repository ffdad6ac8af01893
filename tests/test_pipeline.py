"""Tests for catflow.data.pipeline: splitting, the tokenisation cache, packing and resuming.

Every corpus is written into tmp_path and every cache lives in tmp_path, so
the tests run offline and leave nothing behind.
"""

import dataclasses
import json
import pathlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from catflow.data import pipeline
from catflow.data import tokenizers

_LINE_WIDTH = 10  # Characters per line of the fixed-width documents, "\n" included.


def _fixed_width_document(label: str, num_lines: int) -> str:
  """Returns num_lines lines of exactly _LINE_WIDTH characters, each ending in "\n"."""
  return "".join(f"{label}{index:0{_LINE_WIDTH - 1 - len(label)}d}\n" for index in range(num_lines))


def _varied_documents(count: int) -> list[str]:
  """Returns documents of different lengths with several lines each."""
  words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "and", "cat"]
  documents = []
  for index in range(count):
    lines = []
    for line in range(3 + index % 5):
      lines.append(" ".join(words[(index + line + k) % len(words)] for k in range(2 + line % 4)))
    documents.append(f"Doc {index}.\n" + "\n".join(lines) + "\n")
  return documents


def _write_jsonl(path: pathlib.Path, texts: list[str]) -> pathlib.Path:
  path.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
  return path


def _options(corpus: pathlib.Path, cache_dir: pathlib.Path, **overrides) -> pipeline.DataOptions:
  values = dict(corpus=str(corpus), cache_dir=str(cache_dir), seq_len=16,
                validation_fraction=0.25)
  values.update(overrides)
  return pipeline.DataOptions(**values)


def _segments(row: dict) -> list[tuple[np.ndarray, np.ndarray]]:
  """Returns (tokens, positions) of every segment of one packed row, in order."""
  result = []
  segment_ids = row["segment_ids"]
  for segment in np.unique(segment_ids[segment_ids > 0]):
    mask = segment_ids == segment
    result.append((row["tokens"][mask], row["positions"][mask]))
  return result


def _rows(batch: dict) -> list[dict]:
  return [{name: batch[name][index] for name in pipeline.FEATURES}
          for index in range(len(batch["tokens"]))]


def _is_slice_of(segment: np.ndarray, documents: list[np.ndarray]) -> bool:
  for document in documents:
    for start in range(document.size - segment.size + 1):
      if np.array_equal(document[start:start + segment.size], segment):
        return True
  return False


def _take(iterator, count: int) -> list[dict]:
  return [next(iterator) for _ in range(count)]


def _assert_batches_equal(first: list[dict], second: list[dict]):
  assert len(first) == len(second)
  for index, (left, right) in enumerate(zip(first, second)):
    for name in pipeline.FEATURES:
      np.testing.assert_array_equal(left[name], right[name], err_msg=f"batch {index} {name}")


@pytest.fixture
def varied_corpus(tmp_path) -> pathlib.Path:
  return _write_jsonl(tmp_path / "varied.jsonl", _varied_documents(12))


# -----------------------------------------------------------------------------
# DataOptions.
# -----------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, message", [
    ({"seq_len": 1}, r"data.seq_len=1 must be at least 2"),
    ({"validation_fraction": 0.0}, r"data.validation_fraction=0.0 must be in \(0, 1\)"),
    ({"validation_fraction": 1.0}, r"data.validation_fraction=1.0 must be in \(0, 1\)"),
    ({"split": "random"}, r"data.split='random' is not 'tail' or 'documents'"),
    ({"packing_bins": -1}, r"data.packing_bins=-1 must be >= 0"),
])
def test_data_options_invalid_values(overrides, message):
  with pytest.raises(ValueError, match=message):
    pipeline.DataOptions(**overrides)


def test_data_options_from_mapping_unknown_key():
  with pytest.raises(ValueError, match=r"unknown data options \['shuffle'\]"):
    pipeline.DataOptions.from_mapping({"seq_len": 32, "shuffle": True})


def test_data_options_from_mapping_values():
  options = pipeline.DataOptions.from_mapping({"seq_len": 32, "split": "documents"})
  assert options.seq_len == 32
  assert options.split == "documents"
  assert options.corpus == "shakespeare"


def test_data_options_cache_dir(tmp_path, monkeypatch):
  monkeypatch.setenv("CATFLOW_CACHE_DIR", str(tmp_path / "from_env"))
  assert pipeline.DataOptions(cache_dir=str(tmp_path / "set")).resolved_cache_dir() == (
      tmp_path / "set")
  assert pipeline.DataOptions().resolved_cache_dir() == tmp_path / "from_env"


def test_build_tokenizer_invalid_kind(tmp_path):
  options = _options(tmp_path / "unused.txt", tmp_path, tokenizer="words")
  with pytest.raises(ValueError, match=r"data.tokenizer='words' is not 'char', 'byte', 'gpt2_bpe' or 'sentencepiece'"):
    pipeline.build_tokenizer(options, [])


def test_build_tokenizer_bpe_without_path(tmp_path):
  options = _options(tmp_path / "unused.txt", tmp_path, tokenizer="gpt2_bpe")
  with pytest.raises(ValueError, match=r"gpt2_bpe' needs data.tokenizer_path"):
    pipeline.build_tokenizer(options, [])


# -----------------------------------------------------------------------------
# load_tokenized: splits and cache.
# -----------------------------------------------------------------------------


def test_tail_split_text_file(tmp_path):
  text = _fixed_width_document("a", 100)  # 1000 characters.
  corpus_path = tmp_path / "lines.txt"
  corpus_path.write_text(text)
  # The split point 0.945 * 1000 = 945 falls inside line 94 (characters
  # 940..949), so the cut moves back to the start of that line and the last 6
  # lines are held out.
  corpus = pipeline.load_tokenized(
      _options(corpus_path, tmp_path / "cache", validation_fraction=0.055))
  tokenizer = corpus.tokenizer
  assert len(corpus.train) == 1
  assert len(corpus.validation) == 1
  assert tokenizer.decode(corpus.validation[0]) == text[940:]
  assert tokenizer.decode(corpus.train[0]) == text[:940]
  assert corpus.num_validation_tokens == 60
  assert corpus.num_train_tokens == 940
  assert corpus.train_text == text[:940]


def test_tail_split_every_jsonl_document(tmp_path):
  texts = [_fixed_width_document("a", 40), _fixed_width_document("b", 20)]
  corpus_path = _write_jsonl(tmp_path / "two.jsonl", texts)
  corpus = pipeline.load_tokenized(
      _options(corpus_path, tmp_path / "cache", validation_fraction=0.1))
  tokenizer = corpus.tokenizer
  # 10% of 400 and of 200 characters are exactly 4 and 2 lines.
  assert [tokenizer.decode(part) for part in corpus.validation] == [texts[0][360:],
                                                                    texts[1][180:]]
  assert [tokenizer.decode(part) for part in corpus.train] == [texts[0][:360], texts[1][:180]]
  assert corpus.summary["train_tokens"] == 540
  assert corpus.summary["validation_tokens"] == 60
  assert corpus.summary["validation_characters"] == 60
  assert corpus.summary["split"] == "tail"


def test_tail_split_cuts_at_line_break(tmp_path, varied_corpus):
  corpus = pipeline.load_tokenized(_options(varied_corpus, tmp_path / "cache"))
  tokenizer = corpus.tokenizer
  for train, validation in zip(corpus.train, corpus.validation):
    assert tokenizer.decode(train).endswith("\n")
    assert not tokenizer.decode(validation).startswith("\n")


def test_tail_split_keeps_all_tokens(tmp_path, varied_corpus):
  texts = _varied_documents(12)
  corpus = pipeline.load_tokenized(_options(varied_corpus, tmp_path / "cache"))
  tokenizer = corpus.tokenizer
  expected = np.concatenate([tokenizer.encode(text) for text in texts])
  joined = np.concatenate([np.concatenate([train, validation])
                           for train, validation in zip(corpus.train, corpus.validation)])
  assert corpus.num_train_tokens + corpus.num_validation_tokens == expected.size
  np.testing.assert_array_equal(joined, expected)


def test_documents_split_whole_documents(tmp_path):
  texts = _varied_documents(40)
  corpus_path = _write_jsonl(tmp_path / "many.jsonl", texts)
  corpus = pipeline.load_tokenized(
      _options(corpus_path, tmp_path / "cache", split="documents", validation_fraction=0.3))
  tokenizer = corpus.tokenizer
  train = [tokenizer.decode(part) for part in corpus.train]
  validation = [tokenizer.decode(part) for part in corpus.validation]
  assert validation
  assert train
  assert sorted(train + validation) == sorted(texts)
  assert corpus.num_train_tokens + corpus.num_validation_tokens == sum(map(len, texts))
  assert corpus.train_text == "".join(train)


def test_documents_split_single_document_error(tmp_path):
  corpus_path = tmp_path / "one.txt"
  corpus_path.write_text(_fixed_width_document("a", 50))
  with pytest.raises(ValueError, match=r"leaves an empty train or validation split"):
    pipeline.load_tokenized(_options(corpus_path, tmp_path / "cache", split="documents"))


def test_parquet_matches_jsonl(tmp_path):
  texts = _varied_documents(6)
  jsonl_path = _write_jsonl(tmp_path / "docs.jsonl", texts)
  parquet_path = tmp_path / "docs.parquet"
  pq.write_table(pa.table({"body": texts}), parquet_path)
  from_jsonl = pipeline.load_tokenized(_options(jsonl_path, tmp_path / "cache"))
  from_parquet = pipeline.load_tokenized(
      _options(parquet_path, tmp_path / "cache", text_field="body"))
  assert from_parquet.tokenizer.identity() == from_jsonl.tokenizer.identity()
  assert len(from_parquet.train) == len(from_jsonl.train)
  for left, right in zip(from_parquet.train + from_parquet.validation,
                         from_jsonl.train + from_jsonl.validation):
    np.testing.assert_array_equal(left, right)


def test_tokenisation_cache_reused(tmp_path, varied_corpus):
  cache_dir = tmp_path / "cache"
  options = _options(varied_corpus, cache_dir)
  first = pipeline.load_tokenized(options)
  cached = sorted((cache_dir / "tokenized").glob("*.npz"))
  assert len(cached) == 1

  # Overwrite the cached arrays. A second load that returns them unchanged has
  # read the cache instead of tokenising again.
  marker = np.full(3, 7, np.int32)
  np.savez(cached[0], num_train=1, num_validation=1, train_0=marker, validation_0=marker)
  second = pipeline.load_tokenized(options)
  assert first.num_train_tokens > 3
  assert len(second.train) == 1
  np.testing.assert_array_equal(second.train[0], marker)
  np.testing.assert_array_equal(second.validation[0], marker)


def test_tokenisation_cache_keyed_by_split(tmp_path, varied_corpus):
  cache_dir = tmp_path / "cache"
  pipeline.load_tokenized(_options(varied_corpus, cache_dir))
  pipeline.load_tokenized(_options(varied_corpus, cache_dir, validation_fraction=0.4))
  pipeline.load_tokenized(_options(varied_corpus, cache_dir))
  assert len(list((cache_dir / "tokenized").glob("*.npz"))) == 2


def test_tokenisation_cache_unreadable_file(tmp_path, varied_corpus):
  cache_dir = tmp_path / "cache"
  options = _options(varied_corpus, cache_dir)
  first = pipeline.load_tokenized(options)
  (cached,) = (cache_dir / "tokenized").glob("*.npz")
  cached.write_bytes(b"not an npz archive")
  second = pipeline.load_tokenized(options)
  assert second.num_train_tokens == first.num_train_tokens
  for left, right in zip(second.train, first.train):
    np.testing.assert_array_equal(left, right)


def test_given_tokenizer_used(tmp_path, varied_corpus):
  tokenizer = tokenizers.CharTokenizer("abcdefghijklmnopqrstuvwxyz .\n")
  corpus = pipeline.load_tokenized(_options(varied_corpus, tmp_path / "cache"),
                                   tokenizer=tokenizer)
  assert corpus.tokenizer is tokenizer
  assert corpus.summary["tokenizer"] == tokenizer.identity()
  # "D" and the digits are outside that alphabet and encode as <unk>.
  assert int(np.sum(corpus.train[0] == tokenizer.unk_id)) == 2


def test_unigram_counts(tmp_path):
  corpus_path = tmp_path / "abc.txt"
  corpus_path.write_text("aab\nabc\nccc\nb\n")
  corpus = pipeline.load_tokenized(
      _options(corpus_path, tmp_path / "cache", validation_fraction=0.1))
  # The split point round(0.9 * 14) = 13 moves back to the start of the last
  # line. The alphabet is "\n", a, b, c and <unk>.
  assert corpus.train_text == "aab\nabc\nccc\n"
  np.testing.assert_array_equal(corpus.unigram_counts(), [3, 3, 2, 4, 0])


# -----------------------------------------------------------------------------
# train_dataset.
# -----------------------------------------------------------------------------


@pytest.fixture
def varied_options(tmp_path, varied_corpus) -> pipeline.DataOptions:
  return _options(varied_corpus, tmp_path / "cache")


@pytest.fixture
def varied_tokenized(varied_options) -> pipeline.TokenizedCorpus:
  return pipeline.load_tokenized(varied_options)


def test_train_batches_shape(varied_tokenized, varied_options):
  options = varied_options
  batches = _take(iter(pipeline.train_dataset(varied_tokenized, options, batch_size=4)), 20)
  for batch in batches:
    assert sorted(batch) == sorted(pipeline.FEATURES)
    for name in pipeline.FEATURES:
      assert batch[name].shape == (4, 16)
      assert batch[name].dtype == np.int32


def test_train_rows_segment_ids(varied_tokenized, varied_options):
  options = varied_options
  batches = _take(iter(pipeline.train_dataset(varied_tokenized, options, batch_size=4)), 20)
  num_padded = 0
  for batch in batches:
    for row in _rows(batch):
      segment_ids = row["segment_ids"]
      real = segment_ids[segment_ids > 0]
      num_real = real.size
      num_padded += segment_ids.size - num_real
      # Segments are numbered 1, 2, ... in order and padding (0) only ends a row.
      assert segment_ids[0] == 1
      assert np.all(segment_ids[:num_real] > 0)
      assert np.all(segment_ids[num_real:] == 0)
      assert np.all(np.diff(real) >= 0)
      np.testing.assert_array_equal(np.unique(real), np.arange(1, real.max() + 1))
  # The documents are not multiples of seq_len, so some rows must be padded.
  assert num_padded > 0


def test_train_rows_positions_and_tokens(varied_tokenized, varied_options):
  options = varied_options
  batches = _take(iter(pipeline.train_dataset(varied_tokenized, options, batch_size=4)), 20)
  for batch in batches:
    for row in _rows(batch):
      for tokens, positions in _segments(row):
        np.testing.assert_array_equal(positions, np.arange(tokens.size))
        assert _is_slice_of(tokens, varied_tokenized.train)


def test_train_segments_are_pieces(varied_tokenized, varied_options):
  # Each segment is a whole piece: the seq_len-aligned slice of one document.
  options = varied_options
  pieces = {tuple(part[start:start + 16]) for part in varied_tokenized.train
            for start in range(0, part.size, 16)}
  batches = _take(iter(pipeline.train_dataset(varied_tokenized, options, batch_size=4)), 20)
  seen = set()
  for batch in batches:
    for row in _rows(batch):
      for tokens, _ in _segments(row):
        assert tuple(tokens) in pieces
        seen.add(tuple(tokens))
  # 20 batches of 4 rows hold more tokens than one epoch, so every piece shows up.
  assert seen == pieces


def test_train_stream_same_seed_identical(varied_tokenized, varied_options):
  options = dataclasses.replace(varied_options, seed=3)
  first = _take(iter(pipeline.train_dataset(varied_tokenized, options, batch_size=4)), 12)
  second = _take(iter(pipeline.train_dataset(varied_tokenized, options, batch_size=4)), 12)
  _assert_batches_equal(first, second)


def test_train_stream_seed_changes_order(varied_tokenized, varied_options):
  options = dataclasses.replace(varied_options, seed=3)
  other = dataclasses.replace(varied_options, seed=4)
  first = _take(iter(pipeline.train_dataset(varied_tokenized, options, batch_size=4)), 12)
  second = _take(iter(pipeline.train_dataset(varied_tokenized, other, batch_size=4)), 12)
  assert not all(np.array_equal(left["tokens"], right["tokens"])
                 for left, right in zip(first, second))


def test_train_epochs_reshuffled(varied_tokenized, varied_options):
  # Ten full-length pieces: every row holds exactly one, so the rows show the
  # order in which the pieces are drawn.
  parts = [np.arange(16, dtype=np.int32) + 16 * index for index in range(10)]
  corpus = pipeline.TokenizedCorpus(name="full", tokenizer=varied_tokenized.tokenizer,
                                    train=parts, validation=[], train_text="", summary={})
  batches = _take(iter(pipeline.train_dataset(corpus, varied_options, batch_size=2)), 10)
  first_tokens = [int(row["tokens"][0]) for batch in batches for row in _rows(batch)]
  for batch in batches:
    np.testing.assert_array_equal(batch["segment_ids"], np.ones((2, 16)))
  first_epoch, second_epoch = first_tokens[:10], first_tokens[10:]
  assert sorted(first_epoch) == [16 * index for index in range(10)]
  assert sorted(second_epoch) == [16 * index for index in range(10)]
  assert first_epoch != second_epoch
  assert first_epoch != sorted(first_epoch)


def test_train_iterator_state_resumes(varied_tokenized, varied_options):
  options = varied_options
  dataset = pipeline.train_dataset(varied_tokenized, options, batch_size=4)
  iterator = iter(dataset)
  _take(iterator, 7)
  state = iterator.get_state()
  expected = _take(iterator, 9)

  resumed = iter(pipeline.train_dataset(varied_tokenized, options, batch_size=4))
  _take(resumed, 2)  # The iterator has moved, so set_state must replace its position.
  resumed.set_state(json.loads(json.dumps(state)))
  _assert_batches_equal(_take(resumed, 9), expected)


def test_train_dataset_invalid_batch_size(varied_tokenized, varied_options):
  options = varied_options
  with pytest.raises(ValueError, match=r"batch_size=0 must be positive"):
    pipeline.train_dataset(varied_tokenized, options, batch_size=0)


def test_train_dataset_no_training_tokens(varied_tokenized, varied_options):
  options = varied_options
  empty = pipeline.TokenizedCorpus(name="empty", tokenizer=varied_tokenized.tokenizer, train=[],
                                   validation=varied_tokenized.validation, train_text="",
                                   summary={})
  with pytest.raises(ValueError, match=r"corpus 'empty' has no training tokens"):
    pipeline.train_dataset(empty, options, batch_size=4)


# -----------------------------------------------------------------------------
# validation_windows.
# -----------------------------------------------------------------------------


def test_validation_windows_cover_every_token(varied_tokenized, varied_options):
  options = varied_options
  windows = pipeline.validation_windows(varied_tokenized, options)
  assert int((windows["segment_ids"] > 0).sum()) == varied_tokenized.num_validation_tokens
  segments = sorted(tuple(tokens) for index in range(len(windows["tokens"]))
                    for tokens, _ in _segments({name: windows[name][index]
                                                for name in pipeline.FEATURES}))
  pieces = sorted(tuple(part[start:start + 16]) for part in varied_tokenized.validation
                  for start in range(0, part.size, 16))
  assert segments == pieces


def test_validation_windows_layout(varied_tokenized, varied_options):
  options = varied_options
  windows = pipeline.validation_windows(varied_tokenized, options)
  count = len(windows["tokens"])
  assert count > 1
  for name in pipeline.FEATURES:
    assert windows[name].shape == (count, 16)
    assert windows[name].dtype == np.int32
  np.testing.assert_array_equal(windows["index"], np.arange(count))
  for index in range(count):
    row = {name: windows[name][index] for name in pipeline.FEATURES}
    assert row["segment_ids"][0] == 1
    for tokens, positions in _segments(row):
      np.testing.assert_array_equal(positions, np.arange(tokens.size))


def test_validation_windows_deterministic(varied_tokenized, varied_options):
  options = varied_options
  first = pipeline.validation_windows(varied_tokenized, options)
  second = pipeline.validation_windows(varied_tokenized,
                                       dataclasses.replace(options, seed=9))
  for name in (*pipeline.FEATURES, "index"):
    np.testing.assert_array_equal(first[name], second[name])


def test_validation_windows_max_windows(varied_tokenized, varied_options):
  options = varied_options
  everything = pipeline.validation_windows(varied_tokenized, options)
  first_two = pipeline.validation_windows(varied_tokenized, options, max_windows=2)
  assert len(first_two["tokens"]) == 2
  for name in (*pipeline.FEATURES, "index"):
    np.testing.assert_array_equal(first_two[name], everything[name][:2])


def test_validation_windows_empty_split(varied_tokenized, varied_options):
  options = varied_options
  empty = pipeline.TokenizedCorpus(name="held", tokenizer=varied_tokenized.tokenizer,
                                   train=varied_tokenized.train, validation=[],
                                   train_text="", summary={})
  with pytest.raises(ValueError, match=r"corpus 'held' has an empty validation split"):
    pipeline.validation_windows(empty, options)


def test_iterate_batches_slices():
  windows = {"tokens": np.arange(10).reshape(5, 2), "index": np.arange(5)}
  batches = list(pipeline.iterate_batches(windows, 2))
  assert [batch["index"].tolist() for batch in batches] == [[0, 1], [2, 3], [4]]
  np.testing.assert_array_equal(batches[2]["tokens"], [[8, 9]])


def test_documents_split_ignores_shuffle_seed(tmp_path):
  corpus_path = _write_jsonl(tmp_path / "many.jsonl", _varied_documents(40))
  options = _options(corpus_path, tmp_path / "cache", split="documents", validation_fraction=0.3)
  first = pipeline.load_tokenized(options)
  reseeded = pipeline.load_tokenized(dataclasses.replace(options, seed=1))
  decode = first.tokenizer.decode
  assert ([decode(part) for part in reseeded.validation]
          == [decode(part) for part in first.validation])


def test_byte_tokenizer_pipeline(tmp_path):
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("na\u00efve caf\u00e9 " * 200, encoding="utf-8")
  options = _options(corpus, tmp_path / "cache", tokenizer="byte")
  tokenized = pipeline.load_tokenized(options)
  assert tokenized.tokenizer.name == "byte"
  ids = np.concatenate(tokenized.train + tokenized.validation)
  assert ids.size == len(corpus.read_bytes())


def test_sentencepiece_tokenizer_pipeline(tmp_path):
  spm = pytest.importorskip("sentencepiece")
  text = "to be, or not to be, that is the question\n" * 100
  corpus = tmp_path / "corpus.txt"
  corpus.write_text(text)
  model = tmp_path / "tiny.model"
  with model.open("wb") as handle:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text.splitlines()), model_writer=handle, vocab_size=300,
        model_type="bpe", byte_fallback=True, normalization_rule_name="identity",
        add_dummy_prefix=False, remove_extra_whitespaces=False, minloglevel=2)
  options = _options(corpus, tmp_path / "cache", tokenizer="sentencepiece",
                     tokenizer_path=str(model))
  tokenized = pipeline.load_tokenized(options)
  assert tokenized.tokenizer.name == "sentencepiece"
  decoded = "".join(tokenized.tokenizer.decode(part) for part in tokenized.train
                    + tokenized.validation)
  assert decoded == text
  with pytest.raises(ValueError, match="needs data.tokenizer_path"):
    pipeline.load_tokenized(_options(corpus, tmp_path / "cache", tokenizer="sentencepiece"))

