"""Tests for catflow.evaluate.tasks: readers, requests and metrics.

No model is trained or run. Stub scorers give every continuation token a
fixed log-probability, so the expected accuracies follow from token and
character counts that the tests compute from the raw files themselves.
"""

import bz2
import functools
import json
import math
import pathlib
import re

import numpy as np
import pytest

from catflow.data.tokenizers import CharTokenizer
from catflow.data.tokenizers import GPT2BPETokenizer
from catflow.evaluate import task_files
from catflow.evaluate import tasks
from catflow.evaluate.tasks import Item
from catflow.evaluate.tasks import Request
from catflow.evaluate.tasks import RequestScore

_GPT2_EOS_ID = 50256


@functools.cache
def _load_gpt2(directory: str) -> GPT2BPETokenizer:
  return GPT2BPETokenizer.from_dir(directory)


@pytest.fixture
def gpt2(shared_data: pathlib.Path) -> GPT2BPETokenizer:
  return _load_gpt2(str(shared_data / "gpt2_bpe"))


@pytest.fixture
def chars() -> CharTokenizer:
  # Every character outside the alphabet becomes <unk>, which is still one
  # token per character, so token counts equal character counts.
  return CharTokenizer("abcdefghijklmnopqrstuvwxyz ")


def _jsonl(path: pathlib.Path) -> list[dict]:
  with path.open(encoding="utf-8") as file:
    return [json.loads(line) for line in file]


def _labels(path: pathlib.Path) -> list[int]:
  return [int(line) for line in path.read_text().split()]


class FixedTokenScorer:
  """Gives every continuation token the log-probability `per_token`."""

  def __init__(self, per_token: float = -1.0):
    self.per_token = per_token
    self.calls = 0

  def score(self, requests, item_keys):
    del item_keys  # Unused.
    self.calls += 1
    return [
        RequestScore.for_request(
            request,
            self.per_token * len(request.continuation_ids),
            greedy_correct=True,
        )
        for request in requests
    ]


# ---------------------------------------------------------------------------
# Loaders on the real files.

_EXPECTED_COUNTS = {
    "lambada_openai": 5153,
    "piqa": 1838,
    "siqa": 1954,
    "hellaswag": 10042,
    "arc_easy": 2376,
    "arc_challenge": 1172,
    "openbookqa": 500,
    "winogrande": 1267,
    "boolq": 3270,
    "copa": 100,
}


def test_registry_names():
  assert set(task_files.TASKS) == set(_EXPECTED_COUNTS)


@pytest.mark.parametrize("name", sorted(_EXPECTED_COUNTS))
def test_loader_counts_and_labels(shared_data, name):
  spec = task_files.TASKS[name]

  items = tasks.load_task(name, data_dir=shared_data)

  assert len(items) == _EXPECTED_COUNTS[name]
  assert [item.index for item in items] == list(range(len(items)))
  assert {item.task for item in items} == {name}
  assert {item.num_choices for item in items} == {spec.num_choices}
  assert all(0 <= item.label < spec.num_choices for item in items)
  assert all(
      continuation.startswith(" ")
      for item in items
      for continuation in item.continuations
  )
  if spec.num_choices > 1:
    # Every choice index is the gold answer somewhere.
    assert {item.label for item in items} == set(range(spec.num_choices))


def test_loader_reads_env_variable(shared_data, monkeypatch):
  monkeypatch.setenv(task_files.DATA_DIR_ENV, str(shared_data))

  items = tasks.load_task("copa", limit=3)

  assert len(items) == 3


def test_lambada_first_item(shared_data):
  items = tasks.load_task("lambada_openai", data_dir=shared_data)

  first = items[0]
  assert first.contexts[0].startswith(
      "In my palm is a clear stone, and inside it is a small ivory statuette."
  )
  assert first.contexts[0].endswith(
      "his mouth curved in a confident grin, I don't care about"
  )
  assert first.continuations == (" signs",)
  assert first.target == "signs"
  assert first.label == 0


def test_lambada_splits_at_last_space(shared_data):
  items = tasks.load_task("lambada_openai", data_dir=shared_data)
  texts = [
      record["text"]
      for record in _jsonl(shared_data / "lambada_openai/lambada_test.jsonl")
  ]

  for item, text in zip(items, texts):
    assert item.contexts[0] + item.continuations[0] == text
    assert " " not in item.target
  # Splitting at " " (lm-eval) rather than any whitespace leaves a newline in
  # 7 targets.
  with_newline = [item.index for item in items if "\n" in item.target]
  assert with_newline == [426, 1053, 2881, 3047, 3977, 4351, 4462]
  assert items[426].target == "of\n\nPower"


def test_piqa_first_items(shared_data):
  items = tasks.load_task("piqa", data_dir=shared_data)

  first = items[0]
  context = (
      "Question: How do I ready a guinea pig cage for it's new occupants?"
      "\nAnswer:"
  )
  assert first.contexts == (context, context)
  assert first.continuations == (
      " Provide the guinea pig with a cage full of a few inches of bedding"
      " made of ripped paper strips, you will also need to supply it with a"
      " water bottle and a food dish.",
      " Provide the guinea pig with a cage full of a few inches of bedding"
      " made of ripped jeans material, you will also need to supply it with a"
      " water bottle and a food dish.",
  )
  assert first.label == 0
  # Solutions keep their stored whitespace, as in lm-eval.
  second = items[1]
  assert second.contexts[0] == "Question: dresser\nAnswer:"
  assert second.continuations == (
      " replace drawer with bobby pin ",
      " finish, woodgrain with  bobby pin ",
  )
  assert second.label == 1


def test_piqa_matches_icl_copy(shared_data):
  items = tasks.load_task("piqa", data_dir=shared_data)
  icl = _jsonl(shared_data / "llmfoundry_icl/piqa.jsonl")

  assert len(icl) == len(items)
  for item, record in zip(items, icl):
    goal = item.contexts[0].removeprefix("Question: ").removesuffix("\nAnswer:")
    assert record["query"] == f"Question: {goal}\n"
    assert record["choices"] == [choice.strip() for choice in item.choices]
    assert record["gold"] == item.label


def test_siqa_first_item(shared_data):
  items = tasks.load_task("siqa", data_dir=shared_data)

  first = items[0]
  assert first.contexts[0] == (
      "Q: Tracy didn't go home that evening and resisted Riley's attacks."
      " What does Tracy need to do before this?\nA:"
  )
  assert first.continuations == (
      " make a new plan",
      " Go home and see Riley",
      " Find somewhere to go",
  )
  # dev-labels.lst starts with 3, 1, 2 (1-based).
  assert [item.label for item in items[:3]] == [2, 0, 1]


def test_hellaswag_first_item(shared_data):
  items = tasks.load_task("hellaswag", data_dir=shared_data)

  first = items[0]
  assert first.contexts[0] == (
      "Roof shingle removal: A man is sitting on a roof. he"
  )
  assert first.continuations == (
      " is using wrap to wrap a pair of skis.",
      " is ripping level tiles off.",
      " is holding a rubik's cube.",
      " starts pulling up roofing on a roof.",
  )
  assert first.label == 3
  assert items[-1].label == 2


def test_hellaswag_preprocess_removes_markup(shared_data):
  items = tasks.load_task("hellaswag", data_dir=shared_data)

  texts = [text for item in items for text in item.contexts[:1] + item.choices]
  # Five endings keep an unmatched "[", which lm-eval's regex keeps too.
  assert not any(re.search(r"\[.*?\]", text) for text in texts)
  assert not any("  " in text for text in texts)
  assert sum("[" in text for text in texts) == 5
  assert task_files.hellaswag_preprocess(" a [title] b [step] c  d ") == "a. b c d"


def test_arc_first_items(shared_data):
  easy = tasks.load_task("arc_easy", data_dir=shared_data)
  challenge = tasks.load_task("arc_challenge", data_dir=shared_data)

  assert easy[0].contexts[0] == (
      "Question: Which statement best explains why photosynthesis is the"
      " foundation of most food webs?\nAnswer:"
  )
  assert easy[0].continuations[0] == (
      " Sunlight is the source of energy for nearly all ecosystems."
  )
  assert easy[0].label == 0
  assert challenge[0].contexts[0] == (
      "Question: An astronomer observes that a planet rotates faster after a"
      " meteorite impact. Which is the most likely effect of this increase in"
      " rotation?\nAnswer:"
  )
  assert challenge[0].continuations == (
      " Planetary density will decrease.",
      " Planetary years will become longer.",
      " Planetary days will become shorter.",
      " Planetary gravity will become stronger.",
  )
  assert challenge[0].label == 2


def test_openbookqa_first_item(shared_data):
  items = tasks.load_task("openbookqa", data_dir=shared_data)

  first = items[0]
  assert first.contexts[0] == (
      "A person wants to start saving money so that they can afford a nice"
      " vacation at the end of the year. After looking over their budget and"
      " expenses, they decide the best way to save money is to"
  )
  assert first.continuations == (
      " make more phone calls",
      " quit eating lunch out",
      " buy less with monopoly money",
      " have lunch with friends",
  )
  assert first.label == 1


def test_winogrande_first_item(shared_data):
  items = tasks.load_task("winogrande", data_dir=shared_data)

  first = items[0]
  assert first.contexts == (
      "Sarah was a much better surgeon than Maria so Sarah",
      "Sarah was a much better surgeon than Maria so Maria",
  )
  assert first.continuations == (" always got the easier cases.",) * 2
  assert first.label == 1


def test_boolq_uses_lm_eval_prompt(shared_data):
  items = tasks.load_task("boolq", data_dir=shared_data)

  first = items[0]
  assert first.contexts[0].startswith("All biomass goes through at least")
  assert first.contexts[0].endswith(
      "than producing gasoline.\nQuestion: does ethanol take more energy make"
      " that produces?\nAnswer:"
  )
  assert first.continuations == (" no", " yes")
  assert first.label == 0
  assert items[1].label == 1
  assert not any(item.contexts[0].startswith("Passage:") for item in items)


def test_boolq_passage_containing_question(shared_data):
  items = tasks.load_task("boolq", data_dir=shared_data)

  # The passage of item 2417 itself contains "\nQuestion: ", so the question
  # is the text after the last one.
  context = items[2417].contexts[0]
  assert context.count("\nQuestion: ") == 2
  assert context.endswith(
      "\nQuestion: is the sea snake the most venomous snake?\nAnswer:"
  )


def test_copa_drops_comma_before_connector(shared_data):
  items = tasks.load_task("copa", data_dir=shared_data)
  records = _jsonl(shared_data / "llmfoundry_icl/copa.jsonl")

  first = items[0]
  assert first.contexts[0] == "The man turned on the faucet therefore"
  assert first.continuations == (
      " the toilet filled with water.",
      " water flowed from the spout.",
  )
  assert first.label == 1
  for item, record in zip(items, records):
    connector = record["query"].rsplit(" ", 1)[1]
    assert connector in ("because", "therefore")
    assert item.contexts[0] == record["query"].replace(
        f", {connector}", f" {connector}"
    )
    assert all(choice[0] == choice[0].lower() for choice in item.choices)


def test_limit_keeps_first_items(shared_data):
  everything = tasks.load_task("arc_challenge", data_dir=shared_data)

  first_five = tasks.load_task("arc_challenge", data_dir=shared_data, limit=5)

  assert first_five == everything[:5]
  with pytest.raises(ValueError, match="empty evaluation set"):
    tasks.load_task("arc_challenge", data_dir=shared_data, limit=0)


# ---------------------------------------------------------------------------
# Loader errors on small files written by the tests.


def _write(root: pathlib.Path, relative: str, text: str) -> pathlib.Path:
  path = root / relative
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text, encoding="utf-8")
  return path


def test_missing_file_names_path_and_env(tmp_path, monkeypatch):
  monkeypatch.setenv(task_files.DATA_DIR_ENV, str(tmp_path))

  with pytest.raises(FileNotFoundError) as error:
    tasks.load_task("copa")

  message = str(error.value)
  assert str(tmp_path / "llmfoundry_icl/copa.jsonl") in message
  assert task_files.DATA_DIR_ENV in message


def test_unset_env_raises(monkeypatch):
  monkeypatch.delenv(task_files.DATA_DIR_ENV, raising=False)

  with pytest.raises(FileNotFoundError, match=task_files.DATA_DIR_ENV):
    tasks.load_task("copa")


def test_unknown_task_raises():
  with pytest.raises(ValueError, match="unknown task 'mmlu'"):
    tasks.load_task("mmlu", data_dir="/nonexistent")


def test_invalid_json_names_line(tmp_path):
  good = json.dumps({"query": "Question: q", "choices": ["a"] * 4, "gold": 0})
  _write(tmp_path, "llmfoundry_icl/arc_easy.jsonl", f"{good}\n{good}\n{{oops\n")

  message = r"arc_easy.jsonl line 3 is not valid JSON"
  with pytest.raises(ValueError, match=message):
    tasks.load_task("arc_easy", data_dir=tmp_path)


@pytest.mark.parametrize(
    "record, message",
    [
        ({"choices": ["a", "b"], "gold": 0}, "no field 'query'"),
        ({"query": "x, because", "choices": "ab", "gold": 0}, "'choices'"),
        ({"query": "x, because", "choices": ["a", ""], "gold": 0}, "non-empty"),
        ({"query": "x, because", "choices": ["a", "b"], "gold": 2}, "gold 2"),
        ({"query": "x, because", "choices": ["a", "b"], "gold": True}, "gold"),
        ({"query": "x because", "choices": ["a", "b"], "gold": 0}, "because"),
    ],
)
def test_malformed_copa_record(tmp_path, record, message):
  good = json.dumps({"query": "x, therefore", "choices": ["a", "b"], "gold": 1})
  _write(
      tmp_path, "llmfoundry_icl/copa.jsonl", f"{good}\n{json.dumps(record)}\n"
  )

  with pytest.raises(ValueError, match=message) as error:
    tasks.load_task("copa", data_dir=tmp_path)

  assert "copa.jsonl line 2" in str(error.value)


def test_wrong_number_of_choices(tmp_path):
  record = {"query": "Question: q", "choices": ["a", "b", "c"], "gold": 0}
  _write(tmp_path, "llmfoundry_icl/arc_easy.jsonl", json.dumps(record) + "\n")

  with pytest.raises(ValueError, match="has 3 choices, expected 4"):
    tasks.load_task("arc_easy", data_dir=tmp_path)


def test_label_file_errors(tmp_path):
  record = json.dumps({"goal": "g", "sol1": "a", "sol2": "b"})
  _write(tmp_path, "piqa/valid.jsonl", f"{record}\n{record}\n")

  _write(tmp_path, "piqa/valid-labels.lst", "0\n")
  with pytest.raises(ValueError, match="has 1 labels but"):
    tasks.load_task("piqa", data_dir=tmp_path)

  _write(tmp_path, "piqa/valid-labels.lst", "0\n2\n")
  with pytest.raises(ValueError, match=r"valid-labels.lst line 2 has label 2"):
    tasks.load_task("piqa", data_dir=tmp_path)

  _write(tmp_path, "piqa/valid-labels.lst", "0\nyes\n")
  with pytest.raises(ValueError, match=r"valid-labels.lst line 2 is 'yes'"):
    tasks.load_task("piqa", data_dir=tmp_path)


def test_siqa_zero_label_is_invalid(tmp_path):
  record = json.dumps({
      "context": "c",
      "question": "q",
      "answerA": "a",
      "answerB": "b",
      "answerC": "c",
  })
  _write(tmp_path, "siqa/dev.jsonl", record + "\n")
  _write(tmp_path, "siqa/dev-labels.lst", "0\n")

  with pytest.raises(ValueError, match=r"line 1 has label 0, outside \[1, 3\]"):
    tasks.load_task("siqa", data_dir=tmp_path)


def test_hellaswag_errors(tmp_path):
  path = tmp_path / "hellaswag/hellaswag_val_full.txt.bz2"
  path.parent.mkdir(parents=True)
  item = "Label: ctx\n1\ne0\ne1\ne2\ne3\n"

  path.write_bytes(bz2.compress((item + "extra\n").encode()))
  with pytest.raises(ValueError, match="not a multiple of 6"):
    tasks.load_task("hellaswag", data_dir=tmp_path)

  bad_label = item.replace("\n1\n", "\n4\n")
  path.write_bytes(bz2.compress((item + bad_label).encode()))
  with pytest.raises(ValueError, match=r"line 8 has label 4"):
    tasks.load_task("hellaswag", data_dir=tmp_path)

  path.write_bytes(item.encode())
  with pytest.raises(ValueError, match="not a valid bz2 file"):
    tasks.load_task("hellaswag", data_dir=tmp_path)

  path.write_bytes(bz2.compress(item.encode()))
  assert tasks.load_task("hellaswag", data_dir=tmp_path)[0].label == 1


def test_lambada_text_without_space(tmp_path):
  lines = [json.dumps({"text": "two words"}), json.dumps({"text": "oneword"})]
  _write(tmp_path, "lambada_openai/lambada_test.jsonl", "\n".join(lines))

  with pytest.raises(ValueError, match="lambada_test.jsonl line 2"):
    tasks.load_task("lambada_openai", data_dir=tmp_path)


def test_item_rejects_label_out_of_range():
  with pytest.raises(ValueError, match="label 2"):
    Item("copa", 0, ("c", "c"), (" a", " b"), ("a", "b"), label=2)


# ---------------------------------------------------------------------------
# Requests.


def test_trailing_whitespace_moves_to_continuation(gpt2):
  moved = tasks.build_request(gpt2, "Question: x\nAnswer: ", "yes", 100)
  plain = tasks.build_request(gpt2, "Question: x\nAnswer:", " yes", 100)

  assert moved.context_ids.tolist() == plain.context_ids.tolist()
  assert moved.continuation_ids.tolist() == plain.continuation_ids.tolist()
  assert gpt2.decode(moved.context_ids) == "Question: x\nAnswer:"
  assert gpt2.decode(moved.continuation_ids) == " yes"
  assert moved.num_chars == len(" yes")


def test_whitespace_only_continuation_after_move(chars):
  request = tasks.build_request(chars, "ab \n", "", 100)

  assert chars.decode(request.context_ids) == "ab"
  assert len(request.continuation_ids) == 2


def test_join_token_belongs_to_continuation(gpt2):
  spaced = tasks.build_request(gpt2, "Hello", " world!", 100)
  joined = tasks.build_request(gpt2, "Hello", "world!", 100)

  assert spaced.context_ids.tolist() == [15496]
  assert spaced.continuation_ids.tolist() == [995, 0]
  # "Helloworld!" is [39, 5037, 1764, 0], which shares no token with "Hello"
  # = [15496], so the whole string is continuation.
  assert joined.context_ids.tolist() == []
  assert joined.continuation_ids.tolist() == [39, 5037, 1764, 0]
  assert gpt2.decode(joined.continuation_ids) == "Helloworld!"


def test_context_keeps_only_shared_tokens(gpt2):
  # "Hello wor" ends in a token that "Hello world" replaces.
  context_ids = gpt2.encode("Hello wor")
  whole_ids = gpt2.encode("Hello world")
  assert context_ids[0] == whole_ids[0]
  assert context_ids[1] != whole_ids[1]

  request = tasks.build_request(gpt2, "Hello wor", "ld", 100)

  assert request.context_ids.tolist() == whole_ids[:1].tolist()
  assert request.continuation_ids.tolist() == whole_ids[1:].tolist()
  assert gpt2.decode(request.continuation_ids) == " world"


def test_left_truncation_counts_tokens(chars):
  request = tasks.build_request(chars, "abcdefghij", " xyz", 8)

  assert request.truncated == 6
  assert chars.decode(request.context_ids) == "ghij"
  assert chars.decode(request.continuation_ids) == " xyz"
  assert request.length == 8


def test_truncation_of_gpt2_context(gpt2):
  context = "one two three four five six seven eight"
  request = tasks.build_request(gpt2, context, " nine", 4)

  assert request.truncated == 5
  assert request.context_ids.tolist() == gpt2.encode(context)[-3:].tolist()
  assert request.continuation_ids.tolist() == gpt2.encode(" nine").tolist()


def test_continuation_filling_max_length(chars):
  request = tasks.build_request(chars, "abc", " xy", 3)

  assert request.truncated == 3
  assert request.context_ids.size == 0
  assert chars.decode(request.continuation_ids) == " xy"


def test_continuation_too_long_raises(chars):
  with pytest.raises(ValueError, match="more than max_length=3"):
    tasks.build_request(chars, "abc", " xyz", 3, item_name="copa item 7")


def test_empty_continuation_raises(chars):
  message = "copa item 7: the continuation is empty"
  with pytest.raises(ValueError, match=message):
    tasks.build_request(chars, "abc", "", 10, item_name="copa item 7")


def test_invalid_max_length_raises(chars):
  with pytest.raises(ValueError, match="max_length must be at least 1"):
    tasks.build_request(chars, "abc", " d", 0)


def test_special_token_text_is_plain_text(gpt2):
  context = "The end.<|endoftext|>Next"
  request = tasks.build_request(gpt2, context, " <|endoftext|>", 100)

  ids = np.concatenate([request.context_ids, request.continuation_ids])
  assert _GPT2_EOS_ID not in ids.tolist()
  assert gpt2.decode(ids) == context + " <|endoftext|>"
  assert gpt2.decode(request.continuation_ids) == " <|endoftext|>"


def test_request_ids_are_read_only(chars):
  request = tasks.build_request(chars, "ab", " c", 10)

  assert request.continuation_ids.dtype == np.int32
  with pytest.raises(ValueError):
    request.continuation_ids[0] = 1


def test_item_requests_record_answer_length(gpt2):
  item = Item("arc_easy", 0, ("Q:",) * 2, (" é", " ab"), ("é", "ab"), label=0)

  requests = tasks.build_item_requests(gpt2, item, 100)

  assert [request.num_chars for request in requests] == [1, 2]
  assert [request.num_bytes for request in requests] == [2, 2]


def test_every_real_request_has_continuation_tokens(shared_data, gpt2):
  for name in ("winogrande", "copa", "boolq"):
    for item in tasks.load_task(name, data_dir=shared_data, limit=200):
      for request in tasks.build_item_requests(gpt2, item, 1024):
        assert len(request.continuation_ids) >= 1


# ---------------------------------------------------------------------------
# Metrics on hand-made scores.


def _score(
    log_likelihood, num_tokens=1, num_chars=1, num_bytes=None, greedy=None
):
  return RequestScore(
      log_likelihood=log_likelihood,
      num_tokens=num_tokens,
      num_chars=num_chars,
      num_bytes=num_chars if num_bytes is None else num_bytes,
      greedy_correct=greedy,
  )


def _items(task, labels, num_choices=2):
  return [
      Item(
          task,
          index,
          ("c",) * num_choices,
          tuple(f" {choice}" for choice in "abcd"[:num_choices]),
          tuple("abcd"[:num_choices]),
          label,
      )
      for index, label in enumerate(labels)
  ]


def test_summed_log_likelihood_decides():
  # Choice 0: one token at -2 (sum -2, mean -2). Choice 1: four tokens at -1
  # (sum -4, mean -1). The sum picks choice 0, a per-token mean would pick 1.
  items = _items("piqa", [0])
  scores = [_score(-2.0, num_tokens=1), _score(-4.0, num_tokens=4)]

  result = tasks.aggregate("piqa", items, scores)

  assert result["acc"] == 1.0


def test_ties_go_to_lowest_index():
  items = _items("piqa", [0, 1])
  scores = [_score(-3.0), _score(-3.0), _score(-3.0), _score(-3.0)]

  result = tasks.aggregate("piqa", items, scores)

  assert result["acc"] == 0.5
  assert result["acc_norm_chars"] == 0.5


def test_norms_by_chars_and_bytes_differ():
  # Choice 0 is "éé" (2 chars, 4 bytes) at -3, choice 1 "abc" (3 chars, 3
  # bytes) at -4. Per char: -1.5 vs -1.33, so choice 1. Per byte: -0.75 vs
  # -1.33, so choice 0. The sum -3 > -4 picks choice 0.
  items = _items("arc_easy", [0], num_choices=2)
  scores = [
      _score(-3.0, num_chars=2, num_bytes=4),
      _score(-4.0, num_chars=3, num_bytes=3),
  ]

  result = tasks.aggregate("arc_easy", items, scores)

  assert result["acc"] == 1.0
  assert result["acc_norm_chars"] == 0.0
  assert result["acc_norm_bytes"] == 1.0


def test_standard_error_formula():
  labels = [0, 0, 0, 1]
  items = _items("copa", labels)
  scores = [_score(-1.0), _score(-2.0)] * 4

  result = tasks.aggregate("copa", items, scores)

  assert result["acc"] == 0.75
  assert result["acc_stderr"] == pytest.approx(math.sqrt(0.75 * 0.25 / 4))
  assert result["num_items"] == 4
  assert result["num_requests"] == 8


def test_winogrande_reports_acc_only():
  items = _items("winogrande", [1])

  result = tasks.aggregate("winogrande", items, [_score(-2.0), _score(-1.0)])

  assert result["acc"] == 1.0
  assert "acc_norm_chars" not in result


def test_truncated_requests_are_counted(chars):
  items = _items("copa", [0])
  requests = [
      tasks.build_request(chars, "abcdef", " a", 4),
      tasks.build_request(chars, "abcdef", " b", 100),
  ]
  scores = [RequestScore.for_request(request, -1.0) for request in requests]

  result = tasks.aggregate("copa", items, scores, requests=requests)

  assert result["num_truncated_requests"] == 1
  assert "num_truncated_requests" not in tasks.aggregate("copa", items, scores)


@pytest.mark.parametrize(
    "scores, message",
    [
        ([_score(-1.0)], "got 1 scores for 1 items with 2 choices"),
        ([_score(-1.0), _score(float("nan"))], "finite"),
        ([_score(-1.0), _score(-1.0, num_chars=0)], "at least 1"),
    ],
)
def test_aggregate_rejects_bad_scores(scores, message):
  with pytest.raises(ValueError, match=message):
    tasks.aggregate("piqa", _items("piqa", [0]), scores)


def test_aggregate_rejects_other_task_items():
  with pytest.raises(ValueError, match="belongs to task 'copa'"):
    tasks.aggregate("piqa", _items("copa", [0]), [_score(-1.0)] * 2)


def test_lambada_needs_greedy_flag():
  items = [Item("lambada_openai", 0, ("c",), (" w",), ("w",), 0, target="w")]

  with pytest.raises(ValueError, match="greedy_correct=None"):
    tasks.aggregate("lambada_openai", items, [_score(-1.0)])


def test_lambada_perplexity_per_item():
  items = [
      Item("lambada_openai", index, ("c",), (" w",), ("w",), 0, target="w")
      for index in range(2)
  ]
  scores = [
      _score(-1.0, num_tokens=1, greedy=True),
      _score(-3.0, num_tokens=3, greedy=False),
  ]

  result = tasks.aggregate("lambada_openai", items, scores)

  assert result["acc"] == 0.5
  assert result["ppl"] == pytest.approx(math.exp(4.0 / 2))
  assert result["nats_per_token"] == pytest.approx(4.0 / 4)


# ---------------------------------------------------------------------------
# Known answers on the real files with a fixed log-probability per token.


def _expected_accuracies(choice_sets, labels, token_counts):
  """Returns (acc, acc_norm_chars, acc_norm_bytes) with -1 nat per token.

  `choice_sets[i]` are the answer texts of item i and `token_counts[i]` their
  continuation token counts. np.argmax breaks ties towards the lowest index.
  """
  hits = np.zeros(3)
  for choices, label, counts in zip(choice_sets, labels, token_counts):
    log_likelihoods = -np.array(counts, dtype=np.float64)
    char_lengths = np.array([len(choice) for choice in choices])
    byte_lengths = np.array([len(choice.encode()) for choice in choices])
    hits[0] += np.argmax(log_likelihoods) == label
    hits[1] += np.argmax(log_likelihoods / char_lengths) == label
    hits[2] += np.argmax(log_likelihoods / byte_lengths) == label
  return tuple(hits / len(labels))


def _raw_choices_and_labels(shared_data: pathlib.Path, name: str):
  """Reads answer texts and labels straight from the files, without tasks."""
  icl = shared_data / "llmfoundry_icl"
  if name == "piqa":
    records = _jsonl(shared_data / "piqa/valid.jsonl")
    labels = _labels(shared_data / "piqa/valid-labels.lst")
    return [[r["sol1"], r["sol2"]] for r in records], labels
  if name == "siqa":
    records = _jsonl(shared_data / "siqa/dev.jsonl")
    labels = _labels(shared_data / "siqa/dev-labels.lst")
    labels = [label - 1 for label in labels]
    keys = ("answerA", "answerB", "answerC")
    return [[r[key] for key in keys] for r in records], labels
  if name == "hellaswag":
    path = shared_data / "hellaswag/hellaswag_val_full.txt.bz2"
    with bz2.open(path, "rt", encoding="utf-8") as file:
      lines = file.read().split("\n")[:-1]

    def clean(text):
      text = text.strip().replace(" [title]", ". ")
      return re.sub(r"\[.*?\]", "", text).replace("  ", " ")

    choices = [
        [clean(line) for line in lines[start + 2 : start + 6]]
        for start in range(0, len(lines), 6)
    ]
    return choices, [int(label) for label in lines[1::6]]
  file_name = {"openbookqa": "openbook_qa"}.get(name, name)
  records = _jsonl(icl / f"{file_name}.jsonl")
  if name == "winogrande":
    choices = [[record["continuation"]] * 2 for record in records]
    return choices, [record["gold"] for record in records]
  return [r["choices"] for r in records], [r["gold"] for r in records]


_MULTIPLE_CHOICE_TASKS = sorted(set(_EXPECTED_COUNTS) - {"lambada_openai"})


@pytest.mark.parametrize("name", _MULTIPLE_CHOICE_TASKS)
def test_fixed_token_score_with_chars(shared_data, chars, name):
  # One token per character: each continuation " {choice}" has len + 1
  # tokens, so acc picks the shortest answer and acc_norm_chars, with
  # -(n + 1) / n, the longest.
  choice_sets, labels = _raw_choices_and_labels(shared_data, name)
  token_counts = [
      [len(choice) + 1 for choice in choices] for choices in choice_sets
  ]
  acc, acc_chars, acc_bytes = _expected_accuracies(
      choice_sets, labels, token_counts
  )

  result = tasks.evaluate_task(
      name,
      FixedTokenScorer(),
      chars,
      max_length=100_000,
      data_dir=shared_data,
      batch_size=512,
  )

  assert result["num_items"] == _EXPECTED_COUNTS[name]
  assert result["acc"] == pytest.approx(acc, abs=1e-12)
  if name == "winogrande":
    # Equal continuations tie, so choice 0 is always predicted.
    assert result["acc"] == pytest.approx(labels.count(0) / len(labels))
    assert "acc_norm_chars" not in result
  else:
    assert result["acc_norm_chars"] == pytest.approx(acc_chars, abs=1e-12)
    assert result["acc_norm_bytes"] == pytest.approx(acc_bytes, abs=1e-12)
  assert result["num_truncated_requests"] == 0


@pytest.mark.parametrize(
    "name, limit",
    [
        ("arc_challenge", None),
        ("arc_easy", None),
        ("copa", None),
        ("openbookqa", None),
        ("piqa", None),
        ("siqa", None),
        ("winogrande", None),
        ("boolq", 500),
        ("hellaswag", 1000),
    ],
)
def test_fixed_token_score_with_gpt2(shared_data, gpt2, name, limit):
  # Expected token counts encode " {choice}" on its own, independent of the
  # context and of build_request's shared-prefix logic.
  choice_sets, labels = _raw_choices_and_labels(shared_data, name)
  if name == "copa":
    choice_sets = [[c[0].lower() + c[1:] for c in cs] for cs in choice_sets]
  choice_sets, labels = choice_sets[:limit], labels[:limit]
  token_counts = [
      [len(gpt2.encode(" " + choice)) for choice in choices]
      for choices in choice_sets
  ]
  acc, acc_chars, acc_bytes = _expected_accuracies(
      choice_sets, labels, token_counts
  )

  result = tasks.evaluate_task(
      name,
      FixedTokenScorer(),
      gpt2,
      max_length=2048,
      data_dir=shared_data,
      limit=limit,
      batch_size=256,
  )

  assert result["acc"] == pytest.approx(acc, abs=1e-12)
  if name != "winogrande":
    assert result["acc_norm_chars"] == pytest.approx(acc_chars, abs=1e-12)
    assert result["acc_norm_bytes"] == pytest.approx(acc_bytes, abs=1e-12)
  assert result["tokenizer"] == gpt2.identity()


class OneWrongTokenScorer:
  """Greedy-decodes every LAMBADA target token right, except one token.

  For items whose key is a multiple of 3, the last target token is wrong.
  Each token has log-probability -0.5.
  """

  def score(self, requests, item_keys):
    scores = []
    for request, key in zip(requests, item_keys):
      token_correct = np.ones(len(request.continuation_ids), dtype=bool)
      if key % 3 == 0:
        token_correct[-1] = False
      scores.append(
          RequestScore.for_request(
              request,
              -0.5 * len(request.continuation_ids),
              greedy_correct=bool(token_correct.all()),
          )
      )
    return scores


def test_lambada_known_answer(shared_data, gpt2):
  texts = [
      record["text"]
      for record in _jsonl(shared_data / "lambada_openai/lambada_test.jsonl")
  ]
  targets = [text.split(" ")[-1] for text in texts]
  target_tokens = [len(gpt2.encode(" " + target)) for target in targets]
  num_wrong = len(range(0, len(texts), 3))

  result = tasks.evaluate_task(
      "lambada_openai",
      OneWrongTokenScorer(),
      gpt2,
      max_length=1024,
      data_dir=shared_data,
      batch_size=1000,
  )

  assert result["num_items"] == 5153
  assert result["acc"] == pytest.approx(1 - num_wrong / len(texts))
  # A per-token average would count the right tokens of the wrong items.
  assert sum(n > 1 for n in target_tokens[::3]) > 0
  assert result["num_target_tokens"] == sum(target_tokens)
  assert result["ppl"] == pytest.approx(
      math.exp(0.5 * sum(target_tokens) / len(texts))
  )
  assert result["nats_per_token"] == pytest.approx(0.5)


# ---------------------------------------------------------------------------
# Independence of batch size and request order.


class SeededScorer:
  """Deterministic scorer whose result depends only on the request and key.

  Per-token log-probabilities depend on the token ids, and noise drawn from
  a generator seeded by the item key is shared by all choices of the item.
  """

  def __init__(self):
    self.batch_sizes = []

  def score(self, requests, item_keys):
    self.batch_sizes.append(len(requests))
    scores = []
    for request, key in zip(requests, item_keys):
      shared_noise = np.random.default_rng(key).normal()
      ids = request.continuation_ids.astype(np.float64)
      log_likelihood = float(-np.sum(1.0 + (ids % 13) / 5.0)) + shared_noise
      greedy = bool(ids.sum() % 2)
      scores.append(RequestScore.for_request(request, log_likelihood, greedy))
    return scores


@pytest.mark.parametrize("name", ["piqa", "lambada_openai"])
def test_results_independent_of_batching(shared_data, gpt2, name):
  results = []
  for batch_size, order, seed in [
      (1, "as_loaded", 0),
      (7, "longest_first", 0),
      (64, "shuffled", 1),
      (1000, "shuffled", 2),
  ]:
    scorer = SeededScorer()
    results.append(
        tasks.evaluate_task(
            name,
            scorer,
            gpt2,
            max_length=512,
            data_dir=shared_data,
            limit=150,
            batch_size=batch_size,
            request_order=order,
            seed=seed,
        )
    )
    num_requests = results[-1]["num_requests"]
    assert max(scorer.batch_sizes) == min(batch_size, num_requests)

  for result in results[1:]:
    assert result == results[0]


def test_shuffled_order_exposes_batch_dependence(shared_data, chars):
  class BatchPositionScorer:
    """A faulty scorer whose scores depend on the position in the batch."""

    def score(self, requests, item_keys):
      del item_keys  # Unused.
      return [
          RequestScore.for_request(request, -float(position % 5))
          for position, request in enumerate(requests)
      ]

  def run(order):
    return tasks.evaluate_task(
        "piqa",
        BatchPositionScorer(),
        chars,
        max_length=100_000,
        data_dir=shared_data,
        limit=200,
        batch_size=16,
        request_order=order,
    )["acc"]

  assert run("as_loaded") != run("shuffled")


def test_aggregate_independent_of_item_order(shared_data, chars):
  items = tasks.load_task("siqa", data_dir=shared_data, limit=300)
  scorer = SeededScorer()
  per_item = []
  for item in items:
    requests = tasks.build_item_requests(chars, item, 10_000)
    per_item.append(scorer.score(requests, [item.index] * len(requests)))
  permutation = np.random.default_rng(0).permutation(len(items))

  forward = tasks.aggregate(
      "siqa", items, [score for scores in per_item for score in scores]
  )
  shuffled = tasks.aggregate(
      "siqa",
      [items[i] for i in permutation],
      [score for i in permutation for score in per_item[i]],
  )

  assert forward == shuffled


# ---------------------------------------------------------------------------
# Scorer output checks.


def test_scorer_returning_too_few_scores(shared_data, chars):
  class DroppingScorer:

    def score(self, requests, item_keys):
      del item_keys  # Unused.
      return [RequestScore.for_request(r, -1.0) for r in requests[:-1]]

  with pytest.raises(ValueError, match="returned 3 scores for a batch of 4"):
    tasks.evaluate_task(
        "copa",
        DroppingScorer(),
        chars,
        max_length=1000,
        data_dir=shared_data,
        limit=2,
        batch_size=4,
    )


def test_scorer_with_wrong_token_count(shared_data, chars):
  class MiscountingScorer:

    def score(self, requests, item_keys):
      del item_keys  # Unused.
      return [
          RequestScore(
              -1.0,
              len(request.continuation_ids) + 1,
              request.num_chars,
              request.num_bytes,
          )
          for request in requests
      ]

  with pytest.raises(ValueError, match="RequestScore.for_request"):
    tasks.evaluate_task(
        "copa",
        MiscountingScorer(),
        chars,
        max_length=1000,
        data_dir=shared_data,
        limit=2,
        batch_size=4,
    )


def test_scorers_satisfy_protocol():
  assert isinstance(FixedTokenScorer(), tasks.RequestScorer)
  assert isinstance(SeededScorer(), tasks.RequestScorer)


def test_evaluate_rejects_bad_arguments(shared_data, chars):
  with pytest.raises(ValueError, match="batch_size must be at least 1"):
    tasks.evaluate_task(
        "copa",
        FixedTokenScorer(),
        chars,
        max_length=100,
        data_dir=shared_data,
        batch_size=0,
    )
  with pytest.raises(ValueError, match="unknown request_order"):
    tasks.evaluate_task(
        "copa",
        FixedTokenScorer(),
        chars,
        max_length=100,
        data_dir=shared_data,
        batch_size=8,
        request_order="random",
    )


def test_evaluate_rejects_too_small_max_length(shared_data, gpt2):
  with pytest.raises(ValueError, match="piqa item 0 choice 0"):
    tasks.evaluate_task(
        "piqa",
        FixedTokenScorer(),
        gpt2,
        max_length=5,
        data_dir=shared_data,
        limit=1,
        batch_size=8,
    )


def test_request_is_frozen(chars):
  request = tasks.build_request(chars, "ab", " c", 10)

  with pytest.raises(AttributeError):
    request.truncated = 3
  assert isinstance(request, Request)
