"""Grain input pipelines: tokenise, split, pack into rows with segment ids, shuffle, batch.

How a corpus becomes training batches:

1. Each document is tokenised once (cached on disk by corpus and tokenizer hash)
   and split into a train and a validation part: "tail" holds out the last
   `validation_fraction` of every document, "documents" holds out whole
   documents chosen by a hash of their name.
2. Every document is cut into pieces of at most `seq_len` tokens.
3. Training: a `grain.MapDataset` over the pieces is shuffled with the seed
   (a new permutation every epoch) and repeated, then first-fit packed into rows
   of exactly `seq_len` tokens (`grain.experimental.FirstFitPackIterDataset`)
   and batched. Each row carries `segment_ids` (1, 2, ... per piece, 0 for
   padding) and `positions` (restarting at 0 in every piece), so attention never
   crosses documents. The iterator's state (`get_state`/`set_state`) is the
   data position saved in checkpoints; restoring it resumes the exact stream.
4. Validation: the same packing without shuffling gives a fixed list of
   windows, each with a global index that seeds its random numbers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
from typing import Any, Iterator, Mapping, Sequence

from absl import logging
import grain
import grain.experimental as grain_experimental
import numpy as np

from catflow.data import corpora
from catflow.data import tokenizers

FEATURES = ("tokens", "segment_ids", "positions")


@dataclasses.dataclass(frozen=True)
class DataOptions:
  """Options of the input pipeline (the `data` block of a config)."""

  corpus: str = "shakespeare"  # A registered name, a .txt/.jsonl/.parquet path or seqio:TASK.
  text_field: str = "text"  # Field (jsonl), column (parquet) or seqio feature of the text.
  import_modules: str = ""  # Comma-separated modules imported first (e.g. seqio task registries).
  tokenizer: str = "char"  # char | byte | gpt2_bpe | sentencepiece.
  # gpt2_bpe: directory with encoder.json and vocab.bpe; sentencepiece: the .model file.
  tokenizer_path: str = ""
  seq_len: int = 128  # Tokens per packed row.
  validation_fraction: float = 0.05  # Share of the corpus held out for validation.
  split: str = "tail"  # tail: last share of every document; documents: whole documents.
  seed: int = 0  # Shuffling seed of the training stream.
  packing_bins: int = 0  # First-fit bins; 0 means the batch size.
  cache_dir: str = ""  # Download and tokenisation cache; "" means $CATFLOW_CACHE_DIR or ~/.cache/catflow.
  # Directory written by `catflow prepare`; when set, training reads its shards
  # through the step-indexed stream instead of packing the corpus online.
  prepared_dir: str = ""

  def __post_init__(self):
    if not self.corpus and not self.prepared_dir:
      raise ValueError("data.corpus is empty and data.prepared_dir is not set; name a registered "
                       "corpus or a file with --config.data.corpus=..., or prepared shards with "
                       "--config.data.prepared_dir=...")
    if self.seq_len < 2:
      raise ValueError(f"data.seq_len={self.seq_len} must be at least 2")
    if not 0.0 < self.validation_fraction < 1.0:
      raise ValueError(f"data.validation_fraction={self.validation_fraction} must be in (0, 1)")
    if self.split not in ("tail", "documents"):
      raise ValueError(f"data.split={self.split!r} is not 'tail' or 'documents'")
    if self.packing_bins < 0:
      raise ValueError(f"data.packing_bins={self.packing_bins} must be >= 0")

  @classmethod
  def from_mapping(cls, values: Mapping[str, Any]) -> "DataOptions":
    known = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ValueError(f"unknown data options {unknown}; known options are {sorted(known)}")
    return cls(**dict(values))

  def load_documents(self) -> list[corpora.Document]:
    """Loads the configured corpus, after importing `import_modules`."""
    modules = [name.strip() for name in self.import_modules.split(",") if name.strip()]
    return corpora.load_corpus(self.corpus, cache_dir=str(self.resolved_cache_dir()),
                               text_field=self.text_field, import_modules=modules)

  def resolved_cache_dir(self) -> pathlib.Path:
    return pathlib.Path(self.cache_dir) if self.cache_dir else pathlib.Path(corpora.default_cache_dir())


@dataclasses.dataclass
class TokenizedCorpus:
  """A corpus tokenised and split: one int32 array per document part."""

  name: str
  tokenizer: Any
  train: list[np.ndarray]
  validation: list[np.ndarray]
  train_text: str  # The training text, for word statistics.
  summary: dict

  @property
  def num_train_tokens(self) -> int:
    return int(sum(part.size for part in self.train))

  @property
  def num_validation_tokens(self) -> int:
    return int(sum(part.size for part in self.validation))

  def unigram_counts(self) -> np.ndarray:
    """Token counts over the training split, length tokenizer.vocab_size."""
    counts = np.zeros(self.tokenizer.vocab_size, np.int64)
    for part in self.train:
      counts += np.bincount(part, minlength=self.tokenizer.vocab_size)[: self.tokenizer.vocab_size]
    return counts


def split_text(document: corpora.Document, options: DataOptions) -> tuple[str, str]:
  """Returns (train_text, validation_text) of one document."""
  text = document.text
  if options.split == "documents":
    # The shuffle seed is deliberately left out: the validation set stays fixed.
    digest = hashlib.sha256(f"validation:{document.name}".encode()).digest()
    is_validation = int.from_bytes(digest[:8], "big") / 2**64 < options.validation_fraction
    return ("", text) if is_validation else (text, "")
  cut = int(round(len(text) * (1.0 - options.validation_fraction)))
  # Cut at a line break near the split point, so that no line is shared.
  newline = text.rfind("\n", 0, cut)
  if newline > 0 and cut - newline < 2000:
    cut = newline + 1
  return text[:cut], text[cut:]


def build_tokenizer(options: DataOptions, documents: Sequence[corpora.Document]):
  """Builds the configured tokenizer; the char vocabulary comes from the whole corpus."""
  if options.tokenizer == "char":
    return tokenizers.CharTokenizer.from_text("".join(document.text for document in documents))
  if options.tokenizer == "byte":
    return tokenizers.ByteTokenizer()
  if options.tokenizer == "sentencepiece":
    if not options.tokenizer_path:
      raise ValueError("data.tokenizer='sentencepiece' needs data.tokenizer_path, the trained "
                       ".model file")
    return tokenizers.build_tokenizer("sentencepiece", path=options.tokenizer_path)
  if options.tokenizer == "gpt2_bpe":
    if not options.tokenizer_path:
      raise ValueError("data.tokenizer='gpt2_bpe' needs data.tokenizer_path, a directory with "
                       "encoder.json and vocab.bpe")
    return tokenizers.build_tokenizer("gpt2_bpe", path=options.tokenizer_path)
  raise ValueError(f"data.tokenizer={options.tokenizer!r} is not 'char', 'byte', 'gpt2_bpe' or 'sentencepiece'")


def load_tokenized(options: DataOptions, tokenizer=None) -> TokenizedCorpus:
  """Loads, splits and tokenises the corpus, reusing the on-disk cache.

  Args:
    options: the data options.
    tokenizer: a tokenizer to use instead of building one (for example the one
      recorded in a checkpoint); None builds it from the options.
  """
  documents = options.load_documents()
  if tokenizer is None:
    tokenizer = build_tokenizer(options, documents)
  splits = [split_text(document, options) for document in documents]
  train_text = "".join(train for train, _ in splits)
  if not train_text or not any(validation for _, validation in splits):
    raise ValueError(
        f"corpus {options.corpus!r} with split={options.split!r} and validation_fraction="
        f"{options.validation_fraction} leaves an empty train or validation split; use "
        "split='tail' for a corpus of few documents or raise validation_fraction")

  content_hash = hashlib.sha256()
  for train, validation in splits:
    content_hash.update(train.encode())
    content_hash.update(b"\x00")
    content_hash.update(validation.encode())
    content_hash.update(b"\x01")
  identity = tokenizer.identity()
  cache_key = hashlib.sha256(
      (content_hash.hexdigest() + json.dumps(identity, sort_keys=True)).encode()).hexdigest()[:24]
  cache_path = options.resolved_cache_dir() / "tokenized" / f"{cache_key}.npz"
  train_parts, validation_parts = _load_cached_parts(cache_path)
  if train_parts is None:
    train_parts = [tokenizer.encode(train) for train, _ in splits if train]
    validation_parts = [tokenizer.encode(validation) for _, validation in splits if validation]
    _save_cached_parts(cache_path, train_parts, validation_parts)
    logging.info("Tokenised corpus %r: cached at %s", options.corpus, cache_path)
  else:
    logging.info("Loaded tokenised corpus %r from %s", options.corpus, cache_path)

  summary = corpora.corpus_summary(documents, options.corpus)
  summary.update({
      "tokenizer": identity,
      "split": options.split,
      "validation_fraction": options.validation_fraction,
      "train_tokens": int(sum(part.size for part in train_parts)),
      "validation_tokens": int(sum(part.size for part in validation_parts)),
      "train_characters": len(train_text),
      "validation_characters": int(sum(len(validation) for _, validation in splits)),
  })
  return TokenizedCorpus(name=options.corpus, tokenizer=tokenizer, train=train_parts,
                         validation=validation_parts, train_text=train_text, summary=summary)


def _load_cached_parts(path: pathlib.Path):
  if not path.exists():
    return None, None
  try:
    with np.load(path) as archive:
      train = [archive[f"train_{i}"] for i in range(int(archive["num_train"]))]
      validation = [archive[f"validation_{i}"] for i in range(int(archive["num_validation"]))]
    return train, validation
  except (OSError, KeyError, ValueError) as error:
    logging.warning("Ignoring unreadable tokenisation cache %s (%s); tokenising again", path, error)
    return None, None


def _save_cached_parts(path: pathlib.Path, train, validation):
  path.parent.mkdir(parents=True, exist_ok=True)
  arrays = {f"train_{i}": part for i, part in enumerate(train)}
  arrays.update({f"validation_{i}": part for i, part in enumerate(validation)})
  temporary = path.with_suffix(f".tmp{os.getpid()}.npz")
  np.savez(temporary, num_train=len(train), num_validation=len(validation), **arrays)
  os.replace(temporary, path)


def cut_pieces(parts: Sequence[np.ndarray], seq_len: int) -> list[np.ndarray]:
  """Cuts every document part into consecutive pieces of at most seq_len tokens."""
  pieces = []
  for part in parts:
    for start in range(0, part.size, seq_len):
      pieces.append(part[start:start + seq_len])
  return pieces


def _packed_dataset(pieces: Sequence[np.ndarray], seq_len: int, bins: int, *, shuffle_seed: int | None,
                    repeat: bool) -> grain.IterDataset:
  dataset = grain.MapDataset.source(list(pieces))
  if shuffle_seed is not None:
    dataset = dataset.shuffle(seed=shuffle_seed)
  if repeat:
    dataset = dataset.repeat(None)
  dataset = dataset.map(lambda piece: {"tokens": np.asarray(piece, np.int32)}).to_iter_dataset()
  packed = grain_experimental.FirstFitPackIterDataset(
      dataset, length_struct={"tokens": seq_len}, num_packing_bins=bins, shuffle_bins=False)
  return packed.map(_rename_packed_features)


def _rename_packed_features(row: dict) -> dict:
  return {"tokens": row["tokens"].astype(np.int32),
          "segment_ids": row["tokens_segment_ids"].astype(np.int32),
          "positions": row["tokens_positions"].astype(np.int32)}


def train_dataset(corpus: TokenizedCorpus, options: DataOptions, batch_size: int) -> grain.IterDataset:
  """Returns the infinite, shuffled, packed and batched training stream.

  Each element is a dict of int32 arrays (batch_size, seq_len). Iterate with
  `iter(dataset)`; the iterator's get_state()/set_state() save and restore
  the position.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size={batch_size} must be positive")
  pieces = cut_pieces(corpus.train, options.seq_len)
  if not pieces:
    raise ValueError(f"corpus {corpus.name!r} has no training tokens")
  bins = options.packing_bins or batch_size
  packed = _packed_dataset(pieces, options.seq_len, bins, shuffle_seed=options.seed, repeat=True)
  return packed.batch(batch_size, drop_remainder=True)


def validation_windows(corpus: TokenizedCorpus, options: DataOptions,
                       max_windows: int | None = None) -> dict[str, np.ndarray]:
  """Returns the fixed validation rows: int32 arrays (N, seq_len) plus 'index' (N,).

  Windows are packed in document order, without shuffling; max_windows keeps
  the first windows of that order (all of them when None).
  """
  pieces = cut_pieces(corpus.validation, options.seq_len)
  if not pieces:
    raise ValueError(f"corpus {corpus.name!r} has an empty validation split; raise "
                     "data.validation_fraction")
  rows = []
  for row in _packed_dataset(pieces, options.seq_len, bins=64, shuffle_seed=None, repeat=False):
    rows.append(row)
    if max_windows is not None and len(rows) >= max_windows:
      break
  windows = {name: np.stack([row[name] for row in rows]) for name in FEATURES}
  windows["index"] = np.arange(len(rows), dtype=np.int64)
  return windows


@dataclasses.dataclass
class TrainingData:
  """The training stream of a run and what the run records about its data."""

  name: str
  tokenizer: Any
  summary: dict
  iterator: Any
  # True: the iterator yields this process's rows and its position is the step.
  # False: it yields global batches (every process reads them all).
  step_indexed: bool
  num_train_tokens: int
  num_validation_tokens: int


def open_training_data(options: DataOptions, batch_size: int, *, tokenizer=None,
                       allow_tokenizer_mismatch: bool = False, what: str = "data",
                       process_index: int = 0, process_count: int = 1) -> TrainingData:
  """Opens the training stream: prepared shards when options.prepared_dir is set, else online.

  Args:
    options: the data options.
    batch_size: the global batch size.
    tokenizer: the tokenizer the model was trained with (distillation); the
      data's tokenizer must match it unless allow_tokenizer_mismatch.
    what: a description of the comparison for error messages.
  """
  from catflow.data import prepare  # pylint: disable=import-outside-toplevel
  if options.prepared_dir:
    prepared = prepare.PreparedData.open(options.prepared_dir)
    if prepared.seq_len != options.seq_len:
      raise ValueError(f"prepared data in {options.prepared_dir} has rows of {prepared.seq_len} "
                       f"tokens, data.seq_len={options.seq_len}; set data.seq_len="
                       f"{prepared.seq_len} or prepare the data again")
    data_tokenizer = tokenizers.tokenizer_from_spec(prepared.manifest["tokenizer"]["spec"])
    if tokenizer is not None:
      # Prepared rows hold token ids and cannot be tokenised again, so a
      # mismatch is an error here even with allow_tokenizer_mismatch.
      prepared.check_tokenizer(tokenizer.identity())
    stream = prepare.StepIndexedStream(prepared.rows("train"), batch_size, options.seed,
                                       process_index=process_index, process_count=process_count)
    splits = prepared.manifest["splits"]
    return TrainingData(name=str(options.prepared_dir), tokenizer=tokenizer or data_tokenizer,
                        summary=dict(prepared.manifest["corpus"], prepared_dir=options.prepared_dir),
                        iterator=stream, step_indexed=True,
                        num_train_tokens=splits["train"]["tokens"],
                        num_validation_tokens=splits["validation"]["tokens"])

  corpus = load_tokenized(options)
  if tokenizer is not None and corpus.tokenizer.identity() != tokenizer.identity():
    if not allow_tokenizer_mismatch:
      tokenizers.check_same_tokenizer(tokenizer.identity(), corpus.tokenizer.identity(), what=what)
    logging.warning("Tokenizer of %s differs; tokenising with the given tokenizer as requested",
                    what)
    corpus = load_tokenized(options, tokenizer=tokenizer)
  return TrainingData(name=corpus.name, tokenizer=corpus.tokenizer, summary=corpus.summary,
                      iterator=iter(train_dataset(corpus, options, batch_size)),
                      step_indexed=False, num_train_tokens=corpus.num_train_tokens,
                      num_validation_tokens=corpus.num_validation_tokens)


def iterate_batches(windows: Mapping[str, np.ndarray], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
  """Yields consecutive slices of a dict of equally long arrays."""
  total = len(windows["tokens"])
  for start in range(0, total, batch_size):
    yield {name: value[start:start + batch_size] for name, value in windows.items()}
