"""Corpus-scale data: pre-tokenised, pre-packed ArrayRecord shards and a step-indexed stream.

`catflow prepare` turns text, jsonl or parquet files into shards of packed rows:

  OUTPUT/train-00000-of-00004.array_record ...
  OUTPUT/validation-00000-of-00001.array_record
  OUTPUT/manifest.json

Each record is one row of `seq_len` tokens, stored as the int32 array
[tokens, segment_ids, positions] of shape (3, seq_len). The manifest records the
tokenizer (identity and spec), the row length, row and token counts and the
sha256 of every shard.

Training reads the shards through a step-indexed stream: the global batch of
step s is rows g = s B, ..., s B + B - 1 of the infinite sequence
`MapDataset(rows).shuffle(seed).repeat()` (a fresh permutation every epoch), and
process p of P reads only its B / P of them. The batch of a step is therefore a
pure function of (seed, s): resuming needs only the step, and a change of the
process count keeps the same global order.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import pathlib
import time
from typing import Any, Iterable, Sequence

from absl import logging
import grain
import numpy as np
import tqdm

import catflow
from catflow.data import corpora
from catflow.data import pipeline
from catflow.data import tokenizers

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def pack_first_fit(pieces: Iterable[np.ndarray], seq_len: int, open_bins: int = 64) -> list[np.ndarray]:
  """Packs pieces (each at most seq_len tokens) into (3, seq_len) int32 rows, first fit.

  A piece goes into the first of the `open_bins` most recent rows with room for
  it, or starts a new row; rows leave the window in order. Row layout:
  [tokens, segment_ids (1, 2, ... per piece, 0 for padding), positions].
  """
  rows: list[np.ndarray] = []
  window: list[tuple[np.ndarray, int, int]] = []  # (row, used length, next segment id)

  def close_oldest():
    row, _, _ = window.pop(0)
    rows.append(row)

  for piece in pieces:
    size = len(piece)
    if size == 0:
      continue
    if size > seq_len:
      raise ValueError(f"piece of {size} tokens exceeds seq_len={seq_len}; cut pieces first")
    for index, (row, used, segment) in enumerate(window):
      if used + size <= seq_len:
        break
    else:
      if len(window) == open_bins:
        close_oldest()
      window.append((np.zeros((3, seq_len), np.int32), 0, 1))
      index = len(window) - 1
    row, used, segment = window[index]
    row[0, used:used + size] = piece
    row[1, used:used + size] = segment
    row[2, used:used + size] = np.arange(size)
    window[index] = (row, used + size, segment + 1)
  while window:
    close_oldest()
  return rows


def _file_sha256(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with path.open("rb") as handle:
    for block in iter(lambda: handle.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def _write_shards(rows: Sequence[np.ndarray], output_dir: pathlib.Path, split: str,
                  rows_per_shard: int) -> list[dict]:
  from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel
  num_shards = max(1, -(-len(rows) // rows_per_shard))
  shards = []
  for shard in range(num_shards):
    name = f"{split}-{shard:05d}-of-{num_shards:05d}.array_record"
    path = output_dir / name
    writer = array_record_module.ArrayRecordWriter(str(path), "group_size:1")
    chunk = rows[shard * rows_per_shard:(shard + 1) * rows_per_shard]
    for row in chunk:
      writer.write(row.tobytes())
    writer.close()
    shards.append({"file": name, "rows": len(chunk), "sha256": _file_sha256(path)})
  return shards


def prepare(documents: Sequence[corpora.Document], tokenizer, output_dir: str | pathlib.Path, *,
            options: pipeline.DataOptions, corpus_name: str, rows_per_shard: int = 65536,
            progress: bool = True) -> dict:
  """Tokenises, splits and packs documents into ArrayRecord shards; returns the manifest."""
  output_dir = pathlib.Path(output_dir)
  if (output_dir / MANIFEST).exists():
    raise FileExistsError(f"{output_dir} already holds a prepared dataset ({MANIFEST}); choose a "
                          "new --output directory or delete the old one")
  output_dir.mkdir(parents=True, exist_ok=True)
  if rows_per_shard < 1:
    raise ValueError(f"rows_per_shard={rows_per_shard} must be positive")
  start = time.time()
  parts = {"train": [], "validation": []}
  characters = 0
  bar = tqdm.tqdm(documents, desc="tokenising", unit="doc", disable=not progress)
  for document in bar:
    train_text, validation_text = pipeline.split_text(document, options)
    for split, text in (("train", train_text), ("validation", validation_text)):
      if text:
        parts[split].append(tokenizer.encode(text))
    characters += len(document.text)
    bar.set_postfix(chars=f"{characters:,}")
  if not parts["train"] or not parts["validation"]:
    raise ValueError(f"corpus {corpus_name!r} leaves an empty train or validation split with "
                     f"split={options.split!r} and validation_fraction={options.validation_fraction}")

  splits = {}
  for split, split_parts in parts.items():
    rows = pack_first_fit(pipeline.cut_pieces(split_parts, options.seq_len), options.seq_len)
    tokens = int(sum(part.size for part in split_parts))
    shards = _write_shards(rows, output_dir, split, rows_per_shard)
    splits[split] = {"rows": len(rows), "tokens": tokens, "documents": len(split_parts),
                     "padding_tokens": len(rows) * options.seq_len - tokens, "shards": shards}
    logging.info("Wrote %d %s rows (%d tokens) in %d shards to %s", len(rows), split, tokens,
                 len(shards), output_dir)

  manifest = {
      "format_version": FORMAT_VERSION,
      "catflow_version": catflow.__version__,
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
      "corpus": corpora.corpus_summary(documents, corpus_name),
      "tokenizer": {"identity": tokenizer.identity(), "spec": tokenizer.spec()},
      "seq_len": options.seq_len,
      "split": options.split,
      "validation_fraction": options.validation_fraction,
      "record_layout": "int32 array (3, seq_len): tokens, segment_ids, positions",
      "splits": splits,
      "seconds": time.time() - start,
  }
  (output_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))
  return manifest


@dataclasses.dataclass
class PreparedData:
  """A directory written by `prepare`, opened for reading."""

  directory: pathlib.Path
  manifest: dict

  @classmethod
  def open(cls, directory: str | pathlib.Path, *, verify_checksums: bool = False) -> "PreparedData":
    directory = pathlib.Path(directory)
    path = directory / MANIFEST
    if not path.exists():
      raise FileNotFoundError(f"{path} not found; run `catflow prepare --output={directory}` first")
    try:
      manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
      raise ValueError(f"{path} is not valid JSON ({error}); prepare the data again") from error
    if manifest.get("format_version") != FORMAT_VERSION:
      raise ValueError(f"{path} has format_version={manifest.get('format_version')}, this catflow "
                       f"reads {FORMAT_VERSION}; prepare the data again")
    for split in manifest["splits"].values():
      for shard in split["shards"]:
        shard_path = directory / shard["file"]
        if not shard_path.exists():
          raise FileNotFoundError(f"shard {shard_path} listed in {path} is missing")
        if verify_checksums and _file_sha256(shard_path) != shard["sha256"]:
          raise ValueError(f"shard {shard_path} is corrupt: sha256 differs from the manifest's "
                           f"{shard['sha256']}; prepare the data again")
    return cls(directory=directory, manifest=manifest)

  @property
  def seq_len(self) -> int:
    return int(self.manifest["seq_len"])

  def rows(self, split: str) -> grain.MapDataset:
    """Returns the split's rows as a MapDataset of {'tokens', 'segment_ids', 'positions'}."""
    if split not in self.manifest["splits"]:
      raise ValueError(f"split {split!r} is not one of {sorted(self.manifest['splits'])}")
    files = [str(self.directory / shard["file"]) for shard in self.manifest["splits"][split]["shards"]]
    source = grain.sources.ArrayRecordDataSource(files)
    seq_len = self.seq_len
    return grain.MapDataset.source(source).map(lambda record: _decode_row(record, seq_len))

  def check_tokenizer(self, identity: dict, *, allow_mismatch: bool = False):
    if not allow_mismatch:
      tokenizers.check_same_tokenizer(self.manifest["tokenizer"]["identity"], identity,
                                      what=f"prepared data in {self.directory}")


def _decode_row(record: bytes, seq_len: int) -> dict[str, np.ndarray]:
  array = np.frombuffer(record, np.int32)
  if array.size != 3 * seq_len:
    raise ValueError(f"record of {array.size} int32 values does not hold a (3, {seq_len}) row; "
                     "the shard does not match its manifest")
  array = array.reshape(3, seq_len)
  return {"tokens": array[0], "segment_ids": array[1], "positions": array[2]}


class StepIndexedStream:
  """The training stream whose batch for step s is a pure function of (seed, s).

  Iterating yields this process's rows of consecutive global batches. Its state
  is the next step; get_state/set_state/start_prefetch make it savable by
  grain's Orbax checkpoint handler like a Grain iterator.
  """

  def __init__(self, rows: grain.MapDataset, global_batch: int, seed: int, *, process_index: int = 0,
               process_count: int = 1, step: int = 0):
    if len(rows) == 0:
      raise ValueError("the prepared split has no rows")
    if global_batch % process_count:
      raise ValueError(f"global batch {global_batch} is not divisible by {process_count} processes")
    self._examples = rows.shuffle(seed=seed).repeat(None)
    self.global_batch = global_batch
    self.local_batch = global_batch // process_count
    self.process_index = process_index
    self.step = step

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """Returns this process's rows of the global batch of `step`."""
    first = step * self.global_batch + self.process_index * self.local_batch
    rows = [self._examples[index] for index in range(first, first + self.local_batch)]
    return {name: np.stack([row[name] for row in rows]) for name in pipeline.FEATURES}

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = self.batch(self.step)
    self.step += 1
    return batch

  def get_state(self) -> bytes:
    return json.dumps({"step": self.step}).encode()

  def set_state(self, state: bytes | dict[str, Any]):
    if isinstance(state, (bytes, str)):
      state = json.loads(state)
    self.step = int(state["step"])

  def start_prefetch(self):
    """Nothing to prefetch; present for grain's checkpoint handler."""
