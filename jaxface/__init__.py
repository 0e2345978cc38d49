"""jaxface: face recognition in JAX that deepfakes cannot fool.

The public API is loaded lazily, so `import jaxface` imports neither TensorFlow nor PyTorch. Importing it adds one
XLA:CPU flag to `XLA_FLAGS` (Eigen convolutions instead of YNNPACK, twice as fast here; see `jaxface.xla_cpu`).
"""
from __future__ import annotations

from jaxface import xla_cpu as _xla_cpu
from jaxface._lazy import lazy_getattr

_xla_cpu.configure()  # before any JAX backend starts: XLA:CPU's Eigen convolutions (see jaxface/xla_cpu.py)

__version__ = '0.1.0'

_LAZY = {
    'FaceVerifier': 'jaxface.verify',
    'fused_score': 'jaxface.scoring',
    'challenge_eer': 'jaxface.metrics',
}

__all__ = sorted(_LAZY)
__getattr__ = lazy_getattr(__name__, _LAZY)
