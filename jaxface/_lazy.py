"""Lazy package attributes: `import jaxface` (or `jaxface.align`) stays light, and a name loads its module on use."""
from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_getattr(package: str, names: dict[str, str]) -> Callable[[str], Any]:
  """A module `__getattr__` for `package` that imports `names[name]` on first use of `name` (PEP 562)."""

  def __getattr__(name: str) -> Any:  # pylint: disable=invalid-name
    if name in names:
      return getattr(importlib.import_module(names[name]), name)
    raise AttributeError(f'module {package!r} has no attribute {name!r}')

  return __getattr__
