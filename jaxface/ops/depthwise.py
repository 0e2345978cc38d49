"""Depthwise 2-D convolution (one k x k kernel per channel), as MobileFaceNet uses it.

Why not just `lax.conv_general_dilated(..., feature_group_count=C)` on CPU: XLA:CPU runs grouped convolutions through
a slow generic path. Measured here (2 cores, batch 32, 3x3, fp32; `scripts/bench.py --stage ops` prints the
current figures): 56x56x128 stride 1, forward 1592 ms against 20 ms as nine shifted multiply-adds; its filter gradient
1156 ms as XLA emits it (nine column reductions over B*H*W) against 126-147 ms as one matrix-vector product per tap over
blocks of images inside a `lax.scan` (the blocks stay in cache). So on CPU:

- forward: y = sum over taps (i, j) of x_pad[:, i::s, j::s] * k[i, j] (elementwise, XLA fuses it into one loop);
- input gradient: the same shifted multiply-adds on dy (dilated by the stride, padded) with the flipped kernel, one
  fused loop (autodiff of the forward would write k*k padded copies of dy and add them);
- filter gradient: dk[i, j] = ones @ (x_pad[:, i::s, j::s] * dy), per block of images, accumulated in float32.

On GPU and TPU the grouped convolution and XLA's own gradients run (chosen per platform at lowering, so one jitted
function serves both). A kernel that covers the whole input with no padding (MobileFaceNet's global depthwise 7x7 on
the 7x7 map) is an einsum on every platform. Values equal the grouped convolution's to float rounding
(tests/test_cpu_ops.py).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxface.ops import routes

_DIMENSIONS = ('NHWC', 'HWIO', 'NHWC')
# Output values (positions x channels) per block of the CPU filter gradient, about 2 MB of float32: the block's
# operands stay in cache (measured: 14x14x256 at batch 32, 5.8 ms in blocks of 8 images, 31 ms in one block).
_BLOCK_ELEMENTS = 1 << 19


def depthwise_conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1, padding: int = 0) -> jax.Array:
  """Convolves each channel of NHWC `x` (B, H, W, C) with its own kernel (k, k, 1, C) -> (B, H', W', C) in x's dtype.

  `padding` is explicit and symmetric (PyTorch's). Equals `lax.conv_general_dilated(..., feature_group_count=C)`.
  """
  kernel = kernel.astype(x.dtype)
  k, stride, padding = kernel.shape[0], int(stride), int(padding)
  if kernel.shape[2] != 1 or kernel.shape[3] != x.shape[3] or kernel.shape[1] != k:
    raise ValueError(f'depthwise kernel {kernel.shape} does not fit input {x.shape}: expected ({k}, {k}, 1, '
                     f'{x.shape[3]})')
  if padding == 0 and x.shape[1] == k and x.shape[2] == k:
    # A global depthwise conv: one output position per channel.
    return jnp.einsum('bhwc,hwc->bc', x, kernel[:, :, 0, :])[:, None, None, :]
  if routes.is_portable():  # exporters that read the jaxpr: the grouped convolution, no platform_index
    return _lax_depthwise(x, kernel, stride, padding)
  return _depthwise(x, kernel, stride, padding)


def depthwise_conv2d_lax(x: jax.Array, kernel: jax.Array, stride: int = 1, padding: int = 0) -> jax.Array:
  """XLA's grouped convolution with XLA's gradients; same contract as :func:`depthwise_conv2d` (for tests, benches)."""
  return _lax_depthwise(x, kernel.astype(x.dtype), int(stride), int(padding))


def _lax_depthwise(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
  p = padding
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((p, p), (p, p)), dimension_numbers=_DIMENSIONS,
                                      feature_group_count=x.shape[-1])


def _taps(x: jax.Array, k: int, stride: int, padding: int, out_hw: tuple[int, int]):
  """Yields ((i, j), x_pad[:, i::stride, j::stride] cut to the output size) for the k*k kernel taps."""
  p = padding
  xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0))) if p else x
  h, w = out_hw
  for i in range(k):
    for j in range(k):
      yield (i, j), jax.lax.slice(xp, (0, i, j, 0), (xp.shape[0], i + (h - 1) * stride + 1,
                                                      j + (w - 1) * stride + 1, xp.shape[3]), (1, stride, stride, 1))


def _out_hw(x: jax.Array, k: int, stride: int, padding: int) -> tuple[int, int]:
  return ((x.shape[1] + 2 * padding - k) // stride + 1, (x.shape[2] + 2 * padding - k) // stride + 1)


def _shift_depthwise(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
  k = kernel.shape[0]
  out = None
  for (i, j), tap in _taps(x, k, stride, padding, _out_hw(x, k, stride, padding)):
    term = tap * kernel[i, j, 0]
    out = term if out is None else out + term
  return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _depthwise(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
  return jax.lax.platform_dependent(
      x, kernel, cpu=functools.partial(_shift_depthwise, stride=stride, padding=padding),
      default=functools.partial(_lax_depthwise, stride=stride, padding=padding))


def _depthwise_fwd(x, kernel, stride, padding):
  return _depthwise(x, kernel, stride, padding), (x, kernel)


def _depthwise_bwd(stride, padding, residuals, dy):
  x, kernel = residuals
  return jax.lax.platform_dependent(
      x, kernel, dy, cpu=functools.partial(_grads_cpu, stride=stride, padding=padding),
      default=functools.partial(_grads_lax, stride=stride, padding=padding))


_depthwise.defvjp(_depthwise_fwd, _depthwise_bwd)


def _grads_lax(x, kernel, dy, *, stride, padding):
  _, vjp = jax.vjp(lambda x_, k_: _lax_depthwise(x_, k_, stride, padding), x, kernel)
  return vjp(dy)


def _grads_cpu(x, kernel, dy, *, stride, padding):
  # dy arrives as an unfused expression (the BN and ReLU6 backward); each of the k*k taps reads it, and without the
  # barrier XLA fuses that expression into every tap's product, computing it k*k times.
  x, dy = jax.lax.optimization_barrier((x, dy))
  return _input_grad_cpu(dy, kernel, x.shape, stride, padding), \
      _filter_grad_cpu(x, dy, kernel.shape, stride, padding).astype(kernel.dtype)


def _input_grad_cpu(dy: jax.Array, kernel: jax.Array, x_shape, stride: int, padding: int) -> jax.Array:
  """dx as one fused loop: dy dilated by the stride (interior zeros), padded so the result lands on x's grid, then
  convolved with the flipped kernel. (Autodiff of the shifted forward gives k*k padded copies of dy, summed.)"""
  k = kernel.shape[0]
  pads = []
  for axis in (1, 2):
    extra = x_shape[axis] + 2 * padding - ((dy.shape[axis] - 1) * stride + k)
    pads.append((k - 1 - padding, k - 1 - padding + extra, stride - 1))
  zero = jnp.zeros((), dy.dtype)
  dy_full = jax.lax.pad(dy, zero, ((0, 0, 0), pads[0], pads[1], (0, 0, 0)))
  return _shift_depthwise(dy_full, kernel[::-1, ::-1], 1, 0)


def _filter_grad_cpu(x: jax.Array, dy: jax.Array, kernel_shape, stride: int, padding: int) -> jax.Array:
  """dk (k, k, 1, C) float32: per block of images, one ones-vector product per tap, summed over blocks in a scan."""
  k = kernel_shape[0]
  b, h, w, c = dy.shape
  block = max(1, min(b, _BLOCK_ELEMENTS // max(h * w * c, 1)))
  while b % block:
    block -= 1
  ones = jnp.ones((block * h * w,), dy.dtype)

  def one_block(xb: jax.Array, gb: jax.Array) -> jax.Array:
    rows = [jnp.dot(ones, (tap * gb).reshape(-1, c), preferred_element_type=jnp.float32)
            for _, tap in _taps(xb, k, stride, padding, (h, w))]
    return jnp.stack(rows)

  if block == b:
    total = one_block(x, dy)
  else:
    xs = x.reshape(b // block, block, *x.shape[1:])
    gs = dy.reshape(b // block, block, h, w, c)
    total, _ = jax.lax.scan(lambda acc, xg: (acc + one_block(*xg), None), jnp.zeros((k * k, c), jnp.float32),
                            (xs, gs))
  return total.reshape(k, k, 1, c)
