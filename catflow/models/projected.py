"""The d-dimensional shortcut: work with h = x @ W instead of the V-dimensional state x.

When the network sees x only through x @ W (W the (V_pad, d) input kernel)
times a deterministic scale, the V-dimensional state is never needed:

- at training, x0 @ W ~ N(0, W_real^T W_real) is drawn in d dimensions from a
  square root of the d x d matrix W_real^T W_real (W_real: the rows of real
  token ids), and x_t @ W = (1 - t)(x0 @ W) + t W[y];
- at sampling and in distillation every update is z <- a z + b mu, so
  h <- a h + b (mu @ W).

Both are exact in distribution. When V <= d drawing x0 directly is as cheap as
the square root, and that path is taken (with the same random numbers as the
V-dimensional path).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from catflow import paths


def projected_noise(key: jax.Array, kernel: jax.Array, vocab_size: int,
                    batch_shape: tuple[int, ...]) -> jax.Array:
  """Draws x0 @ W for x0 ~ N(0, I) over the real vocabulary; shape batch_shape + (d,)."""
  padded_vocab_size, depth = kernel.shape
  if vocab_size <= depth:
    # The same draw as the V-dimensional path, then projected. For V <= d the
    # eigendecomposition below would have zero eigenvalues, whose gradients
    # are not finite, and drawing x0 costs no more than the square root.
    x0 = paths.sample_source(key, batch_shape + (padded_vocab_size,), vocab_size)
    return jnp.einsum("...v,vd->...d", x0, kernel.astype(jnp.float32),
                      precision=jax.lax.Precision.HIGHEST)
  real_kernel = kernel[:vocab_size].astype(jnp.float32)
  covariance = jnp.einsum("vd,ve->de", real_kernel, real_kernel,
                          precision=jax.lax.Precision.HIGHEST)
  # For V > d, W_real^T W_real has full rank for any kernel of full column rank.
  eigenvalues, eigenvectors = jnp.linalg.eigh(covariance)
  root = eigenvectors * jnp.sqrt(jnp.maximum(eigenvalues, 0.0))  # root @ root.T = W^T W
  gaussian = jax.random.normal(key, batch_shape + (depth,), jnp.float32)
  return jnp.einsum("...e,de->...d", gaussian, root, precision=jax.lax.Precision.HIGHEST)


def projected_interpolate(noise_projected: jax.Array, tokens: jax.Array, t: jax.Array,
                          kernel: jax.Array) -> jax.Array:
  """Returns x_t @ W = (1 - t)(x0 @ W) + t W[y]."""
  t = paths.broadcast_time(t, tokens.shape)[..., None]
  return (1.0 - t) * noise_projected + t * jnp.take(kernel.astype(jnp.float32), tokens, axis=0)


class ProjectedSpace:
  """Sampler state h = x @ W, shape (B, L, d)."""

  def __init__(self, kernel: jax.Array, vocab_size: int):
    self.kernel = kernel.astype(jnp.float32)
    self.vocab_size = vocab_size

  def initial(self, key, batch, length):
    return projected_noise(key, self.kernel, self.vocab_size, (batch, length))

  def embed(self, mu):
    return jnp.einsum("...v,vd->...d", mu.astype(jnp.float32), self.kernel)
