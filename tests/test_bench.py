"""scripts/bench.py must compare identical work: its JAX model and its PyTorch twin have the same parameters."""
from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bench  # scripts/, put on sys.path by conftest.py

torch = pytest.importorskip('torch')


def _shapes(tree) -> list[tuple[int, ...]]:
  return sorted(tuple(int(d) for d in np.shape(leaf)) for leaf in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize('arch', ['ir_18', 'mobilefacenet'])
def test_jax_and_torch_train_models_have_the_same_parameters(arch):
  from jaxface.models.face_model import build_model
  from jaxface.models.heads import AdaFaceHead

  config = bench.bench_config(arch, 2)
  model = build_model(config.model)
  images = jnp.zeros((2, config.model.input_size, config.model.input_size, 3), jnp.float32)
  variables = jax.eval_shape(lambda: model.init({'params': jax.random.key(0), 'dropout': jax.random.key(1)}, images,
                                                train=False))
  head = jax.eval_shape(lambda: AdaFaceHead(bench.NUM_CLASSES).init(jax.random.key(0),
                                                                jnp.zeros((2, config.model.embedding_dim))))
  jax_sizes = _shapes(variables['params']) + _shapes(head['params'])
  from jaxface.torch_reference import torch_face_model
  twin = torch_face_model(arch, bench.NUM_CLASSES)
  torch_sizes = sorted(tuple(p.shape) for p in twin.parameters())
  # Same count of weights per tensor size (layouts differ: HWIO vs OIHW), and the same total.
  assert sorted(int(np.prod(s)) for s in jax_sizes) == sorted(int(np.prod(s)) for s in torch_sizes)
  # The photo enters both as 112x112x3, unfolded: the stem convolution reads 3 channels in both.
  assert (3, 3, 3, 64) in jax_sizes and (64, 3, 3, 3) in torch_sizes
