"""make_aligner, and the `none` aligner (photos already aligned).

Numpy only: the `none` aligner works without torch; `dfa`, `mtcnn` and `retinaface` import torch when made. The
interface they share (Aligner, AlignResult) is `jaxface.align.interface`.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from jaxface.align.interface import (  # noqa: F401  (AlignResult, Aligner: the names callers know this module by)
    AlignResult, Aligner, fallback_face)

ALIGNERS = ('dfa', 'mtcnn', 'retinaface', 'none')


class NoneAligner(Aligner):
  """For photos that are already aligned face crops: the central square resized to 112x112 (antialiased bicubic).

  Landmarks are the template (mapped back into photo pixels); every photo counts as a face with score 1.
  """
  name = 'none'

  def __init__(self, batch_size: int = 32):
    self.batch_size = batch_size

  def settings(self) -> dict[str, Any]:
    return {'name': self.name, 'crop': 'central square', 'resample': 'bicubic antialiased', 'size': 112}

  def _align_batch(self, photos: list[np.ndarray]) -> AlignResult:
    faces, photo_points, crop_points = zip(*(fallback_face(p) for p in photos))
    n = len(photos)
    return AlignResult(faces=np.stack(faces), landmarks=np.stack(photo_points), crop_landmarks=np.stack(crop_points),
                       scores=np.ones((n,), np.float32), found=np.ones((n,), bool))


def make_aligner(name: str, path: str | None = None, device: str | None = None, **kw: Any) -> Aligner:
  """Builds an aligner by name.

  Args:
    name: 'dfa' (CVLFace DFA; `path` is a snapshot folder or a Hugging Face repo id, default
      minchul/cvlface_DFA_resnet50), 'mtcnn' (weights from the mtcnn package), 'retinaface' (RetinaFace
      MobileNet-0.25; `path` is its .pth, default `retinaface.default_weights_path()`) or 'none' (photos already
      aligned).
    path: weights location for 'dfa' and 'retinaface'; unused otherwise.
    device: torch device ('cpu', 'cuda', 'cuda:1'); default CUDA when available.
    **kw: passed to the aligner's constructor (e.g. batch_size, min_score).
  """
  if name == 'none':
    return NoneAligner(**kw)
  if name == 'dfa':
    from jaxface.align import dfa  # pylint: disable=import-outside-toplevel
    return dfa.DFAAligner(path, device=device, **kw)
  if name == 'mtcnn':
    from jaxface.align import mtcnn  # pylint: disable=import-outside-toplevel
    return mtcnn.MTCNNAligner(device=device, **kw)
  if name == 'retinaface':
    from jaxface.align import retinaface  # pylint: disable=import-outside-toplevel
    return retinaface.RetinaFaceAligner(path, device=device, **kw)
  raise ValueError(f'unknown aligner {name!r}: choose one of {", ".join(ALIGNERS)}')
