r"""Times one convolution's forward and plain-lax gradients, and the filter-gradient matrix product, under XLA_FLAGS.

  for f in "" --xla_cpu_experimental_ynn_fusion_type= --xla_cpu_experimental_onednn_custom_call=true; do
    XLA_FLAGS="$f" python scripts/xla_flags_probe.py --batch 8; done

One JSON line per run (milliseconds, median of --repeats after one warm-up call). Used to check whether XLA:CPU's
library back ends (oneDNN, YNNPACK, XNNPACK) speed up the shapes where jaxface trails PyTorch (BENCHMARKS.md). It does
not import jaxface, so XLA_FLAGS are exactly what the command gives (jaxlib's default runs convolutions on YNNPACK).
"""
import argparse
import json
import os
import time

import jax
from jax import lax

from bench import median_time  # scripts/ is on sys.path when this script runs


def timed(fn, *args, repeats: int) -> float:
  """Milliseconds, median of `repeats` calls after one warm-up call."""
  jax.block_until_ready(fn(*args))
  return 1000 * median_time(lambda: jax.block_until_ready(fn(*args)), repeats)


def conv(x, w):
  return lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args()
  key = jax.random.PRNGKey(0)
  b, r = args.batch, args.repeats
  out = {}
  a = jax.random.normal(key, (b * 112 * 112, 64))
  out['dot'] = timed(jax.jit(lambda p, q: p.T @ q), a, a, repeats=r)
  x = jax.random.normal(key, (b, 112, 112, 64))
  w = jax.random.normal(key, (3, 3, 64, 64)) * 0.05
  y = conv(x, w)
  out['fwd'] = timed(jax.jit(conv), x, w, repeats=r)
  out['dx'] = timed(jax.jit(lambda x, w, g: jax.vjp(conv, x, w)[1](g)[0]), x, w, y, repeats=r)
  out['dW'] = timed(jax.jit(lambda x, w, g: jax.vjp(conv, x, w)[1](g)[1]), x, w, y, repeats=r)
  x2 = jax.random.normal(key, (b, 56, 56, 128))
  w2 = jax.random.normal(key, (3, 3, 128, 128)) * 0.05
  out['fwd56_128'] = timed(jax.jit(conv), x2, w2, repeats=r)
  print(json.dumps({'xla_flags': os.environ.get('XLA_FLAGS', ''), **{k: round(v, 1) for k, v in out.items()}}))


if __name__ == '__main__':
  main()
