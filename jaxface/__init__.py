"""jaxface: face recognition in JAX that deepfakes cannot fool.

The public API is loaded lazily, so `import jaxface` imports neither TensorFlow nor PyTorch.
"""
from __future__ import annotations

import importlib

__version__ = '0.1.0'

_LAZY = {
    'FaceVerifier': 'jaxface.verify',
    'fused_score': 'jaxface.scoring',
    'challenge_eer': 'jaxface.metrics',
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
  if name in _LAZY:
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
