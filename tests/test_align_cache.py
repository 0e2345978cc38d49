"""The align cache finds a photo by its bytes: a copied data folder is not aligned again, an edited photo is."""
import os
import pathlib
import shutil

import numpy as np

from jaxface.align import cache as cache_lib


def _face(seed: int) -> cache_lib.CachedFace:
  rng = np.random.default_rng(seed)
  return cache_lib.CachedFace(jpeg=bytes(rng.integers(0, 256, 64, dtype=np.uint8)),
                              landmarks=rng.random((5, 2), dtype=np.float32) * 100,
                              crop_landmarks=rng.random((5, 2), dtype=np.float32) * 112,
                              score=0.9, found=True, photo_shape=(200, 180))


def _photo(path: pathlib.Path, content: bytes) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(content)
  return path


def _same(a: cache_lib.CachedFace, b: cache_lib.CachedFace) -> bool:
  return (a.jpeg == b.jpeg and np.array_equal(a.landmarks, b.landmarks) and a.photo_shape == b.photo_shape
          and a.found == b.found)


def test_copied_folder_hits_and_edited_photo_misses(tmp_path):
  cache = cache_lib.AlignCache(tmp_path / 'cache', 'mtcnn', {'quality': 95})
  photo = _photo(tmp_path / 'data' / 'a' / '0.jpg', b'photo bytes 0')
  assert cache.get(photo) is None
  cache.put(photo, _face(0))
  assert _same(cache.get(photo), _face(0))

  # The folder copied elsewhere, with new modification times: found without aligning again.
  shutil.copytree(tmp_path / 'data', tmp_path / 'copy')
  copied = tmp_path / 'copy' / 'a' / '0.jpg'
  os.utime(copied, ns=(1, 1))
  assert _same(cache.get(copied), _face(0))

  # The same file touched but unchanged: still found. Its bytes changed: aligned again.
  os.utime(photo, ns=(10**18, 10**18))
  assert _same(cache.get(photo), _face(0))
  photo.write_bytes(b'photo bytes 1')
  assert cache.get(photo) is None
  assert len(cache) == 1


def test_entries_of_path_and_mtime_caches_are_adopted(tmp_path):
  cache = cache_lib.AlignCache(tmp_path / 'cache', 'mtcnn', {'quality': 95})
  photo = _photo(tmp_path / 'data' / '0.jpg', b'old cache')
  legacy = cache.dir / cache_lib.legacy_source_key(photo)[:2] / f'{cache_lib.legacy_source_key(photo)}.npz'
  cache.put(photo, _face(1))
  cache.entry_path(photo).rename(legacy.parent.mkdir(parents=True, exist_ok=True) or legacy)
  assert not cache.entry_path(photo).exists()

  assert _same(cache.get(photo), _face(1))
  assert cache.entry_path(photo).exists() and os.path.samefile(cache.entry_path(photo), legacy)
  # Once adopted the entry survives the mtime change that hid it from the old key.
  os.utime(photo, ns=(5, 5))
  assert _same(cache.get(photo), _face(1))
