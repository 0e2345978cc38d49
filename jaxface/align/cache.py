"""The resumable aligned-face cache: one small file per source photo, written atomically.

Aligning 98,000 photos takes hours; a killed run must not start again from zero. Every aligned photo is stored under

    <root>/<aligner name>-<hash of aligner settings and output options>/<2 hex>/<source key>.npz

where the source key hashes the photo's bytes, so an edited or replaced photo is aligned again, a copied or moved data
folder is not, and a different aligner or setting never reads another's faces. Caches written before 2026-12-03 keyed
a photo by its absolute path, size and modification time; such an entry is still found while those hold, and is then
linked under the photo's content key. Each entry is written to a temporary file and moved into place with
`os.replace`, so a kill -9 leaves either a whole entry or none.

Numpy only (no torch, no TensorFlow): readers of cached faces need neither.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import pathlib
import tempfile
from typing import Any

import numpy as np

PathLike = str | os.PathLike

# Bump when the entry layout changes, so old caches are ignored rather than misread.
CACHE_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class CachedFace:
  """One aligned photo as stored in the cache and written to the dataset.

  jpeg: the aligned (112, 112, 3) face, JPEG-encoded (these exact bytes go into the TFRecords).
  landmarks: (5, 2) float32 in photo pixels (of the photo the aligner saw).
  crop_landmarks: (5, 2) float32 in crop pixels.
  score: face score in [0, 1].
  found: False where the aligner found no face and `jpeg` holds a centre crop.
  photo_shape: (height, width) of the photo as read from disk, before any downscaling.
  """
  jpeg: bytes
  landmarks: np.ndarray
  crop_landmarks: np.ndarray
  score: float
  found: bool
  photo_shape: tuple[int, int]


def settings_hash(settings: dict[str, Any]) -> str:
  """A short stable hash of JSON-able settings (key order does not matter)."""
  text = json.dumps(settings, sort_keys=True, separators=(',', ':'), default=str)
  return hashlib.sha256(text.encode('utf-8')).hexdigest()[:16]


def source_key(path: PathLike) -> str:
  """Identifies a photo file by its content: the sha256 of its bytes (memoised per path, size and mtime)."""
  path = pathlib.Path(path).absolute()
  stat = path.stat()
  memo = (str(path), stat.st_size, stat.st_mtime_ns)
  key = _CONTENT_KEYS.get(memo)
  if key is None:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
      for block in iter(lambda: f.read(1 << 20), b''):
        digest.update(block)
    key = digest.hexdigest()[:32]
    if len(_CONTENT_KEYS) >= _MEMO_SIZE:
      _CONTENT_KEYS.clear()
    _CONTENT_KEYS[memo] = key
  return key


_CONTENT_KEYS: dict[tuple[str, int, int], str] = {}
_MEMO_SIZE = 1 << 18


def legacy_source_key(path: PathLike) -> str:
  """The key of caches written before content keys: absolute path, size and modification time, hashed."""
  path = pathlib.Path(path).absolute()
  stat = path.stat()
  text = f'{path}\0{stat.st_size}\0{stat.st_mtime_ns}'
  return hashlib.sha256(text.encode('utf-8', 'surrogateescape')).hexdigest()[:32]


def _atomic_write(path: pathlib.Path, data: bytes) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  handle, tmp_name = tempfile.mkstemp(prefix='.tmp-', dir=path.parent)
  try:
    with os.fdopen(handle, 'wb') as tmp:
      tmp.write(data)
    os.replace(tmp_name, path)
  except BaseException:
    if os.path.exists(tmp_name):
      os.unlink(tmp_name)
    raise


class AlignCache:
  """Aligned faces keyed by source photo, for one aligner and its settings.

  Args:
    root: the cache root, shared by all aligners (e.g. <out>/_align_cache).
    aligner_name: e.g. 'dfa'.
    settings: JSON-able; everything that changes the stored faces (the aligner's settings() plus output options
      such as the JPEG quality and the largest photo side).
  """

  def __init__(self, root: PathLike, aligner_name: str, settings: dict[str, Any]):
    self.settings = {'format': CACHE_FORMAT, 'aligner': aligner_name, 'settings': settings}
    self.dir = pathlib.Path(root) / f'{aligner_name}-{settings_hash(self.settings)}'
    self.dir.mkdir(parents=True, exist_ok=True)
    settings_file = self.dir / 'settings.json'
    if not settings_file.exists():
      _atomic_write(settings_file, json.dumps(self.settings, indent=1, sort_keys=True, default=str).encode('utf-8'))

  def entry_path(self, path: PathLike) -> pathlib.Path:
    return self._entry(source_key(path))

  def _entry(self, key: str) -> pathlib.Path:
    return self.dir / key[:2] / f'{key}.npz'

  def _adopt_legacy(self, path: PathLike, entry: pathlib.Path) -> None:
    """Links an entry stored under the path-and-mtime key to the content key (no copy); a no-op when there is none."""
    legacy = self._entry(legacy_source_key(path))
    if legacy.is_file() and not entry.exists():
      entry.parent.mkdir(parents=True, exist_ok=True)
      try:
        os.link(legacy, entry)
      except FileExistsError:
        pass
      except OSError:  # a file system without hard links: copied under the content key instead
        _atomic_write(entry, legacy.read_bytes())

  def get(self, path: PathLike) -> CachedFace | None:
    """The cached face of a photo, or None when it was never aligned (or its bytes changed since)."""
    try:
      entry = self.entry_path(path)
      if not entry.exists():
        self._adopt_legacy(path, entry)
      with np.load(entry, allow_pickle=False) as stored:
        return CachedFace(jpeg=stored['jpeg'].tobytes(), landmarks=stored['landmarks'].astype(np.float32),
                          crop_landmarks=stored['crop_landmarks'].astype(np.float32), score=float(stored['score']),
                          found=bool(stored['found']), photo_shape=tuple(int(v) for v in stored['photo_shape']))
    except (OSError, ValueError, KeyError):
      # Missing, or unreadable for any reason (e.g. a disk filled up): align again rather than fail.
      return None

  def put(self, path: PathLike, face: CachedFace) -> None:
    """Stores a photo's face atomically (a kill leaves the old state or the whole new entry)."""
    buffer = io.BytesIO()
    np.savez(buffer, jpeg=np.frombuffer(face.jpeg, np.uint8), landmarks=np.asarray(face.landmarks, np.float32),
             crop_landmarks=np.asarray(face.crop_landmarks, np.float32), score=np.float32(face.score),
             found=np.bool_(face.found), photo_shape=np.asarray(face.photo_shape, np.int64))
    _atomic_write(self.entry_path(path), buffer.getvalue())

  def __len__(self) -> int:
    """The number of stored entries (walks the folder: for reports and tests, not hot loops)."""
    return sum(1 for _ in self.dir.glob('*/*.npz'))
