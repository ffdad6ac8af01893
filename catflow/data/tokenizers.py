"""Tokenizers that map text to int32 token ids and back.

Four kinds are provided:

* `CharTokenizer` ("char"): one id per character of a fixed alphabet, plus a
  final `<unk>` id for every character outside it.
* `ByteTokenizer` ("byte"): one id per byte of the UTF-8 encoding (256 ids),
  so every text is covered and bits per token are bits per byte.
* `GPT2BPETokenizer` ("gpt2_bpe"): GPT-2's byte-level BPE, read from OpenAI's
  `encoder.json` + `vocab.bpe` (or the same files under their Hugging Face
  names `vocab.json` + `merges.txt`).
* `SentencePieceTokenizer` ("sentencepiece"): a trained SentencePiece
  `.model` file (needs the `spm` extra).

Every tokenizer has `spec()`, a JSON-serialisable description that
`tokenizer_from_spec` turns back into an identical tokenizer, and
`identity()`, the fields that `check_same_tokenizer` compares to decide
whether two tokenizers are the same.
"""

from __future__ import annotations

import abc
import collections
from collections.abc import Iterable, Mapping, Sequence
import dataclasses
import functools
import hashlib
import json
import os
import pathlib
from typing import Any

from absl import logging
import numpy as np
import regex

# A GPT-2 vocabulary has one token per byte, one per merge and this end-of-text
# token, whose id is the last one (50256).
GPT2_EOS_TOKEN = "<|endoftext|>"

# Pre-tokenisation pattern of openai/gpt-2 src/encoder.py. It splits text into
# contractions, letter runs, digit runs, other symbols and whitespace. BPE
# merges never cross the boundaries of these pieces.
_GPT2_SPLIT_PATTERN = (
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+"""
    r"""|\s+(?!\S)|\s+"""
)

# File-name pairs that `GPT2BPETokenizer.from_dir` looks for, in order:
# OpenAI's release names, then the Hugging Face names of the same files.
GPT2_FILE_NAMES = (("encoder.json", "vocab.bpe"), ("vocab.json", "merges.txt"))

KNOWN_TOKENIZER_KINDS = ("char", "byte", "gpt2_bpe", "sentencepiece")

_UNICODE_REPLACEMENT_CHARACTER = 0xFFFD
_DEFAULT_BPE_CACHE_SIZE = 1 << 16


def _canonical_json_sha256(value: Any) -> str:
  """Returns the sha256 hex digest of `value` as sorted, compact ASCII JSON."""
  text = json.dumps(
      value, sort_keys=True, separators=(",", ":"), ensure_ascii=True
  )
  return hashlib.sha256(text.encode("ascii")).hexdigest()


def _file_sha256(path: pathlib.Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


def _as_id_array(ids: Any, vocab_size: int) -> np.ndarray:
  """Converts `ids` to a 1-D int64 array and checks that each id is in range."""
  array = np.asarray(ids)
  if array.ndim != 1:
    raise ValueError(
        f"decode expects a 1-D sequence of token ids, got shape {array.shape}; "
        "decode one sequence at a time"
    )
  if array.size == 0:
    return np.zeros((0,), dtype=np.int64)
  if not np.issubdtype(array.dtype, np.integer):
    raise ValueError(
        f"decode expects integer token ids, got dtype {array.dtype}; "
        "cast the ids to an integer type first"
    )
  array = array.astype(np.int64)
  out_of_range = np.flatnonzero((array < 0) | (array >= vocab_size))
  if out_of_range.size:
    position = int(out_of_range[0])
    raise ValueError(
        f"token id {int(array[position])} at position {position} is outside the"
        f" vocabulary [0, {vocab_size}); {out_of_range.size} ids are out of"
        " range. Decode ids produced by this tokenizer, or drop padding ids"
        " first"
    )
  return array


class Tokenizer(abc.ABC):
  """Base class of catflow tokenizers.

  Attributes:
    name: Tokenizer kind, one of `KNOWN_TOKENIZER_KINDS`.
    vocab_size: Number of token ids. Ids are 0 .. vocab_size - 1.
    special_ids: Special-token role (such as "unk" or "eos") to token id.
  """

  name: str
  vocab_size: int
  special_ids: dict[str, int]

  @abc.abstractmethod
  def encode(self, text: str) -> np.ndarray:
    """Encodes `text` as a 1-D int32 array of token ids."""

  @abc.abstractmethod
  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    """Decodes a 1-D sequence of token ids (list or array) to text."""

  @abc.abstractmethod
  def spec(self) -> dict[str, Any]:
    """Returns a JSON-serialisable description for `tokenizer_from_spec`."""

  @abc.abstractmethod
  def _vocabulary_json(self) -> Any:
    """Returns the JSON value that `vocab_hash` digests."""

  def encode_batch(self, texts: Iterable[str]) -> list[np.ndarray]:
    """Encodes each text separately and returns one id array per text."""
    return [self.encode(text) for text in texts]

  @functools.cached_property
  def vocab_hash(self) -> str:
    """Sha256 hex digest of the canonical JSON of the vocabulary."""
    return _canonical_json_sha256(self._vocabulary_json())

  def identity(self) -> dict[str, Any]:
    """Returns the fields that `check_same_tokenizer` compares."""
    return {
        "name": self.name,
        "vocab_size": self.vocab_size,
        "vocab_hash": self.vocab_hash,
        "special_ids": dict(self.special_ids),
    }

  def __repr__(self) -> str:
    return (
        f"{type(self).__name__}(vocab_size={self.vocab_size}, "
        f"special_ids={self.special_ids})"
    )


class CharTokenizer(Tokenizer):
  """Character-level tokenizer over a fixed, ordered alphabet.

  Character `chars[i]` has id i. The last id, `len(chars)`, is `<unk>`: it
  encodes every character outside the alphabet and decodes to U+FFFD.
  """

  name = "char"

  def __init__(self, chars: str):
    """Builds the tokenizer from an ordered string of distinct characters.

    Args:
      chars: The alphabet. Character i gets id i.

    Raises:
      TypeError: `chars` is not a str.
      ValueError: `chars` is empty or contains a character twice.
    """
    if not isinstance(chars, str):
      raise TypeError(
          "chars must be a str of distinct characters, got"
          f" {type(chars).__name__}"
      )
    if not chars:
      raise ValueError(
          "chars is empty; pass at least one character, or build the alphabet "
          "from a corpus with CharTokenizer.from_text(text)"
      )
    duplicates = [
        char for char, count in collections.Counter(chars).items() if count > 1
    ]
    if duplicates:
      raise ValueError(
          f"chars contains duplicate characters {duplicates[:10]!r} "
          f"({len(duplicates)} in total); pass each character once, or use "
          "CharTokenizer.from_text(text) to build a sorted alphabet"
      )

    self._chars = chars
    self.unk_id = len(chars)
    self.vocab_size = len(chars) + 1
    self.special_ids = {"unk": self.unk_id}

    # Lookup table from Unicode code point to id, up to the largest code point
    # in the alphabet. Larger code points are mapped to <unk> in `encode`.
    code_points = np.array([ord(char) for char in chars], dtype=np.int64)
    self._encode_table = np.full(
        int(code_points.max()) + 1, self.unk_id, dtype=np.int32
    )
    self._encode_table[code_points] = np.arange(len(chars), dtype=np.int32)
    self._decode_table = np.append(
        code_points, _UNICODE_REPLACEMENT_CHARACTER
    ).astype("<u4")

  @classmethod
  def from_text(cls, text: str) -> CharTokenizer:
    """Builds the tokenizer whose alphabet is the sorted characters in text."""
    if not isinstance(text, str):
      raise TypeError(f"text must be a str, got {type(text).__name__}")
    if not text:
      raise ValueError(
          "text is empty, so it defines no characters; pass the training "
          "corpus text, or an explicit alphabet with CharTokenizer(chars)"
      )
    return cls("".join(sorted(set(text))))

  @property
  def chars(self) -> str:
    """The alphabet in id order, without `<unk>`."""
    return self._chars

  def encode(self, text: str) -> np.ndarray:
    if not isinstance(text, str):
      raise TypeError(
          f"encode expects a str, got {type(text).__name__}; decode bytes to "
          "str before encoding"
      )
    # "surrogatepass" keeps lone surrogates, which a Python str may contain, as
    # their own code points instead of raising.
    code_points = np.frombuffer(
        text.encode("utf-32-le", "surrogatepass"), dtype="<u4"
    )
    table_size = self._encode_table.shape[0]
    ids = self._encode_table[np.minimum(code_points, table_size - 1)]
    ids[code_points >= table_size] = self.unk_id
    return ids

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    array = _as_id_array(ids, self.vocab_size)
    return (
        self._decode_table[array].tobytes().decode("utf-32-le", "surrogatepass")
    )

  def spec(self) -> dict[str, Any]:
    return {
        "name": self.name,
        "chars": self._chars,
        "vocab_hash": self.vocab_hash,
    }

  def _vocabulary_json(self) -> Any:
    return {"tokens": list(self._chars) + ["<unk>"]}


class ByteTokenizer(Tokenizer):
  """Byte-level tokenizer: id i is the byte value i of the text's UTF-8 encoding.

  Decoding replaces byte sequences that are not valid UTF-8 (such as a
  character cut at a window edge) with U+FFFD.
  """

  name = "byte"
  vocab_size = 256

  def __init__(self):
    self.special_ids = {}

  def encode(self, text: str) -> np.ndarray:
    if not isinstance(text, str):
      raise TypeError(
          f"encode expects a str, got {type(text).__name__}; decode bytes to "
          "str before encoding"
      )
    data = text.encode("utf-8", "surrogatepass")
    return np.frombuffer(data, dtype=np.uint8).astype(np.int32)

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    array = _as_id_array(ids, self.vocab_size)
    return array.astype(np.uint8).tobytes().decode("utf-8", "replace")

  def spec(self) -> dict[str, Any]:
    return {"name": self.name, "vocab_hash": self.vocab_hash}

  def _vocabulary_json(self) -> Any:
    return {"bytes": self.vocab_size, "encoding": "utf-8"}


class SentencePieceTokenizer(Tokenizer):
  """A SentencePiece model read from a local `.model` file.

  The ids, the special ids (unk, bos, eos, pad where the model defines them)
  and the text normalisation are the model's own, so `decode(encode(text))`
  equals `text` only for models trained without normalisation (for example
  `normalization_rule_name="identity"`, `add_dummy_prefix=False` and byte
  fallback). Special-token strings such as "<s>" in the text are encoded as
  ordinary text, never as their special ids. The vocabulary hash is that of
  the model file, so two models match only when their files are identical.
  """

  name = "sentencepiece"

  def __init__(self, model_file: str | os.PathLike[str]):
    try:
      import sentencepiece  # pylint: disable=import-outside-toplevel
    except ImportError as error:
      raise ImportError(
          "the sentencepiece tokenizer needs the sentencepiece package; install "
          "it with pip install -e '.[spm]'"
      ) from error
    path = pathlib.Path(model_file).expanduser()
    if not path.is_file():
      raise FileNotFoundError(
          f"SentencePiece model {path} not found; pass the path of a trained "
          ".model file as data.tokenizer_path"
      )
    data = path.read_bytes()
    try:
      self._processor = sentencepiece.SentencePieceProcessor(model_proto=data)
    except RuntimeError as error:
      raise ValueError(
          f"{path} is not a valid SentencePiece model ({error}); pass the .model "
          "file written by SentencePieceTrainer"
      ) from error
    self.model_file = path.absolute()
    self.model_sha256 = hashlib.sha256(data).hexdigest()
    self.vocab_size = int(self._processor.vocab_size())
    roles = {"unk": self._processor.unk_id(), "bos": self._processor.bos_id(),
             "eos": self._processor.eos_id(), "pad": self._processor.pad_id()}
    self.special_ids = {role: int(index) for role, index in roles.items() if index >= 0}

  def encode(self, text: str) -> np.ndarray:
    if not isinstance(text, str):
      raise TypeError(
          f"encode expects a str, got {type(text).__name__}; decode bytes to "
          "str before encoding"
      )
    return np.asarray(self._processor.encode(text, out_type=int), dtype=np.int32)

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    array = _as_id_array(ids, self.vocab_size)
    return self._processor.decode(array.tolist())

  def spec(self) -> dict[str, Any]:
    return {
        "name": self.name,
        "model_file": str(self.model_file),
        "model_sha256": self.model_sha256,
        "vocab_hash": self.vocab_hash,
    }

  def _vocabulary_json(self) -> Any:
    return {"sentencepiece_model_sha256": self.model_sha256}


def _sentencepiece_from_spec(
    spec: Mapping[str, Any], search_dirs: Sequence[str | os.PathLike[str]]
) -> SentencePieceTokenizer:
  """Finds the model file whose sha256 matches `spec` and loads it."""
  try:
    recorded = pathlib.Path(spec["model_file"])
    expected_sha256 = spec["model_sha256"]
  except KeyError as error:
    raise ValueError(
        f"sentencepiece spec is missing {error.args[0]!r}; pass the dict "
        "returned by SentencePieceTokenizer.spec()"
    ) from error
  candidates = [recorded] + [
      pathlib.Path(directory).expanduser() / recorded.name
      for directory in search_dirs
  ]
  tried = []
  for candidate in candidates:
    if not candidate.is_file():
      tried.append(f"{candidate}: not found")
      continue
    found_sha256 = _file_sha256(candidate)
    if found_sha256 == expected_sha256:
      return SentencePieceTokenizer(candidate)
    tried.append(f"{candidate}: found sha256 {found_sha256}")
  tried_lines = "\n".join(f"  {line}" for line in tried)
  raise FileNotFoundError(
      f"No SentencePiece model matches the tokenizer spec (sha256 "
      f"{expected_sha256}). Tried:\n{tried_lines}\nPass search_dirs=[DIR] with "
      f"a directory that contains the original {recorded.name}."
  )


@functools.cache
def _gpt2_split_regex() -> regex.Pattern:
  return regex.compile(_GPT2_SPLIT_PATTERN)


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
  """Returns GPT-2's reversible map from byte values to printable characters.

  Printable Latin-1 bytes map to themselves. The other 68 bytes (0x00-0x20,
  0x7F-0xA0 and 0xAD) map to U+0100 onwards, in byte order, so that BPE tokens
  never contain whitespace or control characters.
  This is `bytes_to_unicode` of openai/gpt-2 src/encoder.py.
  """
  printable = (
      list(range(ord("!"), ord("~") + 1))
      + list(
          range(ord("\N{INVERTED EXCLAMATION MARK}"), ord("\N{NOT SIGN}") + 1)
      )
      + list(
          range(
              ord("\N{REGISTERED SIGN}"),
              ord("\N{LATIN SMALL LETTER Y WITH DIAERESIS}") + 1,
          )
      )
  )
  byte_values = list(printable)
  code_points = list(printable)
  next_code_point = 256
  for byte in range(256):
    if byte not in printable:
      byte_values.append(byte)
      code_points.append(next_code_point)
      next_code_point += 1
  return dict(zip(byte_values, map(chr, code_points)))


@dataclasses.dataclass(frozen=True)
class GPT2Files:
  """Paths and sha256 hex digests of the two files of a GPT-2 BPE vocabulary."""

  encoder_json: pathlib.Path
  vocab_bpe: pathlib.Path
  encoder_json_sha256: str
  vocab_bpe_sha256: str


def _parse_encoder_json(data: bytes, label: str) -> dict[str, int]:
  try:
    encoder = json.loads(data.decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as error:
    raise ValueError(
        f"{label} is not valid UTF-8 JSON ({error}); pass GPT-2's encoder.json "
        "(Hugging Face name vocab.json)"
    ) from error
  if not isinstance(encoder, dict) or not all(
      isinstance(token, str)
      and isinstance(token_id, int)
      and not isinstance(token_id, bool)
      for token, token_id in encoder.items()
  ):
    raise ValueError(
        f"{label} must be a JSON object mapping token strings to integer ids; "
        "pass GPT-2's encoder.json (Hugging Face name vocab.json)"
    )
  return encoder


def _parse_vocab_bpe(data: bytes, label: str) -> list[tuple[str, str]]:
  """Parses merges: an optional "#version" line, then one "a b" pair a line."""
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as error:
    raise ValueError(
        f"{label} is not valid UTF-8 ({error}); pass GPT-2's vocab.bpe "
        "(Hugging Face name merges.txt)"
    ) from error
  merges = []
  for line_number, line in enumerate(text.split("\n"), start=1):
    line = line.rstrip("\r")
    if not line or (line_number == 1 and line.startswith("#version")):
      continue
    parts = line.split(" ")
    if len(parts) != 2 or not parts[0] or not parts[1]:
      raise ValueError(
          f"{label} line {line_number} is {line!r}, but each merge line must be"
          " two tokens separated by one space; pass GPT-2's vocab.bpe (Hugging"
          " Face name merges.txt)"
      )
    merges.append((parts[0], parts[1]))
  return merges


def _validate_bpe_tables(
    encoder: Mapping[str, int],
    merges: Sequence[tuple[str, str]],
    encoder_label: str,
    merges_label: str,
) -> None:
  """Raises ValueError unless `encoder` and `merges` form a GPT-2 vocabulary."""
  fix = "pass the matching pair of GPT-2 files"
  expected_size = 256 + len(merges) + 1
  if len(encoder) != expected_size:
    raise ValueError(
        f"{encoder_label} has {len(encoder)} entries but {merges_label} implies"
        f" {expected_size} (256 bytes + {len(merges)} merges +"
        f" {GPT2_EOS_TOKEN}); {fix}"
    )
  if GPT2_EOS_TOKEN not in encoder:
    raise ValueError(f"{encoder_label} has no {GPT2_EOS_TOKEN!r} entry; {fix}")
  if sorted(encoder.values()) != list(range(len(encoder))):
    raise ValueError(
        f"{encoder_label} ids are not exactly 0..{len(encoder) - 1}, each used "
        f"once; {fix}"
    )
  missing_bytes = [
      char for char in bytes_to_unicode().values() if char not in encoder
  ]
  if missing_bytes:
    raise ValueError(
        f"{encoder_label} lacks {len(missing_bytes)} single-byte tokens, e.g. "
        f"{missing_bytes[:5]!r}; {fix}"
    )
  if len(set(merges)) != len(merges):
    raise ValueError(
        f"{merges_label} lists the same merge more than once; {fix}"
    )
  for rank, (first, second) in enumerate(merges):
    if first + second not in encoder:
      raise ValueError(
          f"merge {rank} ({first!r} + {second!r}) of {merges_label} produces "
          f"{first + second!r}, which is not in {encoder_label}; {fix}"
      )


class GPT2BPETokenizer(Tokenizer):
  """GPT-2 byte-level BPE tokenizer.

  Text is split by GPT-2's pre-tokenisation regex, each piece's UTF-8 bytes
  are mapped to printable characters with `bytes_to_unicode`, and merges are
  applied in rank order, as in openai/gpt-2 src/encoder.py. The tests compare
  the ids with tiktoken 0.14's GPT-2 encoding on PTB, WikiText-2 and
  tiny-shakespeare.

  `<|endoftext|>` has id 50256 (special id "eos"). The literal string
  "<|endoftext|>" inside input text is encoded as ordinary BPE pieces, never
  as 50256, so text cannot inject an end-of-text token. Decoding 50256 gives
  the literal string back.
  """

  name = "gpt2_bpe"

  def __init__(
      self,
      encoder: Mapping[str, int],
      merges: Sequence[tuple[str, str]],
      *,
      files: GPT2Files | None = None,
      cache_size: int = _DEFAULT_BPE_CACHE_SIZE,
  ):
    """Builds the tokenizer from parsed vocabulary tables.

    Most callers should use `from_dir` or `from_files`, which also record the
    files so that `spec()` works.

    Args:
      encoder: Token string (in `bytes_to_unicode` characters) to id.
      merges: Merge pairs, highest priority first.
      files: The files the tables were read from. `spec()` needs them.
      cache_size: Maximum number of pre-tokenised pieces whose ids are cached.
    """
    _validate_bpe_tables(encoder, merges, "encoder", "merges")
    self._encoder = dict(encoder)
    self._merges = [tuple(merge) for merge in merges]
    self._files = files
    self.vocab_size = len(self._encoder)
    self.eos_id = self._encoder[GPT2_EOS_TOKEN]
    self.special_ids = {"eos": self.eos_id}

    self._merge_ranks = {merge: rank for rank, merge in enumerate(self._merges)}
    self._byte_encoder = bytes_to_unicode()
    byte_decoder = {char: byte for byte, char in self._byte_encoder.items()}
    tokens = sorted(self._encoder, key=self._encoder.__getitem__)
    self._id_to_bytes = [
        bytes(byte_decoder[char] for char in token) for token in tokens
    ]
    # Per-instance cache of piece -> ids. Text repeats pieces heavily, so most
    # lookups skip the BPE merge loop.
    self._encode_piece = functools.lru_cache(maxsize=cache_size)(
        self._encode_piece_uncached
    )

  @classmethod
  def from_files(
      cls,
      encoder_json: str | os.PathLike[str],
      vocab_bpe: str | os.PathLike[str],
      *,
      cache_size: int = _DEFAULT_BPE_CACHE_SIZE,
  ) -> GPT2BPETokenizer:
    """Reads `encoder.json` (token -> id) and `vocab.bpe` (merge list)."""
    encoder_path = pathlib.Path(encoder_json).expanduser().resolve()
    vocab_bpe_path = pathlib.Path(vocab_bpe).expanduser().resolve()
    for path in (encoder_path, vocab_bpe_path):
      if not path.is_file():
        raise FileNotFoundError(
            f"GPT-2 BPE file {path} does not exist; pass the paths of "
            "encoder.json and vocab.bpe (Hugging Face names vocab.json and "
            "merges.txt)"
        )
    encoder_data = encoder_path.read_bytes()
    vocab_bpe_data = vocab_bpe_path.read_bytes()
    encoder_label = f"encoder.json at {encoder_path}"
    merges_label = f"vocab.bpe at {vocab_bpe_path}"
    encoder = _parse_encoder_json(encoder_data, encoder_label)
    merges = _parse_vocab_bpe(vocab_bpe_data, merges_label)
    _validate_bpe_tables(encoder, merges, encoder_label, merges_label)

    files = GPT2Files(
        encoder_json=encoder_path,
        vocab_bpe=vocab_bpe_path,
        encoder_json_sha256=hashlib.sha256(encoder_data).hexdigest(),
        vocab_bpe_sha256=hashlib.sha256(vocab_bpe_data).hexdigest(),
    )
    logging.info(
        "Loaded GPT-2 BPE tokenizer: %d tokens, %d merges from %s and %s.",
        len(encoder),
        len(merges),
        encoder_path,
        vocab_bpe_path,
    )
    return cls(encoder, merges, files=files, cache_size=cache_size)

  @classmethod
  def from_dir(
      cls,
      path: str | os.PathLike[str],
      *,
      cache_size: int = _DEFAULT_BPE_CACHE_SIZE,
  ) -> GPT2BPETokenizer:
    """Reads the GPT-2 files from a directory.

    The directory must contain `encoder.json` + `vocab.bpe`, or the Hugging
    Face names `vocab.json` + `merges.txt`. The first pair found wins.
    """
    directory = pathlib.Path(path).expanduser()
    if not directory.is_dir():
      raise FileNotFoundError(
          f"GPT-2 BPE directory {directory} does not exist or is not a "
          "directory; pass the directory that contains encoder.json and "
          "vocab.bpe"
      )
    for encoder_name, vocab_bpe_name in GPT2_FILE_NAMES:
      encoder_path = directory / encoder_name
      vocab_bpe_path = directory / vocab_bpe_name
      if encoder_path.is_file() and vocab_bpe_path.is_file():
        return cls.from_files(
            encoder_path, vocab_bpe_path, cache_size=cache_size
        )
    pairs = " or ".join(
        f"{encoder} + {bpe}" for encoder, bpe in GPT2_FILE_NAMES
    )
    raise FileNotFoundError(
        f"{directory} contains neither {pairs}; pass the directory that "
        "contains GPT-2's encoder.json and vocab.bpe"
    )

  @property
  def files(self) -> GPT2Files | None:
    """The files this tokenizer was read from, or None if built from tables."""
    return self._files

  def _bpe(self, token: str) -> list[str]:
    """Applies the merges to `token` (in bytes_to_unicode characters).

    Each step merges every occurrence of the adjacent pair with the lowest rank.
    """
    word = list(token)
    while len(word) > 1:
      ranked_pairs = [
          (self._merge_ranks.get(pair, len(self._merge_ranks)), pair)
          for pair in zip(word, word[1:])
      ]
      rank, (first, second) = min(ranked_pairs)
      if rank == len(self._merge_ranks):
        break
      merged = []
      i = 0
      while i < len(word):
        if i + 1 < len(word) and word[i] == first and word[i + 1] == second:
          merged.append(first + second)
          i += 2
        else:
          merged.append(word[i])
          i += 1
      word = merged
    return word

  def _encode_piece_uncached(self, piece: str) -> tuple[int, ...]:
    token = "".join(self._byte_encoder[byte] for byte in piece.encode("utf-8"))
    return tuple(self._encoder[part] for part in self._bpe(token))

  def encode(self, text: str) -> np.ndarray:
    if not isinstance(text, str):
      raise TypeError(
          f"encode expects a str, got {type(text).__name__}; decode bytes to "
          "str before encoding"
      )
    ids = []
    for piece in _gpt2_split_regex().findall(text):
      ids.extend(self._encode_piece(piece))
    return np.array(ids, dtype=np.int32)

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    """Decodes ids to text, replacing incomplete UTF-8 sequences with U+FFFD."""
    array = _as_id_array(ids, self.vocab_size)
    data = b"".join(map(self._id_to_bytes.__getitem__, array.tolist()))
    return data.decode("utf-8", errors="replace")

  def spec(self) -> dict[str, Any]:
    if self._files is None:
      raise ValueError(
          "this GPT2BPETokenizer was built from in-memory tables, so spec() "
          "cannot name its files; build it with GPT2BPETokenizer.from_dir or "
          "from_files"
      )
    return {
        "name": self.name,
        "directory": str(self._files.encoder_json.parent),
        "encoder_json_file": str(self._files.encoder_json),
        "vocab_bpe_file": str(self._files.vocab_bpe),
        "encoder_json_sha256": self._files.encoder_json_sha256,
        "vocab_bpe_sha256": self._files.vocab_bpe_sha256,
        "vocab_hash": self.vocab_hash,
    }

  def _vocabulary_json(self) -> Any:
    # The merges decide how text is split into tokens, so they are part of
    # the identity along with the token list.
    tokens = sorted(self._encoder, key=self._encoder.__getitem__)
    return {
        "tokens": tokens,
        "merges": [f"{first} {second}" for first, second in self._merges],
    }


def _gpt2_from_spec(
    spec: Mapping[str, Any], search_dirs: Sequence[str | os.PathLike[str]]
) -> GPT2BPETokenizer:
  """Finds the files whose sha256 match `spec` and loads them."""
  try:
    expected_encoder_sha256 = spec["encoder_json_sha256"]
    expected_vocab_bpe_sha256 = spec["vocab_bpe_sha256"]
  except KeyError as error:
    raise ValueError(
        f"gpt2_bpe spec is missing {error.args[0]!r}; pass the dict returned by"
        " GPT2BPETokenizer.spec()"
    ) from error

  candidates = []
  if spec.get("encoder_json_file") and spec.get("vocab_bpe_file"):
    candidates.append((
        pathlib.Path(spec["encoder_json_file"]),
        pathlib.Path(spec["vocab_bpe_file"]),
    ))
  directories = [spec["directory"]] if spec.get("directory") else []
  directories.extend(search_dirs)
  for directory in directories:
    for encoder_name, vocab_bpe_name in GPT2_FILE_NAMES:
      directory_path = pathlib.Path(directory).expanduser()
      candidates.append(
          (directory_path / encoder_name, directory_path / vocab_bpe_name)
      )

  tried = []
  seen = set()
  for encoder_path, vocab_bpe_path in candidates:
    if (encoder_path, vocab_bpe_path) in seen:
      continue
    seen.add((encoder_path, vocab_bpe_path))
    if not (encoder_path.is_file() and vocab_bpe_path.is_file()):
      tried.append(f"{encoder_path} + {vocab_bpe_path}: not found")
      continue
    encoder_sha256 = _file_sha256(encoder_path)
    vocab_bpe_sha256 = _file_sha256(vocab_bpe_path)
    if (encoder_sha256, vocab_bpe_sha256) == (
        expected_encoder_sha256,
        expected_vocab_bpe_sha256,
    ):
      return GPT2BPETokenizer.from_files(encoder_path, vocab_bpe_path)
    tried.append(
        f"{encoder_path} + {vocab_bpe_path}: found sha256 {encoder_sha256} and "
        f"{vocab_bpe_sha256}"
    )

  tried_lines = "\n".join(f"  {line}" for line in tried)
  raise FileNotFoundError(
      "No GPT-2 BPE files match the tokenizer spec. Expected encoder.json "
      f"sha256 {expected_encoder_sha256} and vocab.bpe sha256 "
      f"{expected_vocab_bpe_sha256}. Tried:\n{tried_lines}\n"
      "Pass search_dirs=[DIR] with a directory that contains the original "
      "encoder.json and vocab.bpe (or vocab.json and merges.txt)."
  )


def tokenizer_from_spec(
    spec: Mapping[str, Any],
    *,
    search_dirs: Sequence[str | os.PathLike[str]] = (),
) -> Tokenizer:
  """Rebuilds the tokenizer that `spec` (from `Tokenizer.spec()`) describes.

  Args:
    spec: The dict returned by `spec()`, possibly after a JSON round trip.
    search_dirs: For "gpt2_bpe", directories to search for the vocabulary
      files after the paths recorded in the spec. Files are accepted only if
      their sha256 matches the spec.

  Returns:
    A tokenizer whose `identity()` equals that of the one `spec` came from.

  Raises:
    ValueError: The spec names an unknown kind, misses a field, or rebuilds
      to a vocabulary whose hash differs from the spec's `vocab_hash`.
    FileNotFoundError: No GPT-2 files with the recorded sha256 were found.
  """
  name = spec.get("name")
  if name == "char":
    if "chars" not in spec:
      raise ValueError(
          "char tokenizer spec is missing 'chars'; pass the dict returned by "
          "CharTokenizer.spec()"
      )
    tokenizer = CharTokenizer(spec["chars"])
  elif name == "byte":
    tokenizer = ByteTokenizer()
  elif name == "sentencepiece":
    tokenizer = _sentencepiece_from_spec(spec, search_dirs)
  elif name == "gpt2_bpe":
    tokenizer = _gpt2_from_spec(spec, search_dirs)
  else:
    raise ValueError(
        f"tokenizer spec has name {name!r}; known names are"
        f" {list(KNOWN_TOKENIZER_KINDS)}. Pass the dict returned by"
        " Tokenizer.spec()"
    )

  expected_hash = spec.get("vocab_hash")
  if expected_hash is not None and tokenizer.vocab_hash != expected_hash:
    raise ValueError(
        f"the rebuilt {name} tokenizer has vocab_hash {tokenizer.vocab_hash}, "
        f"but the spec records {expected_hash}; the spec was edited or comes "
        "from a different version of catflow. Rebuild the spec with "
        "Tokenizer.spec()"
    )
  return tokenizer


_IDENTITY_FIELDS = ("name", "vocab_size", "vocab_hash", "special_ids")


def check_same_tokenizer(
    expected_identity: Mapping[str, Any],
    actual_identity: Mapping[str, Any],
    *,
    what: str,
) -> None:
  """Raises ValueError unless two `Tokenizer.identity()` dicts are equal.

  Args:
    expected_identity: The identity recorded with `what`, such as a checkpoint.
    actual_identity: The identity of the tokenizer about to be used.
    what: Names the source of `expected_identity` in the error message.

  Raises:
    ValueError: Lists every field that differs, with both values.
  """
  extra_fields = sorted(
      (set(expected_identity) | set(actual_identity)) - set(_IDENTITY_FIELDS)
  )
  differences = []
  for field in (*_IDENTITY_FIELDS, *extra_fields):
    expected = expected_identity.get(field)
    actual = actual_identity.get(field)
    if expected != actual:
      differences.append(f"  {field}: expected {expected!r}, found {actual!r}")
  if differences:
    details = "\n".join(differences)
    raise ValueError(
        f"The tokenizer does not match the one recorded in {what}:\n{details}\n"
        f"Use the tokenizer that {what} was built with, or set "
        "allow_tokenizer_mismatch=True to override."
    )


def build_tokenizer(
    kind: str,
    *,
    text: str | None = None,
    chars: str | None = None,
    path: str | os.PathLike[str] | None = None,
) -> Tokenizer:
  """Builds a tokenizer by kind name.

  Args:
    kind: "char", "byte", "gpt2_bpe" or "sentencepiece".
    text: For "char", the text whose sorted character set is the alphabet.
    chars: For "char", an explicit ordered alphabet (instead of `text`).
    path: For "gpt2_bpe", the directory with encoder.json + vocab.bpe (or
      vocab.json + merges.txt). For "sentencepiece", the .model file.

  Returns:
    The tokenizer.

  Raises:
    ValueError: Unknown `kind`, or arguments that do not fit `kind`.
  """
  if kind == "char":
    if path is not None:
      raise ValueError(
          f"path={str(path)!r} is only used by kind='gpt2_bpe'; for kind='char'"
          " pass text= or chars="
      )
    if (text is None) == (chars is None):
      raise ValueError(
          "kind='char' needs exactly one of text= (the corpus whose characters "
          "form the alphabet) or chars= (an explicit alphabet)"
      )
    if chars is not None:
      return CharTokenizer(chars)
    return CharTokenizer.from_text(text)

  if kind == "byte":
    if path is not None or chars is not None:
      raise ValueError(
          "kind='byte' has a fixed vocabulary of 256 byte values; pass neither "
          "path= nor chars="
      )
    return ByteTokenizer()

  if kind == "sentencepiece":
    if path is None or text is not None or chars is not None:
      raise ValueError(
          "kind='sentencepiece' reads a trained model file; pass only path=, "
          "the .model file"
      )
    return SentencePieceTokenizer(path)

  if kind == "gpt2_bpe":
    if text is not None or chars is not None:
      raise ValueError(
          "kind='gpt2_bpe' reads its vocabulary from files, so text= and chars="
          " must not be set; pass only path="
      )
    if path is None:
      raise ValueError(
          "kind='gpt2_bpe' needs path=, the directory that contains "
          "encoder.json and vocab.bpe (or vocab.json and merges.txt)"
      )
    if pathlib.Path(path).is_file():
      raise ValueError(
          f"path={str(path)!r} is a file; pass the directory that contains "
          "encoder.json and vocab.bpe instead"
      )
    return GPT2BPETokenizer.from_dir(path)

  raise ValueError(
      f"unknown tokenizer kind {kind!r}; known kinds are"
      f" {list(KNOWN_TOKENIZER_KINDS)}"
  )
