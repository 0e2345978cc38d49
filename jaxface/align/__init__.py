"""Face alignment. PyTorch lives in this package and nowhere else; importing the package itself does not import torch.

`make_aligner('dfa' | 'mtcnn' | 'retinaface' | 'none', path, device)` gives an Aligner whose `align(photos)` returns an
AlignResult of 112x112 faces warped onto ARCFACE_TEMPLATE. `template` and `base` are numpy-only; `dfa`, `mtcnn`,
`retinaface` (and `retinaface_net`, the network DFA and RetinaFace share) import torch.
"""
from __future__ import annotations

import importlib

_LAZY = {
    'ARCFACE_TEMPLATE': 'jaxface.align.template',
    'similarity_transform': 'jaxface.align.template',
    'warp_face': 'jaxface.align.template',
    'AlignResult': 'jaxface.align.base',
    'Aligner': 'jaxface.align.base',
    'make_aligner': 'jaxface.align.base',
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
  if name in _LAZY:
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
