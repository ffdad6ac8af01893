"""Tests of `catflow prepare`: ArrayRecord shards, the manifest and the step-indexed stream."""

import collections
import json
import pathlib

import numpy as np
import pytest

from catflow.data import corpora
from catflow.data import pipeline
from catflow.data import prepare
from catflow.data import tokenizers

SEQ_LEN = 16


def _documents():
  rng = np.random.default_rng(0)
  words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]
  documents = []
  for index in range(12):
    lines = [" ".join(rng.choice(words, size=rng.integers(2, 9))) for _ in range(rng.integers(3, 12))]
    documents.append(corpora.Document(name=f"doc{index}", text="\n".join(lines) + "\n"))
  return documents


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  documents = _documents()
  tokenizer = tokenizers.CharTokenizer.from_text("".join(d.text for d in documents))
  options = pipeline.DataOptions(corpus="test", seq_len=SEQ_LEN, validation_fraction=0.2)
  output = tmp_path_factory.mktemp("prepared") / "data"
  manifest = prepare.prepare(documents, tokenizer, output, options=options, corpus_name="test",
                             rows_per_shard=7, progress=False)
  return documents, tokenizer, options, output, manifest


def test_pack_first_fit_layout():
  rows = prepare.pack_first_fit([np.array([1, 2, 3]), np.array([4, 5]), np.array([6, 7, 8, 9])], 5)
  assert len(rows) == 2
  np.testing.assert_array_equal(rows[0], [[1, 2, 3, 4, 5], [1, 1, 1, 2, 2], [0, 1, 2, 0, 1]])
  np.testing.assert_array_equal(rows[1], [[6, 7, 8, 9, 0], [1, 1, 1, 1, 0], [0, 1, 2, 3, 0]])


def test_pack_first_fit_rejects_long_piece():
  with pytest.raises(ValueError, match="exceeds seq_len=4"):
    prepare.pack_first_fit([np.arange(5)], 4)


def test_manifest_counts_and_checksums(prepared):
  documents, tokenizer, options, output, manifest = prepared
  expected_train, expected_validation = 0, 0
  for document in documents:
    train, validation = pipeline.split_text(document, options)
    expected_train += len(tokenizer.encode(train))
    expected_validation += len(tokenizer.encode(validation))
  assert manifest["splits"]["train"]["tokens"] == expected_train
  assert manifest["splits"]["validation"]["tokens"] == expected_validation
  assert manifest["seq_len"] == SEQ_LEN
  assert manifest["tokenizer"]["identity"] == tokenizer.identity()
  on_disk = json.loads((output / prepare.MANIFEST).read_text())
  assert on_disk == manifest
  shards = manifest["splits"]["train"]["shards"]
  assert sum(shard["rows"] for shard in shards) == manifest["splits"]["train"]["rows"]
  assert all(shard["rows"] <= 7 for shard in shards)
  prepare.PreparedData.open(output, verify_checksums=True)


def test_rows_hold_every_piece_once(prepared):
  documents, tokenizer, options, output, _ = prepared
  data = prepare.PreparedData.open(output)
  rows = data.rows("train")
  pieces = collections.Counter()
  tokens = 0
  for index in range(len(rows)):
    row = rows[index]
    for segment in range(1, row["segment_ids"].max() + 1):
      where = row["segment_ids"] == segment
      np.testing.assert_array_equal(row["positions"][where], np.arange(where.sum()))
      pieces[tuple(row["tokens"][where])] += 1
    tokens += int((row["segment_ids"] > 0).sum())
  parts = [tokenizer.encode(pipeline.split_text(d, options)[0]) for d in documents]
  expected = collections.Counter(tuple(piece) for piece in pipeline.cut_pieces(parts, SEQ_LEN))
  assert pieces == expected
  assert tokens == sum(len(part) for part in parts)


def test_step_indexed_stream_is_pure_function_of_step(prepared):
  output = prepared[3]
  rows = prepare.PreparedData.open(output).rows("train")
  first = prepare.StepIndexedStream(rows, 4, seed=3)
  second = prepare.StepIndexedStream(rows, 4, seed=3)
  batches = [next(first) for _ in range(10)]
  for step in (7, 2, 9):
    for name in pipeline.FEATURES:
      np.testing.assert_array_equal(second.batch(step)[name], batches[step][name])
  other = prepare.StepIndexedStream(rows, 4, seed=4).batch(0)
  assert not np.array_equal(other["tokens"], batches[0]["tokens"])


def test_step_indexed_stream_resumes_mid_epoch(prepared):
  output = prepared[3]
  rows = prepare.PreparedData.open(output).rows("train")
  uninterrupted = prepare.StepIndexedStream(rows, 4, seed=0)
  expected = [next(uninterrupted) for _ in range(12)]
  interrupted = prepare.StepIndexedStream(rows, 4, seed=0)
  for _ in range(5):
    next(interrupted)
  state = interrupted.get_state()
  resumed = prepare.StepIndexedStream(rows, 4, seed=0)
  resumed.set_state(state)
  for step in range(5, 12):
    got = next(resumed)
    for name in pipeline.FEATURES:
      np.testing.assert_array_equal(got[name], expected[step][name])


def test_step_indexed_stream_same_order_for_any_process_count(prepared):
  output = prepared[3]
  rows = prepare.PreparedData.open(output).rows("train")
  single = prepare.StepIndexedStream(rows, 8, seed=1)
  shares = [prepare.StepIndexedStream(rows, 8, seed=1, process_index=p, process_count=4)
            for p in range(4)]
  for step in range(6):
    whole = single.batch(step)
    joined = {name: np.concatenate([share.batch(step)[name] for share in shares])
              for name in pipeline.FEATURES}
    for name in pipeline.FEATURES:
      np.testing.assert_array_equal(joined[name], whole[name])


def test_step_indexed_stream_reshuffles_each_epoch(prepared):
  output = prepared[3]
  rows = prepare.PreparedData.open(output).rows("train")
  count = len(rows)
  stream = prepare.StepIndexedStream(rows, 1, seed=0)
  first = [tuple(stream.batch(step)["tokens"][0]) for step in range(count)]
  second = [tuple(stream.batch(step)["tokens"][0]) for step in range(count, 2 * count)]
  assert sorted(first) == sorted(second)
  assert first != second


def test_corrupt_shard_detected(prepared, tmp_path):
  output = prepared[3]
  copy = tmp_path / "copy"
  copy.mkdir()
  for path in pathlib.Path(output).iterdir():
    (copy / path.name).write_bytes(path.read_bytes())
  shard = copy / prepared[4]["splits"]["train"]["shards"][0]["file"]
  data = bytearray(shard.read_bytes())
  data[len(data) // 2] ^= 0xFF
  shard.write_bytes(bytes(data))
  with pytest.raises(ValueError, match="is corrupt"):
    prepare.PreparedData.open(copy, verify_checksums=True)
  (copy / prepared[4]["splits"]["train"]["shards"][1]["file"]).unlink()
  with pytest.raises(FileNotFoundError, match="is missing"):
    prepare.PreparedData.open(copy)


def test_missing_or_bad_manifest(tmp_path):
  with pytest.raises(FileNotFoundError, match="run `catflow prepare"):
    prepare.PreparedData.open(tmp_path)
  (tmp_path / prepare.MANIFEST).write_text("{not json")
  with pytest.raises(ValueError, match="not valid JSON"):
    prepare.PreparedData.open(tmp_path)
  (tmp_path / prepare.MANIFEST).write_text(json.dumps({"format_version": 99}))
  with pytest.raises(ValueError, match="format_version=99"):
    prepare.PreparedData.open(tmp_path)


def test_prepare_refuses_to_overwrite(prepared):
  documents, tokenizer, options, output, _ = prepared
  with pytest.raises(FileExistsError, match="already holds a prepared dataset"):
    prepare.prepare(documents, tokenizer, output, options=options, corpus_name="test",
                    progress=False)


def test_tokenizer_mismatch_rejected(prepared):
  output = prepared[3]
  data = prepare.PreparedData.open(output)
  other = tokenizers.CharTokenizer("abc")
  with pytest.raises(ValueError, match="allow_tokenizer_mismatch"):
    data.check_tokenizer(other.identity())
  data.check_tokenizer(other.identity(), allow_mismatch=True)


def test_open_training_data_from_prepared(prepared):
  output = prepared[3]
  options = pipeline.DataOptions(corpus="", seq_len=SEQ_LEN, prepared_dir=str(output))
  data = pipeline.open_training_data(options, 4)
  assert data.step_indexed
  assert data.tokenizer.identity() == prepared[1].identity()
  batch = next(data.iterator)
  assert batch["tokens"].shape == (4, SEQ_LEN)
  with pytest.raises(ValueError, match="rows of 16 tokens, data.seq_len=32"):
    pipeline.open_training_data(pipeline.DataOptions(seq_len=32, prepared_dir=str(output)), 4)
