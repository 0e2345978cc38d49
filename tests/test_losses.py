"""Losses against independent NumPy implementations of the published formulas."""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface import losses

M, H, S, T_ALPHA, EPS = 0.4, 0.333, 64.0, 0.01, 1e-3


def numpy_adaface(cosine, norms, labels, batch_mean, batch_std, mask):
  """Paper formula in float64: returns (loss, new_mean, new_std, dloss/dcosine)."""
  cosine = cosine.astype(np.float64)
  inside = (cosine > -1 + EPS) & (cosine < 1 - EPS)
  cos = np.clip(cosine, -1 + EPS, 1 - EPS)
  norms = np.clip(norms.astype(np.float64), 0.001, 100)
  real = mask > 0
  new_mean = T_ALPHA * norms[real].mean() + (1 - T_ALPHA) * batch_mean
  new_std = T_ALPHA * norms[real].std(ddof=1) + (1 - T_ALPHA) * batch_std
  scaler = np.clip((norms - new_mean) / (new_std + EPS) * H, -1, 1)
  rows = np.arange(len(labels))
  theta = np.arccos(cos[rows, labels])
  shifted = theta - M * scaler
  theta_m = np.clip(shifted, EPS, math.pi - EPS)
  logits = cos.copy()
  logits[rows, labels] = np.cos(theta_m) - (M + M * scaler)
  logits *= S
  z = logits - logits.max(1, keepdims=True)
  log_softmax = z - np.log(np.exp(z).sum(1, keepdims=True))
  per_example = -log_softmax[rows, labels]
  loss = (mask * per_example).sum() / mask.sum()
  # d loss / d logits = w_i / sum(w) * (softmax - onehot); d logit / d cos = s off target, and on target
  # s * d cos(theta - m*g) / d cos = s * sin(theta_m) / sin(theta) while theta_m is not clipped.
  grad_logits = np.exp(log_softmax)
  grad_logits[rows, labels] -= 1
  grad_logits *= (mask / mask.sum())[:, None]
  dcos = np.full_like(cos, S)
  unclipped = (shifted > EPS) & (shifted < math.pi - EPS)
  dcos[rows, labels] = S * np.where(unclipped, np.sin(theta_m) / np.sin(theta), 0.0)
  return loss, new_mean, new_std, grad_logits * dcos * inside, logits


def random_inputs(seed, batch=12, classes=7):
  rng = np.random.RandomState(seed)
  cosine = rng.uniform(-0.9, 0.95, (batch, classes)).astype(np.float32)
  norms = rng.uniform(5, 40, batch).astype(np.float32)
  labels = rng.randint(0, classes, batch)
  mask = (rng.rand(batch) < 0.7).astype(np.float32)
  mask[:2] = 1
  return cosine, norms, labels, mask


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_adaface_matches_numpy_formula_and_gradient(seed):
  cosine, norms, labels, mask = random_inputs(seed)
  state = {'batch_mean': jnp.float32(20.0 + seed), 'batch_std': jnp.float32(100.0 - 40 * seed)}
  fn = functools.partial(losses.adaface_loss, m=M, h=H, s=S, t_alpha=T_ALPHA, mask=jnp.asarray(mask))
  (loss, (new_state, logits)), grad = jax.jit(jax.value_and_grad(
      lambda c: (lambda out: (out[0], out[1:]))(fn(c, jnp.asarray(norms), jnp.asarray(labels), state)),
      has_aux=True))(jnp.asarray(cosine))
  ref_loss, ref_mean, ref_std, ref_grad, ref_logits = numpy_adaface(
      cosine, norms, labels, 20.0 + seed, 100.0 - 40 * seed, mask)
  np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(float(new_state['batch_mean']), ref_mean, rtol=1e-6, atol=1e-5)
  np.testing.assert_allclose(float(new_state['batch_std']), ref_std, rtol=1e-6, atol=1e-5)
  np.testing.assert_allclose(np.asarray(grad), ref_grad, atol=1e-5)
  np.testing.assert_allclose(np.asarray(logits), ref_logits, atol=1e-3)  # logits are s = 64 times cosines
  assert np.abs(ref_grad).max() > 1e-3  # the comparison is not between two near-zero arrays


def test_adaface_ema_evolves_over_steps_like_numpy():
  state = losses.init_adaface_state()
  mean, std = 20.0, 100.0
  step_fn = jax.jit(functools.partial(losses.adaface_loss, m=M, h=H, s=S, t_alpha=T_ALPHA))
  for step in range(5):
    cosine, norms, labels, mask = random_inputs(10 + step)
    _, state, _ = step_fn(jnp.asarray(cosine), jnp.asarray(norms), jnp.asarray(labels), state,
                          mask=jnp.asarray(mask))
    _, mean, std, _, _ = numpy_adaface(cosine, norms, labels, mean, std, mask)
  np.testing.assert_allclose([float(state['batch_mean']), float(state['batch_std'])], [mean, std], rtol=1e-6)
  assert abs(mean - 20.0) > 0.01 and abs(std - 100.0) > 1.0


def test_adaface_replicas_agree_with_the_global_batch():
  """Split over a named axis (vmap stands in for pmap): same EMA on every replica, pmean of losses = global loss."""
  cosine, norms, labels, mask = random_inputs(5, batch=16)
  state = {'batch_mean': jnp.float32(18.0), 'batch_std': jnp.float32(9.0)}
  split = lambda x: jnp.asarray(x).reshape((2, 8) + x.shape[1:])
  per_replica = jax.jit(jax.vmap(
      lambda c, n, l, w: losses.adaface_loss(c, n, l, state, m=M, h=H, s=S, t_alpha=T_ALPHA, mask=w,
                                             axis_name='batch'), axis_name='batch'))
  loss, new_state, _ = per_replica(split(cosine), split(norms), split(labels), split(mask))
  ref_loss, ref_mean, ref_std, _, _ = numpy_adaface(cosine, norms, labels, 18.0, 9.0, mask)
  np.testing.assert_allclose(np.asarray(new_state['batch_mean']), [ref_mean] * 2, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(new_state['batch_std']), [ref_std] * 2, rtol=1e-6)
  np.testing.assert_allclose(float(jnp.mean(loss)), ref_loss, rtol=1e-5)


def test_adaface_leaves_ema_alone_without_two_real_photos():
  cosine, norms, labels, _ = random_inputs(3)
  state = losses.init_adaface_state()
  mask = np.zeros(len(labels), np.float32)
  mask[4] = 1
  loss, new_state, _ = jax.jit(losses.adaface_loss)(jnp.asarray(cosine), jnp.asarray(norms), jnp.asarray(labels),
                                                    state, mask=jnp.asarray(mask))
  assert float(new_state['batch_mean']) == 20.0 and float(new_state['batch_std']) == 100.0
  assert np.isfinite(float(loss)) and float(loss) > 0


def test_fake_bce_weights_fakes_and_skips_unknown():
  logit = np.array([2.0, -1.0, 0.5, 3.0, -2.0], np.float32)
  is_fake = np.array([1, 0, 1, -1, 0])
  pos_weight = 3.0
  softplus = lambda x: np.log1p(np.exp(x))
  terms = [pos_weight * softplus(-2.0), softplus(-1.0), pos_weight * softplus(-0.5), softplus(-2.0)]
  expected = sum(terms) / 4
  got = float(jax.jit(losses.fake_bce)(jnp.asarray(logit), jnp.asarray(is_fake), pos_weight))
  np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_pair_adaptive_margin_loss_formula():
  rng = np.random.RandomState(0)
  cos = rng.uniform(-0.5, 0.99, 10).astype(np.float32)
  label = rng.randint(0, 2, 10)
  label[0] = -1
  margin = 0.35 + 0.1 * (1 - cos.astype(np.float64))
  logits = 64 * (cos - margin * (label == 1))
  y = (label == 1).astype(np.float64)
  per_pair = np.logaddexp(0, -logits) * y + np.logaddexp(0, logits) * (1 - y)
  expected = per_pair[1:].mean()
  got = float(losses.pair_adaptive_margin_loss(jnp.asarray(cos), jnp.asarray(label), 64.0, 0.35, 0.1))
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  # No gradient through the margin: d/dcos is s * (sigmoid(logit) - y) / n for each labelled pair.
  grad = jax.jit(jax.grad(lambda c: losses.pair_adaptive_margin_loss(c, jnp.asarray(label))))(jnp.asarray(cos))
  sigmoid = 1 / (1 + np.exp(-logits))
  np.testing.assert_allclose(np.asarray(grad)[1:], (64 * (sigmoid - y) / 9)[1:], rtol=1e-4, atol=1e-6)
  assert float(grad[0]) == 0.0


def test_fake_pushaway_only_moves_fakes_near_their_centre():
  rng = np.random.RandomState(1)
  weights = rng.randn(8, 3).astype(np.float32)
  centres = weights / np.linalg.norm(weights, axis=0)
  embedding = np.stack([centres[:, 0] * 5, centres[:, 1] + 0.1 * rng.randn(8), -centres[:, 2], centres[:, 2]])
  labels = np.array([0, 1, 2, 2])
  is_fake = np.array([1, 1, 1, 0])
  emb = embedding / np.linalg.norm(embedding, axis=1, keepdims=True)
  cos = (emb * centres[:, labels].T).sum(1)
  expected = np.maximum(cos[:3] - 0.2, 0).mean()
  fn = jax.jit(lambda e: losses.fake_pushaway_loss(e, jnp.asarray(weights), jnp.asarray(labels),
                                                   jnp.asarray(is_fake), 0.2))
  np.testing.assert_allclose(float(fn(jnp.asarray(embedding, jnp.float32))), expected, rtol=1e-5)
  assert expected > 0.5
  grad = np.asarray(jax.grad(fn)(jnp.asarray(embedding, jnp.float32)))
  assert np.abs(grad[0]).max() > 0 and np.abs(grad[1]).max() > 0
  assert np.abs(grad[2]).max() == 0  # already below the margin
  assert np.abs(grad[3]).max() == 0  # a real photo is left alone
