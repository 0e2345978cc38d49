"""Training on several processes (hosts) with jax.distributed: joining the job, the stop vote, gathering rows.

JAX's multi-controller runtime does the distributed work: every process runs the same program on its local devices,
and `jax.pmap`'s axis spans the devices of all processes, so the `psum`/`pmean` of the train step (gradients,
BatchNorm statistics, AdaFace's EMA statistics, the losses' sums and counts) reduce over the global batch. What this
module adds is jaxface's side of it:

- `initialize`: joins the job when `config.distributed` is set or `JAX_COORDINATOR_ADDRESS` is in the environment;
  the coordinator, the process count and the process id come from the cluster (Slurm, Cloud TPU, Open MPI, ... as
  `jax.distributed.initialize` detects them) or from `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES` and
  `JAX_PROCESS_ID` (read here; jax 0.10 reads only the first). Processes other than 0 log warnings and errors only.
- `with_stop_vote`: the train step also all-reduces every device's stop flag (a SIGTERM seen by its process), so all
  processes learn at the same step that one of them was told to stop, save that one step together and exit.
- `gather_rows`: the validation scores of every process's slice of the pairs, in process order, on every process,
  so each computes the same metrics and takes the same best-checkpoint decision (Orbax's saves are collective).

On CPU the cross-process collectives are gloo's (`jax_cpu_collectives_implementation`, jax 0.10's default).
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

log = logging.getLogger('jaxface.distributed')

ENV_COORDINATOR = 'JAX_COORDINATOR_ADDRESS'
ENV_NUM_PROCESSES = 'JAX_NUM_PROCESSES'
ENV_PROCESS_ID = 'JAX_PROCESS_ID'


def initialize(config: ml_collections.ConfigDict) -> bool:
  """Joins a multi-process job when the config (`config.distributed`) or the environment (a coordinator address) asks
  for it; returns whether this process is one of several.

  Must run before anything touches a JAX device. The coordinator, process count and id come from
  `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` where set, the rest from the cluster's own
  variables (`jax.distributed.initialize`'s auto-detection: Slurm, Cloud TPU, Open MPI, Kubernetes, mpi4py).
  """
  if not (config.get('distributed') or os.environ.get(ENV_COORDINATOR)):
    return False
  if not jax.distributed.is_initialized():
    kwargs = {}
    if os.environ.get(ENV_NUM_PROCESSES):
      kwargs['num_processes'] = int(os.environ[ENV_NUM_PROCESSES])
    if os.environ.get(ENV_PROCESS_ID):
      kwargs['process_id'] = int(os.environ[ENV_PROCESS_ID])
    jax.distributed.initialize(**kwargs)
  log.info('process %d of %d: %d local device(s) of %d', jax.process_index(), jax.process_count(),
           jax.local_device_count(), jax.device_count())
  if jax.process_index() != 0:  # one log for the job, process 0's; the others say only what goes wrong
    logging.getLogger('jaxface').setLevel(logging.WARNING)
  return jax.process_count() > 1


def primary_first(fn: Callable[[], Any]) -> Any:
  """`fn()` on process 0, then on the others once it returned (a barrier between): what writes a shared cache on
  first use (the synthetic dataset) is written once."""
  if jax.process_count() == 1:
    return fn()
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  result = fn() if jax.process_index() == 0 else None
  multihost_utils.sync_global_devices('jaxface.distributed.primary_first')
  return result if jax.process_index() == 0 else fn()


# ----------------------------------------------------------------------------------------------------------------------
# The stop vote.
# ----------------------------------------------------------------------------------------------------------------------


def with_stop_vote(step_fn: Callable, axis_name: str = 'batch') -> Callable:
  """`step_fn(state, batch) -> (state, summary)`, run under `jax.pmap(axis_name=axis_name)`, becomes
  `fn(state, batch, stop) -> (state, summary, votes)`: `stop` is the device's flag (int32, 1 = its process was asked
  to stop), `votes` the flags' sum over every device of every process.

  The vote is one scalar all-reduce inside the step's program, so it costs no extra dispatch and no extra host sync
  beyond reading `votes` once the step is done.
  """

  def fn(state, batch, stop):
    new_state, summary = step_fn(state, batch)
    return new_state, summary, jax.lax.psum(stop, axis_name)

  return fn


def stop_flags(requested: bool, num_devices: int) -> np.ndarray:
  """This process's vote, one flag per local device (the pmapped `stop` argument)."""
  return np.full((num_devices,), int(bool(requested)), np.int32)


def should_stop(requested: bool, votes: Any, step: int) -> bool:
  """Whether to save and exit after `step`, the step that returned `votes`.

  One process: its own flag, as soon as it is set. Several: whether any process had voted to stop in that step
  (`votes`, the same on every device of every process), so all stop at the same step; a flag set while the step ran
  counts in the next step's vote. A SIGTERM that came before the loop installed jaxface's handler (start-up,
  compilation) was taken by the preemption notifier jax.distributed installs; JAX's preemption sync point (which
  Orbax's CheckpointManager consults too) then names the step where all processes stop.
  """
  if jax.process_count() == 1:
    return bool(requested)
  if int(np.asarray(votes)[0]) > 0:
    return True
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  try:
    return bool(multihost_utils.reached_preemption_sync_point(step))
  except RuntimeError:  # jax_enable_preemption_service is off: only the vote
    return False


# ----------------------------------------------------------------------------------------------------------------------
# Gathering rows across processes.
# ----------------------------------------------------------------------------------------------------------------------


def _allgather(x: np.ndarray) -> np.ndarray:
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(x))


def _gather_bytes(rows: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
  """(n, width) uint8 of this process -> each process's rows, every process padded to the most rows and widest."""
  width = int(_allgather(np.int32(rows.shape[1])).max())
  padded = np.zeros((int(counts.max()), max(width, 1)), np.uint8)
  padded[:rows.shape[0], :rows.shape[1]] = rows
  gathered = _allgather(padded)
  return [gathered[p, :counts[p]] for p in range(len(counts))]


def gather_rows(columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Every process's rows of `columns` (arrays of equal length: numbers, bools, or text as str/bytes/object), in
  process order, on every process; unchanged on one process.

  Numbers travel as their raw bytes (no float64 -> float32 on the way, whatever jax_enable_x64 says), text as UTF-8
  padded with zero bytes, returned as object arrays of str. Collective: every process must call it.
  """
  if jax.process_count() == 1:
    return columns
  n = len(next(iter(columns.values())))
  counts = _allgather(np.int32(n)).astype(int)
  out = {}
  for name, column in columns.items():
    column = np.asarray(column)
    if column.dtype.kind in 'OUS':
      encoded = [v if isinstance(v, bytes) else str(v).encode() for v in column]
      rows = np.zeros((n, max(map(len, encoded), default=0)), np.uint8)
      for i, e in enumerate(encoded):
        rows[i, :len(e)] = np.frombuffer(e, np.uint8)
      parts = _gather_bytes(rows, counts)
      out[name] = np.array([bytes(r).rstrip(b'\0').decode() for part in parts for r in part], dtype=object)
    else:
      column = np.ascontiguousarray(column)
      rows = column.reshape(n, int(np.prod(column.shape[1:]))).view(np.uint8)  # (n, bytes per row)
      parts = _gather_bytes(rows, counts)
      out[name] = np.concatenate(parts).view(column.dtype).reshape(-1, *column.shape[1:])
  return out


def gather_dataclass(value: Any) -> Any:
  """A dataclass of equal-length arrays (`inference.PairScores`) with every process's rows; see `gather_rows`."""
  fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
  return type(value)(**gather_rows(fields))
