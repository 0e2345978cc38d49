"""2-D convolution used by every jaxface model.

All models call :func:`conv2d` so that its implementation (and its gradient) can be tuned in one place.

Why a custom gradient (CPU only; on GPU and TPU both gradients are XLA's, chosen per platform when the computation is
lowered, so one jitted function serves both):

- Input gradient of strided convolutions on large maps: XLA's transposed convolution is slow there (91 ms against
  PyTorch's 63 for 112x112 64->64 stride 2 at batch 8). It is computed as stride**2 stride-1 convolutions of dy, one
  per output phase, interleaved: 21 ms.
- Filter gradient: with jaxlib's default YNNPACK convolutions it takes up to 20 times the forward pass (1832 ms for a
  3x3 64->64 conv on 112x112 maps at batch 8). jaxface turns YNNPACK off at import (`jaxface.xla_cpu`); XLA's Eigen
  filter gradient is then as fast as PyTorch's (94 vs 103 ms) and is used. Where the flag could not be set (a JAX
  backend had started first), the filter gradient is one matrix product per kernel tap,
  `dW[i, j] = x_pad[:, i::s, j::s].reshape(-1, I).T @ dy.reshape(-1, O)`, over blocks of rows on large maps (147 ms).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxface import xla_cpu

_DIMENSIONS = ('NHWC', 'HWIO', 'NHWC')
# CPU filter gradients of maps with at least twice this many output pixels are computed in blocks of about this many.
_BLOCK_PIXELS = 1568
# CPU input gradients of strided convs on maps at least this large use the phase decomposition.
_PHASE_MIN_PIXELS = 56 * 56


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1, padding: tuple[int, int] = (0, 0)) -> jax.Array:
  """Convolves NHWC `x` (B, H, W, I) with an HWIO `kernel` (kh, kw, I, O) -> (B, H', W', O) in x's dtype.

  `padding` is explicit, (pad_h, pad_w) on both sides, as PyTorch does: XLA's 'SAME' pads (0, 1) for stride 2 on even
  inputs, which shifts the sampling grid against PyTorch-trained weights. Values equal `lax.conv_general_dilated`;
  on CPU the strided input gradient and (where YNNPACK is on) the filter gradient take faster routes (module docstring).
  """
  if kernel.shape[:2] == (1, 1) and int(stride) == 1 and tuple(padding) == (0, 0):
    # A 1x1 convolution is a matrix product; as one, both gradients are matrix products too (as a convolution, XLA:CPU
    # wraps its filter gradient in full-size transposes of x and dy).
    return jnp.dot(x.reshape(-1, x.shape[-1]), kernel[0, 0].astype(x.dtype)).reshape(*x.shape[:-1], kernel.shape[-1])
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
  dx = jax.lax.platform_dependent(
      x, kernel, dy, cpu=functools.partial(_input_grad_cpu, stride=stride, padding=padding),
      default=functools.partial(_input_grad_lax, stride=stride, padding=padding))
  xla_filter_grad = functools.partial(_filter_grad_lax, kernel=kernel, stride=stride, padding=padding)
  cpu_filter_grad = (xla_filter_grad if xla_cpu.eigen_convolutions() else
                     functools.partial(_filter_grad_taps, kernel_shape=kernel.shape, stride=stride, padding=padding))
  dkernel = jax.lax.platform_dependent(x, dy, cpu=cpu_filter_grad, default=xla_filter_grad)
  return dx, dkernel


_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def _input_grad_lax(x: jax.Array, kernel: jax.Array, dy: jax.Array, *, stride: int,
                    padding: tuple[int, int]) -> jax.Array:
  _, input_vjp = jax.vjp(lambda x_: _lax_conv(x_, kernel, stride, padding), x)
  return input_vjp(dy)[0]


def _input_grad_cpu(x: jax.Array, kernel: jax.Array, dy: jax.Array, *, stride: int,
                    padding: tuple[int, int]) -> jax.Array:
  kh, kw = kernel.shape[:2]
  if stride > 1 and kh >= stride and kw >= stride and x.shape[1] * x.shape[2] >= _PHASE_MIN_PIXELS:
    return _input_grad_phases(x.shape, kernel, dy, stride=stride, padding=padding)
  return _input_grad_lax(x, kernel, dy, stride=stride, padding=padding)


def _input_grad_phases(x_shape: tuple[int, ...], kernel: jax.Array, dy: jax.Array, *, stride: int,
                       padding: tuple[int, int]) -> jax.Array:
  """dx of a strided conv as stride**2 stride-1 convolutions of `dy`, one per output phase, interleaved.

  Padded input row `s*m + a` receives `dy[m - t] @ kernel[a + s*t].T` for every tap `a + s*t`: a stride-1 correlation
  of `dy` with the flipped sub-kernel `kernel[a::s]`. Needs `kernel size >= stride` (every phase has a tap).
  """
  batch, height, width, cin = x_shape
  _, out_h, out_w, _ = dy.shape
  ph, pw = padding
  padded_h, padded_w = height + 2 * ph, width + 2 * pw
  phase_h, phase_w = -(-padded_h // stride), -(-padded_w // stride)
  rows = []
  for a in range(stride):
    cols = []
    for b in range(stride):
      sub = jnp.flip(kernel[a::stride, b::stride], (0, 1))
      sub_h, sub_w = sub.shape[:2]
      # Output length phase_h: pad dy low by sub_h - 1 and high by whatever reaches it (negative crops).
      cols.append(jax.lax.conv_general_dilated(
          dy, sub, window_strides=(1, 1),
          padding=((sub_h - 1, phase_h - out_h), (sub_w - 1, phase_w - out_w)),
          dimension_numbers=('NHWC', 'HWOI', 'NHWC')))
    rows.append(jnp.stack(cols, axis=3))  # (B, phase_h, phase_w, s, cin)
  full = jnp.stack(rows, axis=2).reshape(batch, phase_h * stride, phase_w * stride, cin)
  return full[:, ph:ph + height, pw:pw + width]


def _filter_grad_lax(x: jax.Array, dy: jax.Array, *, kernel: jax.Array, stride: int,
                     padding: tuple[int, int]) -> jax.Array:
  _, kernel_vjp = jax.vjp(lambda k: _lax_conv(x, k, stride, padding), kernel)
  return kernel_vjp(dy)[0].astype(kernel.dtype)


def _filter_grad_taps(x: jax.Array, dy: jax.Array, *, kernel_shape: tuple[int, ...], stride: int,
                      padding: tuple[int, int]) -> jax.Array:
  """dW (kh, kw, I, O) of a conv from its input `x` (B, H, W, I) and output gradient `dy` (B, H', W', O)."""
  kh, kw, cin, cout = kernel_shape
  ph, pw = padding
  batch, out_h, out_w, _ = dy.shape
  x_pad = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))

  def tap_products(x_rows: jax.Array, dy_rows: jax.Array, rows: int) -> jax.Array:
    """(kh*kw, I, O) from padded input rows and the `rows` output rows they produce."""
    taps = []
    for i in range(kh):
      for j in range(kw):
        window = x_rows[..., i:i + stride * (rows - 1) + 1:stride, j:j + stride * (out_w - 1) + 1:stride, :]
        # Contracting the long (rows*W') axis of both operands; accumulate in float32 even for bfloat16 inputs.
        taps.append(jax.lax.dot_general(window.reshape(-1, cin), dy_rows.reshape(-1, cout), (((0,), (0,)), ((), ())),
                                        preferred_element_type=jnp.float32))
    return jnp.stack(taps)

  rows = _chunk_rows(out_h, out_w)
  if rows is None:  # small maps: one product per tap over the whole batch
    return tap_products(x_pad, dy, out_h).reshape(kh, kw, cin, cout).astype(x.dtype)
  # Large maps: the same products over blocks of `rows` output rows of one image, accumulated in a scan, so both
  # operands of each product stay in cache (twice as fast as whole-batch products on 112x112 and 56x56 maps).
  blocks_per_image = out_h // rows
  in_rows = stride * (rows - 1) + kh

  def accumulate(total, inputs):
    block, dy_block = inputs
    start = (block // blocks_per_image, (block % blocks_per_image) * rows * stride, 0, 0)
    x_block = jax.lax.dynamic_slice(x_pad, start, (1, in_rows, x_pad.shape[2], cin))[0]
    return total + tap_products(x_block, dy_block, rows), None

  dy_blocks = dy.reshape(batch * blocks_per_image, rows, out_w, cout)
  total, _ = jax.lax.scan(accumulate, jnp.zeros((kh * kw, cin, cout), jnp.float32),
                          (jnp.arange(batch * blocks_per_image), dy_blocks))
  return total.reshape(kh, kw, cin, cout).astype(x.dtype)


def _chunk_rows(out_h: int, out_w: int) -> int | None:
  """Output rows per filter-gradient block (the most rows of one image within `_BLOCK_PIXELS` that divide `out_h`).

  None for maps of fewer than two blocks, which are not split.
  """
  if out_h * out_w < 2 * _BLOCK_PIXELS:
    return None
  rows = max(1, min(out_h, _BLOCK_PIXELS // out_w))
  while out_h % rows:
    rows -= 1
  return rows
