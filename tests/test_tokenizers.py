"""Tests for catflow.data.tokenizers.

Expected GPT-2 ids come from tiktoken 0.14.0: an Encoding built from the same
encoder.json and vocab.bpe with GPT-2's split pattern, `encode_ordinary`.
"""

import functools
import hashlib
import json
import pathlib
import shutil
import time

import numpy as np
import pytest

from catflow.data import tokenizers
from catflow.data.tokenizers import CharTokenizer
from catflow.data.tokenizers import GPT2BPETokenizer

_GPT2_ENCODER_SHA256 = (
    "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
)
_GPT2_VOCAB_BPE_SHA256 = (
    "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
)


@functools.cache
def _load_gpt2(directory: str) -> GPT2BPETokenizer:
  return GPT2BPETokenizer.from_dir(directory)


@pytest.fixture
def gpt2_dir(shared_data: pathlib.Path) -> pathlib.Path:
  return shared_data / "gpt2_bpe"


@pytest.fixture
def gpt2(gpt2_dir: pathlib.Path) -> GPT2BPETokenizer:
  # Loading takes about 0.2 s, so one instance is shared by all tests.
  return _load_gpt2(str(gpt2_dir))


# ---------------------------------------------------------------------------
# CharTokenizer
# ---------------------------------------------------------------------------


def test_byte_ids_are_utf8_bytes():
  tokenizer = tokenizers.ByteTokenizer()
  text = "caf\u00e9 \U0001f600\n"
  ids = tokenizer.encode(text)
  assert ids.dtype == np.int32
  assert ids.tolist() == list(text.encode("utf-8"))
  assert tokenizer.decode(ids) == text
  assert tokenizer.vocab_size == 256


def test_byte_decode_replaces_cut_characters():
  tokenizer = tokenizers.ByteTokenizer()
  ids = tokenizer.encode("\u00e9t\u00e9")
  # The window starts inside the first two-byte character.
  assert tokenizer.decode(ids[1:]) == "\ufffdt\u00e9"
  with pytest.raises(ValueError, match="outside the vocabulary"):
    tokenizer.decode([256])


def test_byte_spec_round_trip_and_identity():
  tokenizer = tokenizers.build_tokenizer("byte")
  rebuilt = tokenizers.tokenizer_from_spec(json.loads(json.dumps(tokenizer.spec())))
  assert rebuilt.identity() == tokenizer.identity()
  char = CharTokenizer("".join(chr(code) for code in range(255)))
  with pytest.raises(ValueError, match="name: expected 'byte', found 'char'"):
    tokenizers.check_same_tokenizer(tokenizer.identity(), char.identity(), what="checkpoint")
  with pytest.raises(ValueError, match="kind='byte' has a fixed vocabulary"):
    tokenizers.build_tokenizer("byte", chars="ab")


def test_char_from_text_sorted_alphabet():
  tokenizer = CharTokenizer.from_text("hello")

  assert tokenizer.name == "char"
  assert tokenizer.chars == "ehlo"
  assert tokenizer.vocab_size == 5
  assert tokenizer.special_ids == {"unk": 4}
  np.testing.assert_array_equal(tokenizer.encode("hello"), [1, 0, 2, 2, 3])


def test_char_encode_returns_int32_1d():
  ids = CharTokenizer("ab").encode("abba")

  assert ids.dtype == np.int32
  assert ids.shape == (4,)


def test_char_explicit_order_kept():
  tokenizer = CharTokenizer("cba")

  np.testing.assert_array_equal(tokenizer.encode("abc"), [2, 1, 0])
  assert tokenizer.decode([0, 1, 2]) == "cba"


def test_char_unknown_maps_to_unk():
  tokenizer = CharTokenizer.from_text("hello")

  # "x" is inside the lookup table's range, "\u4e16" and "\U0001F600" beyond it.
  np.testing.assert_array_equal(
      tokenizer.encode("hex\u4e16\U0001F600"), [1, 0, 4, 4, 4]
  )
  assert tokenizer.decode([1, 0, 4]) == "he\ufffd"


def test_char_non_bmp_round_trip():
  tokenizer = CharTokenizer("ab\U0001F642\u00e9")

  ids = tokenizer.encode("a\U0001F642b\u00e9")

  np.testing.assert_array_equal(ids, [0, 2, 1, 3])
  assert tokenizer.decode(ids) == "a\U0001F642b\u00e9"


def test_char_lone_surrogate_round_trip():
  tokenizer = CharTokenizer("a\ud800")

  ids = tokenizer.encode("\ud800a")

  np.testing.assert_array_equal(ids, [1, 0])
  assert tokenizer.decode(ids) == "\ud800a"


def test_char_empty_text_encodes_empty():
  tokenizer = CharTokenizer("ab")

  assert tokenizer.encode("").shape == (0,)
  assert tokenizer.decode([]) == ""


def test_char_decode_accepts_lists_and_arrays():
  tokenizer = CharTokenizer("abc")

  assert tokenizer.decode([2, 0]) == "ca"
  assert tokenizer.decode(np.array([2, 0], dtype=np.int64)) == "ca"
  assert tokenizer.decode(np.array([2, 0], dtype=np.uint8)) == "ca"


def test_char_duplicate_chars_rejected():
  with pytest.raises(ValueError, match=r"duplicate characters \['a'\]"):
    CharTokenizer("aba")


def test_char_empty_alphabet_rejected():
  with pytest.raises(ValueError, match="chars is empty"):
    CharTokenizer("")
  with pytest.raises(ValueError, match="text is empty"):
    CharTokenizer.from_text("")


def test_char_non_str_rejected():
  with pytest.raises(TypeError, match="got list"):
    CharTokenizer(["a", "b"])
  with pytest.raises(TypeError, match="encode expects a str, got bytes"):
    CharTokenizer("ab").encode(b"ab")


def test_decode_out_of_range_id_rejected():
  tokenizer = CharTokenizer("abc")

  with pytest.raises(
      ValueError,
      match=r"token id 9 at position 1 is outside the vocabulary \[0, 4\)",
  ):
    tokenizer.decode([0, 9, 1])
  with pytest.raises(ValueError, match=r"token id -1 at position 0"):
    tokenizer.decode([-1])


def test_decode_bad_shape_or_dtype_rejected():
  tokenizer = CharTokenizer("abc")

  with pytest.raises(ValueError, match=r"got shape \(1, 2\)"):
    tokenizer.decode([[0, 1]])
  with pytest.raises(ValueError, match="got dtype float"):
    tokenizer.decode(np.array([0.0, 1.0]))


def test_char_tinyshakespeare_round_trip(shared_data):
  text = (shared_data / "tinyshakespeare" / "input.txt").read_text(
      encoding="utf-8"
  )
  tokenizer = CharTokenizer.from_text(text)

  ids = tokenizer.encode(text)

  # nanoGPT's data/shakespeare_char/prepare.py lists the same 65 characters.
  # The tokenizer adds <unk> as id 65.
  assert (
      tokenizer.chars
      == "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
  )
  assert tokenizer.vocab_size == 66
  assert ids.shape == (1_115_394,)
  assert tokenizer.decode(ids) == text


def test_char_encode_5mb_speed():
  text = "".join(chr(32 + i % 90) for i in range(1000)) * 5000
  tokenizer = CharTokenizer.from_text(text)

  start = time.perf_counter()
  ids = tokenizer.encode(text)
  elapsed = time.perf_counter() - start

  assert ids.shape == (5_000_000,)
  # Catches gross slowdowns only. The numpy lookup took about 0.1 s on a
  # 2-core Xeon, and a dict lookup per character about 0.2 s.
  assert elapsed < 2.0


def test_char_spec_json_round_trip():
  tokenizer = CharTokenizer("xy\n\U0001F642")

  spec = json.loads(json.dumps(tokenizer.spec()))
  rebuilt = tokenizers.tokenizer_from_spec(spec)

  assert spec["name"] == "char"
  assert spec["chars"] == "xy\n\U0001F642"
  assert isinstance(rebuilt, CharTokenizer)
  assert rebuilt.identity() == tokenizer.identity()
  np.testing.assert_array_equal(rebuilt.encode("yx?"), tokenizer.encode("yx?"))


def test_char_spec_edited_hash_rejected():
  spec = CharTokenizer("ab").spec()
  spec["vocab_hash"] = "0" * 64

  with pytest.raises(ValueError, match="but the spec records 0000"):
    tokenizers.tokenizer_from_spec(spec)


def test_char_identity_fields_and_pinned_hash():
  identity = CharTokenizer("abc").identity()

  assert identity == {
      "name": "char",
      "vocab_size": 4,
      # Changing the canonical JSON would make every saved identity mismatch.
      "vocab_hash": (
          "9bcfdf150da9bf5fc78bf95d4ffcff7f2c95b32144642131adf39ae396e57752"
      ),
      "special_ids": {"unk": 3},
  }


def test_char_identity_depends_on_order():
  assert CharTokenizer("ab").identity() != CharTokenizer("ba").identity()
  assert (
      CharTokenizer("ab").identity()
      == CharTokenizer.from_text("baba").identity()
  )


def test_spec_unknown_name_rejected():
  with pytest.raises(
      ValueError,
      match=r"name 'wordpiece'; known names are \['char', 'byte', 'gpt2_bpe',"
          r" 'sentencepiece'\]",
  ):
    tokenizers.tokenizer_from_spec({"name": "wordpiece"})


# ---------------------------------------------------------------------------
# check_same_tokenizer
# ---------------------------------------------------------------------------


def test_check_same_tokenizer_equal_passes():
  identity = CharTokenizer("abc").identity()

  tokenizers.check_same_tokenizer(
      identity, json.loads(json.dumps(identity)), what="checkpoint ckpt_1"
  )


def test_check_same_tokenizer_lists_each_difference():
  expected = CharTokenizer("abc").identity()
  actual = CharTokenizer("abcd").identity()

  with pytest.raises(ValueError) as error:
    tokenizers.check_same_tokenizer(expected, actual, what="checkpoint ckpt_1")

  message = str(error.value)
  assert "checkpoint ckpt_1" in message
  assert "vocab_size: expected 4, found 5" in message
  assert "vocab_hash: expected" in message
  assert "special_ids: expected {'unk': 3}, found {'unk': 4}" in message
  assert "name:" not in message
  assert "set allow_tokenizer_mismatch=True to override" in message


def test_check_same_tokenizer_char_vs_gpt2(gpt2):
  with pytest.raises(ValueError) as error:
    tokenizers.check_same_tokenizer(
        gpt2.identity(), CharTokenizer("ab").identity(), what="run cfg"
    )

  message = str(error.value)
  assert "name: expected 'gpt2_bpe', found 'char'" in message
  assert "vocab_size: expected 50257, found 3" in message
  assert "vocab_hash: expected" in message
  assert "special_ids: expected {'eos': 50256}, found {'unk': 2}" in message


# ---------------------------------------------------------------------------
# GPT2BPETokenizer
# ---------------------------------------------------------------------------


def test_gpt2_vocabulary_and_specials(gpt2):
  assert gpt2.name == "gpt2_bpe"
  assert gpt2.vocab_size == 50257
  assert gpt2.special_ids == {"eos": 50256}
  assert gpt2.eos_id == 50256


@pytest.mark.parametrize(
    ("text", "expected_ids"),
    [
        ("Hello world", [15496, 995]),
        (" the", [262]),
        ("Hello world!", [15496, 995, 0]),
        ("I'm they'll", [40, 1101, 484, 1183]),
        ("", []),
        (
            "h\u00e9llo w\u00f6rld \u65e5\u672c\u8a9e \U0001F642\n\n  x",
            [
                71,
                2634,
                18798,
                266,
                30570,
                335,
                10545,
                245,
                98,
                17312,
                105,
                45739,
                252,
                32485,
                628,
                220,
                2124,
            ],
        ),
    ],
)
def test_gpt2_known_ids(gpt2, text, expected_ids):
  ids = gpt2.encode(text)

  assert ids.dtype == np.int32
  assert ids.tolist() == expected_ids
  assert gpt2.decode(ids) == text


def test_gpt2_single_token_words_match_encoder(gpt2, gpt2_dir):
  encoder = json.loads((gpt2_dir / "encoder.json").read_text(encoding="utf-8"))
  words = [
      "The",
      " quick",
      " brown",
      " fox",
      " jumps",
      " over",
      " the",
      " lazy",
      " dog",
  ]
  # GPT-2 writes a leading space as "\u0120", bytes_to_unicode()[0x20].
  expected_ids = [encoder[word.replace(" ", "\u0120")] for word in words]

  ids = gpt2.encode("".join(words))

  assert len(ids) == len(words)
  assert ids.tolist() == expected_ids
  assert gpt2.encode(" the" * 7).tolist() == [encoder["\u0120the"]] * 7


def test_gpt2_endoftext_text_not_special(gpt2):
  ids = gpt2.encode("a<|endoftext|>b")

  assert 50256 not in ids.tolist()
  assert gpt2.encode("<|endoftext|>").tolist() == [
      27,
      91,
      437,
      1659,
      5239,
      91,
      29,
  ]
  assert gpt2.decode(ids) == "a<|endoftext|>b"
  assert gpt2.decode([50256]) == "<|endoftext|>"


def test_gpt2_partial_utf8_decodes_replacement(gpt2):
  # Id 10545 is b" \xe6", the first two bytes of " \u65e5".
  assert gpt2.decode([10545]) == " \ufffd"
  assert gpt2.decode([10545, 245, 98]) == " \u65e5"


def test_gpt2_ptb_count_and_round_trip(gpt2, shared_data):
  text = (shared_data / "ptb" / "ptb.test.txt").read_text(encoding="utf-8")

  ids = gpt2.encode(text)

  assert len(ids) == 105_243
  assert ids[:10].tolist() == [
      645,
      340,
      373,
      299,
      470,
      2042,
      285,
      3204,
      220,
      198,
  ]
  assert gpt2.decode(ids) == text


def test_gpt2_tinyshakespeare_count(gpt2, shared_data):
  text = (shared_data / "tinyshakespeare" / "input.txt").read_text(
      encoding="utf-8"
  )

  ids = gpt2.encode(text)

  # nanoGPT's data/shakespeare/prepare.py reports 301,966 train + 36,059 val
  # tokens for this file with tiktoken's "gpt2" encoding.
  assert len(ids) == 338_025
  assert ids[:5].tolist() == [5962, 22307, 25, 198, 8421]


@pytest.mark.parametrize(
    "relative_path",
    [
        "ptb/ptb.valid.txt",
        "wikitext2_tokens/wiki.test.tokens",
        "tinyshakespeare/input.txt",
    ],
)
def test_gpt2_round_trip_real_text(gpt2, shared_data, relative_path):
  text = (shared_data / relative_path).read_text(encoding="utf-8")[:8000]

  assert gpt2.decode(gpt2.encode(text)) == text


def test_gpt2_wikitext_valid_count(gpt2, shared_data):
  text = (shared_data / "wikitext2_tokens" / "wiki.valid.tokens").read_text(
      encoding="utf-8"
  )

  assert len(gpt2.encode(text)) == 258_659


def test_gpt2_encode_batch_matches_encode(gpt2):
  texts = ["Hello world", "", " the cat", "Hello world"]

  batch = gpt2.encode_batch(texts)

  assert len(batch) == 4
  for text, ids in zip(texts, batch):
    assert ids.tolist() == gpt2.encode(text).tolist()


def test_gpt2_decode_out_of_range_rejected(gpt2):
  with pytest.raises(
      ValueError,
      match=(
          r"token id 50257 at position 0 is outside the vocabulary \[0, 50257\)"
      ),
  ):
    gpt2.decode([50257])


def test_gpt2_identity_pinned_hash(gpt2):
  identity = gpt2.identity()

  assert identity["name"] == "gpt2_bpe"
  assert identity["vocab_size"] == 50257
  assert identity["special_ids"] == {"eos": 50256}
  # Changing the canonical JSON would make every saved identity mismatch.
  assert (
      identity["vocab_hash"]
      == "3a1be066bfcb6e06c4061aeded5c9c337a1b7a5abd71d16c601706f7dd25d913"
  )


def test_gpt2_spec_records_file_hashes(gpt2, gpt2_dir):
  spec = gpt2.spec()

  assert spec["name"] == "gpt2_bpe"
  assert spec["encoder_json_sha256"] == _GPT2_ENCODER_SHA256
  assert spec["vocab_bpe_sha256"] == _GPT2_VOCAB_BPE_SHA256
  assert spec["directory"] == str(gpt2_dir.resolve())
  assert json.loads(json.dumps(spec)) == spec


def test_gpt2_spec_round_trip(gpt2):
  spec = json.loads(json.dumps(gpt2.spec()))

  rebuilt = tokenizers.tokenizer_from_spec(spec)

  assert isinstance(rebuilt, GPT2BPETokenizer)
  assert rebuilt.identity() == gpt2.identity()
  assert rebuilt.encode("Hello world").tolist() == [15496, 995]


def _moved_spec(gpt2: GPT2BPETokenizer, tmp_path: pathlib.Path) -> dict:
  """Returns gpt2's spec with its recorded paths in a missing directory."""
  spec = gpt2.spec()
  missing = tmp_path / "moved_away"
  spec["directory"] = str(missing)
  spec["encoder_json_file"] = str(missing / "encoder.json")
  spec["vocab_bpe_file"] = str(missing / "vocab.bpe")
  return spec


def test_gpt2_spec_finds_hf_names_in_search_dirs(gpt2, gpt2_dir, tmp_path):
  copy_dir = tmp_path / "hf_gpt2"
  copy_dir.mkdir()
  shutil.copy(gpt2_dir / "encoder.json", copy_dir / "vocab.json")
  shutil.copy(gpt2_dir / "vocab.bpe", copy_dir / "merges.txt")

  rebuilt = tokenizers.tokenizer_from_spec(
      _moved_spec(gpt2, tmp_path), search_dirs=[tmp_path, copy_dir]
  )

  assert rebuilt.identity() == gpt2.identity()
  assert rebuilt.files.encoder_json == (copy_dir / "vocab.json").resolve()


def test_gpt2_spec_missing_files_rejected(gpt2, tmp_path):
  with pytest.raises(FileNotFoundError) as error:
    tokenizers.tokenizer_from_spec(_moved_spec(gpt2, tmp_path))

  message = str(error.value)
  assert f"encoder.json sha256 {_GPT2_ENCODER_SHA256}" in message
  assert f"vocab.bpe sha256 {_GPT2_VOCAB_BPE_SHA256}" in message
  assert "not found" in message
  assert "Pass search_dirs=[DIR]" in message


def test_gpt2_spec_hash_mismatch_rejected(gpt2, gpt2_dir, tmp_path):
  edited_dir = tmp_path / "edited"
  edited_dir.mkdir()
  shutil.copy(gpt2_dir / "encoder.json", edited_dir / "encoder.json")
  edited_bpe = (gpt2_dir / "vocab.bpe").read_bytes() + b"\n"
  (edited_dir / "vocab.bpe").write_bytes(edited_bpe)

  with pytest.raises(FileNotFoundError) as error:
    tokenizers.tokenizer_from_spec(
        _moved_spec(gpt2, tmp_path), search_dirs=[edited_dir]
    )

  assert (
      f"found sha256 {_GPT2_ENCODER_SHA256} and"
      f" {hashlib.sha256(edited_bpe).hexdigest()}"
      in str(error.value)
  )


def test_gpt2_mismatched_files_rejected(gpt2_dir, tmp_path):
  encoder = json.loads((gpt2_dir / "encoder.json").read_text(encoding="utf-8"))
  truncated = dict(sorted(encoder.items(), key=lambda item: item[1])[:50000])
  (tmp_path / "encoder.json").write_text(
      json.dumps(truncated), encoding="utf-8"
  )
  shutil.copy(gpt2_dir / "vocab.bpe", tmp_path / "vocab.bpe")

  with pytest.raises(
      ValueError,
      match=(
          r"has 50000 entries but vocab\.bpe at .* implies 50257 .*pass the"
          r" matching pair"
      ),
  ):
    GPT2BPETokenizer.from_dir(tmp_path)


def test_gpt2_malformed_merge_line_rejected(gpt2_dir, tmp_path):
  shutil.copy(gpt2_dir / "encoder.json", tmp_path / "encoder.json")
  (tmp_path / "vocab.bpe").write_text(
      "#version: 0.2\n\u0120 t\nabc\n", encoding="utf-8"
  )

  with pytest.raises(ValueError, match=r"line 3 is 'abc'"):
    GPT2BPETokenizer.from_dir(tmp_path)


def test_gpt2_invalid_encoder_json_rejected(gpt2_dir, tmp_path):
  (tmp_path / "encoder.json").write_text("{not json", encoding="utf-8")
  shutil.copy(gpt2_dir / "vocab.bpe", tmp_path / "vocab.bpe")

  with pytest.raises(
      ValueError, match=r"encoder\.json at .* is not valid UTF-8 JSON"
  ):
    GPT2BPETokenizer.from_dir(tmp_path)


def test_gpt2_from_dir_missing_files_rejected(tmp_path):
  with pytest.raises(
      FileNotFoundError,
      match=(
          r"neither encoder\.json \+ vocab\.bpe or vocab\.json \+ merges\.txt"
      ),
  ):
    GPT2BPETokenizer.from_dir(tmp_path)
  with pytest.raises(
      FileNotFoundError, match="does not exist or is not a directory"
  ):
    GPT2BPETokenizer.from_dir(tmp_path / "absent")


def test_gpt2_in_memory_tables_have_no_spec(gpt2):
  tokenizer = GPT2BPETokenizer(gpt2._encoder, gpt2._merges)

  assert tokenizer.encode("Hello world").tolist() == [15496, 995]
  with pytest.raises(
      ValueError, match="build it with GPT2BPETokenizer.from_dir"
  ):
    tokenizer.spec()


def test_bytes_to_unicode_is_gpt2_table():
  table = tokenizers.bytes_to_unicode()

  assert len(table) == 256
  assert len(set(table.values())) == 256
  assert table[ord("A")] == "A"
  assert table[ord(" ")] == "\u0120"
  assert table[ord("\n")] == "\u010a"
  assert table[0] == "\u0100"
  assert table[0xAD] == "\u0143"


# ---------------------------------------------------------------------------
# build_tokenizer
# ---------------------------------------------------------------------------


def test_build_char_from_text_or_chars():
  from_text = tokenizers.build_tokenizer("char", text="banana")
  from_chars = tokenizers.build_tokenizer("char", chars="abn")

  assert from_text.identity() == from_chars.identity()
  assert from_text.vocab_size == 4


def test_build_gpt2_from_dir(gpt2_dir):
  tokenizer = tokenizers.build_tokenizer("gpt2_bpe", path=str(gpt2_dir))

  assert tokenizer.name == "gpt2_bpe"
  assert tokenizer.encode(" the").tolist() == [262]


def test_build_unknown_kind_rejected():
  with pytest.raises(
      ValueError,
      match=(
          r"unknown tokenizer kind 'wordpiece'; known kinds are \['char',"
          r" 'byte', 'gpt2_bpe', 'sentencepiece'\]"
      ),
  ):
    tokenizers.build_tokenizer("wordpiece", text="abc")


def test_build_wrong_arguments_rejected(gpt2_dir):
  with pytest.raises(ValueError, match="needs exactly one of text="):
    tokenizers.build_tokenizer("char")
  with pytest.raises(ValueError, match="needs exactly one of text="):
    tokenizers.build_tokenizer("char", text="ab", chars="ab")
  with pytest.raises(ValueError, match="only used by kind='gpt2_bpe'"):
    tokenizers.build_tokenizer("char", text="ab", path="/tmp")
  with pytest.raises(ValueError, match="needs path="):
    tokenizers.build_tokenizer("gpt2_bpe")
  with pytest.raises(ValueError, match="text= and chars= must not be set"):
    tokenizers.build_tokenizer("gpt2_bpe", text="ab", path=str(gpt2_dir))
  with pytest.raises(ValueError, match="is a file; pass the directory"):
    tokenizers.build_tokenizer("gpt2_bpe", path=str(gpt2_dir / "encoder.json"))


# -----------------------------------------------------------------------------
# SentencePiece (needs the spm extra).
# -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sentencepiece_model(tmp_path_factory) -> pathlib.Path:
  """A 300-piece BPE model trained here, without normalisation."""
  spm = pytest.importorskip("sentencepiece")
  lines = [f"line {index}: to be, or not to be, that is the question" for index in range(400)]
  lines += ["whether 'tis nobler in the mind to suffer", "caf\u00e9 na\u00efve"]
  path = tmp_path_factory.mktemp("spm") / "tiny.model"
  with path.open("wb") as handle:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=handle, vocab_size=300, model_type="bpe",
        byte_fallback=True, normalization_rule_name="identity", add_dummy_prefix=False,
        remove_extra_whitespaces=False, minloglevel=2)
  return path


def test_sentencepiece_matches_the_library(sentencepiece_model):
  import sentencepiece  # pylint: disable=import-outside-toplevel
  tokenizer = tokenizers.build_tokenizer("sentencepiece", path=sentencepiece_model)
  reference = sentencepiece.SentencePieceProcessor(model_file=str(sentencepiece_model))
  text = "to be or not\n\twhether \u00e9 \U0001f600"
  ids = tokenizer.encode(text)
  assert ids.dtype == np.int32
  assert ids.tolist() == reference.encode(text)
  # Identity normalisation and byte fallback make decoding exact.
  assert tokenizer.decode(ids) == text
  assert tokenizer.vocab_size == 300
  assert tokenizer.special_ids == {"unk": 0, "bos": 1, "eos": 2}


def test_sentencepiece_special_strings_stay_text(sentencepiece_model):
  tokenizer = tokenizers.build_tokenizer("sentencepiece", path=sentencepiece_model)
  ids = tokenizer.encode("<s>hi</s>")
  assert tokenizer.special_ids["bos"] not in ids.tolist()
  assert tokenizer.special_ids["eos"] not in ids.tolist()
  assert tokenizer.decode(ids) == "<s>hi</s>"


def test_sentencepiece_spec_finds_moved_model(sentencepiece_model, tmp_path):
  tokenizer = tokenizers.build_tokenizer("sentencepiece", path=sentencepiece_model)
  spec = json.loads(json.dumps(tokenizer.spec()))
  moved = tmp_path / "moved"
  moved.mkdir()
  shutil.copy(sentencepiece_model, moved / sentencepiece_model.name)
  spec["model_file"] = str(tmp_path / "gone" / sentencepiece_model.name)
  rebuilt = tokenizers.tokenizer_from_spec(spec, search_dirs=[moved])
  assert rebuilt.identity() == tokenizer.identity()
  with pytest.raises(FileNotFoundError, match="No SentencePiece model matches"):
    tokenizers.tokenizer_from_spec(spec)


def test_sentencepiece_rejects_changed_or_bad_file(sentencepiece_model, tmp_path):
  tokenizer = tokenizers.build_tokenizer("sentencepiece", path=sentencepiece_model)
  changed = tmp_path / sentencepiece_model.name
  changed.write_bytes(sentencepiece_model.read_bytes() + b"\0")
  with pytest.raises(FileNotFoundError, match="found sha256"):
    tokenizers.tokenizer_from_spec(dict(tokenizer.spec(), model_file=str(changed)))
  garbage = tmp_path / "garbage.model"
  garbage.write_bytes(b"not a model")
  with pytest.raises(ValueError, match="is not a valid SentencePiece model"):
    tokenizers.build_tokenizer("sentencepiece", path=garbage)
  with pytest.raises(FileNotFoundError, match="not found"):
    tokenizers.build_tokenizer("sentencepiece", path=tmp_path / "missing.model")
