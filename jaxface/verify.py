"""FaceVerifier: is this the same real person? And `python -m jaxface.verify A.jpg B.jpg --checkpoint DIR`.

    verifier = jaxface.FaceVerifier.load('workdir/default')
    result = verifier.compare('a.jpg', 'b.jpg')          # paths, or (H, W, 3) uint8 RGB arrays
    result.same_person, result.similarity, result.cosine, result.p_fake_a, result.p_fake_b

Photos are raw (aligned by the aligner the model was trained with; `jaxface.align` is imported only then, and torch
only for the 'dfa' and 'mtcnn' aligners) or already-aligned 112x112 face crops (`aligned=True`, or detected from the
size when `aligned=None`). The network runs under `jax.jit` on batches padded to a few fixed sizes (powers of two up
to `batch_size`), so a stream of odd-sized requests compiles at most log2(batch_size) + 1 programs.

The CLI prints the decision, the scores and a warning naming any photo that looks generated; it exits 0 for a match,
1 for no match and 2 for an error (unreadable photo, no face found, missing checkpoint), with one line and no traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import sys
from collections.abc import Sequence
from typing import Any, Union

import jax
import numpy as np

from jaxface import inference, scoring

ALIGNED_SIZE = inference.ALIGNED_SIZE
# Photos larger than this are downscaled before aligning, as preprocessing does (BuildOptions.max_photo_side); a
# checkpoint's config.data.max_photo_side, recorded from its dataset, replaces it.
DEFAULT_MAX_PHOTO_SIDE = 2048
# A photo whose fake probability is above this is reported as looking generated.
FAKE_WARNING = 0.5

Photo = Union[str, os.PathLike, np.ndarray]


class VerifyError(ValueError):
  """A photo that cannot be verified (no face found, wrong shape); the message is one line naming the photo."""


@dataclasses.dataclass(frozen=True)
class VerificationResult:
  """The answer for one pair of photos.

  same_person: similarity >= threshold (two real photos of one person).
  similarity: the fused score in [-1, 1] (cosine pushed towards -1 by the fake probabilities).
  cosine: cosine of the two identity embeddings in [-1, 1].
  p_fake_a, p_fake_b: probabilities that photo a / b is generated.
  threshold: the decision threshold on `similarity` (chosen at the validation EER).
  fuse_strength: the fusion strength used.
  """
  same_person: bool
  similarity: float
  cosine: float
  p_fake_a: float
  p_fake_b: float
  threshold: float
  fuse_strength: float

  def looks_generated(self, limit: float = FAKE_WARNING) -> tuple[bool, bool]:
    """Whether photo a and photo b look generated (fake probability above `limit`)."""
    return self.p_fake_a > limit, self.p_fake_b > limit


class FaceVerifier:
  """A trained FaceModel with its scoring calibration and aligner; see the module docstring.

  Args:
    model: the FaceModel (from `jaxface.models.face_model.build_model`).
    variables: its {'params', 'batch_stats'}.
    scoring_params: {'fuse_strength': float, 'threshold': float}.
    input_size: the model's input side (112 or 56).
    aligner: an `jaxface.align.base.Aligner`, an aligner name ('dfa' | 'mtcnn' | 'none') built on first use, or None
      (raw photos are then refused; aligned 112x112 crops still work).
    aligner_path: weights location for a named aligner.
    batch_size: the largest batch the network sees.
    flip_tta: also embed mirrored faces and fuse the two embeddings by their norms (AdaFace validation). `load` and
      `from_inference` take None (the default) as the checkpoint's own setting: how its scoring was calibrated.
  """

  def __init__(self, model, variables: dict, scoring_params: dict, *, input_size: int = ALIGNED_SIZE,
               aligner: Any = None, aligner_path: str | None = None, batch_size: int = 32, flip_tta: bool = False,
               max_photo_side: int = DEFAULT_MAX_PHOTO_SIDE):
    self.network = inference.Network(model, variables, input_size=input_size, batch_size=batch_size,
                                     flip_tta=flip_tta)
    self.fuse_strength = float(scoring_params['fuse_strength'])
    self.threshold = float(scoring_params['threshold'])
    self.max_photo_side = int(max_photo_side)
    self._aligner = aligner
    self._aligner_path = aligner_path or None

  @property
  def input_size(self) -> int:
    return self.network.input_size

  @property
  def flip_tta(self) -> bool:
    return self.network.flip_tta

  @classmethod
  def load(cls, checkpoint: str | os.PathLike, *, aligner: Any = None, aligner_path: str | None = None,
           batch_size: int = 32, flip_tta: bool | None = None) -> FaceVerifier:
    """Loads a training workdir (its best checkpoint) or one checkpoint folder.

    `aligner` defaults to the one the model's training data was aligned with (config.data.aligner).
    A `.onnx` file (python -m jaxface.export) runs its network in onnxruntime (`jaxface.serving`).

    Raises:
      jaxface.checkpoints.CheckpointError: missing or unusable checkpoint (one line).
    """
    if pathlib.Path(checkpoint).suffix == '.onnx':
      from jaxface import serving  # pylint: disable=import-outside-toplevel
      return serving.load_verifier(cls, checkpoint, aligner=aligner, aligner_path=aligner_path, batch_size=batch_size,
                                   flip_tta=flip_tta)
    from jaxface import checkpoints  # pylint: disable=import-outside-toplevel  (orbax is slow to import)

    config, variables, scoring_params = checkpoints.load_inference(checkpoint)
    return cls.from_inference(config, variables, scoring_params, aligner=aligner, aligner_path=aligner_path,
                              batch_size=batch_size, flip_tta=flip_tta)

  @classmethod
  def from_inference(cls, config, variables: dict, scoring_params: dict, *, aligner: Any = None,
                     aligner_path: str | None = None, batch_size: int = 32, flip_tta: bool | None = None
                     ) -> FaceVerifier:
    """A verifier from what `jaxface.checkpoints.load_inference` returns (config, variables, scoring)."""
    data = config.get('data') or {}
    if flip_tta is None:
      flip_tta = bool(scoring_params.get('flip_tta', False))
    if aligner is None:
      aligner = data.get('aligner') or 'none'
      aligner_path = aligner_path or data.get('aligner_path') or None
    return cls(inference.build_inference_model(config.model), variables, scoring_params,
               input_size=config.model.get('input_size', ALIGNED_SIZE), aligner=aligner, aligner_path=aligner_path,
               batch_size=batch_size, flip_tta=flip_tta,
               max_photo_side=data.get('max_photo_side') or DEFAULT_MAX_PHOTO_SIDE)

  # ---------------------------------------------------------------------------------------------------- the network

  def infer(self, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings (B, D) un-normalised, fake logits (B,)) of aligned faces; see `jaxface.inference.Network.infer`."""
    return self.network.infer(faces)

  # ------------------------------------------------------------------------------------------------------ the photos

  @property
  def aligner_name(self) -> str:
    """The aligner's name ('' when there is none), without building it."""
    if self._aligner is None or isinstance(self._aligner, str):
      return self._aligner or ''
    return self._aligner.name

  @property
  def aligner(self):
    """The aligner, built on first use (this is where torch gets imported for 'dfa' and 'mtcnn')."""
    if isinstance(self._aligner, str):
      from jaxface.align.base import make_aligner  # pylint: disable=import-outside-toplevel
      self._aligner = make_aligner(self._aligner, self._aligner_path)
    return self._aligner

  def align(self, photos: Sequence[Photo], aligned: bool | None = None,
            names: Sequence[str] | None = None) -> np.ndarray:
    """Turns photos into aligned faces, refusing photos without a face.

    Args:
      photos: B paths or (H, W, 3) uint8 RGB arrays (grey (H, W) accepted).
      aligned: True: the photos are already aligned square face crops (resized to 112 if another size); False: align
        them; None: treat 112x112 photos as aligned and align the rest.
      names: how to call each photo in errors (defaults to its path or 'photo <i>').

    Returns:
      (B, 112, 112, 3) uint8 aligned faces.

    Raises:
      jaxface.data.challenge.ImageReadError: an unreadable file. VerifyError: no face found, or a bad shape.
    """
    labels = _photo_names(photos, names)
    faces, found = self.align_with_flags(photos, aligned, labels)
    if not np.all(found):
      missing = labels[int(np.flatnonzero(~found)[0])]
      raise VerifyError(f'{missing}: no face found (use a photo showing one face, roughly frontal)')
    return faces

  def align_with_flags(self, photos: Sequence[Photo], aligned: bool | None = None,
                       names: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Like `align`, but a photo without a face gets the aligner's centre-crop fallback instead of an error.

    Returns:
      (faces (B, 112, 112, 3) uint8, found (B,) bool).
    """
    labels = _photo_names(photos, names)
    images = [_read_photo(photo, label, self.max_photo_side) for photo, label in zip(photos, labels)]
    if not images:
      return np.zeros((0, ALIGNED_SIZE, ALIGNED_SIZE, 3), np.uint8), np.zeros((0,), bool)
    is_crop = [image.shape[:2] == (ALIGNED_SIZE, ALIGNED_SIZE) for image in images]
    to_align = [not crop for crop in is_crop] if aligned is None else [not aligned] * len(images)
    faces: list[np.ndarray | None] = [None] * len(images)
    found = np.ones((len(images),), bool)
    for index, image in enumerate(images):
      if not to_align[index]:
        if image.shape[0] != image.shape[1]:
          raise VerifyError(f'{labels[index]}: aligned=True but the photo is {image.shape[1]}x{image.shape[0]}, '
                            'not a square aligned face (pass aligned=False to align it)')
        faces[index] = _resize_uint8(image, ALIGNED_SIZE)
    pending = [index for index in range(len(images)) if to_align[index]]
    if pending:
      if self.aligner is None:
        raise VerifyError(f'{labels[pending[0]]}: needs aligning but this verifier has no aligner '
                          '(give one, or pass aligned 112x112 faces)')
      result = self.aligner.align([images[index] for index in pending])
      for slot, index in enumerate(pending):
        faces[index] = result.faces[slot]
        found[index] = bool(result.found[slot])
    return np.stack(faces), found

  def embed(self, images: Sequence[Photo], aligned: bool | None = None) -> np.ndarray:
    """Unit-norm identity embeddings (B, D) float32 of B photos (see `align` for `images` and `aligned`)."""
    embeddings, _ = self.infer(self.align(images, aligned))
    return np.asarray(scoring.l2_normalize(embeddings))

  def compare(self, photo_a: Photo, photo_b: Photo, aligned: bool | None = None) -> VerificationResult:
    """Decides whether two photos show the same real person.

    Args:
      photo_a, photo_b: paths or (H, W, 3) uint8 RGB arrays.
      aligned: see `align`.

    Raises:
      jaxface.data.challenge.ImageReadError, VerifyError: one line naming the photo.
    """
    embeddings, logits = self.infer(self.align([photo_a, photo_b], aligned))
    cosine = float(scoring.cosine_similarity(embeddings[:1], embeddings[1:])[0])
    p_fake = scoring.sigmoid_np(logits)
    similarity = float(scoring.fused_score_np([cosine], p_fake[:1], p_fake[1:], self.fuse_strength)[0])
    return VerificationResult(same_person=similarity >= self.threshold, similarity=similarity, cosine=cosine,
                              p_fake_a=float(p_fake[0]), p_fake_b=float(p_fake[1]), threshold=self.threshold,
                              fuse_strength=self.fuse_strength)


def _photo_names(photos: Sequence[Photo], names: Sequence[str] | None) -> list[str]:
  if names is not None:
    return list(names)
  return [str(photo) if isinstance(photo, (str, os.PathLike)) else f'photo {index}'
          for index, photo in enumerate(photos)]


def _read_photo(photo: Photo, label: str, max_side: int) -> np.ndarray:
  if isinstance(photo, (str, os.PathLike)):
    # The reader preprocessing uses, at the dataset's max_photo_side: a large photo aligns as it did in training.
    from jaxface.data.challenge import read_photo  # pylint: disable=import-outside-toplevel
    return read_photo(photo, max_side)[0]
  image = np.asarray(photo)
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
    raise VerifyError(f'{label}: expected an (H, W, 3) uint8 RGB array, got {image.shape} {image.dtype}')
  return image


def _resize_uint8(image: np.ndarray, size: int) -> np.ndarray:
  if image.shape[:2] == (size, size):
    return image
  from PIL import Image  # pylint: disable=import-outside-toplevel
  return np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))


# ----------------------------------------------------------------------------------------------------------------------
# The command line.


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog='python -m jaxface.verify',
      description='Same real person or not? Exit code 0: match, 1: no match, 2: error.')
  parser.add_argument('photo_a', help='first photo (any image file)')
  parser.add_argument('photo_b', help='second photo')
  parser.add_argument('--checkpoint', required=True, help='a training workdir (its best checkpoint) or one checkpoint')
  parser.add_argument('--aligner', default=None, help='dfa | mtcnn | retinaface | none (default: the one the model trained with)')
  parser.add_argument('--aligner-path', default=None, help='aligner weights (DFA snapshot folder, RetinaFace .pth)')
  parser.add_argument('--aligned', action='store_true', help='the photos are already aligned 112x112 faces')
  parser.add_argument('--threshold', type=float, default=None, help='override the stored decision threshold')
  parser.add_argument('--flip-tta', action=argparse.BooleanOptionalAction, default=None,
                      help='also embed mirrored faces (default: as the checkpoint was calibrated)')
  return parser.parse_args(argv)


def enable_compilation_cache() -> None:
  """Keeps XLA programs on disk ($JAXFACE_CACHE/xla, default ~/.cache/jaxface/xla) unless a cache is already set.

  Compiling the network is most of a one-off CLI call on a CPU; later calls with the same model load it instead.
  JAXFACE_XLA_CACHE=0 turns this off.
  """
  if jax.config.jax_compilation_cache_dir or os.environ.get('JAXFACE_XLA_CACHE') == '0':
    return
  root = pathlib.Path(os.environ.get('JAXFACE_CACHE') or pathlib.Path.home() / '.cache' / 'jaxface')
  try:
    (root / 'xla').mkdir(parents=True, exist_ok=True)
  except OSError:
    return  # a read-only home: compile every time
  jax.config.update('jax_compilation_cache_dir', str(root / 'xla'))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)


def main(argv: Sequence[str] | None = None) -> int:
  """The CLI; returns the exit code (0 match, 1 no match, 2 error)."""
  args = _parse_args(argv)
  enable_compilation_cache()
  from jaxface.checkpoints import CheckpointError  # pylint: disable=import-outside-toplevel
  from jaxface.data.challenge import DataFormatError  # pylint: disable=import-outside-toplevel

  names = [args.photo_a, args.photo_b]
  try:
    for name in names:  # fail on a bad path before the slow model load
      if not pathlib.Path(name).is_file():
        raise VerifyError(f'{name}: no such file (check the path)')
    verifier = FaceVerifier.load(args.checkpoint, aligner=args.aligner, aligner_path=args.aligner_path, batch_size=2,
                                 flip_tta=args.flip_tta)
    if args.threshold is not None:
      verifier.threshold = args.threshold
    result = verifier.compare(args.photo_a, args.photo_b, aligned=True if args.aligned else None)
  except (VerifyError, DataFormatError, CheckpointError) as error:
    print(f'error: {error}', file=sys.stderr)
    return 2
  verdict = 'same person' if result.same_person else 'not the same person'
  relation = '>=' if result.same_person else '<'
  print(f'{verdict}: similarity {result.similarity:.4f} {relation} threshold {result.threshold:.4f}')
  print(f'cosine {result.cosine:.4f}; fake probability {names[0]}: {result.p_fake_a:.3f}, '
        f'{names[1]}: {result.p_fake_b:.3f}; fuse strength {result.fuse_strength:.4g}')
  for name, generated, p_fake in zip(names, result.looks_generated(), (result.p_fake_a, result.p_fake_b)):
    if generated:
      print(f'warning: {name} looks generated (fake probability {p_fake:.3f})')
  return 0 if result.same_person else 1


if __name__ == '__main__':
  sys.exit(main())
