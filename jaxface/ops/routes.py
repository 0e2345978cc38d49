"""Which implementation the ops with per-platform routes trace: chosen at lowering (the default), or the portable one.

`jaxface.ops.depthwise` and `jaxface.ops.batchnorm` pick their CPU routes with `lax.platform_dependent`, which stays in
the jaxpr as a `platform_index` primitive and a `cond` until XLA lowers it for one platform. Converters that read the
jaxpr itself (jax2onnx) cannot express that. Inside :func:`portable`, those ops trace their plain lax form instead
(a grouped convolution, a `jnp.sum`), the form GPU and TPU run and ONNX has a direct operator for:

    with jaxface.ops.routes.portable():
      onnx_model = jax2onnx.to_onnx(forward, ...)

The block is read when a function is traced, and `jax.jit` and `jax.make_jaxpr` cache traces per function: trace a
function object that was not traced outside the block (`jaxface.export` builds a fresh one per export). By default (no
block) nothing changes: CPU training and inference keep their fast routes.
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import jax

_STATE = threading.local()


@contextlib.contextmanager
def portable() -> Iterator[None]:
  """Traces the ops' portable lax form (no `platform_index`) inside the block; nests, per thread."""
  previous = getattr(_STATE, 'portable', False)
  _STATE.portable = True
  try:
    yield
  finally:
    _STATE.portable = previous


def is_portable() -> bool:
  """Whether the calling thread is inside :func:`portable`."""
  return getattr(_STATE, 'portable', False)


def platform_dependent(*args: Any, cpu: Callable[..., Any], default: Callable[..., Any]) -> Any:
  """`jax.lax.platform_dependent(*args, cpu=cpu, default=default)`, or `default(*args)` inside :func:`portable`."""
  if is_portable():
    return default(*args)
  return jax.lax.platform_dependent(*args, cpu=cpu, default=default)
