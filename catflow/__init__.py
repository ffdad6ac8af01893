"""catflow: continuous flow-matching language models and Categorical Flow Maps in JAX."""

__version__ = "0.2.0"
