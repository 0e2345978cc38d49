"""MobileFaceNet laid out exactly as foamliu/MobileFaceNet's `mobilefacenet.py` (the real `mobilefacenet_ms1m.pt`).

Layout (PyTorch names in brackets; Flax module names mirror them so `jaxface.convert` maps one onto the other):
- conv1 [conv1.{0,1}]: conv3x3 3->64 stride 2 pad 1, BN, ReLU6 (112 -> 56).
- dw_conv [dw_conv.*]: depthwise 3x3 (depthwise), BN (bn1), ReLU, pointwise 1x1 (pointwise), BN (bn2), ReLU.
- features_<i> [features.<i>.conv.*]: inverted residual blocks (t, c, n, s) in INVERTED_RESIDUAL: expand 1x1 + BN +
  ReLU6 (only when t != 1), depthwise 3x3 stride s + BN + ReLU6, project 1x1 + BN; residual when s == 1 and in == c.
- conv2 [conv2.{0,1}]: 1x1 128->512, BN, ReLU6. gdconv [gdconv.*]: depthwise 7x7 no padding (a global depthwise
  conv: the kernel spans the whole map), BN. conv3 [conv3]: 1x1 512->128 with bias (a Dense on the 1x1 map).
  bn [bn]: BN(128). The result is the un-normalised 128-d embedding.

Input: the ImageNet-normalised RGB face (FaceModel's input_norm='imagenet' does that from [-1, 1]).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxface.models.iresnet import scaled_channels
from jaxface.models.layers import Conv, batch_norm
from jaxface.ops.depthwise import depthwise_conv2d

# (expansion t, output channels c, blocks n, first stride s), as the original's Mobilefacenet_bottleneck_setting.
INVERTED_RESIDUAL = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))
EMBEDDING_DIM = 128


class DepthwiseConv(nn.Module):
  """Depthwise conv (one kernel per channel), bias-free, symmetric explicit padding.

  Runs `jaxface.ops.depthwise.depthwise_conv2d`: the grouped convolution (`feature_group_count` = C) on GPU and TPU,
  shifted multiply-adds with a blocked filter gradient on CPU, where XLA's grouped convolution is 10-80 times slower
  (module docstring there). Kernel (k, k, 1, C) as Flax's HWIO for grouped convs; PyTorch's (C, 1, k, k) converts with
  the same transpose as a dense conv.
  """
  kernel_size: int = 3
  stride: int = 1
  padding: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """(B, H, W, C) -> (B, H', W', C)."""
    channels = x.shape[-1]
    kernel = self.param('kernel', nn.initializers.variance_scaling(2.0, 'fan_out', 'normal'),
                        (self.kernel_size, self.kernel_size, 1, channels), jnp.float32)
    return depthwise_conv2d(x.astype(self.dtype), kernel.astype(self.dtype), self.stride, self.padding)


class ConvBN(nn.Module):
  """conv (dense or depthwise) + BN + optional ReLU6: the original's ConvBNReLU / conv1 / conv2 Sequentials."""
  features: int
  kernel_size: int = 1
  stride: int = 1
  depthwise: bool = False
  relu6: bool = True
  train: bool = False
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """(B, H, W, C) -> (B, H/stride, W/stride, features)."""
    pad = (self.kernel_size - 1) // 2
    if self.depthwise:
      x = DepthwiseConv(self.kernel_size, self.stride, pad, self.dtype, name='conv')(x)
    else:
      x = Conv(self.features, self.kernel_size, self.stride, pad, dtype=self.dtype, name='conv')(x)
    x = batch_norm(self.train, self.bn_axis_name, self.dtype, name='bn')(x)
    return jnp.clip(x, 0, 6) if self.relu6 else x


class InvertedResidual(nn.Module):
  """MobileNetV2 block: [expand 1x1 ReLU6], depthwise 3x3 ReLU6, linear project 1x1 + BN, residual if shapes agree."""
  features: int
  stride: int
  expansion: int
  train: bool = False
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """(B, H, W, C_in) -> (B, H/stride, W/stride, features)."""
    kw = dict(train=self.train, bn_axis_name=self.bn_axis_name, dtype=self.dtype)
    hidden = x.shape[-1] * self.expansion
    y = ConvBN(hidden, 1, name='expand', **kw)(x) if self.expansion != 1 else x
    y = ConvBN(hidden, 3, self.stride, depthwise=True, name='depthwise', **kw)(y)
    y = ConvBN(self.features, 1, relu6=False, name='project', **kw)(y)
    return x + y if self.stride == 1 and x.shape[-1] == self.features else y


class MobileFaceNet(nn.Module):
  """MobileFaceNet backbone.

  Attributes:
    width: channel multiplier (1.0 = the real net).
    embedding_dim: embedding size (128 for the real net).
    dropout: unused (the real net has none); kept so build_backbone passes the same arguments to every arch.
    bn_axis_name: pmap axis over which BatchNorm averages batch statistics in training.
  """
  width: float = 1.0
  embedding_dim: int = EMBEDDING_DIM
  dropout: float = 0.0
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Embeds faces.

    Args:
      images: (B, S, S, 3) float32 RGB, ImageNet-normalised, S = 112 (or 56 for test-sized models).
      train: batch statistics and BN updates on.

    Returns:
      embedding (B, embedding_dim) float32, un-normalised; and stage outputs {'stem': conv1 (B, S/2, S/2, 64w),
      'stage1': dw_conv (B, S/2, S/2, 64w), 'stage2' (S/4, 64w), 'stage3' (S/8, 128w), 'stage4' (S/16, 128w)}: the
      last map at each resolution, for the fake heads.
    """
    kw = dict(train=train, bn_axis_name=self.bn_axis_name, dtype=self.dtype)
    ch = lambda c: scaled_channels(c, self.width)
    x = ConvBN(ch(64), 3, 2, name='conv1', **kw)(images.astype(self.dtype))
    stages = {'stem': x}
    # dw_conv uses plain ReLU (not ReLU6), as the real graph does (checked on the ONNX export: Relu, not Clip).
    y = DepthwiseConv(3, 1, 1, self.dtype, name='dw_conv_depthwise')(x)
    y = nn.relu(batch_norm(train, self.bn_axis_name, self.dtype, name='dw_conv_bn1')(y))
    y = Conv(ch(64), 1, 1, 0, dtype=self.dtype, name='dw_conv_pointwise')(y)
    x = nn.relu(batch_norm(train, self.bn_axis_name, self.dtype, name='dw_conv_bn2')(y))
    stages['stage1'] = x
    index, level = 0, 1
    for t, c, n, s in INVERTED_RESIDUAL:
      for k in range(n):
        stride = s if k == 0 else 1
        if stride == 2:
          stages[f'stage{level}'] = x
          level += 1
        x = InvertedResidual(ch(c), stride, t, name=f'features_{index}', **kw)(x)
        index += 1
    stages[f'stage{level}'] = x
    x = ConvBN(ch(512), 1, name='conv2', **kw)(x)
    # Global depthwise conv: the kernel covers the whole final map (7x7 at 112 input, 4x4 on test-sized models).
    x = DepthwiseConv(x.shape[1], 1, 0, self.dtype, name='gdconv_depthwise')(x)
    x = batch_norm(train, self.bn_axis_name, self.dtype, name='gdconv_bn')(x)
    x = x.reshape(x.shape[0], -1)
    x = nn.Dense(self.embedding_dim, dtype=self.dtype, param_dtype=jnp.float32, name='conv3')(x)
    x = batch_norm(train, self.bn_axis_name, jnp.float32, name='bn')(x.astype(jnp.float32))
    return x, stages
