"""Imports a file of scripts/ as a module, for the tests of the command-line scripts (scripts/ is no package)."""
from __future__ import annotations

import importlib.util
import pathlib
import sys
from types import ModuleType

SCRIPTS = pathlib.Path(__file__).resolve().parents[1] / 'scripts'


def load_script(name: str, module_name: str | None = None) -> ModuleType:
  """Executes scripts/<name>.py as the module `module_name` (default `name`), registered in sys.modules, where
  dataclasses look their module up."""
  spec = importlib.util.spec_from_file_location(module_name or name, SCRIPTS / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module
  spec.loader.exec_module(module)
  return module
