"""Shared pytest fixtures.

- `synthetic_data_dir`: a small synthetic dataset in the challenge layout, generated once per session (about a second);
  `synthetic_settings` gives the arguments it was made with. Read-only for tests: copy it (shutil.copytree) first.
- `realfaces_dev_dir`: the real development set (../shared/data/realfaces-dev, or $JAXFACE_REALFACES_DEV); skips the
  test with a clear reason when it is absent.
"""
from __future__ import annotations

import os
import pathlib
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# The command-line scripts (bench.py, rekey_align_cache.py, ...) are imported by name in their tests: scripts/ is no
# package, and a plain import beats loading files by path.
sys.path.insert(0, str(REPO_ROOT / 'scripts'))

# Two fake CPU devices for the in-process pmap tests. Set here, before any test module imports jax or jaxface: once
# `import jaxface` has put its own flag into XLA_FLAGS, a per-module `setdefault` would no longer apply.
if 'xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2".strip()

# What `synthetic_data_dir` holds: 12 people x 6 photos (11 fakes), 24 test pairs (6 of each kind), 112x112 JPEGs.
SYNTHETIC_SETTINGS = dict(people=12, photos_per_person=6, seed=0, fake_fraction=0.15, test_pairs=24, test_people=8,
                          size=112)


@pytest.fixture(scope='session')
def synthetic_settings() -> dict:
  """The arguments `synthetic_data_dir` was generated with (a copy: change it freely)."""
  return dict(SYNTHETIC_SETTINGS)


@pytest.fixture(scope='session')
def synthetic_data_dir(tmp_path_factory) -> pathlib.Path:
  """A small synthetic dataset (see SYNTHETIC_SETTINGS) with train/, test_public/, labels.csv, synthetic.json."""
  from jaxface.data import synthetic
  out = tmp_path_factory.mktemp('synthetic') / 'data'
  synthetic.generate(out, **SYNTHETIC_SETTINGS)
  return out


def realfaces_dev_path() -> pathlib.Path:
  return pathlib.Path(os.environ.get('JAXFACE_REALFACES_DEV', REPO_ROOT.parent / 'shared' / 'data' / 'realfaces-dev'))


@pytest.fixture(scope='session')
def realfaces_dev_dir() -> pathlib.Path:
  """The real development set; skips when it is not on this machine."""
  path = realfaces_dev_path()
  if not (path / 'train' / 'meta.json').is_file():
    pytest.skip(f'realfaces-dev not found at {path} (set JAXFACE_REALFACES_DEV to its folder to run this test)')
  return path
