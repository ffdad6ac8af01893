"""A registered seqio task as a catflow corpus (needs the `seqio` extra).

The corpus name `seqio:TASK` or `seqio:TASK:SPLIT` (split "train" by default)
reads the raw examples of TASK's data source, before the task's preprocessors
and so before any seqio tokenisation, and makes one document of the
`text_field` feature of each example. catflow tokenises the text itself.

The task must be registered when the corpus is loaded: name the module that
registers it in `data.import_modules` (comma-separated module names), e.g.

  catflow train --config=... --config.data.corpus=seqio:my_task \
      --config.data.import_modules=my_project.tasks --config.data.text_field=text

seqio pulls TensorFlow; catflow imports it only when a `seqio:` corpus is read.
"""

from __future__ import annotations

from catflow.data import corpora

PREFIX = "seqio:"
DEFAULT_SPLIT = "train"


def parse_name(name: str) -> tuple[str, str]:
  """Splits `seqio:TASK[:SPLIT]` into (task, split)."""
  fields = name[len(PREFIX):].split(":")
  if not fields[0] or len(fields) > 2 or (len(fields) == 2 and not fields[1]):
    raise ValueError(f"corpus {name!r} is not of the form seqio:TASK or seqio:TASK:SPLIT")
  return fields[0], fields[1] if len(fields) == 2 else DEFAULT_SPLIT


def load_documents(name: str, text_field: str = "text") -> list[corpora.Document]:
  """Reads the texts of a registered seqio task's split, one document per example."""
  task_name, split = parse_name(name)
  try:
    import seqio  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    raise ImportError(f"corpus {name!r} needs seqio, which is not installed; install it with "
                      "pip install -e '.[seqio]'") from error
  if task_name not in seqio.TaskRegistry.names():
    raise ValueError(f"seqio task {task_name!r} is not registered; name the module that "
                     "registers it with --config.data.import_modules=MODULE")
  source = seqio.TaskRegistry.get(task_name).source
  if split not in source.splits:
    raise ValueError(f"seqio task {task_name!r} has no split {split!r}; its splits are "
                     f"{sorted(source.splits)}. Name one as seqio:{task_name}:SPLIT")

  documents = []
  dataset = source.get_dataset(split=split, shuffle=False)
  for index, example in enumerate(dataset.as_numpy_iterator()):
    if text_field not in example:
      raise ValueError(f"example {index} of seqio task {task_name!r} ({split}) has no feature "
                       f"{text_field!r}; its features are {sorted(example)}. Set "
                       "--config.data.text_field to the one that contains the text")
    value = example[text_field]
    if not isinstance(value, bytes):
      raise ValueError(f"feature {text_field!r} of seqio task {task_name!r} is a "
                       f"{type(value).__name__}, not a string; catflow reads raw text, so name "
                       "a string feature of the task's source with --config.data.text_field")
    text = value.decode("utf-8")
    if text:
      documents.append(corpora.Document(name=f"{task_name}:{split}:{index}", text=text))
  return documents
