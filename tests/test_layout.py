"""The package's shape: an import graph that points one way without cycles, light modules that stay light, modules of a
readable size, nothing borrowed from research/.

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


def _module_name(path: pathlib.Path) -> str:
  name = '.'.join(path.relative_to(PACKAGE.parent).with_suffix('').parts)
  return name.removesuffix('.__init__')


def _imports(path: pathlib.Path, prefix: str = 'jaxface') -> set[str]:
  """Every module under `prefix` a file imports, at any depth (function-level imports count too)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      found.add(node.module)
      found.update(f'{node.module}.{alias.name}' for alias in node.names)
  return {name for name in found if name == prefix or name.startswith(prefix + '.')}


def _graph() -> dict[str, set[str]]:
  """jaxface module -> the jaxface modules it imports (imported names that are not modules are dropped)."""
  modules = {_module_name(path): path for path in _modules()}
  return {name: (_imports(path) & set(modules)) - {name} for name, path in modules.items()}


# What each layer must never import: the arrows of the data flow point one way (photos -> aligned faces -> TFRecords
# -> batches -> model -> scores), and the label cleaner, which runs a model, sits above inference.
FORBIDDEN = {
    'jaxface.data': ('jaxface.models', 'jaxface.inference', 'jaxface.verify', 'jaxface.train', 'jaxface.evaluate',
                     'jaxface.clean', 'jaxface.export', 'jaxface.serving', 'jaxface.checkpoints', 'jaxface.metrics'),
    'jaxface.align': ('jaxface.data', 'jaxface.models', 'jaxface.inference', 'jaxface.verify', 'jaxface.train',
                      'jaxface.evaluate', 'jaxface.clean'),
    'jaxface.metrics': ('jaxface.data', 'jaxface.align', 'jaxface.models', 'jaxface.inference'),
    'jaxface.scoring': ('jaxface.data', 'jaxface.align', 'jaxface.models', 'jaxface.metrics'),
    'jaxface.losses': ('jaxface.data', 'jaxface.align'),
    'jaxface.models': ('jaxface.data', 'jaxface.align', 'jaxface.inference', 'jaxface.train', 'jaxface.metrics'),
    'jaxface.pair_kinds': ('jaxface',),
}


def _is_under(name: str, prefix: str) -> bool:
  return name == prefix or name.startswith(prefix + '.')


def _upward(graph: dict[str, set[str]]) -> list[str]:
  return [f'{name} imports {target}' for name, imported in sorted(graph.items()) for target in sorted(imported)
          for layer, banned in FORBIDDEN.items()
          if _is_under(name, layer) and not _is_under(target, layer) and any(_is_under(target, b) for b in banned)]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components of more than one module (Tarjan)."""
  order: dict[str, int] = {}
  low: dict[str, int] = {}
  stack: list[str] = []
  found = []

  def visit(name: str) -> None:
    order[name] = low[name] = len(order)
    stack.append(name)
    for target in graph.get(name, ()):
      if target not in order:
        visit(target)
        low[name] = min(low[name], low[target])
      elif target in stack:
        low[name] = min(low[name], order[target])
    if low[name] == order[name]:
      component = []
      while component[-1:] != [name]:
        component.append(stack.pop())
      if len(component) > 1:
        found.append(sorted(component))

  for name in graph:
    if name not in order:
      visit(name)
  return found


def test_no_layer_imports_upward():
  assert not _upward(_graph())


def test_no_import_cycle():
  assert not _cycles(_graph())


def test_the_rules_catch_a_function_level_upward_import_and_a_lazy_cycle(tmp_path):
  """The checks read imports at any depth: a lazy `from jaxface.data import ...` inside a function counts."""
  module = tmp_path / 'upward.py'
  module.write_text('def f():\n  from jaxface.models import face_model\n  return face_model\n')
  assert 'jaxface.models.face_model' in _imports(module)
  assert _upward({'jaxface.data.pipeline': {'jaxface.models.face_model'}}) == [
      'jaxface.data.pipeline imports jaxface.models.face_model']
  both_ways = {'jaxface.align.stage': {'jaxface.data.challenge'}, 'jaxface.data.builder': {'jaxface.align.base'}}
  assert _upward(both_ways) == ['jaxface.align.stage imports jaxface.data.challenge']
  # The cycle the old layout had: prepared -> synthetic -> builder -> prepared (the first import inside a function).
  old = {'jaxface.data.prepared': {'jaxface.data.synthetic'}, 'jaxface.data.synthetic': {'jaxface.data.builder'},
         'jaxface.data.builder': {'jaxface.data.prepared'}}
  assert _cycles(old) == [['jaxface.data.builder', 'jaxface.data.prepared', 'jaxface.data.synthetic']]


def test_nothing_in_the_package_imports_research():
  research = {str(path.relative_to(PACKAGE)): sorted(_imports(path, 'research')) for path in _modules()}
  assert not {path: names for path, names in research.items() if names}


def test_the_light_modules_import_neither_tensorflow_nor_torch():
  light = ['jaxface', 'jaxface.config', 'jaxface.models.face_model', 'jaxface.models.mobilefacenet', 'jaxface.losses',
           'jaxface.scoring', 'jaxface.metrics', 'jaxface.inference', 'jaxface.verify', 'jaxface.data.challenge']
  code = ('import importlib, sys\n'
          f'for name in {light!r}: importlib.import_module(name)\n'
          "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'torch', 'onnxruntime'})\n"
          'print(heavy)\n')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True, timeout=300)
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


def test_every_installed_command_is_a_main_with_a_python_m_twin():
  """[project.scripts] names `module:main`; the same module runs with `python -m` (a package through __main__.py)."""
  import importlib  # pylint: disable=import-outside-toplevel
  import tomllib  # pylint: disable=import-outside-toplevel
  scripts = tomllib.loads((PACKAGE.parent / 'pyproject.toml').read_text())['project']['scripts']
  assert {'jaxface-train', 'jaxface-preprocess', 'jaxface-evaluate', 'jaxface-verify'} <= set(scripts)
  for command, target in scripts.items():
    module_name, _, function = target.partition(':')
    assert function == 'main', command
    path = PACKAGE.parent / (module_name.replace('.', '/') + '.py')
    runs_as_m = "if __name__ == '__main__':" in path.read_text() or (
        (path.parent / '__main__.py').is_file() and f'from {module_name} import main' in
        (path.parent / '__main__.py').read_text())
    assert runs_as_m, f'{command}: {module_name} does not run with python -m'
    assert callable(getattr(importlib.import_module(module_name), function)), command
