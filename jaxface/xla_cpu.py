"""XLA:CPU settings that jaxface applies before JAX starts its backends.

jaxlib 0.10-0.12 hand convolutions on the CPU to YNNPACK by default. On the 2-core AVX2 machine that BENCHMARKS.md
describes, that made convolutions about half as fast as XLA's Eigen kernels, and filter gradients up to 20 times slower:
for a 3x3 64->64 convolution on 112x112 maps at batch 8, forward 123 ms with YNNPACK against 66 ms with Eigen (PyTorch
85-98 ms), filter gradient 1832 ms against 94 ms (PyTorch 103 ms). So, unless the user's `XLA_FLAGS` already choose,
importing jaxface appends `--xla_cpu_experimental_ynn_fusion_type=` (no YNNPACK fusions) to `XLA_FLAGS`.

XLA reads `XLA_FLAGS` once, when the first backend starts, and aborts on a flag it does not know. So the flag is added
only while no backend has started and only for the jaxlib versions checked to have it; set `JAXFACE_XLA_DEFAULTS=0` to
leave `XLA_FLAGS` alone. :func:`eigen_convolutions` tells `jaxface.ops.conv` which filter gradient is the faster one.
"""
from __future__ import annotations

import os
import re
import sys

YNN_OFF = '--xla_cpu_experimental_ynn_fusion_type='
# jaxlib releases whose XLA has the flag: 0.10.2 measured here, 0.12.0.1's library checked for the flag's name, 0.11
# assumed from the two ends.
_CHECKED_JAXLIB = ((0, 10), (0, 12))

_state = {'eigen': None}


def _jaxlib_version() -> tuple[int, int] | None:
  try:
    from importlib import metadata  # pylint: disable=import-outside-toplevel
    major, minor = re.match(r'(\d+)\.(\d+)', metadata.version('jaxlib')).groups()
    return int(major), int(minor)
  except Exception:  # pylint: disable=broad-except
    return None


def _backends_started() -> bool:
  if 'jax' not in sys.modules:
    return False
  try:
    from jax._src import xla_bridge  # pylint: disable=import-outside-toplevel
    return bool(xla_bridge.backends_are_initialized())
  except Exception:  # pylint: disable=broad-except
    return True  # cannot tell: do not touch XLA_FLAGS


def _ynn_off_in(flags: str) -> bool:
  match = re.search(r'--xla_cpu_experimental_ynn_fusion_type=(\S*)', flags)
  return match is not None and 'CONVOLUTION' not in match.group(1)


def configure() -> bool:
  """Adds the Eigen-convolution flag to XLA_FLAGS when that is safe; returns whether convolutions run on Eigen."""
  flags = os.environ.get('XLA_FLAGS', '')
  if 'xla_cpu_experimental_ynn_fusion_type' in flags or os.environ.get('JAXFACE_XLA_DEFAULTS', '1') == '0':
    _state['eigen'] = _ynn_off_in(flags)  # the user chose
  elif _backends_started():
    _state['eigen'] = False  # too late to change; YNNPACK is jaxlib's default
  else:
    version = _jaxlib_version()
    if version is not None and _CHECKED_JAXLIB[0] <= version <= _CHECKED_JAXLIB[1]:
      os.environ['XLA_FLAGS'] = f'{flags} {YNN_OFF}'.strip()
      _state['eigen'] = True
    else:
      _state['eigen'] = False
  return _state['eigen']


def eigen_convolutions() -> bool:
  """Whether this process's XLA:CPU runs convolutions with Eigen (set at import of jaxface)."""
  if _state['eigen'] is None:
    configure()
  return bool(_state['eigen'])
