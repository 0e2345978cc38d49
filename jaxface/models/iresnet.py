"""IR-ResNet backbones (IR-18/34/50/101) laid out exactly as AdaFace / CVLFace `net.py` lays them out.

Layout (PyTorch names in brackets, which `jaxface.convert` maps onto the Flax names used here):
- stem [input_layer]: conv3x3 3->64 stride 1 (stem_conv), BN (stem_bn), per-channel PReLU (stem_prelu).
- units [body.<i>], four stages of 64/128/256/512 channels whose first unit has stride 2 (112->56->28->14->7):
  residual [res_layer] = BN(in) (bn1), conv3x3 in->d (conv1), BN(d) (bn2), PReLU(d) (prelu), conv3x3 d->d stride s
  (conv2), BN(d) (bn3); shortcut [shortcut_layer] = subsampling x[:, ::s, ::s] when in == d, else conv1x1 stride s
  (shortcut_conv) + BN (shortcut_bn). Residual + shortcut, no activation after the sum.
- output [output_layer]: BN2d (output_bn), Dropout, flatten, Dense(-> 512) (output_dense), BN1d without scale or bias
  (embedding_bn). The result is the un-normalised embedding whose norm AdaFace reads as image quality.

Flatten order: PyTorch flattens (C, H, W); here the map stays NHWC and flattens (H, W, C), so no transpose runs at
every step; `jaxface.convert` permutes the rows of the pretrained Linear weight instead.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxface.models.layers import Conv, PReLU, ResidualUnit, batch_norm

# Units per stage, as AdaFace's get_blocks(num_layers).
IR_UNITS = {
    'ir_18': (2, 2, 2, 2),
    'ir_34': (3, 4, 6, 3),
    'ir_50': (3, 4, 14, 3),
    'ir_101': (3, 13, 30, 3),
}
STAGE_CHANNELS = (64, 128, 256, 512)


def scaled_channels(channels: int, width: float) -> int:
  """Channels times the width multiplier, rounded to a multiple of 8 (at least 8); width 1.0 is the official net."""
  if width == 1.0:
    return channels
  return max(8, int(round(channels * width / 8)) * 8)


def output_grid(input_size: int) -> int:
  """Side of the last feature map: four stride-2 3x3 convs with padding 1 (112 -> 7, 56 -> 4)."""
  side = input_size
  for _ in range(4):
    side = (side - 1) // 2 + 1
  return side


class IRUnit(ResidualUnit):
  """One `BasicBlockIR`: pre-activation BN-conv-BN-PReLU-conv-BN plus a subsampling or conv1x1 shortcut."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """(B, H, W, C_in) -> (B, H/stride, W/stride, features)."""
    bn = lambda name: batch_norm(self.train, self.bn_axis_name, self.dtype, name=name)
    if x.shape[-1] == self.features:
      # MaxPool2d(1, stride) in the official code: plain subsampling.
      shortcut = x[:, ::self.stride, ::self.stride, :]
    else:
      shortcut = Conv(self.features, 1, self.stride, 0, dtype=self.dtype, name='shortcut_conv')(x)
      shortcut = bn('shortcut_bn')(shortcut)
    y = bn('bn1')(x)
    y = Conv(self.features, 3, 1, 1, dtype=self.dtype, name='conv1')(y)
    y = bn('bn2')(y)
    y = PReLU(name='prelu')(y)
    # Explicit padding 1: XLA 'SAME' pads (0, 1) at stride 2 on even sizes, shifting the grid against PyTorch weights.
    y = Conv(self.features, 3, self.stride, 1, dtype=self.dtype, name='conv2')(y)
    y = bn('bn3')(y)
    return y + shortcut


def residual_stages(x: jax.Array, unit: type[ResidualUnit], units: tuple[int, ...], width: float, train: bool,
                    bn_axis_name: str | None, dtype: Any) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The four residual stages of an IR net or a ResNet (64/128/256/512 x width channels, the first unit of each
  stage with stride 2), as submodules `body_<i>` of the calling module (call it inside its nn.compact __call__).

  Returns:
    (the last stage's output, {'stage1': ..., 'stage4': ...}).
  """
  stages, index = {}, 0
  for stage, (count, channels) in enumerate(zip(units, STAGE_CHANNELS)):
    for k in range(count):
      x = unit(scaled_channels(channels, width), 2 if k == 0 else 1, train, bn_axis_name, dtype,
               name=f'body_{index}')(x)
      index += 1
    stages[f'stage{stage + 1}'] = x
  return x, stages


class EmbeddingOutput(nn.Module):
  """AdaFace's output_layer: BN2d, Dropout, flatten, Dense(embedding_dim), BN1d without scale and bias."""
  embedding_dim: int = 512
  dropout: float = 0.4
  train: bool = False
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """(B, h, w, C) -> (B, embedding_dim) float32."""
    x = batch_norm(self.train, self.bn_axis_name, self.dtype, name='output_bn')(x)
    x = nn.Dropout(self.dropout, deterministic=not self.train)(x)
    x = x.reshape(x.shape[0], -1)
    x = nn.Dense(self.embedding_dim, dtype=self.dtype, param_dtype=jnp.float32, name='output_dense')(x)
    x = batch_norm(self.train, self.bn_axis_name, jnp.float32, use_scale=False, use_bias=False,
                   name='embedding_bn')(x.astype(jnp.float32))
    return x


class IResNet(nn.Module):
  """IR-ResNet backbone.

  Attributes:
    units: units per stage, e.g. IR_UNITS['ir_50'].
    width: channel multiplier (1.0 = official; small values make CPU-sized test models).
    embedding_dim: embedding size (512 officially).
    dropout: dropout rate before the Dense layer (0.4 officially).
    bn_axis_name: pmap axis over which BatchNorm averages batch statistics in training.
  """
  units: tuple[int, ...]
  width: float = 1.0
  embedding_dim: int = 512
  dropout: float = 0.4
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Embeds faces.

    Args:
      images: (B, S, S, 3) float32 RGB in [-1, 1], S = 112 (or 56 for test-sized models).
      train: batch statistics, BN updates and dropout on.

    Returns:
      embedding (B, embedding_dim) float32, un-normalised; and stage outputs {'stem': (B, S, S, 64w), 'stage1':
      (B, S/2, S/2, 64w), 'stage2': (B, S/4, S/4, 128w), 'stage3', 'stage4'} for heads that look at low-level traces.
    """
    x = images.astype(self.dtype)
    x = Conv(scaled_channels(64, self.width), 3, 1, 1, dtype=self.dtype, name='stem_conv')(x)
    x = batch_norm(train, self.bn_axis_name, self.dtype, name='stem_bn')(x)
    x = PReLU(name='stem_prelu')(x)
    stages = {'stem': x}
    x, body = residual_stages(x, IRUnit, self.units, self.width, train, self.bn_axis_name, self.dtype)
    stages.update(body)
    embedding = EmbeddingOutput(self.embedding_dim, self.dropout, train, self.bn_axis_name, self.dtype,
                                name='output')(x)
    return embedding, stages


def shortcut_conv_units(arch: str) -> list[int]:
  """Body indices of the units with a conv shortcut (first unit of stages 2-4): e.g. [3, 7, 21] for IR-50."""
  units = IR_UNITS[arch]
  return [sum(units[:s]) for s in range(1, 4)]


def official_param_count(arch: str, input_size: int = 112, embedding_dim: int = 512) -> int:
  """Trainable parameters of the official PyTorch IR net (what `sum(p.numel())` gives), counted by hand.

  Stem: conv 3*64*9 + BN 2*64 + PReLU 64. Unit(in -> d): BN 2*in + conv 9*in*d + BN 2*d + PReLU d + conv 9*d*d +
  BN 2*d, plus conv 1x1 in*d + BN 2*d when in != d. Output: BN2d 2*512 + Linear 512*g*g*D + D (g = 7 at 112); the
  final BatchNorm1d has no parameters (affine=False).
  """
  total = 3 * 64 * 9 + 2 * 64 + 64
  in_ch = 64
  for count, depth in zip(IR_UNITS[arch], STAGE_CHANNELS):
    for _ in range(count):
      total += 2 * in_ch + 9 * in_ch * depth + 2 * depth + depth + 9 * depth * depth + 2 * depth
      if in_ch != depth:
        total += in_ch * depth + 2 * depth
      in_ch = depth
  grid = output_grid(input_size)
  total += 2 * 512 + 512 * grid * grid * embedding_dim + embedding_dim
  return total
