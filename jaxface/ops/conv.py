"""2-D convolution used by every jaxface model.

All models call :func:`conv2d` so that its implementation (and its gradient) can be tuned in one place.

Why a custom gradient: XLA's CPU backend computes convolution *filter* gradients very slowly (a 3x3 128->128 conv on
28x28 maps, batch 32, takes about 10 s for the filter gradient against 0.1 s for the forward pass), which made the whole
train step three times slower than PyTorch. On CPU the filter gradient is therefore written as one matrix product per
kernel tap: for tap (i, j), `dW[i, j] = x_pad[:, i::s, j::s].reshape(-1, I).T @ dy.reshape(-1, O)`. The forward pass
and the input gradient stay XLA convolutions, which are fast on every backend. On GPU and TPU the filter gradient
stays XLA's (chosen per platform when the computation is lowered, so one jitted function serves both).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

_DIMENSIONS = ('NHWC', 'HWIO', 'NHWC')


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1, padding: tuple[int, int] = (0, 0)) -> jax.Array:
  """Convolves NHWC `x` (B, H, W, I) with an HWIO `kernel` (kh, kw, I, O) -> (B, H', W', O) in x's dtype.

  `padding` is explicit, (pad_h, pad_w) on both sides, as PyTorch does: XLA's 'SAME' pads (0, 1) for stride 2 on even
  inputs, which shifts the sampling grid against PyTorch-trained weights. Values equal `lax.conv_general_dilated`;
  the gradient with respect to `kernel` is computed by per-tap matrix products on CPU (see the module docstring).
  """
  return _conv2d(x, kernel.astype(x.dtype), int(stride), (int(padding[0]), int(padding[1])))


def conv2d_lax(x: jax.Array, kernel: jax.Array, stride: int = 1, padding: tuple[int, int] = (0, 0)) -> jax.Array:
  """The plain XLA convolution with XLA's own gradients; same contract as :func:`conv2d` (kept for benchmarks)."""
  return _lax_conv(x, kernel.astype(x.dtype), int(stride), (int(padding[0]), int(padding[1])))


def _lax_conv(x: jax.Array, kernel: jax.Array, stride: int, padding: tuple[int, int]) -> jax.Array:
  ph, pw = padding
  return jax.lax.conv_general_dilated(
      x, kernel, window_strides=(stride, stride), padding=((ph, ph), (pw, pw)), dimension_numbers=_DIMENSIONS)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv2d(x: jax.Array, kernel: jax.Array, stride: int, padding: tuple[int, int]) -> jax.Array:
  return _lax_conv(x, kernel, stride, padding)


def _conv2d_fwd(x, kernel, stride, padding):
  return _lax_conv(x, kernel, stride, padding), (x, kernel)


def _conv2d_bwd(stride, padding, residuals, dy):
  x, kernel = residuals
  _, input_vjp = jax.vjp(lambda x_: _lax_conv(x_, kernel, stride, padding), x)
  (dx,) = input_vjp(dy)
  dkernel = jax.lax.platform_dependent(
      x, dy, cpu=functools.partial(_filter_grad_taps, kernel_shape=kernel.shape, stride=stride, padding=padding),
      default=functools.partial(_filter_grad_lax, kernel=kernel, stride=stride, padding=padding))
  return dx, dkernel


_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def _filter_grad_lax(x: jax.Array, dy: jax.Array, *, kernel: jax.Array, stride: int,
                     padding: tuple[int, int]) -> jax.Array:
  _, kernel_vjp = jax.vjp(lambda k: _lax_conv(x, k, stride, padding), kernel)
  return kernel_vjp(dy)[0].astype(kernel.dtype)


def _filter_grad_taps(x: jax.Array, dy: jax.Array, *, kernel_shape: tuple[int, ...], stride: int,
                      padding: tuple[int, int]) -> jax.Array:
  """dW (kh, kw, I, O) of a conv from its input `x` (B, H, W, I) and output gradient `dy` (B, H', W', O)."""
  kh, kw, cin, cout = kernel_shape
  ph, pw = padding
  _, out_h, out_w, _ = dy.shape
  x_pad = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
  dy_rows = dy.reshape(-1, cout)
  taps = []
  for i in range(kh):
    for j in range(kw):
      window = x_pad[:, i:i + stride * (out_h - 1) + 1:stride, j:j + stride * (out_w - 1) + 1:stride, :]
      # Contracting the long (B*H'*W') axis of both operands; accumulate in float32 even for bfloat16 inputs.
      taps.append(jax.lax.dot_general(window.reshape(-1, cin), dy_rows, (((0,), (0,)), ((), ())),
                                      preferred_element_type=jnp.float32))
  return jnp.stack(taps).reshape(kh, kw, cin, cout).astype(x.dtype)
