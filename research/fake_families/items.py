"""The benchmark's items: a photo of the catalog, possibly changed (brought to another source's look, made into a
pseudo-fake), rendered to pixels with its landmarks.

An item's `key` names everything that makes its pixels ('<path>|<transform>'), so features are cached by key.
Transforms:
    ''                 the photo as it is
    'look:t2i'         `views.t2i_look` (the text-to-image row's reals and fakes)
    'look:ffhq'        resized to 128 px, JPEG 75: FFHQ's look, for the StyleGAN3 test fakes (256 px PNG-like)
    'self_blend:<s>'   a self-blended fake of the photo (Shiohara & Yamasaki), `jaxface.data.pseudofakes`
    'trace:<s>'        generator traces pasted into the face (checkerboard, spectral, smoothing)
    'swap:<s>:<path>'  the inner face of another real photo warped onto this one and pasted, colour-matched
Pseudo-fakes are made at the photo's own resolution (a photo that is not square is padded to one and cut back).
"""
from __future__ import annotations

import dataclasses
import functools
import io

import numpy as np

from jaxface.align import template

from research.fake_families import catalog  # pylint: disable=wrong-import-order
from research.fake_families import views  # pylint: disable=wrong-import-order

PSEUDO_KINDS = ('self_blend', 'swap', 'trace')


@dataclasses.dataclass(frozen=True)
class Item:
  photo: catalog.Photo
  transform: str = ''
  split: str = 'train'

  @property
  def key(self) -> str:
    return f'{self.photo.path}|{self.transform}'

  @property
  def kind(self) -> str:
    return self.transform.split(':')[0]

  @property
  def is_fake(self) -> int:
    return 1 if self.kind in PSEUDO_KINDS else self.photo.is_fake

  @property
  def source(self) -> str:
    """The pseudo-fake kind for a pseudo-fake, else the photo's source."""
    return self.kind if self.kind in PSEUDO_KINDS else self.photo.source


class Landmarks:
  """Five MTCNN landmarks per photo path, read from the align caches that scripts/preprocess.py wrote."""

  def __init__(self, cache_roots):
    import json  # pylint: disable=import-outside-toplevel
    import pathlib  # pylint: disable=import-outside-toplevel
    from jaxface.align.cache import AlignCache  # pylint: disable=import-outside-toplevel
    self.caches = []
    for root in cache_roots:
      for settings_file in sorted(pathlib.Path(root).glob('mtcnn-*/settings.json')):
        settings = json.loads(settings_file.read_text())
        self.caches.append(AlignCache(root, settings['aligner'], settings['settings']))
    if not self.caches:
      raise SystemExit(f'no MTCNN align cache under {", ".join(map(str, cache_roots))}: run scripts/preprocess.py '
                       '--aligner mtcnn on each dataset first (its OUT/_align_cache)')

  def ensure(self, paths: list[str]) -> None:
    """Aligns (MTCNN, into the first cache) the photos no cache holds yet, so a draw needs no full preprocessing."""
    missing = [p for p in paths if all(cache.get(p) is None for cache in self.caches)]
    if not missing:
      return
    import pathlib  # pylint: disable=import-outside-toplevel
    from jaxface.align import base, stage  # pylint: disable=import-outside-toplevel
    from jaxface.data.builder import BuildOptions  # pylint: disable=import-outside-toplevel
    if not hasattr(self, '_aligner'):
      self._aligner = base.make_aligner('mtcnn', device='cpu', batch_size=32)
    options = BuildOptions(aligner='mtcnn', max_photo_side=2048, progress=False)
    stage.align_into_cache([pathlib.Path(p) for p in missing], self._aligner, self.caches[0], options)
    self.get.cache_clear()

  @functools.lru_cache(maxsize=None)
  def get(self, path: str) -> np.ndarray | None:
    """(5, 2) float32 landmarks in photo pixels, or None where the photo was not aligned or had no face."""
    for cache in self.caches:
      found = cache.get(path)
      if found is not None:
        return np.asarray(found.landmarks, np.float32) if found.found else None
    return None


def _tf():
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from jaxface.data import pseudofakes  # pylint: disable=import-outside-toplevel
  return tf, pseudofakes


def _seed(text: str):
  tf, _ = _tf()
  return tf.constant([int(text) % (2**31), 7], tf.int64)


def render(item: Item, landmarks: Landmarks, launder: str | None = None) -> tuple[np.ndarray, np.ndarray, bytes]:
  """(photo (H, W, 3) uint8, landmarks (5, 2), the bytes of its file) of an item, laundered if asked. The bytes are
  the original file's for an unchanged photo, else the JPEG the change wrote (for the file-size and JPEG probes)."""
  photo = views.read_rgb(item.photo.path)
  marks = landmarks.get(item.photo.path)
  kind, _, arg = item.transform.partition(':')
  data = None
  if kind == '':
    with open(item.photo.path, 'rb') as file:
      data = file.read()
  elif kind == 'look':
    photo, marks = (views.t2i_look(photo, marks) if arg == 't2i' else _ffhq_look(photo, marks))
  elif kind in PSEUDO_KINDS:
    # Saved as its base photo was (the same JPEG tables), as a forger would: the file's compression gives nothing away.
    data = _encode_like(_pseudo(kind, arg, photo, marks, landmarks), item.photo.path)
    photo = views.read_bytes(data)
  else:
    raise ValueError(f'unknown transform {item.transform!r}')
  if data is None:
    data = _encode(photo, 95 if arg == 't2i' else 75)
  if launder is not None:
    photo, marks = views.launder(photo, marks, launder)
  return photo, marks, data


def _encode(photo: np.ndarray, quality: int) -> bytes:
  from PIL import Image  # pylint: disable=import-outside-toplevel
  buffer = io.BytesIO()
  Image.fromarray(photo).save(buffer, format='JPEG', quality=quality)
  return buffer.getvalue()


def _encode_like(photo: np.ndarray, base_path: str) -> bytes:
  from PIL import Image  # pylint: disable=import-outside-toplevel
  with Image.open(base_path) as base:
    tables = getattr(base, 'quantization', None)
  if not tables:
    return _encode(photo, 95)
  buffer = io.BytesIO()
  Image.fromarray(photo).save(buffer, format='JPEG', qtables=tables)
  return buffer.getvalue()


def _ffhq_look(photo, marks):
  factor = 128.0 / max(photo.shape[:2])
  out = views.resize(photo, factor)
  marks = marks * np.array([out.shape[1] / photo.shape[1], out.shape[0] / photo.shape[0]], np.float32)
  return views.jpeg(out, 75), marks


def _pseudo(kind: str, arg: str, photo: np.ndarray, marks: np.ndarray, landmarks: Landmarks) -> np.ndarray:
  tf, pseudofakes = _tf()
  height, width = photo.shape[:2]
  if height != width:  # the masks are square: pad to a square (edge pixels), change, cut back
    side = max(height, width)
    photo = np.pad(photo, ((0, side - height), (0, side - width), (0, 0)), mode='edge')
    return _pseudo(kind, arg, photo, marks, landmarks)[:height, :width]
  seed, _, donor_path = arg.partition(':')
  image, lms = tf.constant(photo), tf.constant(marks)
  if kind == 'self_blend':
    return pseudofakes.self_blend(image, _seed(seed), lms).numpy()
  if kind == 'trace':
    return pseudofakes.trace(image, _seed(seed), lms).numpy()
  donor = views.read_rgb(donor_path)
  matrix = template.similarity_transform(landmarks.get(donor_path), marks)
  warped = template.warp_face(donor, matrix, photo.shape[0])
  return pseudofakes.swap(image, tf.constant(warped), _seed(seed), lms).numpy()
