"""Tests of the seqio corpus adapter.

The adapter tests need the `seqio` extra (TensorFlow) and are skipped without
it, so CI, which does not install the extra, runs only the name parsing and the
error paths. NOTE: run this file in an environment with `.[seqio]` installed
after changing the adapter.
"""

import importlib.util
import sys
import textwrap

import pytest

from catflow.data import corpora
from catflow.data import seqio_source

_HAS_SEQIO = importlib.util.find_spec("seqio") is not None

_TASK_MODULE = textwrap.dedent('''
    import seqio
    import tensorflow as tf

    TEXTS = {"train": ["to be or not to be", "", "that is the question"],
             "validation": ["whether tis nobler"]}

    def dataset_fn(split, shuffle_files, seed=None):
      del shuffle_files, seed
      return tf.data.Dataset.from_tensor_slices(
          {"text": TEXTS[split], "label": list(range(len(TEXTS[split])))})

    seqio.TaskRegistry.add(
        "catflow_test_texts",
        source=seqio.FunctionDataSource(dataset_fn, splits=["train", "validation"]),
        output_features={"text": seqio.Feature(seqio.PassThroughVocabulary(1), dtype=tf.string)},
        preprocessors=[])
''')


@pytest.mark.parametrize("name, expected", [
    ("seqio:wiki", ("wiki", "train")),
    ("seqio:wiki:validation", ("wiki", "validation")),
])
def test_parse_name(name, expected):
  assert seqio_source.parse_name(name) == expected


@pytest.mark.parametrize("name", ["seqio:", "seqio:a:b:c", "seqio:wiki:"])
def test_parse_name_rejects_malformed(name):
  with pytest.raises(ValueError, match="seqio:TASK or seqio:TASK:SPLIT"):
    seqio_source.parse_name(name)


@pytest.mark.skipif(_HAS_SEQIO, reason="checks the error without seqio installed")
def test_missing_seqio_names_the_extra():
  with pytest.raises(ImportError, match=r"pip install -e '\.\[seqio\]'"):
    corpora.load_corpus("seqio:anything")


def test_unimportable_module_is_named():
  with pytest.raises(ImportError, match="data.import_modules names 'no_such_module_xyz'"):
    corpora.load_corpus("shakespeare", import_modules=["no_such_module_xyz"])


@pytest.fixture
def task_module(tmp_path, monkeypatch):
  pytest.importorskip("seqio")
  (tmp_path / "catflow_test_tasks.py").write_text(_TASK_MODULE)
  monkeypatch.syspath_prepend(str(tmp_path))
  yield "catflow_test_tasks"
  import seqio  # pylint: disable=import-outside-toplevel
  seqio.TaskRegistry.remove("catflow_test_texts")
  sys.modules.pop("catflow_test_tasks", None)


def test_seqio_task_texts_become_documents(task_module):
  documents = corpora.load_corpus("seqio:catflow_test_texts", import_modules=[task_module])
  # The empty example is dropped; names keep the example index.
  assert [document.text for document in documents] == ["to be or not to be",
                                                        "that is the question"]
  assert [document.name for document in documents] == ["catflow_test_texts:train:0",
                                                       "catflow_test_texts:train:2"]


def test_seqio_split_is_selectable(task_module):
  documents = corpora.load_corpus("seqio:catflow_test_texts:validation",
                                  import_modules=[task_module])
  assert [document.text for document in documents] == ["whether tis nobler"]


def test_seqio_unregistered_task(task_module):
  del task_module  # Registered, but not imported here.
  with pytest.raises(ValueError, match="not registered.*import_modules"):
    corpora.load_corpus("seqio:catflow_test_texts")


def test_seqio_unknown_split(task_module):
  with pytest.raises(ValueError, match=r"no split 'test'; its splits are \['train', 'validation'\]"):
    corpora.load_corpus("seqio:catflow_test_texts:test", import_modules=[task_module])


def test_seqio_missing_and_non_text_feature(task_module):
  with pytest.raises(ValueError, match="no feature 'body'; its features are"):
    corpora.load_corpus("seqio:catflow_test_texts", import_modules=[task_module],
                        text_field="body")
  with pytest.raises(ValueError, match="'label' .* is a int"):
    corpora.load_corpus("seqio:catflow_test_texts", import_modules=[task_module],
                        text_field="label")
