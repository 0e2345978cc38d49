"""2-D convolution used by every jaxface model.

All models call :func:`conv2d` so that its implementation (and its gradient) can be tuned in one place.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1, padding: tuple[int, int] = (0, 0)) -> jax.Array:
  """Convolves NHWC `x` (B, H, W, I) with an HWIO `kernel` (kh, kw, I, O).

  `padding` is explicit, (pad_h, pad_w) on both sides, as PyTorch does: XLA's 'SAME' pads (0, 1) for stride 2 on even
  inputs, which shifts the sampling grid against PyTorch-trained weights.
  """
  ph, pw = padding
  return jax.lax.conv_general_dilated(
      x, kernel.astype(x.dtype), window_strides=(stride, stride), padding=((ph, ph), (pw, pw)),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
