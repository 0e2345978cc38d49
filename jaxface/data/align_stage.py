"""The align stage of preprocessing: photos -> aligned faces in the resumable cache (`jaxface.align.cache`).

    statuses, stats = align_into_cache(paths, aligner, cache, options)

Unique photo paths go through in batches: read a batch (threads, `jaxface.data.challenge.read_photo`, while the aligner
runs on the previous one) -> align -> store each face atomically in the cache. Only a small status per photo stays in
memory, so host memory does not grow with the dataset, and a killed run resumes where it stopped: photos already in
the cache are not aligned again. Numpy and Pillow only (the aligner brings its own torch); no TensorFlow.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import io
import os
import pathlib
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np
from PIL import Image

from jaxface.align import cache as cache_lib
from jaxface.data import challenge

# Test-only hook: seconds to sleep after each newly aligned batch, so a test can kill -9 a run part-way.
SLEEP_ENV = 'JAXFACE_PREPROCESS_SLEEP_PER_BATCH'
STATES = ('aligned', 'faceless', 'low_score', 'unreadable')


class StageOptions(Protocol):
  """What the stage reads of its options (`jaxface.data.builder.BuildOptions` has these fields)."""
  batch_size: int  # photos per aligner call (and per read batch)
  max_photo_side: int  # photos are read no larger than this (challenge.read_photo)
  min_score: float  # faces scoring below this are low_score
  jpeg_quality: int  # of the stored faces
  workers: int  # reading threads
  progress: bool  # a tqdm bar


@dataclasses.dataclass(frozen=True)
class PhotoStatus:
  """What aligning one photo gave. state: one of STATES ('aligned', 'faceless', 'low_score', 'unreadable')."""
  state: str
  score: float = 0.0
  error: str = ''


def _encode_jpeg(face: np.ndarray, quality: int) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(np.ascontiguousarray(face, np.uint8)).save(buffer, format='JPEG', quality=quality, subsampling=0)
  return buffer.getvalue()


def _status_of(face: cache_lib.CachedFace, min_score: float) -> PhotoStatus:
  if not face.found:
    return PhotoStatus('faceless', face.score)
  if face.score < min_score:
    return PhotoStatus('low_score', face.score)
  return PhotoStatus('aligned', face.score)


class _Progress:
  """A tqdm bar over photos, or nothing."""

  def __init__(self, total: int, desc: str, enabled: bool):
    self._bar = None
    if enabled:
      import tqdm  # pylint: disable=import-outside-toplevel
      self._bar = tqdm.tqdm(total=total, desc=desc, unit='img', dynamic_ncols=True, smoothing=0.1)

  def update(self, count: int, **postfix: Any) -> None:
    if self._bar is not None:
      self._bar.update(count)
      if postfix:
        self._bar.set_postfix(postfix, refresh=False)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()


@dataclasses.dataclass
class AlignStats:
  """Counters of the align stage."""
  images: int = 0
  aligned_now: int = 0   # run through the aligner in this run
  from_cache: int = 0    # found in the cache (aligned by an earlier, maybe interrupted, run)
  seconds: float = 0.0
  aligner_seconds: float = 0.0


def _align_batch(aligner, photos: list[np.ndarray]) -> list[Any]:
  """Aligns photos; if the whole batch fails, aligns one by one so one bad photo cannot sink the batch.

  Returns per photo an (index into the result, AlignResult) pair or the exception it raised.
  """
  try:
    result = aligner.align(photos)
    return [(i, result) for i in range(len(photos))]
  except Exception:  # pylint: disable=broad-except
    out = []
    for photo in photos:
      try:
        out.append((0, aligner.align([photo])))
      except Exception as error:  # pylint: disable=broad-except
        out.append(error)
    return out


def align_into_cache(paths: Sequence[pathlib.Path], aligner, cache: cache_lib.AlignCache, options: StageOptions
                     ) -> tuple[dict[pathlib.Path, PhotoStatus], AlignStats]:
  """Aligns every photo not yet in the cache, `options.batch_size` at a time, and stores each face atomically.

  Memory holds two batches of photos (the one being aligned and the one being read), never the whole list.

  Returns:
    ({path: status} for every path, counters).
  """
  start = time.perf_counter()
  stats = AlignStats(images=len(paths))
  statuses: dict[pathlib.Path, PhotoStatus] = {}
  sleep = float(os.environ.get(SLEEP_ENV, '0') or 0)
  progress = _Progress(len(paths), f'align ({aligner.name})', options.progress)

  def read(path):
    try:
      return challenge.read_photo(path, options.max_photo_side)
    except challenge.ImageReadError as error:
      return str(error)
    except Exception as error:  # pylint: disable=broad-except
      return f'{path}: cannot read image ({type(error).__name__}: {error}) (replace the file)'

  def batches_to_align() -> Iterator[list[pathlib.Path]]:
    # Full batches of uncached photos, even when a resumed run finds them scattered between cached ones.
    missing = []
    for path in paths:
      face = cache.get(path)
      if face is None:
        missing.append(path)
        if len(missing) == options.batch_size:
          yield missing
          missing = []
      else:
        statuses[path] = _status_of(face, options.min_score)
        stats.from_cache += 1
        progress.update(1)
    if missing:
      yield missing

  with concurrent.futures.ThreadPoolExecutor(options.workers) as pool:
    for batch, loaded in read_ahead(batches_to_align(), read, pool):
      good = [(path, item) for path, item in zip(batch, loaded) if not isinstance(item, str)]
      for path, item in zip(batch, loaded):
        if isinstance(item, str):
          statuses[path] = PhotoStatus('unreadable', error=item)
      aligner_start = time.perf_counter()
      aligned = _align_batch(aligner, [photo for _, (photo, _) in good]) if good else []
      stats.aligner_seconds += time.perf_counter() - aligner_start
      for (path, (_, shape)), outcome in zip(good, aligned):
        if isinstance(outcome, Exception):
          statuses[path] = PhotoStatus('unreadable', error=f'{path}: the aligner failed on this photo '
                                       f'({type(outcome).__name__}: {outcome}) (check or replace the file)')
          continue
        i, result = outcome
        face = cache_lib.CachedFace(
            jpeg=_encode_jpeg(result.faces[i], options.jpeg_quality),
            landmarks=np.asarray(result.landmarks[i], np.float32),
            crop_landmarks=np.asarray(result.crop_landmarks[i], np.float32),
            score=float(np.float32(result.scores[i])), found=bool(result.found[i]), photo_shape=shape)
        cache.put(path, face)
        statuses[path] = _status_of(face, options.min_score)
        stats.aligned_now += 1
      rate = stats.aligned_now / max(stats.aligner_seconds, 1e-9)
      progress.update(len(batch), aligner_img_s=f'{rate:.1f}')
      if sleep:
        time.sleep(sleep)
  progress.close()
  stats.seconds = time.perf_counter() - start
  return statuses, stats


def read_ahead(batches: Iterable[list[pathlib.Path]], read, pool) -> Iterator[tuple[list[pathlib.Path], list[Any]]]:
  """Yields (batch, read results) while the next batch is already being read by `pool`."""
  pending = collections.deque()
  for batch in batches:
    pending.append((batch, [pool.submit(read, path) for path in batch]))
    if len(pending) > 1:
      done, futures = pending.popleft()
      yield done, [future.result() for future in futures]
  while pending:
    done, futures = pending.popleft()
    yield done, [future.result() for future in futures]
