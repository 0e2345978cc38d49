"""Exports a jaxface model for serving: ONNX (onnxruntime) or a TF SavedModel (TF Serving).

    python -m jaxface.export --checkpoint runs/realfaces_mbf --format onnx --out model.onnx
    python -m jaxface.export --checkpoint runs/realfaces_mbf --format savedmodel --out model_savedmodel

Both take what an aligner gives, (N, 112, 112, 3) uint8 RGB faces with N free, and return the unit identity embedding
(N, D) float32 and the fake logit (N,) float32; the input normalisation (and the resize of 56-input models) is inside
the graph. Pair scores are then `cosine = e_a . e_b` and `jaxface.scoring.fused_score` with the stored fuse strength,
compared with the stored threshold (`jaxface.serving` does it for an ONNX file, behind `FaceVerifier.load`).

- ONNX: converted by `jax2onnx` straight from the jaxpr. The ops with CPU-specific routes (`jaxface.ops.depthwise`,
  `jaxface.ops.batchnorm`) are traced in their portable lax form (`jaxface.ops.routes.portable`): a depthwise conv
  becomes one grouped ONNX Conv. The metadata (`metadata_props`) says what a server needs: embedding_size,
  fuse_strength, threshold, aligner, input_format, jaxface_version, and arch, flip_tta, source.
- SavedModel: `jax2tf` with native serialization (StableHLO in an XlaCallModule op, lowered for the `--platforms`,
  CPU and CUDA by default), weights as TF variables, one `serving_default` signature {'faces'} ->
  {'embedding', 'fake_logit'}. Loading it needs TensorFlow only; the same metadata is the string variable `metadata`
  (JSON) and the file `assets.extra/jaxface.json`.

Needs the `export` extra (`pip install -e ".[export]"`: jax2onnx, onnx, onnxruntime); TensorFlow is a core dependency.
This module imports none of them until an export runs.
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxface import scoring
from jaxface.align.template import FACE_SIZE

FORMATS = ('onnx', 'savedmodel')
INPUT_NAME = 'faces'
OUTPUT_NAMES = ('embedding', 'fake_logit')
INPUT_FORMAT = ('faces: uint8 RGB (N, 112, 112, 3), N dynamic, aligned to the ArcFace 5-point template by the aligner '
                'below; outputs: embedding (N, D) float32 unit norm, fake_logit (N,) float32 '
                '(p_fake = sigmoid(fake_logit))')
ONNX_OPSET = 23
DEFAULT_PLATFORMS = ('cpu', 'cuda')
METADATA_FILE = 'jaxface.json'


class ExportError(ValueError):
  """An export that cannot be made (missing package, bad option); the message is one line."""


def serving_function(model, input_size: int, flip_tta: bool = False) -> Callable[[dict, Any], tuple]:
  """(variables, faces (N, 112, 112, 3) uint8) -> (unit embedding (N, D) float32, fake logit (N,) float32).

  `jaxface.inference.forward_fn`, the one forward of the project (the to_model_input normalisation, flip TTA summing
  the two views' un-normalised embeddings), plus the L2 normalisation; not jitted: an exporter traces it fresh, so a
  program that `compiled_forward` traced earlier in the process (with the CPU routes) is never reused.
  """
  from jaxface.inference import forward_fn  # pylint: disable=import-outside-toplevel
  network = forward_fn(model, flip_tta, input_size)

  def forward(variables, faces):
    embedding, fake_logit = network(variables, faces)
    return scoring.l2_normalize(embedding), fake_logit

  return forward


def metadata(config, scoring_params: dict, *, embedding_size: int, flip_tta: bool, source: str) -> dict[str, str]:
  """What a server needs beside the graph, as strings (ONNX metadata_props are string pairs)."""
  import jaxface  # pylint: disable=import-outside-toplevel

  data = config.get('data') or {}
  return {
      'embedding_size': str(int(embedding_size)),
      'fuse_strength': repr(float(scoring_params['fuse_strength'])),
      'threshold': repr(float(scoring_params['threshold'])),
      'aligner': str(data.get('aligner') or 'none'),
      'input_format': INPUT_FORMAT,
      'jaxface_version': jaxface.__version__,
      'arch': str(config.model.get('arch', '')),
      'flip_tta': 'true' if flip_tta else 'false',
      'source': source,
  }


def _load(checkpoint: str | pathlib.Path, flip_tta: bool | None) -> tuple[Callable[[dict, Any], tuple], dict, dict]:
  """(serving function, variables, metadata) of a checkpoint (a workdir, a step folder or a converted folder)."""
  from jaxface import checkpoints  # pylint: disable=import-outside-toplevel
  from jaxface.inference import ALIGNED_SIZE, build_inference_model  # pylint: disable=import-outside-toplevel

  config, variables, scoring_params = checkpoints.load_inference(checkpoint)
  if flip_tta is None:  # as the checkpoint's scoring was calibrated
    flip_tta = bool(scoring_params.get('flip_tta', False))
  model = build_inference_model(config.model)
  fn = serving_function(model, int(config.model.get('input_size', ALIGNED_SIZE)), flip_tta)
  face = jax.ShapeDtypeStruct((1, FACE_SIZE, FACE_SIZE, 3), jnp.uint8)
  embedding_size = jax.eval_shape(fn, variables, face)[0].shape[-1]
  info = metadata(config, scoring_params, embedding_size=embedding_size, flip_tta=flip_tta,
                  source=pathlib.Path(checkpoint).name)
  return fn, variables, info


def to_onnx(fn: Callable[[dict, Any], tuple], variables: dict, info: dict[str, str],
            out: str | pathlib.Path) -> pathlib.Path:
  """Converts `fn(variables, faces)` with jax2onnx (the weights become initializers) and writes it, with `info` as
  metadata_props, to `out`."""
  try:
    import jax2onnx  # pylint: disable=import-outside-toplevel
    import onnx  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    raise ExportError(f'ONNX export needs jax2onnx and onnx ({error.name} is missing): pip install -e ".[export]"') \
        from None
  from jaxface.ops import routes  # pylint: disable=import-outside-toplevel

  spec = jax.ShapeDtypeStruct(('N', FACE_SIZE, FACE_SIZE, 3), jnp.uint8)
  serde_log = logging.getLogger('onnx_ir.serde')  # one warning per shape constant it serialises untyped
  level = serde_log.level
  serde_log.setLevel(logging.ERROR)
  try:
    with routes.portable():
      model = jax2onnx.to_onnx(functools.partial(fn, variables), [spec], model_name='jaxface', opset=ONNX_OPSET,
                               return_mode='proto', input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES))
  finally:
    serde_log.setLevel(level)
  model.producer_name = 'jaxface'
  model.producer_version = info['jaxface_version']
  model.doc_string = INPUT_FORMAT
  del model.metadata_props[:]
  for key, value in info.items():
    model.metadata_props.add(key=key, value=value)
  onnx.checker.check_model(model)
  out = pathlib.Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  onnx.save(model, str(out))
  return out


def to_savedmodel(fn: Callable[[dict, Any], tuple], variables: dict, info: dict[str, str], out: str | pathlib.Path,
                  platforms: Sequence[str] = DEFAULT_PLATFORMS) -> pathlib.Path:
  """Writes a TF SavedModel whose `serving_default` runs `fn(variables, faces)` (jax2tf, native serialization)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from jax.experimental import jax2tf  # pylint: disable=import-outside-toplevel

  tf_fn = jax2tf.convert(fn, polymorphic_shapes=[None, f'(n, {FACE_SIZE}, {FACE_SIZE}, 3)'],
                         native_serialization_platforms=tuple(platforms), with_gradient=False)
  module = tf.Module()
  # Variables, not constants: the weights go to variables/ and the graph stays small.
  module.weights = tf.nest.map_structure(lambda a: tf.Variable(np.asarray(a), trainable=False), variables)
  module.metadata = tf.Variable(json.dumps(info, sort_keys=True), trainable=False, dtype=tf.string)

  @tf.function(input_signature=[tf.TensorSpec([None, FACE_SIZE, FACE_SIZE, 3], tf.uint8, name=INPUT_NAME)],
               autograph=False)
  def serve(faces):
    embedding, fake_logit = tf_fn(module.weights, faces)
    return {OUTPUT_NAMES[0]: embedding, OUTPUT_NAMES[1]: fake_logit}

  module.serve = serve
  out = pathlib.Path(out)
  tf.saved_model.save(module, str(out), signatures={'serving_default': serve})
  (out / 'assets.extra').mkdir(exist_ok=True)
  (out / 'assets.extra' / METADATA_FILE).write_text(json.dumps(info, indent=1, sort_keys=True) + '\n')
  return out


def export(checkpoint: str | pathlib.Path, fmt: str, out: str | pathlib.Path, *, flip_tta: bool | None = None,
           platforms: Sequence[str] = DEFAULT_PLATFORMS) -> pathlib.Path:
  """Exports a checkpoint (workdir, step folder or converted folder) as 'onnx' or 'savedmodel' to `out`.

  Raises:
    jaxface.checkpoints.CheckpointError: the checkpoint cannot be loaded. ExportError: a missing package or a bad
      format (one line each).
  """
  if fmt not in FORMATS:
    raise ExportError(f'format {fmt!r} is not one of {", ".join(FORMATS)}')
  fn, variables, info = _load(checkpoint, flip_tta)
  if fmt == 'onnx':
    return to_onnx(fn, variables, info, out)
  return to_savedmodel(fn, variables, info, out, platforms)


# ----------------------------------------------------------------------------------------------------------------------
# The command line.


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog='python -m jaxface.export',
                                   description='Export a jaxface model as ONNX or a TF SavedModel for serving.')
  parser.add_argument('--checkpoint', required=True,
                      help='a training workdir (its best checkpoint), one checkpoint step, or a jaxface.convert folder')
  parser.add_argument('--format', required=True, choices=FORMATS)
  parser.add_argument('--out', required=True, help='the .onnx file, or the SavedModel folder')
  parser.add_argument('--flip-tta', action=argparse.BooleanOptionalAction, default=None,
                      help='also embed the mirrored face inside the graph (default: as the checkpoint was calibrated)')
  parser.add_argument('--platforms', default=','.join(DEFAULT_PLATFORMS),
                      help='savedmodel: the platforms the StableHLO is lowered for (comma-separated)')
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  """The CLI; returns 0, or 2 with one line on stderr when the export cannot be made."""
  args = _parse_args(argv)
  from jaxface.checkpoints import CheckpointError  # pylint: disable=import-outside-toplevel

  try:
    out = export(args.checkpoint, args.format, args.out, flip_tta=args.flip_tta,
                 platforms=[p for p in args.platforms.split(',') if p])
  except (CheckpointError, ExportError) as error:
    print(f'error: {error}', file=sys.stderr)
    return 2
  print(f'wrote {out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
