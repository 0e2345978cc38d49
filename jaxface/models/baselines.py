"""Baseline backbones for the comparison rows: a plain (post-activation, ReLU) ResNet-18 and a small plain CNN.

Both keep the IR nets' face-sized stem (conv3x3 stride 1, no max-pool, 112 -> 7 in four stride-2 stages) and return the
same (embedding, stages) pair, so heads, losses and the trainer treat every backbone alike.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxface.models.iresnet import EmbeddingOutput, residual_stages, scaled_channels
from jaxface.models.layers import Conv, EmbeddingNet, ResidualUnit, batch_norm


class BasicBlock(ResidualUnit):
  """He et al.'s post-activation basic block: conv-BN-ReLU-conv-BN + shortcut, ReLU after the sum."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """(B, H, W, C_in) -> (B, H/stride, W/stride, features)."""
    bn = lambda name, **kw: batch_norm(self.train, self.bn_axis_name, self.dtype, name=name, **kw)
    y = Conv(self.features, 3, self.stride, 1, dtype=self.dtype, name='conv1')(x)
    y = nn.relu(bn('bn1')(y))
    y = Conv(self.features, 3, 1, 1, dtype=self.dtype, name='conv2')(y)
    # Zero-initialised last BN scale: each block starts as the identity, as in Goyal et al.
    y = bn('bn2', scale_init=nn.initializers.zeros)(y)
    if x.shape[-1] != self.features or self.stride != 1:
      x = Conv(self.features, 1, self.stride, 0, dtype=self.dtype, name='shortcut_conv')(x)
      x = bn('shortcut_bn')(x)
    return nn.relu(y + x)


class ResNet18(EmbeddingNet):
  """Plain ResNet-18 (2, 2, 2, 2 basic blocks) with the IR nets' stem and embedding output."""

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(B, S, S, 3) float32 in [-1, 1] -> embedding (B, embedding_dim) float32 and stage outputs stem..stage4."""
    x = Conv(scaled_channels(64, self.width), 3, 1, 1, dtype=self.dtype, name='stem_conv')(images.astype(self.dtype))
    x = nn.relu(batch_norm(train, self.bn_axis_name, self.dtype, name='stem_bn')(x))
    stages = {'stem': x}
    x, body = residual_stages(x, BasicBlock, (2, 2, 2, 2), self.width, train, self.bn_axis_name, self.dtype)
    stages.update(body)
    embedding = EmbeddingOutput(self.embedding_dim, self.dropout, train, self.bn_axis_name, self.dtype,
                                name='output')(x)
    return embedding, stages


class SmallCNN(EmbeddingNet):
  """Four conv-BN-ReLU stages (32/64/128/256 x width, stride 2 each), global average pooling, Dense, BN1d.

  The cheapest row of the baseline table: no residuals, no flatten, about 0.52 M parameters at width 1.
  """

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(B, S, S, 3) float32 in [-1, 1] -> embedding (B, embedding_dim) float32 and stage outputs stem..stage4."""
    x = images.astype(self.dtype)
    stages = {'stem': x}  # no stem layer: the trace head reads the input itself
    for stage, channels in enumerate((32, 64, 128, 256)):
      x = Conv(scaled_channels(channels, self.width), 3, 2, 1, dtype=self.dtype, name=f'conv{stage + 1}')(x)
      x = nn.relu(batch_norm(train, self.bn_axis_name, self.dtype, name=f'bn{stage + 1}')(x))
      stages[f'stage{stage + 1}'] = x
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = nn.Dense(self.embedding_dim, name='output_dense')(x)
    x = batch_norm(train, self.bn_axis_name, jnp.float32, use_scale=False, use_bias=False, name='embedding_bn')(x)
    return x, stages
