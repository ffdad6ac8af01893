"""Packaging for catflow: continuous flow-matching language models in JAX."""

import pathlib

import setuptools

_HERE = pathlib.Path(__file__).parent


def _requirements():
  lines = (_HERE / "requirements.txt").read_text().splitlines()
  return [line for line in lines if line and not line.startswith("#")]


setuptools.setup(
    name="catflow",
    version="0.2.0",
    description=(
        "Flow-matching language models over one-hot tokens and their "
        "few-step Categorical Flow Maps, in JAX."
    ),
    long_description=(_HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["catflow", "catflow.*"]),
    install_requires=_requirements(),
    extras_require={
        "test": ["pytest>=8,<10", "pytest-xdist>=3.5,<4"],
        "plots": ["matplotlib>=3.8,<4"],
        # data.tokenizer="sentencepiece" (a trained SentencePiece .model file).
        "spm": ["sentencepiece>=0.2,<0.3"],
        # The Hugging Face scorer of generative perplexity (a local causal LM).
        "hf": ["torch>=2.4", "transformers>=4.56"],
        # seqio pulls TensorFlow (about 3 GB); only `seqio:TASK` corpora need it.
        "seqio": ["seqio>=0.0.19"],
    },
    entry_points={"console_scripts": ["catflow=catflow.cli:main"]},
    license="Apache-2.0",
)
