"""Multi-process training on this machine: 2 processes x 1 CPU device (jax.distributed on localhost, gloo collectives)
train as 1 process x 2 devices does, resume after both are killed, and stop together on one process's SIGTERM."""
from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS = 10

# A tiny run: the CPU demo at its smoke size (configs/default.py `shrink`) with the small CNN (BatchNorm in every stage,
# synchronised over the pmap axis), AdaFace and the fake head; two data shards, so that the global batch is the same
# however the two devices are hosted.
ARGS = [
    '--config', str(REPO / 'configs' / 'default.py') + ':runlocal',
    '--config.model.arch=small_cnn',
    '--config.model.width=0.25',
    f'--config.num_steps={STEPS}',
    '--config.checkpoint_every=2',
    '--config.eval_every=1000',  # validation once, at the last step
    '--config.data.num_shards=2',
]


def _env(cache: pathlib.Path, devices: int, process: int | None = None, port: int | None = None) -> dict:
  env = dict(os.environ)
  env['JAXFACE_CACHE'] = str(cache)
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  env['PYTHONPATH'] = str(REPO) + os.pathsep + env.get('PYTHONPATH', '')
  env['JAX_COMPILATION_CACHE_DIR'] = str(cache / 'jax-compile-cache')
  for name in ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID'):
    env.pop(name, None)
  if process is not None:
    env.update(JAX_COORDINATOR_ADDRESS=f'localhost:{port}', JAX_NUM_PROCESSES='2', JAX_PROCESS_ID=str(process))
  return env


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


class _Job:
  """Two `python -m jaxface.train` processes of one jax.distributed job, each logging to its own file."""

  def __init__(self, workdir: pathlib.Path, cache: pathlib.Path, name: str):
    port = _free_port()
    self.logs = [workdir.parent / f'{name}.{i}.log' for i in range(2)]
    self.procs = []
    for i, log in enumerate(self.logs):
      with open(log, 'w') as out:
        self.procs.append(subprocess.Popen(
            [sys.executable, '-m', 'jaxface.train', '--workdir', str(workdir), *ARGS],
            env=_env(cache, 1, i, port), cwd=REPO, stdout=out, stderr=subprocess.STDOUT))

  def output(self, i: int) -> str:
    return self.logs[i].read_text()

  def wait(self, timeout: float) -> list[int]:
    deadline = time.time() + timeout
    try:
      return [p.wait(timeout=max(deadline - time.time(), 1)) for p in self.procs]
    except subprocess.TimeoutExpired:
      self.kill()
      raise AssertionError('the job hung:\n' + '\n'.join(self.output(i)[-2000:] for i in range(2))) from None

  def kill(self) -> None:
    for p in self.procs:
      if p.poll() is None:
        p.send_signal(signal.SIGKILL)
    for p in self.procs:
      p.wait()


def _steps(workdir: pathlib.Path) -> list[int]:
  ckpts = workdir / 'checkpoints'
  return sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit()) if ckpts.is_dir() else []


def _wait_for_checkpoint(job: _Job, workdir: pathlib.Path, after: int, timeout: float) -> int:
  deadline = time.time() + timeout
  while time.time() < deadline and all(p.poll() is None for p in job.procs):
    newer = [s for s in _steps(workdir) if s > after]
    if newer:
      return newer[0]
    time.sleep(0.1)
  job.kill()
  raise AssertionError(f'no checkpoint after step {after}:\n' + '\n'.join(job.output(i)[-2000:] for i in range(2)))


def _state(workdir: pathlib.Path, step: int) -> tuple[dict, int]:
  import orbax.checkpoint as ocp
  manager = ocp.CheckpointManager(workdir.absolute() / 'checkpoints')
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  manager.close()
  return {k: restored.state[k] for k in ('params', 'batch_stats', 'adaface', 'step')}, step


def _final_state(workdir: pathlib.Path) -> dict:
  assert max(_steps(workdir)) == STEPS, _steps(workdir)
  return _state(workdir, STEPS)[0]


def _validation(workdir: pathlib.Path) -> dict:
  lines = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  return [l for l in lines if 'val_eer_fused' in l][-1]


@pytest.mark.slow
def test_two_processes_train_like_two_devices_and_resume(tmp_path):
  """2 processes x 1 device end where 1 process x 2 devices ends (within 1e-5), after a SIGKILL of both processes
  and a SIGTERM of one of them; validation gathered over both processes gives the single process's figures."""
  import jax
  cache = tmp_path / 'cache'
  started = time.time()
  reference = tmp_path / 'one_process'
  result = subprocess.run([sys.executable, '-m', 'jaxface.train', '--workdir', str(reference), *ARGS],
                          env=_env(cache, 2), cwd=REPO, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'on 2 device(s)' in result.stderr
  t_reference = time.time() - started

  workdir = tmp_path / 'two_processes'
  job = _Job(workdir, cache, 'first')
  killed_at = _wait_for_checkpoint(job, workdir, 1, timeout=600)  # a periodic checkpoint (step 1 is saved too)
  job.kill()  # SIGKILL, both
  assert job.procs[0].returncode == -signal.SIGKILL and killed_at < STEPS
  killed_at = max(_steps(workdir))
  assert 'process 0 of 2: 1 local device(s) of 2' in job.output(0)

  job = _Job(workdir, cache, 'second')  # resumes; SIGTERM to process 1 only once it has trained a step of its own
  _wait_for_checkpoint(job, workdir, killed_at, timeout=600)
  job.procs[1].send_signal(signal.SIGTERM)
  codes = job.wait(timeout=300)
  assert f'Resuming from {workdir.absolute() / "checkpoints"} at step {killed_at}' in job.output(0)
  assert codes == [143, 143], (codes, job.output(0)[-2000:], job.output(1)[-2000:])
  saved = [int(re.search(r'SIGTERM: saved the checkpoint at step (\d+)', job.output(i)).group(1)) for i in range(2)]
  assert saved[0] == saved[1] and killed_at < saved[0] < STEPS and max(_steps(workdir)) == saved[0], saved

  job = _Job(workdir, cache, 'third')
  assert job.wait(timeout=600) == [0, 0], job.output(0)[-3000:]
  assert f'at step {saved[0]}' in job.output(0)
  quiet = job.output(1).split('process 1 of 2')
  assert len(quiet) == 2 and not re.search(r'\d\d:\d\d:\d\d INFO ', quiet[1])  # process 1: warnings, errors
  t_total = time.time() - started

  one, two = _final_state(reference), _final_state(workdir)
  deltas = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))),
                        one, two)
  worst = max(jax.tree.leaves(deltas))
  earlier, step = _state(reference, _steps(reference)[0])
  moved = max(jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
                                           one['params'], earlier['params'])))
  print(f'\nmax |state(1 process x 2 devices) - state(2 processes x 1 device)| = {worst:.2e} after {STEPS} steps '
        f'(largest parameter change from step {step} to {STEPS}: {moved:.2e}); killed at step {killed_at}, SIGTERM '
        f'save at {saved[0]}; reference run {t_reference:.0f} s, whole test {t_total:.0f} s')
  assert moved > 1e-3  # the steps really trained
  assert worst <= 1e-5, deltas
  val_one, val_two = _validation(reference), _validation(workdir)
  for key in ('val_eer_identity', 'val_eer_fused', 'val_fake_pair_auc', 'val_pairs'):
    assert val_two[key] == pytest.approx(val_one[key], abs=1e-6), key
