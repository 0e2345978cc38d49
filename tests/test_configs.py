"""Every config carries its facts: the command that runs it, how to make any path it reads, a CPU smoke size
(`PATH:runlocal`) that needs nothing a user lacks; and the configs never run at full size train at that size."""
from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

from jaxface import config as config_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted(path.stem for path in (REPO / 'configs').glob('*.py') if path.stem != '__init__')


def _strings(config, prefix: str = '') -> dict[str, str]:
  """Every string field of a ConfigDict, by dotted name."""
  found = {}
  for key, value in config.items():
    if hasattr(value, 'items'):
      found.update(_strings(value, f'{prefix}{key}.'))
    elif isinstance(value, str):
      found[f'{prefix}{key}'] = value
  return found


@pytest.mark.parametrize('name', CONFIGS)
def test_each_config_names_its_command_and_how_to_make_every_path_it_reads(name):
  path = REPO / 'configs' / f'{name}.py'
  doc = ' '.join(path.read_text().split('"""')[1].split())  # the docstring, whitespace folded
  command = 'python -m jaxface.train' + ('' if name == 'default' else f' --config configs/{name}.py')
  assert command in doc, f'{path}: its docstring gives no `{command}` line'
  config = config_lib.load_config(path)
  for field, value in _strings(config).items():
    if value.startswith('runs/'):  # a path made by an earlier command: the docstring must give that command
      assert re.search(rf'--out {re.escape(value)}\b', doc), f'{path}: {field}={value} but no command writes it'


@pytest.mark.parametrize('name', CONFIGS)
def test_runlocal_shrinks_any_config_to_synthetic_data_and_keeps_what_makes_it_that_config(name):
  full = config_lib.load_config(REPO / 'configs' / f'{name}.py')
  small = config_lib.load_config(f'{REPO / "configs" / name}.py:runlocal')
  assert small.data.source == 'synthetic' and small.init_from == '' and small.data.tfds_dir == ''
  assert not [value for value in _strings(small).values() if value.startswith('runs/')]
  assert small.num_steps <= 8 and small.batch_size <= 32 and small.model.width <= 0.125
  for field in ('fake_head', 'dtype', 'embedding_dim', 'space_to_depth', 'input_size', 'input_norm'):
    assert small.model.get(field) == full.model.get(field), field
  # The backbone family stays; deep IR nets come down to IR-18 (their train step takes too long to compile on a CPU).
  assert small.model.arch == ('ir_18' if full.model.arch.startswith('ir_') else full.model.arch)
  assert small.loss.to_dict() == full.loss.to_dict() and small.optim.to_dict() == full.optim.to_dict()
  assert small.flip_tta == full.flip_tta


def test_a_config_without_a_runlocal_argument_is_refused_in_one_line(tmp_path):
  path = tmp_path / 'old.py'
  path.write_text('import ml_collections\n\ndef get_config():\n  return ml_collections.ConfigDict({"a": 1})\n')
  assert config_lib.load_config(path).a == 1
  with pytest.raises(config_lib.ConfigError, match='takes no runlocal argument') as info:
    config_lib.load_config(f'{path}:runlocal')
  assert '\n' not in str(info.value)


def test_every_config_loads_without_tensorflow_or_torch():
  code = ('import sys\nfrom jaxface import config\n'
          f'for name in {CONFIGS!r}:\n'
          "  config.load_config(f'configs/{name}.py')\n"
          "  config.load_config(f'configs/{name}.py:runlocal')\n"
          "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'torch'}))\n")
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True, timeout=300, cwd=REPO)
  assert out.stdout.strip() == '[]', out.stdout + out.stderr


@pytest.mark.slow
@pytest.mark.parametrize('name', ['kryptonite_ir101', 'kryptonite_ir50'])
def test_the_configs_never_run_at_full_size_train_at_runlocal_size(name, tmp_path, tmp_path_factory):
  """The kryptonite configs have never run (no GPUs, data or weights here). Their smoke size trains end to end: the
  backbone family, dtype, heads, losses and optimiser of the config, 4 steps, one validation. The two are the same
  program at runlocal (IR-18), so the second compiles from the first's cache: 180 s and 97 s wall at load 9-12,
  2026-12-08. (realfaces_mbf ran at full size, docs/results.md; its smoke took 325 s here, more than CI can spare.)"""
  cache = tmp_path_factory.getbasetemp() / 'runlocal_cache'
  env = dict(os.environ, JAXFACE_CACHE=str(cache), JAX_COMPILATION_CACHE_DIR=str(cache / 'jax-compile-cache'))
  result = subprocess.run([sys.executable, '-m', 'jaxface.train', '--config', f'configs/{name}.py:runlocal',
                           '--workdir', str(tmp_path / 'w'), '--config.num_steps=4', '--config.batch_size=8',
                           '--config.eval_batch_size=16'], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=900)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  eer = float(re.search(r'validation EER \(fused with the fake head\): ([0-9.]+)', result.stdout).group(1))
  assert 0.0 <= eer <= 1.0
  saved = config_lib.load_config(f'{REPO / "configs" / name}.py:runlocal')
  recorded = (tmp_path / 'w' / 'config.json').read_text()
  assert f'"arch": "{saved.model.arch}"' in recorded and f'"dtype": "{saved.model.dtype}"' in recorded
