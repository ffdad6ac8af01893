"""Tests for catflow.evaluate.perplexity_data: text sets and windows."""

import functools
import itertools
import pathlib
import re

import numpy as np
import pytest

from catflow.data.tokenizers import GPT2BPETokenizer
from catflow.evaluate import perplexity_data
from catflow.evaluate import task_files


@functools.cache
def _load_gpt2(directory: str) -> GPT2BPETokenizer:
  return GPT2BPETokenizer.from_dir(directory)


def _pytorch_word_count(path: pathlib.Path) -> int:
  """Counts words as pytorch/examples word_language_model/data.py does."""
  count = 0
  with path.open(encoding="utf-8") as file:
    for line in file:
      count += len(line.split() + ["<eos>"])
  return count


# Characters, bytes, lines, words, and words plus one <eos> per line. PTB
# test: 78,669 words + 3,761 lines = 82,430, so the often quoted 82,430
# already includes <eos>. WikiText-2 test: 241,211 + 4,358 = 245,569.
_EXPECTED = {
    "ptb_test": (449_945, 449_945, 3_761, 78_669, 82_430),
    "ptb_valid": (399_782, 399_782, 3_370, 70_390, 73_760),
    "wikitext2_test": (1_255_018, 1_256_449, 4_358, 241_211, 245_569),
    "wikitext2_valid": (1_120_192, 1_121_681, 3_760, 213_886, 217_646),
}


@pytest.mark.parametrize("name", sorted(_EXPECTED))
def test_text_set_counts(shared_data, name):
  num_chars, num_bytes, num_lines, num_words, with_eos = _EXPECTED[name]

  text_set = perplexity_data.load_text_set(name, data_dir=shared_data)

  assert text_set.num_chars == num_chars
  assert text_set.num_bytes == num_bytes
  assert text_set.num_lines == num_lines
  assert text_set.num_words == num_words
  assert text_set.num_eos == num_lines
  assert text_set.num_words_for_perplexity == with_eos
  assert text_set.word_convention == perplexity_data.WORDS_WITH_EOS


@pytest.mark.parametrize("name", sorted(_EXPECTED))
def test_text_set_counts_match_independent_count(shared_data, name):
  text_set = perplexity_data.load_text_set(name, data_dir=shared_data)
  path = shared_data / perplexity_data.TEXT_SETS[name]

  assert text_set.num_words_for_perplexity == _pytorch_word_count(path)
  assert text_set.num_words == len(re.findall(r"\S+", text_set.text))
  assert text_set.num_bytes == path.stat().st_size
  assert text_set.num_chars == len(path.read_text(encoding="utf-8"))
  with path.open(encoding="utf-8") as file:
    assert text_set.num_lines == sum(1 for _ in file)


def test_text_set_keeps_text_unchanged(shared_data):
  text_set = perplexity_data.load_text_set("ptb_test", data_dir=shared_data)

  assert text_set.text.startswith(" no it was n't black monday \n but while")
  assert text_set.text.endswith("\n")
  assert text_set.path == shared_data / "ptb/ptb.test.txt"
  assert text_set.counts()["num_words_for_perplexity"] == 82_430


def test_wikitext_counts_blank_lines(shared_data):
  text_set = perplexity_data.load_text_set(
      "wikitext2_test", data_dir=shared_data
  )

  blank_lines = sum(
      1 for line in text_set.text.split("\n")[:-1] if not line.strip()
  )
  assert blank_lines == 1_467
  # Blank lines count an <eos> each, as in pytorch/examples.
  assert text_set.num_eos == text_set.num_lines == 4_358


def test_ptb_gpt2_token_count(shared_data):
  gpt2 = _load_gpt2(str(shared_data / "gpt2_bpe"))
  text_set = perplexity_data.load_text_set("ptb_test", data_dir=shared_data)

  ids = gpt2.encode(text_set.text)

  # tests/test_tokenizers.py pins the same count, taken from tiktoken 0.14.0's
  # "gpt2" encoding.
  assert len(ids) == 105_243
  # Every PTB line starts with " " and ends with " \n", so no BPE piece
  # crosses a line end and encoding line by line gives the same count.
  lines = text_set.text.splitlines(keepends=True)
  assert sum(len(gpt2.encode(line)) for line in lines) == 105_243
  assert gpt2.decode(ids) == text_set.text


def test_ptb_gpt2_windows_score_every_token(shared_data):
  gpt2 = _load_gpt2(str(shared_data / "gpt2_bpe"))
  text_set = perplexity_data.load_text_set("ptb_test", data_dir=shared_data)
  ids = gpt2.encode(text_set.text)

  result = perplexity_data.windows(ids, block_size=1024, stride=512)

  assert int(result.scored.sum()) == 105_243
  assert result.num_windows == 1 + -(-(105_243 - 1024) // 512)
  assert np.array_equal(result.tokens[result.scored], ids)
  assert result.settings() == {
      "block_size": 1024,
      "stride": 512,
      "last_window": "pad",
      "num_windows": result.num_windows,
      "num_tokens": 105_243,
      "min_left_context": 512,
  }


def test_plain_text_file(tmp_path):
  path = tmp_path / "notes.txt"
  path.write_text("a b\n\nc dé", encoding="utf-8")

  text_set = perplexity_data.load_text_set(path)

  assert text_set.name == str(path)
  assert text_set.num_chars == 9
  assert text_set.num_bytes == 10
  assert text_set.num_lines == 3
  assert text_set.num_words == 4
  assert text_set.num_eos == 0
  assert text_set.num_words_for_perplexity == 4
  assert text_set.word_convention == perplexity_data.WORDS_ONLY


@pytest.mark.parametrize("content", ["", " \n\t\n"])
def test_empty_file_raises(tmp_path, content):
  path = tmp_path / "empty.txt"
  path.write_text(content, encoding="utf-8")

  with pytest.raises(ValueError, match="empty evaluation set is an error"):
    perplexity_data.load_text_set(path)


def test_invalid_utf8_raises(tmp_path):
  path = tmp_path / "latin1.txt"
  path.write_bytes("caf\xe9".encode("latin-1"))

  with pytest.raises(ValueError, match="not valid UTF-8"):
    perplexity_data.load_text_set(path)


def test_unknown_name_raises(tmp_path):
  with pytest.raises(FileNotFoundError, match="neither a text set"):
    perplexity_data.load_text_set("ptb_train", data_dir=tmp_path)


def test_missing_registry_file_names_env(tmp_path, monkeypatch):
  monkeypatch.setenv(task_files.DATA_DIR_ENV, str(tmp_path))

  with pytest.raises(FileNotFoundError) as error:
    perplexity_data.load_text_set("ptb_test")

  assert str(tmp_path / "ptb/ptb.test.txt") in str(error.value)
  assert task_files.DATA_DIR_ENV in str(error.value)


def test_count_lines():
  assert perplexity_data.count_lines("") == 0
  assert perplexity_data.count_lines("a") == 1
  assert perplexity_data.count_lines("a\n") == 1
  assert perplexity_data.count_lines("a\n\nb") == 3


# ---------------------------------------------------------------------------
# Windows.

_WINDOW_CASES = list(
    itertools.product(
        [1, 5, 8, 9, 10, 17, 64],  # num_tokens
        [1, 3, 8],  # block_size
        [1, 2, 3, 8],  # stride
        perplexity_data.LAST_WINDOW_MODES,
    )
)


@pytest.mark.parametrize(
    "num_tokens, block_size, stride, last_window",
    [case for case in _WINDOW_CASES if case[2] <= case[1]],
)
def test_windows_score_each_token_once(
    num_tokens, block_size, stride, last_window
):
  source = np.arange(100, 100 + num_tokens)

  result = perplexity_data.windows(
      source, block_size, stride, pad_id=-1, last_window=last_window
  )

  positions = result.starts[:, None] + np.arange(block_size)
  assert result.tokens.shape == (result.num_windows, block_size)
  # Each source position is scored exactly once, in order.
  assert np.array_equal(
      np.bincount(positions[result.scored], minlength=num_tokens),
      np.ones(num_tokens),
  )
  assert np.array_equal(result.tokens[result.scored], source)
  # Valid positions contain the source tokens, padding contains pad_id.
  valid_positions = positions[result.valid]
  assert np.array_equal(result.tokens[result.valid], source[valid_positions])
  assert np.all(result.tokens[~result.valid] == -1)
  assert np.all(result.valid[result.scored])
  # Tokens scored after the first window see block_size - stride left context.
  for row in range(1, result.num_windows):
    columns = np.flatnonzero(result.scored[row])
    assert columns.min() >= block_size - stride


@pytest.mark.parametrize("num_tokens", [8, 9, 24, 25])
def test_windows_stride_equal_block_do_not_overlap(num_tokens):
  result = perplexity_data.windows(np.arange(num_tokens), 8, 8)

  positions = result.starts[:, None] + np.arange(8)
  assert np.array_equal(result.scored, result.valid)
  assert np.array_equal(np.sort(positions[result.valid]), np.arange(num_tokens))
  assert list(result.starts) == list(range(0, num_tokens, 8))


def test_windows_align_end_avoids_padding():
  result = perplexity_data.windows(
      np.arange(11), 4, 4, last_window="align_end"
  )

  assert list(result.starts) == [0, 4, 7]
  assert result.valid.all()
  assert result.scored[2].tolist() == [False, True, True, True]


def test_windows_short_sequence_is_padded():
  for last_window in perplexity_data.LAST_WINDOW_MODES:
    result = perplexity_data.windows(
        np.array([7, 8, 9]), 5, 2, pad_id=0, last_window=last_window
    )

    assert result.tokens.tolist() == [[7, 8, 9, 0, 0]]
    assert result.valid.tolist() == [[True, True, True, False, False]]
    assert result.scored.tolist() == result.valid.tolist()


def test_windows_sliding_example():
  result = perplexity_data.windows(np.arange(10), 4, 2)

  assert list(result.starts) == [0, 2, 4, 6]
  assert result.scored.astype(int).tolist() == [
      [1, 1, 1, 1],
      [0, 0, 1, 1],
      [0, 0, 1, 1],
      [0, 0, 1, 1],
  ]


@pytest.mark.parametrize(
    "tokens, block_size, stride, last_window, message",
    [
        (np.arange(0), 4, 4, "pad", "empty evaluation set"),
        (np.zeros((2, 3)), 4, 4, "pad", "must be 1-D"),
        (np.arange(5), 0, 1, "pad", "block_size must be at least 1"),
        (np.arange(5), 4, 5, "pad", "stride must be in"),
        (np.arange(5), 4, 0, "pad", "stride must be in"),
        (np.arange(5), 4, 4, "wrap", "unknown last_window"),
    ],
)
def test_windows_invalid_arguments(
    tokens, block_size, stride, last_window, message
):
  with pytest.raises(ValueError, match=message):
    perplexity_data.windows(tokens, block_size, stride, last_window=last_window)
