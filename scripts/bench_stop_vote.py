r"""What the SIGTERM agreement of multi-process training costs per step (jaxface.distributed.with_stop_vote).

  python scripts/bench_stop_vote.py [--processes 2] [--steps 30] [--arch small_cnn --width 0.25 --batch 32]

Starts N processes x 1 CPU device on localhost (jax.distributed, gloo collectives) and times, in alternating rounds,
the tiny model's pmapped train step without and with the vote (one extra scalar all-reduce inside the step), each step
read back to the host as the training loop does; then the vote alone as its own pmapped program (what a separate
all-reduce after every step would cost). Prints per-step medians from process 0.
"""
from __future__ import annotations

import argparse
import functools
import os
import pathlib
import socket
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]


def _worker(args) -> None:
  import jax
  jax.distributed.initialize(coordinator_address=f'localhost:{args.port}', num_processes=args.processes,
                             process_id=args.worker)
  import numpy as np
  from jaxface import config as config_lib, distributed, optim, train
  from jaxface.models.face_model import build_model
  from jaxface.models.heads import AdaFaceHead

  config = config_lib.load_config(str(REPO / 'configs' / 'default.py'),
                                  [f'--config.model.arch={args.arch}', f'--config.model.width={args.width}'])
  model, head = build_model(config.model), AdaFaceHead(num_classes=10)
  lr_fn = optim.learning_rate_schedule(config, 10, 100)
  tx = optim.make_optimizer(config, lr_fn)
  state = train.create_train_state(model, head, tx, config, jax.random.PRNGKey(0))
  rng = np.random.default_rng(args.worker)
  b, s = args.batch // args.processes, config.model.input_size
  batch = {'image': rng.uniform(-1, 1, (1, b, s, s, 3)).astype(np.float32),
           'label': rng.integers(0, 10, (1, b)).astype(np.int32), 'is_fake': (np.arange(b) % 4 == 0)[None].astype(
               np.int32)}
  batch['id_mask'] = (1 - batch['is_fake']).astype(np.float32)
  step = functools.partial(train.train_step, model=model, head=head, tx=tx, config=config, lr_fn=lr_fn)
  plain = jax.pmap(step, axis_name='batch')
  voted = jax.pmap(distributed.with_stop_vote(step), axis_name='batch')
  vote_only = jax.pmap(lambda f: jax.lax.psum(f, 'batch'), axis_name='batch')
  rstate = jax.tree.map(lambda x: np.asarray(x)[None], state)
  flags = distributed.stop_flags(False, 1)

  def run_plain():
    out, _ = plain(rstate, batch)
    jax.block_until_ready(out)

  def run_voted():
    out, _, votes = voted(rstate, batch, flags)
    jax.block_until_ready(out)
    distributed.should_stop(False, votes, 0)

  def run_vote_only():
    distributed.should_stop(False, vote_only(flags), 0)

  times = {'plain': [], 'voted': [], 'vote_only': []}
  for fn in (run_plain, run_voted, run_vote_only):
    fn()  # compile
  for _ in range(args.steps):
    for name, fn in (('plain', run_plain), ('voted', run_voted), ('vote_only', run_vote_only)):
      t = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t)
  if args.worker == 0:
    med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
    print(f'{args.processes} processes x 1 CPU device, {args.arch} width {args.width}, global batch {args.batch}, '
          f'{args.steps} alternating rounds (medians): step {med["plain"]:.1f} ms, step with the vote '
          f'{med["voted"]:.1f} ms (difference {med["voted"] - med["plain"]:+.1f} ms), the vote as its own program '
          f'{med["vote_only"]:.2f} ms', flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--processes', type=int, default=2)
  parser.add_argument('--steps', type=int, default=30)
  parser.add_argument('--arch', default='small_cnn')
  parser.add_argument('--width', type=float, default=0.25)
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--worker', type=int, default=None, help=argparse.SUPPRESS)
  parser.add_argument('--port', type=int, default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker is not None:
    _worker(args)
    return
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = s.getsockname()[1]
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=1',
         'PYTHONPATH': str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', '')}
  procs = [subprocess.Popen([sys.executable, __file__, *sys.argv[1:], '--worker', str(i), '--port', str(port)],
                            env=env) for i in range(args.processes)]
  sys.exit(max(p.wait() for p in procs))


if __name__ == '__main__':
  main()
