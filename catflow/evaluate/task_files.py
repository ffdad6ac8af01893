r"""Benchmark items from local files in their standard formats.

`load_task(name)` reads the files of one registered task (`TASKS`) into
`Item`s: the context, continuation and answer text of every choice, and the
gold label. Nothing here depends on a tokenizer or a model; `tasks` turns
items into requests and scores.

The data folder is the `data_dir` argument or, when that is None, the
environment variable CATFLOW_DATA_DIR. Paths in `TASKS` are relative to it.

Prompt formats follow the lm-evaluation-harness (lm-eval) task definitions.
Each choice's continuation is lm-eval's target delimiter " " plus the answer:

* lambada_openai (lambada_openai/lambada_test.jsonl): context = `text` up to
  its last " ", continuation = " " + the last word.
* piqa (piqa/valid.jsonl + valid-labels.lst): "Question: {goal}\nAnswer:",
  continuations " {sol1}", " {sol2}".
* siqa (siqa/dev.jsonl + dev-labels.lst, labels 1-3):
  "Q: {context} {question}\nA:", continuations " {answerA}" to " {answerC}".
* hellaswag (hellaswag/hellaswag_val_full.txt.bz2): preprocess(first line),
  continuations " " + preprocess(ending).
* arc_easy, arc_challenge (llmfoundry_icl/arc_*.jsonl): "{query}\nAnswer:",
  where the query is "Question: {question}"; continuations " {choice}".
* openbookqa (llmfoundry_icl/openbook_qa.jsonl): "{query}", the question
  stem; continuations " {choice}".
* boolq (llmfoundry_icl/boolq.jsonl):
  "{passage}\nQuestion: {question}?\nAnswer:", continuations " no", " yes".
* copa (llmfoundry_icl/copa.jsonl): "{premise without its period} because"
  (or "therefore"), continuations " {choice}" with a lower-case first letter.
* winogrande (llmfoundry_icl/winogrande.jsonl): one context per choice, each
  of `context_options`; both continuations are " {continuation}".

The MosaicML llm-foundry ICL files store records as `{"query", "choices",
"gold"}` (WinoGrande: `{"context_options", "continuation", "gold"}`). Their
texts, choices and gold indices are used as stored. Where llm-foundry's own
prompt differs from lm-eval's, the lm-eval prompt is rebuilt from them:

* ARC: the query is already "Question: {question}". lm-eval and llm-foundry
  both produce "Question: {question}\nAnswer: {choice}".
* BoolQ: the query is "Passage: {passage}\nQuestion: {question}?". The
  "Passage: " prefix is dropped and "\nAnswer:" appended, which gives lm-eval's
  prompt. llm-foundry itself scores "Passage: ...?\nAnswer: {choice}".
* COPA: the query is "{premise without its final period}, because" (or
  ", therefore") and the choices already start in lower case. The comma is
  dropped, which gives lm-eval's "{premise[:-1]} because". Choices are
  lower-cased at the first character, as lm-eval's `convert_choice` does.
* OpenBookQA: the query is the question stem, as in lm-eval.
* PIQA: llm-foundry's piqa.jsonl repeats piqa/ with stripped solutions and
  "Question: {goal}\n" queries. The official files are read instead.
* WinoGrande: the context options are the sentence up to the blank with each
  option filled in, and the continuation is the rest of the sentence. This is
  lm-eval's partial evaluation: both choices score the same continuation under
  different contexts.

HellaSwag's file has 6 lines per item: "{activity_label}: {ctx}", the gold
label 0-3, and the four endings. lm-eval's `preprocess` (strip, " [title]" to
". ", remove "[...]", collapse double spaces) is applied to the context line and
to each ending. On this file it changes 2 contexts and 12 endings that still
contain bracketed text or double spaces.
"""

from __future__ import annotations

import bz2
from collections.abc import Callable, Sequence
import dataclasses
import functools
import json
import os
import pathlib
import re
from typing import Any

DATA_DIR_ENV = "CATFLOW_DATA_DIR"

# Metric names. The normalised accuracies name their denominator.
ACC = "acc"
ACC_NORM_CHARS = "acc_norm_chars"
ACC_NORM_BYTES = "acc_norm_bytes"
PPL = "ppl"
NATS_PER_TOKEN = "nats_per_token"

_MULTIPLE_CHOICE_METRICS = (ACC, ACC_NORM_CHARS, ACC_NORM_BYTES)


# ---------------------------------------------------------------------------
# Items and the task registry.


@dataclasses.dataclass(frozen=True)
class Item:
  """One benchmark question with all of its choices.

  Attributes:
    task: Task name, a key of `TASKS`.
    index: Position of the item in its file, starting at 0. Scorers receive it
      as the item key of each of the item's requests.
    contexts: Context text of each choice. All equal except for WinoGrande.
    continuations: Continuation text of each choice, including the leading
      target delimiter " ". WinoGrande's are all equal.
    choices: Answer text of each choice without the delimiter. The normalised
      accuracies divide by its length in characters or UTF-8 bytes.
    label: Index of the correct choice.
    target: LAMBADA's target word (the text after the last space), else None.
  """

  task: str
  index: int
  contexts: tuple[str, ...]
  continuations: tuple[str, ...]
  choices: tuple[str, ...]
  label: int
  target: str | None = None

  def __post_init__(self):
    num_choices = len(self.continuations)
    if num_choices == 0:
      raise ValueError(f"{self.task} item {self.index} has no choices")
    if len(self.contexts) != num_choices or len(self.choices) != num_choices:
      raise ValueError(
          f"{self.task} item {self.index} has {len(self.contexts)} contexts,"
          f" {num_choices} continuations and {len(self.choices)} choices; all"
          " three must have one entry per choice"
      )
    if not 0 <= self.label < num_choices:
      raise ValueError(
          f"{self.task} item {self.index} has label {self.label}, outside"
          f" [0, {num_choices})"
      )

  @property
  def num_choices(self) -> int:
    return len(self.continuations)


# A loader turns the task's files (in `TaskSpec.files` order) into items.
Loader = Callable[[Sequence[pathlib.Path]], list[Item]]


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """Registry entry of one benchmark.

  Attributes:
    name: Task name.
    files: Paths of the task's files, relative to the data folder.
    loader: Reads `files` (as absolute paths) into items.
    num_choices: Number of choices of every item.
    metrics: Metric names that `aggregate` reports. Each accuracy also has a
      "{name}_stderr" entry.
    split: The split the files contain.
  """

  name: str
  files: tuple[str, ...]
  loader: Loader
  num_choices: int
  metrics: tuple[str, ...]
  split: str


# ---------------------------------------------------------------------------
# File readers. Errors name the file and the 1-based line number.


def _read_text(path: pathlib.Path) -> str:
  try:
    return path.read_bytes().decode("utf-8")
  except UnicodeDecodeError as error:
    raise ValueError(f"{path} is not valid UTF-8: {error}") from error


def _read_jsonl(path: pathlib.Path) -> list[tuple[int, dict[str, Any]]]:
  """Returns (line number, record) for each line of a JSON-lines file."""
  lines = _read_text(path).split("\n")
  if lines and lines[-1] == "":
    lines.pop()
  records = []
  for line_number, line in enumerate(lines, start=1):
    try:
      record = json.loads(line)
    except json.JSONDecodeError as error:
      raise ValueError(
          f"{path} line {line_number} is not valid JSON: {error}"
      ) from error
    if not isinstance(record, dict):
      raise ValueError(
          f"{path} line {line_number} is a JSON {type(record).__name__}, but"
          " each line must be a JSON object"
      )
    records.append((line_number, record))
  return records


def _field(
    record: dict[str, Any],
    name: str,
    path: pathlib.Path,
    line_number: int,
    kind: type = str,
) -> Any:
  """Returns `record[name]`, checking that it exists and has type `kind`."""
  if name not in record:
    raise ValueError(
        f"{path} line {line_number} has no field {name!r}; its fields are"
        f" {sorted(record)}"
    )
  value = record[name]
  # bool is a subclass of int, but a JSON true is never a valid index.
  if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
    raise ValueError(
        f"{path} line {line_number} field {name!r} is"
        f" {type(value).__name__} {value!r}, expected {kind.__name__}"
    )
  return value


def _string_list(
    record: dict[str, Any], name: str, path: pathlib.Path, line_number: int
) -> list[str]:
  values = _field(record, name, path, line_number, list)
  valid = all(isinstance(value, str) and value for value in values)
  if not values or not valid:
    raise ValueError(
        f"{path} line {line_number} field {name!r} must be a non-empty list of"
        f" non-empty strings, got {values!r}"
    )
  return values


def _non_empty(
    text: str, what: str, path: pathlib.Path, line_number: int
) -> str:
  if not text.strip():
    raise ValueError(f"{path} line {line_number}: {what} is empty")
  return text


def _parse_label(
    text: str,
    path: pathlib.Path,
    line_number: int,
    low: int,
    high: int,
) -> int:
  """Parses one integer label and checks that it is in [low, high]."""
  stripped = text.strip()
  if not re.fullmatch(r"-?[0-9]+", stripped):
    raise ValueError(
        f"{path} line {line_number} is {text!r}, expected an integer label"
        f" in [{low}, {high}]"
    )
  label = int(stripped)
  if not low <= label <= high:
    raise ValueError(
        f"{path} line {line_number} has label {label}, outside [{low}, {high}]"
    )
  return label


def _read_labels(
    path: pathlib.Path,
    num_records: int,
    records_path: pathlib.Path,
    low: int,
    high: int,
) -> list[int]:
  """Reads one integer label per line and checks the count against records."""
  lines = _read_text(path).split("\n")
  if lines and lines[-1] == "":
    lines.pop()
  if len(lines) != num_records:
    raise ValueError(
        f"{path} has {len(lines)} labels but {records_path} has {num_records}"
        " records; the two files must have one line per item"
    )
  return [
      _parse_label(line, path, line_number, low, high)
      for line_number, line in enumerate(lines, start=1)
  ]


def _check_gold(
    gold: int, num_choices: int, path: pathlib.Path, line_number: int
) -> int:
  if not 0 <= gold < num_choices:
    raise ValueError(
        f"{path} line {line_number} has gold {gold}, outside [0, {num_choices})"
    )
  return gold


# ---------------------------------------------------------------------------
# Loaders, one per file format.


def _load_lambada(paths: Sequence[pathlib.Path]) -> list[Item]:
  """Reads OpenAI's LAMBADA test file: one {"text"} per line.

  As lm-eval's lambada_openai does, the text is split at its last " " (space
  only, not other whitespace), so in 7 of the 5153 items the target contains a
  newline, such as "of\\n\\nPower".
  """
  (path,) = paths
  items = []
  for index, (line_number, record) in enumerate(_read_jsonl(path)):
    text = _field(record, "text", path, line_number)
    context, separator, target = text.rpartition(" ")
    if not separator or not target:
      raise ValueError(
          f"{path} line {line_number}: the text must contain a space followed"
          f" by the target word, got {text[-80:]!r}"
      )
    items.append(
        Item(
            task="lambada_openai",
            index=index,
            contexts=(context,),
            continuations=(" " + target,),
            choices=(target,),
            label=0,
            target=target,
        )
    )
  return items


def _load_piqa(paths: Sequence[pathlib.Path]) -> list[Item]:
  """Reads the official PIQA dev files: {"goal", "sol1", "sol2"} + 0/1 labels.

  Solutions are used as stored, including the leading or trailing spaces
  that 230 of them have, as lm-eval does.
  """
  records_path, labels_path = paths
  records = _read_jsonl(records_path)
  labels = _read_labels(labels_path, len(records), records_path, 0, 1)
  items = []
  for index, ((line_number, record), label) in enumerate(zip(records, labels)):
    goal = _field(record, "goal", records_path, line_number)
    solutions = tuple(
        _non_empty(
            _field(record, key, records_path, line_number),
            key,
            records_path,
            line_number,
        )
        for key in ("sol1", "sol2")
    )
    context = f"Question: {goal}\nAnswer:"
    items.append(
        Item(
            task="piqa",
            index=index,
            contexts=(context,) * 2,
            continuations=tuple(" " + solution for solution in solutions),
            choices=solutions,
            label=label,
        )
    )
  return items


def _load_siqa(paths: Sequence[pathlib.Path]) -> list[Item]:
  """Reads Social IQa dev: {"context", "question", "answerA/B/C"} + labels."""
  records_path, labels_path = paths
  records = _read_jsonl(records_path)
  labels = _read_labels(labels_path, len(records), records_path, 1, 3)
  items = []
  for index, ((line_number, record), label) in enumerate(zip(records, labels)):
    situation = _field(record, "context", records_path, line_number)
    question = _field(record, "question", records_path, line_number)
    answers = tuple(
        _non_empty(
            _field(record, key, records_path, line_number),
            key,
            records_path,
            line_number,
        )
        for key in ("answerA", "answerB", "answerC")
    )
    context = f"Q: {situation} {question}\nA:"
    items.append(
        Item(
            task="siqa",
            index=index,
            contexts=(context,) * 3,
            continuations=tuple(" " + answer for answer in answers),
            choices=answers,
            # The label file is 1-based: 1, 2, 3 are answerA, answerB, answerC.
            label=label - 1,
        )
    )
  return items


def hellaswag_preprocess(text: str) -> str:
  """Cleans HellaSwag text as lm-eval's hellaswag `preprocess` does.

  The brackets are WikiHow markup such as "[header]" or "[step]".
  """
  text = text.strip()
  text = text.replace(" [title]", ". ")
  text = re.sub(r"\[.*?\]", "", text)
  text = text.replace("  ", " ")
  return text


_HELLASWAG_LINES_PER_ITEM = 6


def _load_hellaswag(paths: Sequence[pathlib.Path]) -> list[Item]:
  """Reads HellaSwag val as bz2 text, 6 lines per item.

  The lines are "{activity_label}: {ctx}", the gold label (0-3) and the four
  endings.

  NOTE: lm-eval builds the context from the original `ctx_a` and capitalised
  `ctx_b` ("... on a roof. He"), but this file stores the joined `ctx` with
  `ctx_b` in its original case ("... on a roof. he"). Such contexts differ
  from lm-eval's in the case of one letter. An estimated 3,236 of 10,042 do,
  counting those whose last sentence starts in lower case.
  """
  (path,) = paths
  try:
    with bz2.open(path, "rb") as file:
      data = file.read()
  except OSError as error:
    raise ValueError(f"{path} is not a valid bz2 file: {error}") from error
  try:
    lines = data.decode("utf-8").split("\n")
  except UnicodeDecodeError as error:
    raise ValueError(f"{path} is not valid UTF-8 text: {error}") from error
  if lines and lines[-1] == "":
    lines.pop()
  if len(lines) % _HELLASWAG_LINES_PER_ITEM:
    raise ValueError(
        f"{path} has {len(lines)} lines, which is not a multiple of"
        f" {_HELLASWAG_LINES_PER_ITEM} (context, label, four endings per item)"
    )

  items = []
  for index, start in enumerate(
      range(0, len(lines), _HELLASWAG_LINES_PER_ITEM)
  ):
    first_line = start + 1
    context = hellaswag_preprocess(
        _non_empty(lines[start], "the context", path, first_line)
    )
    label = _parse_label(lines[start + 1], path, first_line + 1, 0, 3)
    endings = []
    for offset in range(2, _HELLASWAG_LINES_PER_ITEM):
      ending = hellaswag_preprocess(lines[start + offset])
      line_number = first_line + offset
      endings.append(_non_empty(ending, "the ending", path, line_number))
    items.append(
        Item(
            task="hellaswag",
            index=index,
            contexts=(context,) * 4,
            continuations=tuple(" " + ending for ending in endings),
            choices=tuple(endings),
            label=label,
        )
    )
  return items


def _icl_query_choices_gold(
    path: pathlib.Path,
    line_number: int,
    record: dict[str, Any],
) -> tuple[str, list[str], int]:
  query = _field(record, "query", path, line_number)
  choices = _string_list(record, "choices", path, line_number)
  gold = _check_gold(
      _field(record, "gold", path, line_number, int),
      len(choices),
      path,
      line_number,
  )
  return query, choices, gold


def _multiple_choice_item(
    task: str, index: int, context: str, choices: Sequence[str], label: int
) -> Item:
  return Item(
      task=task,
      index=index,
      contexts=(context,) * len(choices),
      continuations=tuple(" " + choice for choice in choices),
      choices=tuple(choices),
      label=label,
  )


def _load_icl_arc(task: str, paths: Sequence[pathlib.Path]) -> list[Item]:
  """Reads an llm-foundry ARC file: query "Question: {question}"."""
  (path,) = paths
  items = []
  for index, (line_number, record) in enumerate(_read_jsonl(path)):
    query, choices, gold = _icl_query_choices_gold(path, line_number, record)
    if not query.startswith("Question: "):
      raise ValueError(
          f"{path} line {line_number}: the query must start with 'Question: ',"
          f" got {query[:80]!r}"
      )
    items.append(
        _multiple_choice_item(task, index, query + "\nAnswer:", choices, gold)
    )
  return items


def _load_icl_openbookqa(paths: Sequence[pathlib.Path]) -> list[Item]:
  """Reads llm-foundry's OpenBookQA file: the query is the question stem."""
  (path,) = paths
  items = []
  for index, (line_number, record) in enumerate(_read_jsonl(path)):
    query, choices, gold = _icl_query_choices_gold(path, line_number, record)
    _non_empty(query, "the query", path, line_number)
    items.append(
        _multiple_choice_item("openbookqa", index, query, choices, gold)
    )
  return items


_BOOLQ_PASSAGE_PREFIX = "Passage: "
_BOOLQ_QUESTION_SEPARATOR = "\nQuestion: "


def _load_icl_boolq(paths: Sequence[pathlib.Path]) -> list[Item]:
  """Reads llm-foundry's BoolQ file: "Passage: {p}\\nQuestion: {q}?".

  The question starts after the last "\\nQuestion: ", because one passage
  (line 2418) itself contains "\\nQuestion: ".
  """
  (path,) = paths
  items = []
  for index, (line_number, record) in enumerate(_read_jsonl(path)):
    query, choices, gold = _icl_query_choices_gold(path, line_number, record)
    passage, separator, question = query.rpartition(_BOOLQ_QUESTION_SEPARATOR)
    if not query.startswith(_BOOLQ_PASSAGE_PREFIX) or not separator:
      raise ValueError(
          f"{path} line {line_number}: the query must look like 'Passage:"
          f" ...\\nQuestion: ...?', got {query[:80]!r}"
      )
    passage = passage[len(_BOOLQ_PASSAGE_PREFIX) :]
    if not question.endswith("?"):
      raise ValueError(
          f"{path} line {line_number}: the question must end with '?', got"
          f" {question!r}"
      )
    context = f"{passage}\nQuestion: {question}\nAnswer:"
    items.append(_multiple_choice_item("boolq", index, context, choices, gold))
  return items


_COPA_QUERY_PATTERN = re.compile(r"(?s)(.+), (because|therefore)")


def _lowercase_first(text: str) -> str:
  """Lower-cases the first character as lm-eval's COPA `convert_choice`."""
  return text[:1].lower() + text[1:]


def _load_icl_copa(paths: Sequence[pathlib.Path]) -> list[Item]:
  """Reads llm-foundry's COPA file: "{premise without its period}, because"."""
  (path,) = paths
  items = []
  for index, (line_number, record) in enumerate(_read_jsonl(path)):
    query, choices, gold = _icl_query_choices_gold(path, line_number, record)
    match = _COPA_QUERY_PATTERN.fullmatch(query)
    if match is None:
      raise ValueError(
          f"{path} line {line_number}: the query must end with ', because' or"
          f" ', therefore', got {query!r}"
      )
    context = f"{match.group(1)} {match.group(2)}"
    choices = [_lowercase_first(choice) for choice in choices]
    items.append(_multiple_choice_item("copa", index, context, choices, gold))
  return items


def _load_icl_winogrande(paths: Sequence[pathlib.Path]) -> list[Item]:
  """Reads llm-foundry's WinoGrande: {"context_options", "continuation"}."""
  (path,) = paths
  items = []
  for index, (line_number, record) in enumerate(_read_jsonl(path)):
    contexts = _string_list(record, "context_options", path, line_number)
    continuation = _non_empty(
        _field(record, "continuation", path, line_number),
        "the continuation",
        path,
        line_number,
    )
    gold = _check_gold(
        _field(record, "gold", path, line_number, int),
        len(contexts),
        path,
        line_number,
    )
    items.append(
        Item(
            task="winogrande",
            index=index,
            contexts=tuple(contexts),
            continuations=(" " + continuation,) * len(contexts),
            choices=(continuation,) * len(contexts),
            label=gold,
        )
    )
  return items


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            name="lambada_openai",
            files=("lambada_openai/lambada_test.jsonl",),
            loader=_load_lambada,
            num_choices=1,
            metrics=(ACC, PPL, NATS_PER_TOKEN),
            split="test (OpenAI preprocessing)",
        ),
        TaskSpec(
            name="piqa",
            files=("piqa/valid.jsonl", "piqa/valid-labels.lst"),
            loader=_load_piqa,
            num_choices=2,
            metrics=_MULTIPLE_CHOICE_METRICS,
            split="validation",
        ),
        TaskSpec(
            name="hellaswag",
            files=("hellaswag/hellaswag_val_full.txt.bz2",),
            loader=_load_hellaswag,
            num_choices=4,
            metrics=_MULTIPLE_CHOICE_METRICS,
            split="validation",
        ),
        TaskSpec(
            name="arc_easy",
            files=("llmfoundry_icl/arc_easy.jsonl",),
            loader=functools.partial(_load_icl_arc, "arc_easy"),
            num_choices=4,
            metrics=_MULTIPLE_CHOICE_METRICS,
            split="test",
        ),
        TaskSpec(
            name="arc_challenge",
            files=("llmfoundry_icl/arc_challenge.jsonl",),
            loader=functools.partial(_load_icl_arc, "arc_challenge"),
            num_choices=4,
            metrics=_MULTIPLE_CHOICE_METRICS,
            split="test",
        ),
        TaskSpec(
            name="winogrande",
            files=("llmfoundry_icl/winogrande.jsonl",),
            loader=_load_icl_winogrande,
            num_choices=2,
            # Both choices score the same continuation, so a length
            # normalisation could not change the prediction.
            metrics=(ACC,),
            split="validation (xl)",
        ),
        TaskSpec(
            name="openbookqa",
            files=("llmfoundry_icl/openbook_qa.jsonl",),
            loader=_load_icl_openbookqa,
            num_choices=4,
            metrics=_MULTIPLE_CHOICE_METRICS,
            split="test",
        ),
        TaskSpec(
            name="siqa",
            files=("siqa/dev.jsonl", "siqa/dev-labels.lst"),
            loader=_load_siqa,
            num_choices=3,
            metrics=_MULTIPLE_CHOICE_METRICS,
            split="validation",
        ),
        TaskSpec(
            name="boolq",
            files=("llmfoundry_icl/boolq.jsonl",),
            loader=_load_icl_boolq,
            num_choices=2,
            metrics=_MULTIPLE_CHOICE_METRICS,
            split="validation",
        ),
        TaskSpec(
            name="copa",
            files=("llmfoundry_icl/copa.jsonl",),
            loader=_load_icl_copa,
            num_choices=2,
            metrics=_MULTIPLE_CHOICE_METRICS,
            split="validation",
        ),
    )
}


def get_task(name: str) -> TaskSpec:
  """Returns the registry entry of task `name`."""
  try:
    return TASKS[name]
  except KeyError:
    raise ValueError(
        f"unknown task {name!r}; known tasks are {sorted(TASKS)}"
    ) from None


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> pathlib.Path:
  """Returns `data_dir`, or the folder named by CATFLOW_DATA_DIR when None."""
  if data_dir is not None:
    return pathlib.Path(data_dir).expanduser()
  value = os.environ.get(DATA_DIR_ENV)
  if not value:
    raise FileNotFoundError(
        f"no data folder given: pass data_dir= or set {DATA_DIR_ENV} to the"
        " folder that contains the evaluation data"
    )
  return pathlib.Path(value).expanduser()


def task_paths(
    name: str, data_dir: str | os.PathLike[str] | None = None
) -> list[pathlib.Path]:
  """Returns the absolute paths of task `name`'s files, checking they exist."""
  spec = get_task(name)
  root = resolve_data_dir(data_dir)
  paths = [root / relative for relative in spec.files]
  for relative, path in zip(spec.files, paths):
    if not path.is_file():
      if data_dir is not None:
        source = "data_dir"
      else:
        source = f"{DATA_DIR_ENV} (or data_dir=)"
      raise FileNotFoundError(
          f"{name} data file {path} not found; {source} must name the folder"
          f" that contains {relative}"
      )
  return paths


def load_task(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    limit: int | None = None,
) -> list[Item]:
  """Loads the items of task `name`.

  Args:
    name: A key of `TASKS`.
    data_dir: The data folder. None reads CATFLOW_DATA_DIR.
    limit: Keep only the first `limit` items. The whole file is still read
      and checked.

  Returns:
    The items in file order, with `index` equal to their position.

  Raises:
    FileNotFoundError: A file of the task is missing.
    ValueError: Unknown task, malformed record (the message names the file and
      line), a wrong number of choices, or a `limit` below 1.
  """
  spec = get_task(name)
  if limit is not None and limit < 1:
    raise ValueError(
        f"limit={limit} would select no items; an empty evaluation set is an"
        " error, never a number. Pass limit=None for all items"
    )
  paths = task_paths(name, data_dir)
  items = spec.loader(paths)
  if not items:
    raise ValueError(
        f"{name}: {paths[0]} contains no items; an empty evaluation set is an"
        " error, never a number"
    )
  for item in items:
    if item.num_choices != spec.num_choices:
      raise ValueError(
          f"{name} item {item.index} in {paths[0]} has {item.num_choices}"
          f" choices, expected {spec.num_choices}"
      )
  if limit is not None:
    items = items[:limit]
  return items
