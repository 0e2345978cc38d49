"""The CPU routes of jaxface.ops.depthwise and jaxface.ops.batchnorm equal XLA's / Flax's, in value and gradients.

Both ops choose their implementation per platform at lowering time; on this CPU the shifted multiply-adds, the blocked
filter gradient, the ones-vector channel sums and the hand-written BatchNorm gradient run, and are checked here
against `lax.conv_general_dilated(feature_group_count=C)` and `flax.linen.BatchNorm` (also under pmap, sync BN).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface.models.layers import BatchNorm, batch_norm
from jaxface.ops import batchnorm, depthwise

DEPTHWISE_CASES = [  # (batch, side, channels, kernel, stride, padding)
    (3, 9, 5, 3, 1, 1),
    (3, 9, 5, 3, 2, 1),
    (2, 8, 4, 3, 2, 1),
    (2, 7, 4, 3, 2, 0),
    (2, 8, 3, 5, 2, 2),
    (2, 10, 4, 3, 3, 1),
    (2, 7, 6, 7, 1, 0),  # global depthwise: the kernel covers the map (MobileFaceNet's gdconv)
]


def _close(actual, expected, rtol=1e-5):
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  assert actual.shape == expected.shape
  np.testing.assert_allclose(actual, expected, rtol=0, atol=rtol * max(1.0, np.max(np.abs(expected))))


@pytest.mark.parametrize('batch,side,channels,k,stride,padding', DEPTHWISE_CASES)
def test_depthwise_equals_grouped_convolution(batch, side, channels, k, stride, padding):
  rng = np.random.default_rng(k * 10 + stride)
  x = jnp.asarray(rng.standard_normal((batch, side, side, channels)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((k, k, 1, channels)), jnp.float32)

  def grads(fn):
    loss = lambda x_, k_: jnp.sum(jnp.sin(fn(x_, k_, stride, padding)))
    return jax.jit(jax.grad(loss, argnums=(0, 1)))(x, kernel)

  _close(jax.jit(depthwise.depthwise_conv2d, static_argnums=(2, 3))(x, kernel, stride, padding),
         depthwise.depthwise_conv2d_lax(x, kernel, stride, padding))
  for ours, ref in zip(grads(depthwise.depthwise_conv2d), grads(depthwise.depthwise_conv2d_lax)):
    _close(ours, ref)


def test_depthwise_filter_gradient_in_blocks(monkeypatch):
  """A block budget smaller than the batch runs the scan over blocks of images; the sum over blocks is the same."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((6, 8, 8, 4)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((3, 3, 1, 4)), jnp.float32)
  dy = jnp.asarray(rng.standard_normal((6, 8, 8, 4)), jnp.float32)
  whole = depthwise._filter_grad_cpu(x, dy, kernel.shape, 1, 1)
  monkeypatch.setattr(depthwise, '_BLOCK_ELEMENTS', 2 * 8 * 8 * 4)  # blocks of 2 images: a 3-step scan
  _close(depthwise._filter_grad_cpu(x, dy, kernel.shape, 1, 1), whole)
  _, vjp = jax.vjp(lambda k_: depthwise.depthwise_conv2d_lax(x, k_, 1, 1), kernel)
  _close(whole, vjp(dy)[0])


def test_depthwise_rejects_a_mismatched_kernel():
  with pytest.raises(ValueError, match='does not fit input'):
    depthwise.depthwise_conv2d(jnp.zeros((1, 8, 8, 4)), jnp.zeros((3, 3, 1, 5)), 1, 1)


def test_channel_sum_is_the_sum_over_leading_axes():
  x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 5, 7, 6)), jnp.float32)
  _close(jax.jit(batchnorm.channel_sum)(x), jnp.sum(x, axis=(0, 1, 2)))


def _bn_outputs(module, variables, params, x, axis_name=None):
  def loss(p, x_):
    y, state = module.apply({'params': p, 'batch_stats': variables['batch_stats']}, x_, mutable=['batch_stats'])
    return jnp.sum(jnp.sin(y) * jnp.arange(y.shape[-1])), (y, state)

  def step(p, x_):
    (_, (y, state)), g = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(p, x_)
    return y, state, g

  if axis_name is None:
    return jax.jit(step)(params, x)
  return jax.pmap(step, axis_name=axis_name, in_axes=(None, 0))(params, x)


@pytest.mark.parametrize('shape', [(4, 5, 5, 3), (6, 3)])
def test_batch_norm_equals_flax(shape):
  x = jnp.asarray(np.random.default_rng(2).standard_normal(shape) * 3 + 1, jnp.float32)
  ours = BatchNorm(use_running_average=False)
  ref = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)
  variables = ref.init(jax.random.PRNGKey(0), x)
  assert jax.tree.map(jnp.shape, ours.init(jax.random.PRNGKey(0), x)) == jax.tree.map(jnp.shape, variables)
  params = {'scale': jnp.linspace(0.5, 2.0, shape[-1]), 'bias': jnp.linspace(-1.0, 1.0, shape[-1])}
  jax.tree.map(_close, _bn_outputs(ours, variables, params, x), _bn_outputs(ref, variables, params, x))
  # Inference with running statistics.
  stats = {'mean': jnp.linspace(-1, 1, shape[-1]), 'var': jnp.linspace(0.5, 3, shape[-1])}
  run = lambda m: m.apply({'params': params, 'batch_stats': stats}, x)
  _close(run(BatchNorm(use_running_average=True)),
         run(nn.BatchNorm(use_running_average=True, momentum=0.9, epsilon=1e-5)))


def test_batch_norm_without_scale_and_bias():
  x = jnp.asarray(np.random.default_rng(3).standard_normal((8, 4)), jnp.float32)
  ours = batch_norm(True, None, use_scale=False, use_bias=False)
  variables = ours.init(jax.random.PRNGKey(0), x)
  assert 'params' not in variables
  y, _ = ours.apply(variables, x, mutable=['batch_stats'])
  _close(y, (x - x.mean(0)) / jnp.sqrt(x.var(0) + 1e-5))


def test_sync_batch_norm_under_pmap_equals_flax():
  """axis_name: statistics and the gradient's sums are over both devices' shares (sync BN), as Flax's."""
  if jax.local_device_count() < 2:
    pytest.skip('needs 2 devices: run with XLA_FLAGS=--xla_force_host_platform_device_count=2 (conftest sets it)')
  x = jnp.asarray(np.random.default_rng(4).standard_normal((2, 4, 5, 5, 3)) * 3 + 1, jnp.float32)
  ours = BatchNorm(use_running_average=False, axis_name='batch')
  ref = nn.BatchNorm(use_running_average=False, axis_name='batch', momentum=0.9, epsilon=1e-5)
  variables = ref.init(jax.random.PRNGKey(0), x[0])
  params = {'scale': jnp.array([1.0, 2.0, 0.5]), 'bias': jnp.array([0.0, 1.0, -1.0])}
  jax.tree.map(_close, _bn_outputs(ours, variables, params, x, 'batch'),
               _bn_outputs(ref, variables, params, x, 'batch'))
