"""Training metrics to `metrics.jsonl` and TensorBoard event files, each step once across resumes.

A run resumed at step S trains the steps after S again (they came after the checkpoint it resumes from), so before it
writes anything it cuts both logs back to steps <= S: each step then appears once, with the values of the run that
kept it. Event files are cut record by record (the TFRecord framing and CRCs of kept records are copied unchanged),
atomically; a record cut short by a kill is dropped.
"""
from __future__ import annotations

import json
import os
import pathlib
import struct

import jax


def truncate_metrics(path: pathlib.Path, last_step: int) -> None:
  """Keeps the lines of steps <= last_step (and drops a line cut short by a kill), atomically."""
  if not path.is_file():
    return
  kept = []
  for line in path.read_text().splitlines():
    try:
      if json.loads(line)['step'] <= last_step:
        kept.append(line + '\n')
    except (ValueError, KeyError, TypeError):
      continue
  _replace(path, ''.join(kept).encode())


def _replace(path: pathlib.Path, data: bytes) -> None:
  tmp = path.with_name(f'.{path.name}.tmp')
  tmp.write_bytes(data)
  os.replace(tmp, path)


def _records(data: bytes):
  """(framed record bytes, payload) of each whole TFRecord in `data`: u64 length, u32 crc, payload, u32 crc."""
  offset = 0
  while offset + 12 <= len(data):
    (length,) = struct.unpack('<Q', data[offset:offset + 8])
    end = offset + 12 + length + 4
    if end > len(data):
      return  # cut short by a kill
    yield data[offset:end], data[offset + 12:offset + 12 + length]
    offset = end


def truncate_events(folder: pathlib.Path, last_step: int) -> int:
  """Drops the events of steps > last_step from every event file in `folder`; returns how many were dropped."""
  if not folder.is_dir():
    return 0
  from tensorboard.compat.proto import event_pb2  # pylint: disable=import-outside-toplevel
  dropped = 0
  for path in sorted(folder.glob('events.out.tfevents.*')):
    data = path.read_bytes()
    kept = []
    for framed, payload in _records(data):
      if event_pb2.Event.FromString(payload).step <= last_step:
        kept.append(framed)
      else:
        dropped += 1
    if sum(map(len, kept)) != len(data):  # events dropped, or a record cut short at the end
      _replace(path, b''.join(kept))
  return dropped


class MetricWriter:
  """Metrics to `workdir/metrics.jsonl` and TensorBoard events in `workdir/tensorboard` (process 0 only)."""

  def __init__(self, workdir: pathlib.Path, start_step: int = 0):
    self.enabled = jax.process_index() == 0
    if self.enabled:
      truncate_metrics(workdir / 'metrics.jsonl', start_step)
    self._jsonl = open(workdir / 'metrics.jsonl', 'a') if self.enabled else None
    self._tb = None
    if self.enabled:
      try:
        from flax.metrics import tensorboard  # pylint: disable=import-outside-toplevel
        truncate_events(workdir / 'tensorboard', start_step)
        self._tb = tensorboard.SummaryWriter(str(workdir / 'tensorboard'))
      except ImportError:  # TensorBoard is optional for the JSON-lines log.
        self._tb = None

  def write(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({'step': step, **scalars}) + '\n')
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.scalar(k, v, step)
      self._tb.flush()

  def close(self) -> None:
    if self._jsonl:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()
