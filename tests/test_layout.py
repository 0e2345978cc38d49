"""The package's shape: an import graph that points one way, light modules that stay light, modules of a readable size.

These read the source (ast) or import in a fresh interpreter; nothing here trains or aligns.
"""
from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / 'jaxface'
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
# The synthetic face renderer paints a face in one readable top-to-bottom pass; splitting it would scatter one picture.
LONG_FUNCTION_ALLOWED = {('data/render.py', 'render_faces')}


def _modules() -> list[pathlib.Path]:
  return sorted(PACKAGE.rglob('*.py'))


def _imports(path: pathlib.Path) -> set[str]:
  """Every jaxface module a file imports, at any depth (function-level imports count too)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      found.add(node.module)
      found.update(f'{node.module}.{alias.name}' for alias in node.names)
  return {name for name in found if name.startswith('jaxface')}


@pytest.mark.parametrize('layer', ['data', 'align'])
def test_data_and_align_never_import_training_or_evaluation(layer):
  upward = ('jaxface.train', 'jaxface.evaluate')
  offenders = {str(path.relative_to(PACKAGE)): sorted(name for name in _imports(path) if name.startswith(upward))
               for path in (PACKAGE / layer).rglob('*.py')}
  assert not {path: names for path, names in offenders.items() if names}


def test_the_light_modules_import_neither_tensorflow_nor_torch():
  light = ['jaxface', 'jaxface.config', 'jaxface.models.face_model', 'jaxface.models.mobilefacenet', 'jaxface.losses',
           'jaxface.scoring', 'jaxface.metrics', 'jaxface.inference', 'jaxface.verify', 'jaxface.data.challenge']
  code = ('import importlib, sys\n'
          f'for name in {light!r}: importlib.import_module(name)\n'
          "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'torch', 'onnxruntime'})\n"
          'print(heavy)\n')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True, timeout=300)
  assert out.stdout.strip() == '[]', out.stdout + out.stderr


def test_configs_load_without_tensorflow():
  code = ('import sys\nfrom jaxface import config\n'
          "for name in ('default', 'realfaces_mbf', 'kryptonite_ir101', 'baseline_siamese'):\n"
          "  config.load_config(f'configs/{name}.py')\n"
          "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'torch'}))\n")
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True, timeout=300,
                       cwd=PACKAGE.parent)
  assert out.stdout.strip() == '[]', out.stdout + out.stderr


def test_no_module_or_function_is_too_long():
  too_long = []
  for path in _modules():
    source = path.read_text()
    name = str(path.relative_to(PACKAGE))
    if len(source.splitlines()) > MAX_MODULE_LINES:
      too_long.append(f'{name}: {len(source.splitlines())} lines')
    for node in ast.walk(ast.parse(source)):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        length = node.end_lineno - node.lineno + 1
        if length > MAX_FUNCTION_LINES and (name, node.name) not in LONG_FUNCTION_ALLOWED:
          too_long.append(f'{name}:{node.lineno} {node.name}(): {length} lines')
  assert not too_long, too_long
