"""Run configs: Python files whose `get_config(runlocal=False)` returns an `ml_collections.ConfigDict`, with
`--config.a.b=v` overrides.

    config = jaxface.config.load_config('configs/realfaces_mbf.py', ['--config.batch_size=32'])
    config = jaxface.config.load_config('configs/kryptonite_ir101.py:runlocal')   # the same config, CPU smoke size

`:runlocal` (as in big_vision) calls `get_config(runlocal=True)`: every config shrinks itself to a run of a few steps on
synthetic data that a CPU finishes in a minute or two (`configs.default.runlocal`), keeping what makes it that config
(architecture, heads, losses, optimiser); overrides apply after it.

The one config loader of the project (training, the benchmarks and the comparison script use it). It imports only
ml_collections: loading a config never imports TensorFlow, torch or the data pipeline.
"""
from __future__ import annotations

import ast
import importlib.util
import pathlib
import sys
from typing import Any

import ml_collections

DEFAULT_CONFIG = pathlib.Path(__file__).resolve().parents[1] / 'configs' / 'default.py'


class ConfigError(ValueError):
  """A config file or override the user got wrong; the message is one line."""


RUNLOCAL = ':runlocal'


def split_runlocal(path: str | pathlib.Path) -> tuple[pathlib.Path, bool]:
  """'configs/x.py:runlocal' -> (configs/x.py, True); a plain path -> (path, False)."""
  text = str(path)
  return (pathlib.Path(text.removesuffix(RUNLOCAL)), True) if text.endswith(RUNLOCAL) else (pathlib.Path(text), False)


def load_config(path: str | pathlib.Path, overrides: list[str] = ()) -> ml_collections.ConfigDict:
  """Loads a config file (a Python file whose `get_config(runlocal=False)` returns a ConfigDict; `PATH:runlocal` asks
  for its CPU smoke size) and applies `--config.a.b=v`."""
  path, runlocal = split_runlocal(path)
  if not path.is_file():
    raise ConfigError(f'{path}: config file not found')
  # Variant configs import their base as `from configs import default`: the folder above configs/ must be importable.
  root = str(path.resolve().parent.parent)
  if root not in sys.path:
    sys.path.insert(0, root)
  spec = importlib.util.spec_from_file_location(f'jaxface_config_{path.stem}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, 'get_config'):
    raise ConfigError(f'{path}: a config file must define get_config() returning an ml_collections.ConfigDict')
  try:
    config = module.get_config(runlocal=True) if runlocal else module.get_config()
  except TypeError as error:
    if not runlocal or 'runlocal' not in str(error):
      raise
    raise ConfigError(f'{path}: its get_config() takes no runlocal argument (write get_config(runlocal=False) and '
                      'shrink the config when it is True, as configs/default.py does)') from None
  for override in overrides:
    apply_override(config, override, path)
  return config


def apply_override(config: ml_collections.ConfigDict, override: str, source: pathlib.Path | str = 'config') -> None:
  """Sets one `--config.a.b=value` (or `a.b=value`) on `config`, typed like the field it replaces."""
  text = override[2:] if override.startswith('--') else override
  if text.startswith('config.'):
    text = text[len('config.'):]
  if '=' not in text:
    raise ConfigError(f'{override}: overrides look like --config.field=value')
  name, raw = text.split('=', 1)
  *parents, leaf = name.split('.')
  node = config
  for part in parents:
    if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
      raise ConfigError(f'--config.{name}: {source} has no config field {name!r}')
    node = node[part]
  if leaf not in node:
    raise ConfigError(f'--config.{name}: {source} has no config field {name!r}')
  node[leaf] = _parse_value(raw, node[leaf], name)


def _parse_value(raw: str, current: Any, name: str) -> Any:
  if isinstance(current, bool):
    if raw.lower() in ('true', '1', 'yes'):
      return True
    if raw.lower() in ('false', '0', 'no'):
      return False
    raise ConfigError(f'--config.{name}={raw}: expected true or false')
  if isinstance(current, str):
    return raw
  try:
    value = ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    if current is None:
      return raw
    raise ConfigError(f'--config.{name}={raw}: expected a {type(current).__name__}') from None
  if isinstance(current, float) and isinstance(value, int):
    value = float(value)
  if current is not None and not isinstance(value, type(current)):
    raise ConfigError(f'--config.{name}={raw}: expected a {type(current).__name__}')
  return value
