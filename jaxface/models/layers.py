"""Layers shared by every jaxface backbone: a convolution routed through `jaxface.ops.conv.conv2d`, the per-channel
PReLU of the IR-ResNets and PyTorch-compatible BatchNorm.

Parameter names are what the trainer's weight decay and the converter key on: convolution and dense weights are
'kernel', PReLU slopes are 'alpha', BatchNorm parameters are Flax's 'scale'/'bias' with statistics 'mean'/'var' in the
'batch_stats' collection.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxface.ops.batchnorm import batch_norm_train
from jaxface.ops.conv import conv2d

# PyTorch's default Kaiming-uniform(a=sqrt(5)) init of Conv2d is variance 1/(3 fan_in); He-normal suits ReLU-like
# nets trained from scratch better and is what Flax's ResNet example uses.
_conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


class Conv(nn.Module):
  """Bias-free 2-D convolution with PyTorch-style explicit symmetric padding.

  Attributes:
    features: output channels.
    kernel_size: square kernel side.
    stride: square stride.
    padding: pixels padded on each side of H and W; None means kernel_size // 2 (PyTorch's `padding=k//2`).
  """
  features: int
  kernel_size: int = 3
  stride: int = 1
  padding: int | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """(B, H, W, I) -> (B, H', W', features)."""
    kernel = self.param('kernel', _conv_init, (self.kernel_size, self.kernel_size, x.shape[-1], self.features),
                        jnp.float32)
    pad = self.kernel_size // 2 if self.padding is None else self.padding
    return conv2d(x.astype(self.dtype), kernel.astype(self.dtype), self.stride, (pad, pad))


class PReLU(nn.Module):
  """Per-channel PReLU as in PyTorch's `nn.PReLU(C)`: one slope per channel, initialised at 0.25.

  Flax's own `nn.PReLU` has a single scalar slope initialised at 0.01, which neither matches pretrained weights nor the
  official training start.
  """
  init_alpha: float = 0.25

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """(..., C) -> (..., C)."""
    alpha = self.param('alpha', nn.initializers.constant(self.init_alpha), (x.shape[-1],), jnp.float32)
    return jnp.where(x >= 0, x, alpha.astype(x.dtype) * x)


class BatchNorm(nn.Module):
  """`flax.linen.BatchNorm` over the last axis, same variables ('scale', 'bias'; 'mean', 'var' in 'batch_stats') and
  same values, with its per-channel sums routed through `jaxface.ops.batchnorm` (fast on XLA:CPU; plain sums elsewhere).

  Statistics are computed in float32 (the biased batch variance E[x^2] - E[x]^2, as Flax's fast variance), summed
  over `axis_name` when given, and the output is x * a + b in `dtype` with a = scale / sqrt(var + eps),
  b = bias - mean * a; in training its gradient is `batch_norm_train`'s hand-written one.
  """
  use_running_average: bool = False
  momentum: float = 0.9
  epsilon: float = 1e-5
  axis_name: str | None = None
  use_scale: bool = True
  use_bias: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  scale_init: Any = nn.initializers.ones
  bias_init: Any = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """(..., C) -> (..., C) in `dtype`."""
    c = x.shape[-1]
    ra_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable('batch_stats', 'var', lambda: jnp.ones((c,), jnp.float32))
    scale = (self.param('scale', self.scale_init, (c,), self.param_dtype) if self.use_scale
             else jnp.ones((c,), jnp.float32))
    bias = (self.param('bias', self.bias_init, (c,), self.param_dtype) if self.use_bias
            else jnp.zeros((c,), jnp.float32))
    if self.use_running_average:
      a = scale * jax.lax.rsqrt(ra_var.value + self.epsilon)
      return x.astype(self.dtype) * a.astype(self.dtype) + (bias - ra_mean.value * a).astype(self.dtype)
    axis_name = None if self.is_initializing() else self.axis_name
    y, mean, var = batch_norm_train(x.astype(self.dtype), scale, bias, self.epsilon, axis_name)
    if not self.is_initializing():
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return y


def batch_norm(train: bool, axis_name: str | None, dtype: Any = jnp.float32, **kwargs) -> BatchNorm:
  """A BatchNorm with PyTorch's defaults (eps 1e-5, momentum 0.1 = Flax momentum 0.9).

  `axis_name` (e.g. 'batch' under pmap) averages batch statistics across devices; it is only used in training, so
  evaluation outside pmap works with the same module. Running variance is Flax's biased batch variance, PyTorch
  keeps the unbiased one: they differ by a factor B/(B-1) during training only, and converted statistics are used as they are.
  """
  return BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                   axis_name=axis_name if train else None, dtype=dtype, param_dtype=jnp.float32, **kwargs)


def dtype_from_name(name: str) -> Any:
  """'float32' | 'bfloat16' -> the jnp dtype used for activations (parameters stay float32)."""
  dtypes = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
  if name not in dtypes:
    raise ValueError(f'model dtype {name!r} is not one of {sorted(dtypes)}')
  return dtypes[name]


__all__ = ['BatchNorm', 'Conv', 'PReLU', 'batch_norm', 'dtype_from_name']


class ResidualUnit(nn.Module):
  """The attributes every residual unit takes (IR's `IRUnit`, the baselines' `BasicBlock`); subclasses define
  __call__: (B, H, W, C_in) -> (B, H/stride, W/stride, features)."""
  features: int
  stride: int
  train: bool = False
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32


class EmbeddingNet(nn.Module):
  """The attributes of a backbone built by `face_model.build_backbone` (the baselines; IResNet and MobileFaceNet
  spell theirs out, with their own defaults): channel width multiplier, embedding size, dropout before the embedding,
  BatchNorm's pmap axis, compute dtype."""
  width: float = 1.0
  embedding_dim: int = 512
  dropout: float = 0.4
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32
