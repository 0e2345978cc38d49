"""conv2d must equal XLA's convolution in value and in both gradients, whatever path computes them."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface import xla_cpu
from jaxface.ops import conv

CASES = [  # (kernel size, stride, padding, height, width): the IR-ResNet convs on odd and even maps
    (3, 1, (1, 1), 8, 8),
    (3, 1, (1, 1), 7, 9),
    (3, 2, (1, 1), 8, 8),
    (3, 2, (1, 1), 9, 7),
    (1, 1, (0, 0), 6, 6),
    (1, 2, (0, 0), 8, 8),
    (1, 2, (0, 0), 7, 7),
    (3, 2, (1, 0), 10, 9),
]


def _reference(x, kernel, stride, padding):
  return jax.lax.conv_general_dilated(
      x, kernel.astype(x.dtype), (stride, stride), ((padding[0],) * 2, (padding[1],) * 2),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _inputs(k, height, width, cin=5, cout=6, batch=3, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal((batch, height, width, cin)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((k, k, cin, cout)) / np.sqrt(k * k * cin), jnp.float32)
  return x, kernel


def _assert_close(actual, expected, rtol=1e-4):
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  assert actual.shape == expected.shape
  scale = np.max(np.abs(expected))
  assert scale > 0
  np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


def _assert_gradients_match(x, kernel, stride, padding):
  """Both gradients of a jitted conv2d equal XLA's, under a non-linear loss so that dy is not constant."""

  def loss(fn):
    return lambda x_, k_: jnp.sum(jnp.sin(fn(x_, k_, stride, padding)) * jnp.arange(6.0))

  # A fresh lambda is a fresh jit: the conv paths are chosen at trace time, so nothing is reused from another test.
  grads = jax.jit(jax.grad(loss(lambda *a: conv.conv2d(*a)), argnums=(0, 1)))(x, kernel)
  expected_grads = jax.grad(loss(_reference), argnums=(0, 1))(x, kernel)
  _assert_close(grads[0], expected_grads[0])
  _assert_close(grads[1], expected_grads[1])


@pytest.mark.parametrize('k,stride,padding,height,width', CASES)
def test_value_and_gradients_match_xla(k, stride, padding, height, width):
  x, kernel = _inputs(k, height, width)
  out = jax.jit(conv.conv2d, static_argnums=(2, 3))(x, kernel, stride, padding)
  expected = _reference(x, kernel, stride, padding)
  _assert_close(out, expected)
  _assert_gradients_match(x, kernel, stride, padding)


@pytest.mark.parametrize('block_pixels', [4, 16])
@pytest.mark.parametrize('k,stride,padding,height,width', CASES)
def test_blocked_filter_and_phase_input_gradients_match_xla(monkeypatch, block_pixels, k, stride, padding, height,
                                                            width):
  # On CPU, big maps take the blocked filter gradient and the phase-decomposed strided input gradient. Lower the
  # thresholds so that these small maps take them too (4 pixels: one-row blocks; 16: two-row blocks on 8-wide maps).
  monkeypatch.setattr(conv, '_BLOCK_PIXELS', block_pixels)
  monkeypatch.setattr(conv, '_PHASE_MIN_PIXELS', 1)
  monkeypatch.setitem(xla_cpu._state, 'eigen', False)  # the per-tap filter gradient, as under YNNPACK
  x, kernel = _inputs(k, height, width, seed=2)
  _assert_gradients_match(x, kernel, stride, padding)
  if stride > 1 and k >= stride:
    dy = _reference(x, kernel, stride, padding) ** 2
    phases = conv._input_grad_phases(x.shape, kernel, dy, stride=stride, padding=padding)
    _assert_close(phases, conv._input_grad_lax(x, kernel, dy, stride=stride, padding=padding))


@pytest.mark.parametrize('k,stride,padding,height,width', CASES[::2])
def test_filter_gradient_paths_agree(k, stride, padding, height, width):
  # The CPU path (per-tap matmuls) and the GPU/TPU path (XLA's conv gradient) must give the same dW.
  x, kernel = _inputs(k, height, width, seed=1)
  dy = _reference(x, kernel, stride, padding) ** 2
  taps = conv._filter_grad_taps(x, dy, kernel_shape=kernel.shape, stride=stride, padding=padding)
  xla = conv._filter_grad_lax(x, dy, kernel=kernel, stride=stride, padding=padding)
  _assert_close(taps, xla)


def test_bfloat16_passes_through():
  x, kernel = _inputs(3, 8, 8)
  x16 = x.astype(jnp.bfloat16)
  out = conv.conv2d(x16, kernel, 2, (1, 1))
  assert out.dtype == jnp.bfloat16
  _assert_close(out.astype(jnp.float32), _reference(x16, kernel, 2, (1, 1)).astype(jnp.float32), rtol=1e-2)

  def loss(k_):
    return jnp.sum(conv.conv2d(x16, k_, 2, (1, 1)).astype(jnp.float32) ** 2)

  grad = jax.jit(jax.grad(loss))(kernel)
  assert grad.dtype == jnp.float32  # float32 parameters keep float32 gradients under bfloat16 compute
  expected = jax.grad(lambda k_: jnp.sum(_reference(x16, k_, 2, (1, 1)).astype(jnp.float32) ** 2))(kernel)
  _assert_close(grad, expected, rtol=3e-2)


def test_under_pmap():
  n = jax.local_device_count()
  assert n == 2  # tests/conftest.py asks XLA for two CPU devices
  x, kernel = _inputs(3, 8, 8, batch=2 * n)
  xs = x.reshape(n, 2, *x.shape[1:])

  def step(x_, k_):
    grad = jax.grad(lambda k: jnp.sum(conv.conv2d(x_, k, 1, (1, 1)) ** 2))(k_)
    return jax.lax.psum(grad, 'batch')

  grads = jax.pmap(step, axis_name='batch', in_axes=(0, None))(xs, kernel)
  expected = jax.grad(lambda k: jnp.sum(_reference(x, k, 1, (1, 1)) ** 2))(kernel)
  for g in grads:
    _assert_close(g, expected)


def test_lax_reference_entry_point_matches():
  x, kernel = _inputs(3, 7, 7)
  _assert_close(conv.conv2d_lax(x, kernel, 2, (1, 1)), conv.conv2d(x, kernel, 2, (1, 1)))
