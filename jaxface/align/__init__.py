"""Face alignment. PyTorch lives in this package and nowhere else; importing the package itself does not import torch.

`make_aligner('dfa' | 'mtcnn' | 'retinaface' | 'none', path, device)` gives an Aligner whose `align(photos)` returns an
AlignResult of 112x112 faces warped onto ARCFACE_TEMPLATE. `template`, `interface` and `base` are numpy-only; `dfa`,
`mtcnn`, `retinaface` (and `retinaface_net`, the network DFA and RetinaFace share) import torch. Nothing here imports
`jaxface.data`: preprocessing (`jaxface.data.align_stage`) calls the aligners, not the reverse.
"""
from __future__ import annotations

from jaxface._lazy import lazy_getattr

_LAZY = {
    'ARCFACE_TEMPLATE': 'jaxface.align.template',
    'similarity_transform': 'jaxface.align.template',
    'warp_face': 'jaxface.align.template',
    'AlignResult': 'jaxface.align.interface',
    'Aligner': 'jaxface.align.interface',
    'make_aligner': 'jaxface.align.base',
}

__all__ = sorted(_LAZY)
__getattr__ = lazy_getattr(__name__, _LAZY)
