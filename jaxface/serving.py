"""An exported ONNX model (`python -m jaxface.export --format onnx`) run by onnxruntime, behind `FaceVerifier`.

    verifier = jaxface.FaceVerifier.load('model.onnx')     # aligner, fuse strength, threshold from the file's metadata
    verifier.compare('a.jpg', 'b.jpg')

`OnnxNetwork` has the `infer` of `jaxface.inference.Network` (what `FaceVerifier` and `jaxface.inference.score_pairs`
call), so alignment, scoring and the decision are jaxface's own and only the network runs in onnxruntime. Its
embeddings are unit vectors (the graph normalises them), which changes no cosine. onnxruntime is imported when a
model is opened, not with this module.
"""
from __future__ import annotations

import os
import pathlib

import numpy as np

from jaxface import export
from jaxface.checkpoints import CheckpointError

# The metadata_props keys `FaceVerifier.load` needs in an ONNX file.
REQUIRED_KEYS = ('embedding_size', 'fuse_strength', 'threshold', 'aligner', 'flip_tta')


class ServingError(CheckpointError):
  """An exported model that cannot be used; the message is one line naming the file (a CheckpointError, so the CLIs
  report it as they report a bad checkpoint)."""


class OnnxNetwork:
  """An exported jaxface ONNX model in an onnxruntime session, run on aligned faces.

  Args:
    path: the .onnx file.
    batch_size: the most faces per session run (the graph's batch axis is dynamic, so nothing is padded).
    threads: onnxruntime's intra-op threads (0: its default, one per core).
  """

  def __init__(self, path: str | os.PathLike, *, batch_size: int = 32, threads: int = 0):
    try:
      import onnxruntime  # pylint: disable=import-outside-toplevel
    except ImportError:
      raise ServingError(f'{path}: running an ONNX model needs onnxruntime: pip install -e ".[export]"') from None
    self.path = pathlib.Path(path)
    if not self.path.is_file():
      raise ServingError(f'{self.path}: no such ONNX file (export one with python -m jaxface.export --format onnx)')
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = int(threads)
    try:
      self.session = onnxruntime.InferenceSession(str(self.path), options, providers=['CPUExecutionProvider'])
    except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph/... types
      raise ServingError(f'{self.path}: onnxruntime cannot open it ({str(error).splitlines()[0]})') from None
    self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
    missing = [key for key in REQUIRED_KEYS if key not in self.metadata]
    if missing:
      raise ServingError(f'{self.path}: not a jaxface export (metadata lacks {", ".join(missing)}; '
                         'export it with python -m jaxface.export)')
    self.batch_size = int(batch_size)
    self.input_size = export.FACE_SIZE
    self.flip_tta = self.metadata['flip_tta'] == 'true'
    self.embedding_size = int(self.metadata['embedding_size'])
    self._input = self.session.get_inputs()[0].name

  def infer(self, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, 112, 112, 3) uint8 aligned faces -> (unit embeddings (B, D) float32, fake logits (B,) float32).

    Raises:
      ServingError: faces of another shape or dtype (the graph takes what an aligner gives).
    """
    faces = np.asarray(faces)
    if faces.dtype != np.uint8 or faces.ndim != 4 or faces.shape[1:] != (self.input_size, self.input_size, 3):
      raise ServingError(f'{self.path}: takes (B, {self.input_size}, {self.input_size}, 3) uint8 aligned faces, got '
                         f'{faces.shape} {faces.dtype}')
    embeddings, logits = [], []
    for start in range(0, len(faces), self.batch_size):
      embedding, fake_logit = self.session.run(None, {self._input: np.ascontiguousarray(faces[start:start +
                                                                                              self.batch_size])})
      embeddings.append(embedding)
      logits.append(fake_logit)
    if not embeddings:
      return np.zeros((0, self.embedding_size), np.float32), np.zeros((0,), np.float32)
    return np.concatenate(embeddings), np.concatenate(logits)


def load_verifier(verifier_cls, path: str | os.PathLike, *, aligner=None, aligner_path: str | None = None,
                  batch_size: int = 32, flip_tta: bool | None = None):
  """A `FaceVerifier` (or subclass `verifier_cls`) whose network is an exported ONNX model in onnxruntime.

  The scoring calibration and the default aligner come from the file's metadata. Flip TTA is part of the exported
  graph (`python -m jaxface.export --flip-tta`), so `flip_tta=True` needs a model exported with it and None takes
  the graph as it is.

  Raises:
    ServingError: a missing, unreadable or non-jaxface file, or flip TTA asked of a model exported without it.
  """
  network = OnnxNetwork(path, batch_size=batch_size)
  if flip_tta and not network.flip_tta:
    raise ServingError(f'{network.path}: exported without flip TTA (re-export with python -m jaxface.export '
                       '--flip-tta, or drop flip_tta)')
  if aligner is None:
    aligner = network.metadata['aligner'] or 'none'
  scoring_params = {'fuse_strength': float(network.metadata['fuse_strength']),
                    'threshold': float(network.metadata['threshold'])}
  # FaceVerifier builds a JAX network from (model, variables); it is never called here (jit traces lazily) and is
  # replaced by the onnxruntime one, which has the same `infer`.
  verifier = verifier_cls(None, {}, scoring_params, input_size=network.input_size, aligner=aligner,
                          aligner_path=aligner_path, batch_size=batch_size, flip_tta=network.flip_tta)
  verifier.network = network
  return verifier
