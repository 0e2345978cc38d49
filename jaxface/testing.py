"""Helpers for tests and benchmarks that need a model with weights but not a trained one."""
from __future__ import annotations

import jax
import numpy as np


def random_variables(model, size: int = 112, seed: int = 0) -> dict:
  """Random {'params', 'batch_stats'} of a FaceModel's shapes at input side `size`, drawn in numpy: no compiled init,
  which takes minutes on a busy CPU. Kernels are scaled by 1/sqrt(fan-in), BatchNorm scales and variances near 1, the
  rest small, so activations stay in range through a deep net."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), np.zeros((1, size, size, 3), np.float32)))
  rng = np.random.default_rng(seed)

  def leaf(path, shape):
    name = str(path[-1].key)
    if name == 'kernel':
      return (rng.normal(size=shape.shape) / np.sqrt(np.prod(shape.shape[:-1]))).astype(shape.dtype)
    if name in ('scale', 'var'):
      return rng.uniform(0.8, 1.2, shape.shape).astype(shape.dtype)
    return rng.normal(0.0, 0.05, shape.shape).astype(shape.dtype)

  return jax.tree_util.tree_map_with_path(leaf, shapes)
