"""The kernel-level stages of scripts/bench.py (conv, ops, xla) and the timing helpers every stage uses.

Run through scripts/bench.py (`--stage conv|ops|xla`); see its docstring and BENCHMARKS.md.
"""
from __future__ import annotations

import functools
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Callable


def median_time(fn: Callable[[], Any], repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def alternate(runners: dict[str, Callable[[], Any]], repeats: int,
              all_times: dict[str, list[float]] | None = None) -> dict[str, float]:
  """Median seconds per call of each runner, the runners taking turns so that background load hits them alike.

  Every timed call's seconds are appended to `all_times[name]` when it is given.
  """
  times = {name: [] for name in runners}
  for _ in range(repeats):
    for name, run in runners.items():
      start = time.perf_counter()
      run()
      times[name].append(time.perf_counter() - start)
  if all_times is not None:
    for name, ts in times.items():
      all_times.setdefault(name, []).extend(ts)
  return {name: statistics.median(ts) for name, ts in times.items()}


def peak_rss_mb() -> float:
  """This process's peak resident memory in MB: VmHWM on Linux (the high-water mark of this program's own memory
  map; ru_maxrss would also carry a parent's peak across fork + exec), ru_maxrss elsewhere."""
  try:
    for line in pathlib.Path('/proc/self/status').read_text().splitlines():
      if line.startswith('VmHWM:'):
        return int(line.split()[1]) / 1024  # kB
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def setup_threads(device: str) -> dict[str, Any]:
  import torch  # pylint: disable=import-outside-toplevel
  cores = os.cpu_count() or 1
  torch.set_num_threads(cores)
  return {'cpu_count': cores, 'torch_threads': torch.get_num_threads(), 'device': device}


def jax_device(device: str):
  import jax  # pylint: disable=import-outside-toplevel
  return jax.devices('cpu' if device == 'cpu' else None)[0]


def torch_device(device: str) -> str:
  return 'cpu' if device == 'cpu' else 'cuda'


def sync_torch(device: str) -> None:
  import torch  # pylint: disable=import-outside-toplevel
  if device != 'cpu':
    torch.cuda.synchronize()


# ----------------------------------------------------------------------------------------------------------------------
# conv: one convolution, forward and both gradients, per IR-18 shape.
# ----------------------------------------------------------------------------------------------------------------------

# (input side, in channels, out channels, kernel, stride, how many times IR-18 has it) at 112x112 input.
IR18_CONVS = [
    (112, 3, 64, 3, 1, 1), (112, 64, 64, 3, 1, 1), (112, 64, 64, 3, 2, 1), (56, 64, 64, 3, 1, 2),
    (56, 64, 128, 3, 1, 1), (56, 128, 128, 3, 2, 1), (56, 64, 128, 1, 2, 1), (28, 128, 128, 3, 1, 2),
    (28, 128, 256, 3, 1, 1), (28, 256, 256, 3, 2, 1), (28, 128, 256, 1, 2, 1), (14, 256, 256, 3, 1, 2),
    (14, 256, 512, 3, 1, 1), (14, 512, 512, 3, 2, 1), (14, 256, 512, 1, 2, 1), (7, 512, 512, 3, 1, 2),
]


def stage_conv(args) -> dict[str, Any]:
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  from jaxface.ops import conv  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(0)
  rows = []
  shapes = IR18_CONVS if not args.conv_shapes else [IR18_CONVS[int(i)] for i in args.conv_shapes.split(',')]
  for side, cin, cout, k, stride, count in shapes:
    pad = (k - 1) // 2
    x = jnp.asarray(rng.standard_normal((args.batch, side, side, cin)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((k, k, cin, cout)) * 0.05, jnp.float32)
    out_side = (side + 2 * pad - k) // stride + 1
    dy = jnp.asarray(rng.standard_normal((args.batch, out_side, out_side, cout)), jnp.float32)

    def jax_fns(fn):
      fwd = jax.jit(lambda x_, w_: fn(x_, w_, stride, (pad, pad)))
      dx = jax.jit(lambda x_, w_, dy_: jax.vjp(lambda a: fn(a, w_, stride, (pad, pad)), x_)[1](dy_)[0])
      dw = jax.jit(lambda x_, w_, dy_: jax.vjp(lambda b: fn(x_, b, stride, (pad, pad)), w_)[1](dy_)[0])
      return fwd, dx, dw

    runs = {}
    for name, fn in (('lax', conv.conv2d_lax), ('jaxface', conv.conv2d)):
      fwd, dx, dw = jax_fns(fn)
      runs[f'{name}_fwd'] = functools.partial(lambda f: f(x, w).block_until_ready(), fwd)
      runs[f'{name}_dx'] = functools.partial(lambda f: f(x, w, dy).block_until_ready(), dx)
      runs[f'{name}_dw'] = functools.partial(lambda f: f(x, w, dy).block_until_ready(), dw)
    xt = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())
    wt = torch.from_numpy(np.asarray(w).transpose(3, 2, 0, 1).copy())
    dyt = torch.from_numpy(np.asarray(dy).transpose(0, 3, 1, 2).copy())
    runs['torch_fwd'] = lambda: torch.nn.functional.conv2d(xt, wt, stride=stride, padding=pad)
    runs['torch_dx'] = lambda: torch.nn.grad.conv2d_input(xt.shape, wt, dyt, stride=stride, padding=pad)
    runs['torch_dw'] = lambda: torch.nn.grad.conv2d_weight(xt, wt.shape, dyt, stride=stride, padding=pad)
    with torch.no_grad():
      for run in runs.values():
        run()  # compile / warm up
      times = alternate(runs, args.repeats)
    row = {'shape': f'{side}x{side} {cin}->{cout} k{k} s{stride}', 'count': count,
           **{key: round(value * 1000, 2) for key, value in times.items()}}
    rows.append(row)
    print(f"{row['shape']:28s} x{count}  fwd lax {row['lax_fwd']:7.1f} jaxface {row['jaxface_fwd']:7.1f} torch "
          f"{row['torch_fwd']:7.1f} | dx lax {row['lax_dx']:7.1f} jaxface {row['jaxface_dx']:7.1f} torch "
          f"{row['torch_dx']:7.1f} | dW lax {row['lax_dw']:8.1f} jaxface {row['jaxface_dw']:7.1f} torch "
          f"{row['torch_dw']:7.1f} ms", flush=True)
  totals = {}
  for key in rows[0]:
    if key not in ('shape', 'count'):
      totals[key] = round(sum(r[key] * r['count'] for r in rows), 1)
  print('IR-18 total (ms, weighted by count): ' + ', '.join(f'{k} {v}' for k, v in totals.items()))
  return {'batch': args.batch, 'unit': 'ms per call (median)', 'rows': rows, 'ir18_totals_ms': totals}


# ----------------------------------------------------------------------------------------------------------------------
# ops: MobileFaceNet's CPU weak spots, depthwise convolutions and BatchNorm, against XLA's / Flax's own and PyTorch.
# ----------------------------------------------------------------------------------------------------------------------

# (side, channels, stride) of MobileFaceNet's depthwise 3x3 convs at 112x112 input, and how many it has.
MOBILEFACENET_DEPTHWISE = [(56, 64, 1, 1), (56, 128, 2, 1), (28, 128, 1, 4), (28, 256, 2, 1), (14, 256, 1, 6),
                           (14, 512, 2, 1), (7, 256, 1, 2)]


def _timed_row(op: str, count: int, runs: dict[str, Callable[[], Any]], repeats: int) -> dict[str, Any]:
  """Warms every runner up (compiles), times them in alternation: {'op', 'count', runner: ms (median)}."""
  for run in runs.values():
    run()
  return {'op': op, 'count': count, **{key: round(v * 1000, 2) for key, v in alternate(runs, repeats).items()}}


def stage_ops(args) -> dict[str, Any]:
  import flax.linen as fnn  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  from jaxface.models.layers import BatchNorm  # pylint: disable=import-outside-toplevel
  from jaxface.ops import depthwise  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(0)
  rows = []
  for side, channels, stride, count in MOBILEFACENET_DEPTHWISE:
    x = jnp.asarray(rng.standard_normal((args.batch, side, side, channels)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((3, 3, 1, channels)) * 0.3, jnp.float32)
    runs = {}
    for name, fn in (('lax', depthwise.depthwise_conv2d_lax), ('jaxface', depthwise.depthwise_conv2d)):
      fwd = jax.jit(lambda x_, k_, fn=fn: fn(x_, k_, stride, 1))
      grad = jax.jit(jax.grad(lambda x_, k_, fn=fn: jnp.sum(fn(x_, k_, stride, 1) ** 2), argnums=(0, 1)))
      runs[f'{name}_fwd'] = functools.partial(lambda f: jax.block_until_ready(f(x, k)), fwd)
      runs[f'{name}_grad'] = functools.partial(lambda f: jax.block_until_ready(f(x, k)), grad)
    xt = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy()).requires_grad_(True)
    kt = torch.from_numpy(np.asarray(k).transpose(3, 2, 0, 1).copy()).requires_grad_(True)
    conv = lambda: torch.nn.functional.conv2d(xt, kt, stride=stride, padding=1, groups=channels)

    def torch_grad():
      (conv() ** 2).sum().backward()
    runs['torch_fwd'] = lambda: conv().detach()
    runs['torch_grad'] = torch_grad
    rows.append(_timed_row(f'depthwise 3x3 {side}x{side}x{channels} s{stride}', count, runs, args.repeats))
  for side, channels in ((56, 64), (28, 128), (14, 256), (7, 512)):
    x = jnp.asarray(rng.standard_normal((args.batch, side, side, channels)), jnp.float32)
    runs = {}
    for name, module in (('lax', fnn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)),
                         ('jaxface', BatchNorm(use_running_average=False))):
      variables = module.init(jax.random.key(0), x)
      apply = lambda p, x_, m=module, v=variables: m.apply({'params': p, 'batch_stats': v['batch_stats']}, x_,
                                                           mutable=['batch_stats'])[0]
      fwd = jax.jit(apply)
      grad = jax.jit(jax.grad(lambda p, x_, f=apply: jnp.sum(f(p, x_) ** 2), argnums=(0, 1)))
      runs[f'{name}_fwd'] = functools.partial(lambda f, p: jax.block_until_ready(f(p, x)), fwd, variables['params'])
      runs[f'{name}_grad'] = functools.partial(lambda f, p: jax.block_until_ready(f(p, x)), grad, variables['params'])
    bn = torch.nn.BatchNorm2d(channels).train()
    xt = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy()).requires_grad_(True)

    def torch_bn_grad():
      (bn(xt) ** 2).sum().backward()
    runs['torch_fwd'] = lambda: bn(xt).detach()
    runs['torch_grad'] = torch_bn_grad
    rows.append(_timed_row(f'batchnorm {side}x{side}x{channels}', 1, runs, args.repeats))
  for row in rows:
    print(f"{row['op']:34s} x{row['count']}  fwd lax/flax {row['lax_fwd']:8.1f} jaxface {row['jaxface_fwd']:7.1f} "
          f"torch {row['torch_fwd']:7.1f} | grad lax/flax {row['lax_grad']:8.1f} jaxface {row['jaxface_grad']:7.1f} "
          f"torch {row['torch_grad']:7.1f} ms", flush=True)
  return {'batch': args.batch, 'unit': 'ms per call (median)', 'rows': rows}


# ----------------------------------------------------------------------------------------------------------------------
# xla: one convolution's forward and plain-lax gradients, and the filter-gradient matrix product, under XLA_FLAGS.
# ----------------------------------------------------------------------------------------------------------------------

# XLA:CPU library switches tried by default: jaxlib's default (YNNPACK convolutions), YNNPACK fusions off, oneDNN.
XLA_FLAG_SETS = ('', '--xla_cpu_experimental_ynn_fusion_type=', '--xla_cpu_experimental_onednn_custom_call=true')


def stage_xla(args) -> dict[str, Any]:
  """Runs `xla_probe` once per XLA_FLAGS set, each in a fresh interpreter that does not import jaxface (whose
  `xla_cpu` flag would change them), so the flags are exactly the ones named. Milliseconds per op."""
  rows = []
  for flags in args.xla_flags or XLA_FLAG_SETS:
    env = {**os.environ, 'XLA_FLAGS': flags, 'JAX_PLATFORMS': 'cpu'}
    code = (f'import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); import bench_kernels; '
            f'bench_kernels.xla_probe({args.batch}, {args.repeats})')
    out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
      rows.append({'xla_flags': flags, 'error': out.stderr.strip().splitlines()[-1:]})
      continue
    rows.append({'xla_flags': flags, **json.loads(out.stdout.strip().splitlines()[-1])})
    print(json.dumps(rows[-1]))
  return {'rows': rows, 'batch': args.batch}


def xla_probe(batch: int, repeats: int) -> None:
  """Prints one JSON line of milliseconds: a (B*112*112, 64) filter-gradient product, a 3x3 64->64 convolution at
  112x112 (forward, input and filter gradients), a 3x3 128->128 at 56x56 forward. Median of `repeats` after warm-up."""
  import jax  # pylint: disable=import-outside-toplevel
  from jax import lax  # pylint: disable=import-outside-toplevel

  def timed(fn, *inputs) -> float:
    jax.block_until_ready(fn(*inputs))
    return round(1000 * median_time(lambda: jax.block_until_ready(fn(*inputs)), repeats), 1)

  def conv(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  key = jax.random.PRNGKey(0)
  out = {}
  a = jax.random.normal(key, (batch * 112 * 112, 64))
  out['dot'] = timed(jax.jit(lambda p, q: p.T @ q), a, a)
  x = jax.random.normal(key, (batch, 112, 112, 64))
  w = jax.random.normal(key, (3, 3, 64, 64)) * 0.05
  y = conv(x, w)
  out['fwd'] = timed(jax.jit(conv), x, w)
  out['dx'] = timed(jax.jit(lambda x, w, g: jax.vjp(conv, x, w)[1](g)[0]), x, w, y)
  out['dW'] = timed(jax.jit(lambda x, w, g: jax.vjp(conv, x, w)[1](g)[1]), x, w, y)
  x2 = jax.random.normal(key, (batch, 56, 56, 128))
  w2 = jax.random.normal(key, (3, 3, 128, 128)) * 0.05
  out['fwd56_128'] = timed(jax.jit(conv), x2, w2)
  print(json.dumps(out))
