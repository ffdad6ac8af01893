"""Perplexity evaluation texts (PTB, WikiText-2, any text file) and windows.

`load_text_set` reads a text with the counts that perplexities are normalised
by: characters, UTF-8 bytes and words. `windows` cuts a token sequence into
fixed-size windows for sliding-window scoring, in which every token is scored
exactly once.

Word counts follow the word-level language-modelling convention of
pytorch/examples word_language_model (`data.py`): a line's words are
`line.split()` plus one `<eos>` for the end of the line, and every line
counts, including blank ones. This gives PTB test 82,430 (78,669 words +
3,761 `<eos>`), PTB valid 73,760, WikiText-2 test 245,569 (241,211 + 4,358)
and WikiText-2 valid 217,646. A plain text file counts its whitespace-separated
words only, without `<eos>`.

The WikiText-2 files are the tokenised v1 release, with `<unk>` and split
punctuation such as "@-@". Perplexities on them are not comparable with those
on wikitext-2-raw-v1.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

import numpy as np

from catflow.evaluate import task_files

# Name -> path relative to the data folder. All use the per-line <eos> count.
TEXT_SETS: dict[str, str] = {
    "ptb_test": "ptb/ptb.test.txt",
    "ptb_valid": "ptb/ptb.valid.txt",
    "wikitext2_test": "wikitext2_tokens/wiki.test.tokens",
    "wikitext2_valid": "wikitext2_tokens/wiki.valid.tokens",
}

WORDS_WITH_EOS = "words per line (str.split) plus one <eos> per line"
WORDS_ONLY = "whitespace-separated words (str.split), no <eos>"

LAST_WINDOW_MODES = ("pad", "align_end")


@dataclasses.dataclass(frozen=True)
class TextSet:
  """An evaluation text and its counts.

  Attributes:
    name: Registry name, or the file path for a plain text file.
    path: The file read.
    text: The file's content, decoded as UTF-8 and otherwise unchanged.
    num_chars: Characters of `text`.
    num_bytes: UTF-8 bytes of `text`, equal to the file size.
    num_lines: Lines, counting a final line without a newline.
    num_words: Whitespace-separated words of `text`.
    num_eos: End-of-line tokens counted as words: `num_lines` for the
      registry sets, 0 for plain text files.
    word_convention: How `num_words_for_perplexity` is counted.
  """

  name: str
  path: pathlib.Path
  text: str
  num_chars: int
  num_bytes: int
  num_lines: int
  num_words: int
  num_eos: int
  word_convention: str

  @property
  def num_words_for_perplexity(self) -> int:
    """Word-level perplexity denominator: `num_words + num_eos`."""
    return self.num_words + self.num_eos

  def counts(self) -> dict[str, Any]:
    """Returns the counts as a JSON-serialisable dict for result files."""
    return {
        "name": self.name,
        "path": str(self.path),
        "num_chars": self.num_chars,
        "num_bytes": self.num_bytes,
        "num_lines": self.num_lines,
        "num_words": self.num_words,
        "num_eos": self.num_eos,
        "num_words_for_perplexity": self.num_words_for_perplexity,
        "word_convention": self.word_convention,
    }


def count_lines(text: str) -> int:
  """Counts lines as iterating over a file does: a final partial line counts."""
  num_lines = text.count("\n")
  if text and not text.endswith("\n"):
    num_lines += 1
  return num_lines


def load_text_set(
    name: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None = None,
) -> TextSet:
  """Reads an evaluation text and counts its characters, bytes and words.

  Args:
    name: A key of `TEXT_SETS`, or the path of any UTF-8 text file.
    data_dir: The data folder for registry names. None reads CATFLOW_DATA_DIR.

  Returns:
    The text and its counts.

  Raises:
    FileNotFoundError: The file does not exist.
    ValueError: The name is neither a registry name nor an existing file, the
      file is not UTF-8, or it contains no words.
  """
  key = os.fspath(name)
  if key in TEXT_SETS:
    relative = TEXT_SETS[key]
    path = task_files.resolve_data_dir(data_dir) / relative
    if not path.is_file():
      source = (
          "data_dir"
          if data_dir is not None
          else f"{task_files.DATA_DIR_ENV} (or data_dir=)"
      )
      raise FileNotFoundError(
          f"{key} file {path} not found; {source} must name the folder that"
          f" contains {relative}"
      )
    eos_per_line = True
  else:
    path = pathlib.Path(key).expanduser()
    if not path.is_file():
      raise FileNotFoundError(
          f"{key!r} is neither a text set ({sorted(TEXT_SETS)}) nor an"
          " existing file; pass a registry name or the path of a text file"
      )
    eos_per_line = False

  data = path.read_bytes()
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as error:
    raise ValueError(f"{path} is not valid UTF-8: {error}") from error
  num_words = len(text.split())
  if num_words == 0:
    raise ValueError(
        f"{path} contains no words; an empty evaluation set is an error,"
        " never a number"
    )

  num_lines = count_lines(text)
  return TextSet(
      name=key,
      path=path,
      text=text,
      num_chars=len(text),
      num_bytes=len(data),
      num_lines=num_lines,
      num_words=num_words,
      num_eos=num_lines if eos_per_line else 0,
      word_convention=WORDS_WITH_EOS if eos_per_line else WORDS_ONLY,
  )


@dataclasses.dataclass(frozen=True, eq=False)
class Windows:
  """Fixed-size windows over a token sequence for sliding-window scoring.

  Row k contains tokens `starts[k]` to `starts[k] + block_size - 1` of the
  source. `scored[k]` marks the tokens that row k scores, and every other
  valid token of the row is left context. Over all rows, each source token is
  scored exactly once, and concatenating `tokens[scored]` row by row gives the
  source back.

  Attributes:
    tokens: int32 [num_windows, block_size]; `pad_id` where not `valid`.
    scored: bool [num_windows, block_size], the tokens each window scores.
    valid: bool [num_windows, block_size], False on padding after the end of
      the source.
    starts: int64 [num_windows], source position of each window's first token.
    block_size: Tokens per window.
    stride: Distance between consecutive window starts.
    num_tokens: Length of the source sequence.
    last_window: "pad" or "align_end", see `windows`.
  """

  tokens: np.ndarray
  scored: np.ndarray
  valid: np.ndarray
  starts: np.ndarray
  block_size: int
  stride: int
  num_tokens: int
  last_window: str

  @property
  def num_windows(self) -> int:
    return int(self.tokens.shape[0])

  def settings(self) -> dict[str, Any]:
    """Returns the window settings to store beside a perplexity result."""
    return {
        "block_size": self.block_size,
        "stride": self.stride,
        "last_window": self.last_window,
        "num_windows": self.num_windows,
        "num_tokens": self.num_tokens,
        # Tokens scored outside the first window have at least this many
        # tokens of left context.
        "min_left_context": self.block_size - self.stride,
    }


def windows(
    tokens: np.ndarray,
    block_size: int,
    stride: int,
    *,
    pad_id: int = 0,
    last_window: str = "pad",
) -> Windows:
  """Cuts `tokens` into windows so that each token is scored exactly once.

  Window k starts at k * stride. The first window scores all its tokens, and
  each later window scores the tokens after the end of the previous one, so
  with `stride < block_size` every token scored after the first window has at
  least `block_size - stride` tokens of left context. `stride == block_size`
  gives non-overlapping blocks.

  Args:
    tokens: 1-D token ids.
    block_size: Tokens per window.
    stride: Distance between window starts, 1 <= stride <= block_size.
    pad_id: Id placed in the padding positions (`valid` is False there).
    last_window: "pad" keeps the last window at k * stride and pads it on the
      right. "align_end" moves it left to end at the last token, so it has no
      padding and more left context, but overlaps the previous window. Both
      pad when the sequence is shorter than `block_size`.

  Returns:
    The windows and the settings used.

  Raises:
    ValueError: Empty or non-1-D `tokens`, or invalid sizes or mode.
  """
  tokens = np.asarray(tokens)
  if tokens.ndim != 1:
    raise ValueError(f"tokens must be 1-D, got shape {tokens.shape}")
  if tokens.size == 0:
    raise ValueError(
        "tokens is empty; an empty evaluation set is an error, never a number"
    )
  if block_size < 1:
    raise ValueError(f"block_size must be at least 1, got {block_size}")
  if not 1 <= stride <= block_size:
    raise ValueError(
        f"stride must be in [1, block_size={block_size}], got {stride}; a"
        " larger stride would skip tokens"
    )
  if last_window not in LAST_WINDOW_MODES:
    raise ValueError(
        f"unknown last_window {last_window!r}; use one of"
        f" {list(LAST_WINDOW_MODES)}"
    )

  num_tokens = tokens.size
  num_windows = 1 + -(-max(0, num_tokens - block_size) // stride)
  starts = np.arange(num_windows, dtype=np.int64) * stride
  if last_window == "align_end":
    starts = np.minimum(starts, max(0, num_tokens - block_size))
  ends = np.minimum(starts + block_size, num_tokens)
  # Each window scores from where the previous window's tokens end.
  first_scored = np.concatenate([[0], ends[:-1]])

  positions = starts[:, None] + np.arange(block_size, dtype=np.int64)
  valid = positions < num_tokens
  window_tokens = np.where(
      valid, tokens[np.minimum(positions, num_tokens - 1)], pad_id
  ).astype(np.int32)
  scored = valid & (positions >= first_scored[:, None])
  return Windows(
      tokens=window_tokens,
      scored=scored,
      valid=valid,
      starts=starts,
      block_size=block_size,
      stride=stride,
      num_tokens=num_tokens,
      last_window=last_window,
  )
