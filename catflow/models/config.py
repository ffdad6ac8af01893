"""The model configuration: a frozen dataclass that is stored in every checkpoint."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

REMAT_POLICIES = ("none", "minimal", "full", "save_attention_and_mlp")
ATTENTION_IMPLEMENTATIONS = ("xla", "dot_product_attention", "cudnn")
# Attention implementations that support forward-mode autodiff (jax.jvp).
JVP_ATTENTION_IMPLEMENTATIONS = ("xla", "dot_product_attention")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shape and options of the flow transformer.

  A base model has one time input (tau); a Categorical Flow Map (CFM) has two
  (tau_s, tau_t), the second entering through its own zero-initialised
  embedding of the gap tau_t - tau_s.
  """

  vocab_size: int  # Real token ids 0..vocab_size-1 (the tokenizer's vocabulary).
  vocab_multiple: int = 128  # The network's vocabulary is padded up to a multiple of this.
  num_layers: int = 4
  embed_dim: int = 128  # Width d of the residual stream.
  num_heads: int = 4
  head_dim: int | None = None  # None: embed_dim // num_heads.
  mlp_dim: int | None = None  # None: 4 * embed_dim.
  mlp_activation: Literal["gelu", "swiglu"] = "gelu"
  time_features: int = 256  # Sinusoidal features of each time input.
  time_scale: float = 1000.0  # tau is multiplied by this before the sinusoidal features.
  two_time: bool = False  # True for a CFM: adds the second time embedding.
  position_embedding: Literal["rope", "learned"] = "rope"
  max_length: int = 4096  # Only used by learned position embeddings.
  rope_base: float = 10000.0
  # Scale of the linear input layer: "expected_norm" multiplies x @ W by
  # 1 / sqrt(t^2 + (1 - t)^2 V), the expected norm of x_t; "none" leaves it.
  input_scaling: Literal["expected_norm", "none"] = "expected_norm"
  # Adds an embedding of the independent-position posterior softmax(t x / (1 - t)^2)
  # to the input. It is nonlinear in x, so it disables the d-dimensional shortcut.
  input_posterior: bool = False
  # Adds the independent-position posterior logits t x / (1 - t)^2 to the output.
  output_skip: bool = False
  # adaLN modulation: "per_layer" (each block maps the time condition to its
  # six vectors, 6 d^2 parameters per block) or "shared" (one such layer for
  # all blocks plus a learned offset per block, as in adaLN-single).
  modulation: Literal["per_layer", "shared"] = "per_layer"
  # adaLN-Zero: every block starts as the identity and the output layer at zero.
  # False starts the residual gates at 1 and the output layer at random.
  zero_init_blocks: bool = True
  # Self-conditioning: a first pass of the network, then a second pass that also
  # sees the first pass's estimate of the posterior (twice the forward cost).
  self_conditioning: bool = False
  learned_loss_weight: bool = False  # Adds the log-variance network u(tau) of the loss weighting.
  loss_weight_clip: float = 5.0  # |u(tau)| is clipped to this value.
  # Causal attention, for the autoregressive scorer trained on the same backbone.
  causal: bool = False
  dtype: Literal["float32", "bfloat16"] = "float32"  # Compute dtype; params stay float32.
  scan_layers: bool = True  # nn.scan over the blocks (stacked parameters, faster compiles).
  remat_policy: str = "none"  # One of REMAT_POLICIES.
  attention: str = "xla"  # One of ATTENTION_IMPLEMENTATIONS.

  def __post_init__(self):
    if self.vocab_size < 2:
      raise ValueError(f"vocab_size={self.vocab_size} must be at least 2")
    if self.embed_dim % self.num_heads and self.head_dim is None:
      raise ValueError(
          f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}; "
          "choose a multiple or set head_dim explicitly")
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"remat_policy={self.remat_policy!r} is not one of {REMAT_POLICIES}")
    if self.attention not in ATTENTION_IMPLEMENTATIONS:
      raise ValueError(f"attention={self.attention!r} is not one of {ATTENTION_IMPLEMENTATIONS}")
    if self.position_embedding not in ("rope", "learned"):
      raise ValueError(f"position_embedding={self.position_embedding!r} is not 'rope' or 'learned'")
    if self.input_scaling not in ("expected_norm", "none"):
      raise ValueError(f"input_scaling={self.input_scaling!r} is not 'expected_norm' or 'none'")
    if self.mlp_activation not in ("gelu", "swiglu"):
      raise ValueError(f"mlp_activation={self.mlp_activation!r} is not 'gelu' or 'swiglu'")
    if self.modulation not in ("per_layer", "shared"):
      raise ValueError(f"modulation={self.modulation!r} is not 'per_layer' or 'shared'")
    if self.dtype not in ("float32", "bfloat16"):
      raise ValueError(f"dtype={self.dtype!r} is not 'float32' or 'bfloat16'")

  @property
  def padded_vocab_size(self) -> int:
    multiple = max(1, self.vocab_multiple)
    return -(-self.vocab_size // multiple) * multiple

  @property
  def resolved_head_dim(self) -> int:
    return self.head_dim or self.embed_dim // self.num_heads

  @property
  def resolved_mlp_dim(self) -> int:
    return self.mlp_dim or 4 * self.embed_dim

  @property
  def supports_jvp(self) -> bool:
    """Whether jax.jvp can differentiate through this network's attention."""
    return self.attention in JVP_ATTENTION_IMPLEMENTATIONS

  @property
  def supports_projected_input(self) -> bool:
    """Whether the network sees x only through x @ W (the d-dimensional shortcut applies)."""
    return not (self.input_posterior or self.output_skip)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, values: dict[str, Any]) -> "ModelConfig":
    known = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ValueError(f"unknown model config keys {unknown}; known keys are {sorted(known)}")
    return cls(**values)

  def replace(self, **changes) -> "ModelConfig":
    return dataclasses.replace(self, **changes)
