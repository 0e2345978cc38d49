"""Heads on the shared embedding: the AdaFace class head (training only) and the deepfake head."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxface.models.layers import Conv, batch_norm


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-5) -> jax.Array:
  """x / max(||x||, eps) along `axis` (AdaFace's l2_norm adds no eps; this only guards all-zero rows)."""
  norm = jnp.linalg.norm(x, axis=axis, keepdims=True)
  return x / jnp.maximum(norm, eps)


class AdaFaceHead(nn.Module):
  """Class weights W (D, C) of the AdaFace head; returns cosines to every class centre.

  Lives outside FaceModel: only training needs it. The margin, scale and EMA norm statistics are in
  `jaxface.losses.adaface_loss`, which takes these cosines. Official key: `head.kernel` (512, C).
  """
  num_classes: int

  @nn.compact
  def __call__(self, embedding: jax.Array) -> jax.Array:
    """(B, D) embedding, normalised or not -> (B, C) float32 cosine (W column-normalised), unclipped."""
    kernel = self.param('kernel', nn.initializers.normal(1.0), (embedding.shape[-1], self.num_classes), jnp.float32)
    return l2_normalize(embedding.astype(jnp.float32)) @ l2_normalize(kernel, axis=0)


def mean_std_pool(feature_map: jax.Array) -> jax.Array:
  """(B, H, W, C) -> (B, 2C) float32: per-channel spatial mean and standard deviation.

  The standard deviation keeps the energy of high-frequency generation traces that a mean alone averages away.
  """
  x = feature_map.astype(jnp.float32)
  mean = jnp.mean(x, axis=(1, 2))
  std = jnp.sqrt(jnp.var(x, axis=(1, 2)) + 1e-5)
  return jnp.concatenate([mean, std], axis=-1)


class FakeHead(nn.Module):
  """Deepfake head: one logit per image, positive = fake.

  mode 'features': a conv3x3-BN-ReLU on the stage-1 map (full-resolution traces the identity layers may discard),
  mean+std pooling of that and of the stage-2 map, concatenated with the L2-normalised embedding (gradient stopped),
  LayerNorm, MLP -> 1. mode 'embedding': the same MLP on the normalised embedding alone.
  """
  mode: str = 'features'
  hidden: int = 256
  trace_channels: int = 64
  train: bool = False
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, embedding: jax.Array, stages: dict[str, jax.Array]) -> jax.Array:
    """embedding (B, D), stages {'stage1': (B, h1, w1, c1), 'stage2': (B, h2, w2, c2), ...} -> (B,) float32 logit."""
    # The identity embedding must not be bent to serve fake detection; the fake head reads it, the push-away loss and
    # the identity loss shape it.
    parts = [jax.lax.stop_gradient(l2_normalize(embedding.astype(jnp.float32)))]
    if self.mode == 'features':
      trace = Conv(self.trace_channels, 3, 1, 1, dtype=self.dtype, name='trace_conv')(stages['stage1'])
      trace = nn.relu(batch_norm(self.train, self.bn_axis_name, self.dtype, name='trace_bn')(trace))
      parts += [mean_std_pool(trace), mean_std_pool(stages['stage2'])]
    elif self.mode != 'embedding':
      raise ValueError(f"fake head mode {self.mode!r} is not 'features' or 'embedding'")
    x = nn.LayerNorm(name='norm')(jnp.concatenate(parts, axis=-1))
    x = nn.relu(nn.Dense(self.hidden, name='hidden')(x))
    return nn.Dense(1, name='logit')(x)[:, 0]
