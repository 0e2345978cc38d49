"""jaxface turns XLA:CPU's YNNPACK convolutions off when it may, and leaves XLA_FLAGS alone when it may not."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from jaxface import xla_cpu

_PROBE = '''
import json, os, sys
{before}
import jaxface
import jax, jax.numpy as jnp
from jaxface import xla_cpu
x, k = jnp.zeros((2, 16, 16, 8)), jnp.zeros((3, 3, 8, 8))
hlo = jax.jit(lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), 'SAME',
              dimension_numbers=('NHWC', 'HWIO', 'NHWC'))).lower(x, k).compile().as_text()
print(json.dumps({{'flags': os.environ.get('XLA_FLAGS', ''), 'eigen': xla_cpu.eigen_convolutions(),
                  'ynn': 'ynn' in hlo}}))
'''


def _probe(env_extra: dict[str, str], before: str = '') -> dict:
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'JAXFACE_XLA_DEFAULTS')}
  env.update(env_extra, JAX_PLATFORMS='cpu')
  out = subprocess.run([sys.executable, '-c', _PROBE.format(before=before)], env=env, capture_output=True, text=True,
                       timeout=300, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(xla_cpu._jaxlib_version() is None or not (
    xla_cpu._CHECKED_JAXLIB[0] <= xla_cpu._jaxlib_version() <= xla_cpu._CHECKED_JAXLIB[1]),
                    reason='jaxlib outside the versions checked to have the flag')
def test_import_turns_ynnpack_off_and_keeps_the_users_flags():
  result = _probe({'XLA_FLAGS': '--xla_force_host_platform_device_count=2'})
  assert result['flags'] == '--xla_force_host_platform_device_count=2 ' + xla_cpu.YNN_OFF
  assert result['eigen'] is True
  assert result['ynn'] is False  # the compiled convolution is XLA's own, not a YNNPACK fusion


@pytest.mark.slow  # three fresh interpreters, each compiling
def test_users_choice_and_late_import_are_respected():
  chosen = '--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION'
  result = _probe({'XLA_FLAGS': chosen})
  assert result['flags'] == chosen and result['eigen'] is False
  result = _probe({'JAXFACE_XLA_DEFAULTS': '0'})
  assert result['flags'] == '' and result['eigen'] is False
  # A backend that started before jaxface was imported cannot be changed: XLA_FLAGS stay as they were.
  result = _probe({}, before='import jax; jax.devices()')
  assert result['flags'] == '' and result['eigen'] is False


def test_ynn_off_parsing():
  assert xla_cpu._ynn_off_in('--a=1 --xla_cpu_experimental_ynn_fusion_type= --b=2')
  assert xla_cpu._ynn_off_in('--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT')
  assert not xla_cpu._ynn_off_in('--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION')
  assert not xla_cpu._ynn_off_in('--xla_force_host_platform_device_count=2')
