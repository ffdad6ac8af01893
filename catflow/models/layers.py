"""Building blocks of the flow transformer: time embeddings, RoPE, attention, MLP, adaLN blocks."""

from __future__ import annotations

import functools
import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from catflow.models.config import ModelConfig

Dtype = jnp.dtype
_ATTENTION_MASK_VALUE = -1e30


def _dense_init(names: tuple[str | None, ...], init: Callable = nn.initializers.lecun_normal()):
  return nn.with_logical_partitioning(init, names)


def _zero_init(names: tuple[str | None, ...]):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


def constrain(x: jax.Array, names: tuple[str | None, ...]) -> jax.Array:
  """Applies a logical sharding constraint (a no-op outside a mesh and rules context)."""
  return nn.with_logical_constraint(x, names)


def sinusoidal_features(values: jax.Array, num_features: int, scale: float,
                        max_period: float = 10000.0) -> jax.Array:
  """Returns [cos, sin] features of values * scale, shape values.shape + (num_features,)."""
  half = num_features // 2
  frequencies = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  angles = (values.astype(jnp.float32) * scale)[..., None] * frequencies
  return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


class TimeEmbedding(nn.Module):
  """MLP over sinusoidal features of a time in [0, 1]; output width embed_dim.

  With zero_output=True the last layer starts at zero, so a newly added
  embedding contributes nothing until it is trained.
  """

  config: ModelConfig
  zero_output: bool = False

  @nn.compact
  def __call__(self, time: jax.Array) -> jax.Array:
    cfg = self.config
    features = sinusoidal_features(time, cfg.time_features, cfg.time_scale)
    hidden = nn.Dense(cfg.embed_dim, kernel_init=_dense_init(("time", "embed")),
                      bias_init=_zero_init(("embed",)), name="hidden")(features)
    hidden = nn.silu(hidden)
    output_init = nn.initializers.zeros_init() if self.zero_output else nn.initializers.lecun_normal()
    return nn.Dense(cfg.embed_dim, kernel_init=_dense_init(("embed", "time"), output_init),
                    bias_init=_zero_init(("time",)), name="output")(hidden)


class LogVarianceNet(nn.Module):
  """u(tau): a small MLP over time features for the learned loss weighting; starts at 0."""

  config: ModelConfig
  width: int = 64

  @nn.compact
  def __call__(self, tau: jax.Array) -> jax.Array:
    cfg = self.config
    features = sinusoidal_features(tau, cfg.time_features, cfg.time_scale)
    hidden = nn.silu(nn.Dense(self.width, kernel_init=_dense_init(("time", None)),
                              bias_init=_zero_init((None,)), name="hidden")(features))
    return nn.Dense(1, kernel_init=_zero_init((None, None)), bias_init=_zero_init((None,)),
                    name="output")(hidden)[..., 0]


def rope(x: jax.Array, positions: jax.Array, base: float) -> jax.Array:
  """Rotary position embedding of x (B, L, H, D) at integer positions (B, L)."""
  half = x.shape[-1] // 2
  inverse_frequency = 1.0 / (base ** (jnp.arange(half, dtype=jnp.float32) / half))
  angles = positions.astype(jnp.float32)[..., None] * inverse_frequency  # (B, L, D/2)
  sin = jnp.sin(angles)[:, :, None, :]
  cos = jnp.cos(angles)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x.dtype)


def attention_mask(segment_ids: jax.Array, causal: bool = False) -> jax.Array:
  """Returns the (B, 1, L, L) boolean mask: same document, both positions real.

  Segment id 0 marks padding. A padding query gets an all-False row; its
  output is zeroed by the caller. With causal=True a query also sees no later key.
  """
  same_segment = segment_ids[:, :, None] == segment_ids[:, None, :]
  real = segment_ids > 0
  mask = same_segment & real[:, :, None] & real[:, None, :]
  if causal:
    length = segment_ids.shape[-1]
    mask = mask & (jnp.arange(length)[:, None] >= jnp.arange(length)[None, :])
  return mask[:, None, :, :]


def _xla_attention(query, key, value, mask):
  """Plain softmax attention with float32 scores; supports jax.jvp."""
  depth = query.shape[-1]
  scores = jnp.einsum("bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32)
  scores = scores / jnp.sqrt(jnp.float32(depth))
  scores = jnp.where(mask, scores, _ATTENTION_MASK_VALUE)
  weights = jax.nn.softmax(scores, axis=-1).astype(value.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", weights, value)


class HeadProjection(nn.Module):
  """Projects (B, L, d) to (B, L, heads, depth) with a (d, heads, depth) kernel."""

  heads: int
  depth: int
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", nn.with_logical_partitioning(
        nn.initializers.lecun_normal(in_axis=0, out_axis=(1, 2)), ("embed", "heads", "kv")),
                        (x.shape[-1], self.heads, self.depth))
    return jnp.einsum("bld,dhk->blhk", x.astype(self.dtype), kernel.astype(self.dtype))


class HeadMerge(nn.Module):
  """Projects (B, L, heads, depth) back to (B, L, d) with a (heads, depth, d) kernel."""

  features: int
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", nn.with_logical_partitioning(
        nn.initializers.lecun_normal(in_axis=(0, 1), out_axis=2), ("heads", "kv", "embed")),
                        x.shape[-2:] + (self.features,))
    return jnp.einsum("blhk,hkd->bld", x.astype(self.dtype), kernel.astype(self.dtype))


class Attention(nn.Module):
  """Bidirectional multi-head self-attention with RoPE and a document mask."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, positions: jax.Array) -> jax.Array:
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    heads, depth = cfg.num_heads, cfg.resolved_head_dim
    query = HeadProjection(heads, depth, dtype, name="query")(x)
    key = HeadProjection(heads, depth, dtype, name="key")(x)
    value = HeadProjection(heads, depth, dtype, name="value")(x)
    query = constrain(query, ("act_batch", "act_length", "act_heads", "act_kv"))
    key = constrain(key, ("act_batch", "act_length", "act_heads", "act_kv"))
    value = constrain(value, ("act_batch", "act_length", "act_heads", "act_kv"))

    if cfg.position_embedding == "rope":
      query = rope(query, positions, cfg.rope_base)
      key = rope(key, positions, cfg.rope_base)

    if cfg.attention == "xla":
      output = _xla_attention(query, key, value, mask)
    else:
      implementation = "cudnn" if cfg.attention == "cudnn" else None
      output = jax.nn.dot_product_attention(query, key, value, mask=mask,
                                            implementation=implementation)
    output = checkpoint_name(output, "attention")
    return HeadMerge(cfg.embed_dim, dtype, name="output")(output)


class Mlp(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    dense = functools.partial(nn.Dense, dtype=dtype, kernel_init=_dense_init(("embed", "mlp")),
                              bias_init=_zero_init(("mlp",)))
    hidden = dense(cfg.resolved_mlp_dim, name="wi")(x)
    if cfg.mlp_activation == "swiglu":
      hidden = nn.silu(hidden) * dense(cfg.resolved_mlp_dim, name="wg")(x)
    else:
      hidden = nn.gelu(hidden)
    hidden = constrain(hidden, ("act_batch", "act_length", "act_mlp"))
    hidden = checkpoint_name(hidden, "mlp")
    return nn.Dense(cfg.embed_dim, dtype=dtype, kernel_init=_dense_init(("mlp", "embed")),
                    bias_init=_zero_init(("embed",)), name="wo")(hidden)


def normalize(x: jax.Array) -> jax.Array:
  """Parameter-free layer norm in float32; adaLN supplies the scale and shift."""
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axis=-1, keepdims=True)
  variance = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
  return ((x32 - mean) * jax.lax.rsqrt(variance + 1e-6)).astype(x.dtype)


class Modulation(nn.Module):
  """Zero-initialised adaLN modulation: count vectors of width embed_dim from the condition."""

  config: ModelConfig
  count: int

  @nn.compact
  def __call__(self, condition: jax.Array) -> list[jax.Array]:
    cfg = self.config
    values = nn.Dense(cfg.embed_dim * self.count, dtype=jnp.dtype(cfg.dtype),
                      kernel_init=_zero_init(("embed", "modulation")),
                      bias_init=_zero_init(("modulation",)), name="dense")(nn.silu(condition))
    return jnp.split(values, self.count, axis=-1)


class Block(nn.Module):
  """Pre-norm transformer block with adaLN-Zero time conditioning.

  With modulation="per_layer" the condition has shape (B, 1, d) for one time
  per sequence or (B, L, d) for per-position times, and the block maps it to
  its six modulation vectors. With modulation="shared" the condition is the
  (B, 1 or L, 6d) output of one modulation layer shared by all blocks, and the
  block adds its own learned (6d,) offset (adaLN-single).
  """

  config: ModelConfig

  @nn.compact
  def __call__(self, x, condition, mask, positions, real):
    cfg = self.config
    if cfg.modulation == "shared":
      offset = self.param("modulation_offset", _zero_init(("modulation",)), (6 * cfg.embed_dim,))
      values = jnp.split(condition + offset.astype(condition.dtype), 6, axis=-1)
    else:
      values = Modulation(cfg, 6, name="modulation")(condition)
    shift_attn, scale_attn, gate_attn, shift_mlp, scale_mlp, gate_mlp = values

    hidden = normalize(x) * (1 + scale_attn) + shift_attn
    if not cfg.zero_init_blocks:
      gate_attn, gate_mlp = 1.0 + gate_attn, 1.0 + gate_mlp
    x = x + gate_attn * Attention(cfg, name="attention")(hidden, mask, positions)
    x = constrain(x, ("act_batch", "act_length", "act_embed"))

    hidden = normalize(x) * (1 + scale_mlp) + shift_mlp
    x = x + gate_mlp * Mlp(cfg, name="mlp")(hidden)
    x = x * real  # Padding positions carry zeros through the stack.
    return constrain(x, ("act_batch", "act_length", "act_embed"))


class ScannedBlock(nn.Module):
  """Block with the (carry, output) signature that nn.scan expects."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x, condition, mask, positions, real):
    return Block(self.config, name="block")(x, condition, mask, positions, real), None


def remat_policy(name: str):
  """Returns the jax.checkpoint policy for a remat policy name (None: no remat)."""
  if name == "none":
    return None
  if name == "minimal":
    return jax.checkpoint_policies.dots_with_no_batch_dims_saveable
  if name == "full":
    return jax.checkpoint_policies.nothing_saveable
  if name == "save_attention_and_mlp":
    return jax.checkpoint_policies.save_only_these_names("attention", "mlp")
  raise ValueError(f"remat_policy={name!r} is not one of none, minimal, full, save_attention_and_mlp")


class BlockStack(nn.Module):
  """num_layers blocks, scanned (stacked parameters) or unrolled, with optional remat."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x, condition, mask, positions, real):
    cfg = self.config
    policy = remat_policy(cfg.remat_policy)
    if cfg.scan_layers:
      block_class = ScannedBlock
      if cfg.remat_policy != "none":
        block_class = nn.remat(ScannedBlock, policy=policy, prevent_cse=False)
      stack = nn.scan(
          block_class, variable_axes={"params": 0}, split_rngs={"params": True},
          in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
          length=cfg.num_layers, metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = stack(cfg, name="layers")(x, condition, mask, positions, real)
      return x
    block_class = Block
    if cfg.remat_policy != "none":
      block_class = nn.remat(Block, policy=policy)
    for index in range(cfg.num_layers):
      x = block_class(cfg, name=f"block_{index}")(x, condition, mask, positions, real)
    return x
