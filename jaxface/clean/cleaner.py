"""The cleaner's command line and files: embed every photo with a model, analyse (`jaxface.clean.analysis`), write
the report, the exclude list and contact sheets. What it does and why: the package docstring (`jaxface.clean`).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import os
import pathlib
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from jaxface.clean.analysis import CleanError, CleanParams, CleanResult, Finding, analyse
from jaxface.data import challenge

PathLike = str | os.PathLike

REPORT_NAME = 'report.csv'
EXCLUDE_NAME = 'exclude.txt'
EMBEDDINGS_NAME = 'embeddings.npz'
SUMMARY_NAME = 'summary.json'
SHEETS_DIR = 'sheets'
REPORT_FIELDS = ('kind', 'folder', 'photo', 'other', 'score', 'threshold', 'detail')


# ----------------------------------------------------------------------------------------------------------------------
# Files.


def write_report(out: PathLike, findings: Sequence[Finding]) -> pathlib.Path:
  """Writes report.csv (REPORT_FIELDS; scores rounded to 4 places, '' when there is none)."""
  path = pathlib.Path(out) / REPORT_NAME
  with path.open('w', newline='', encoding='utf-8') as handle:
    writer = csv.writer(handle)
    writer.writerow(REPORT_FIELDS)
    for finding in findings:
      row = dataclasses.asdict(finding)
      for name in ('score', 'threshold'):
        row[name] = '' if np.isnan(row[name]) else f'{row[name]:.4f}'
      writer.writerow([row[name] for name in REPORT_FIELDS])
  return path


def write_exclude(out: PathLike, exclude: Sequence[str], header: str = '') -> pathlib.Path:
  """Writes exclude.txt: '#' comment lines, then one meta.json key a line."""
  path = pathlib.Path(out) / EXCLUDE_NAME
  lines = [f'# {line}' for line in header.splitlines()] + list(exclude)
  path.write_text('\n'.join(lines) + '\n', encoding='utf-8')
  return path


def save_embeddings(path: PathLike, keys: Sequence[str], embeddings: np.ndarray, is_fake: Sequence[int],
                    faceless: Sequence[str], info: dict[str, Any]) -> None:
  """Stores what the analysis needs, so thresholds can be tried again without embedding (`--embeddings`)."""
  np.savez(path, keys=np.asarray(keys, dtype=str), embeddings=np.asarray(embeddings, np.float32),
           is_fake=np.asarray(is_fake, np.int8), faceless=np.asarray(list(faceless), dtype=str),
           info=np.asarray(json.dumps(info)))


def load_embeddings(path: PathLike) -> tuple[list[str], np.ndarray, np.ndarray, list[str], dict[str, Any]]:
  """Reads `save_embeddings`' file: (keys, embeddings, is_fake, faceless keys, info)."""
  try:
    with np.load(path, allow_pickle=False) as stored:
      return ([str(k) for k in stored['keys']], stored['embeddings'].astype(np.float32),
              stored['is_fake'].astype(np.int64), [str(k) for k in stored['faceless']], json.loads(str(stored['info'])))
  except (OSError, ValueError, KeyError) as error:
    raise CleanError(f'{path}: cannot read embeddings ({type(error).__name__}: {error}) (give the embeddings.npz '
                     'that python -m jaxface.clean wrote, or embed again without --embeddings)') from None


# ----------------------------------------------------------------------------------------------------------------------
# Faces and embeddings.


def decode_face(jpeg: bytes) -> np.ndarray:
  """A cached face's JPEG -> (112, 112, 3) uint8 RGB."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  with Image.open(io.BytesIO(jpeg)) as image:
    return np.asarray(image.convert('RGB'), np.uint8)


def aligned_faces(data_dir: PathLike, cache_dir: PathLike, aligner_name: str = 'mtcnn',
                  aligner_path: str | None = None, batch_size: int = 32, progress: bool = True):
  """Aligns (into the cache) every train photo not aligned yet; returns the images and a face reader.

  Uses preprocessing's own align stage (`jaxface.data.align_stage.align_into_cache`) and cache settings, so the cache
  is the one `scripts/preprocess.py --cache-dir` reads and writes. Cache keys are the photos' content hashes, so a
  copied data folder finds its faces.

  Returns:
    (images: list of challenge.TrainImage, statuses: {path: stage.PhotoStatus}, read: path -> cached face).
  """
  from jaxface.align import cache as cache_lib  # pylint: disable=import-outside-toplevel
  from jaxface.data import align_stage as stage  # pylint: disable=import-outside-toplevel
  from jaxface.data import builder  # pylint: disable=import-outside-toplevel

  data_dir = pathlib.Path(data_dir).absolute()
  images = challenge.list_train_images(data_dir)
  options = builder.BuildOptions(aligner=aligner_name, aligner_path=aligner_path, batch_size=batch_size,
                                 progress=progress)
  aligner = builder.make_aligner(options)
  cache = cache_lib.AlignCache(cache_dir, aligner.name, {
      'aligner': aligner.settings(), 'max_photo_side': options.max_photo_side,
      'jpeg_quality': options.jpeg_quality, 'face_size': builder.FACE_SIZE})
  statuses, _ = stage.align_into_cache([image.path for image in images], aligner, cache, options)
  return images, statuses, cache.get


def embed_faces(faces: Callable[[int], np.ndarray], count: int, checkpoint: PathLike, batch_size: int = 128,
                progress: bool = True) -> np.ndarray:
  """Unit-norm embeddings (count, D) of `faces(i)` (aligned (112, 112, 3) uint8), in batches with a progress bar."""
  from jaxface import verify  # pylint: disable=import-outside-toplevel  (JAX loads here)
  verifier = verify.FaceVerifier.load(checkpoint, aligner='none', batch_size=batch_size)
  chunks = []
  bar = None
  if progress:
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    bar = tqdm(total=count, desc='embed', unit='photo', mininterval=2.0)
  for start in range(0, count, batch_size):
    batch = np.stack([faces(i) for i in range(start, min(start + batch_size, count))])
    embeddings, _ = verifier.infer(batch)
    chunks.append(np.asarray(embeddings, np.float32))
    if bar is not None:
      bar.update(len(batch))
  if bar is not None:
    bar.close()
  embeddings = np.concatenate(chunks) if chunks else np.zeros((0, 1), np.float32)
  return embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)


def embed_data_dir(data_dir: PathLike, checkpoint: PathLike, cache_dir: PathLike, aligner_name: str = 'mtcnn',
                   aligner_path: str | None = None, batch_size: int = 128, progress: bool = True
                   ) -> tuple[list[str], np.ndarray, np.ndarray, list[str], Callable[[str], np.ndarray | None]]:
  """Aligns (cached) and embeds every train photo of a challenge folder.

  Returns:
    (keys, embeddings (N, D), is_fake (N,), faceless keys, face_of: key -> aligned face or None).
  """
  images, statuses, read = aligned_faces(data_dir, cache_dir, aligner_name, aligner_path, progress=progress)
  usable = [image for image in images if statuses[image.path].state in ('aligned', 'low_score')]
  faceless = [image.rel_path for image in images if statuses[image.path].state not in ('aligned', 'low_score')]
  by_key = {image.rel_path: image.path for image in images}

  def face_of(key: str) -> np.ndarray | None:
    face = read(by_key[key]) if key in by_key else None
    return None if face is None else decode_face(face.jpeg)

  embeddings = embed_faces(lambda i: face_of(usable[i].rel_path), len(usable), checkpoint, batch_size, progress)
  return ([image.rel_path for image in usable], embeddings, np.asarray([image.is_fake for image in usable]),
          faceless, face_of)


# ----------------------------------------------------------------------------------------------------------------------
# Contact sheets.


def contact_sheet(tiles: Sequence[tuple[np.ndarray | None, str, tuple[int, int, int]]], title: str,
                  columns: int = 8, tile: int = 112) -> Any:
  """A PIL image: a title line, then faces in a grid, each with a coloured frame and a caption."""
  from PIL import Image, ImageDraw  # pylint: disable=import-outside-toplevel
  caption, frame = 14, 4
  cell = tile + 2 * frame
  rows = max(1, -(-len(tiles) // columns))
  sheet = Image.new('RGB', (columns * cell, 20 + rows * (cell + caption)), (255, 255, 255))
  draw = ImageDraw.Draw(sheet)
  draw.text((4, 4), title, fill=(0, 0, 0))
  for number, (face, text, colour) in enumerate(tiles):
    x, y = (number % columns) * cell, 20 + (number // columns) * (cell + caption)
    draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=colour)
    if face is not None:
      sheet.paste(Image.fromarray(face).resize((tile, tile)), (x + frame, y + frame))
    draw.text((x + 2, y + cell), text[:20], fill=(0, 0, 0))
  return sheet


GREEN, RED, BLUE, GREY, ORANGE = (40, 160, 40), (220, 30, 30), (40, 90, 220), (150, 150, 150), (240, 150, 20)


def write_sheets(out: PathLike, result: CleanResult, keys: Sequence[str], is_fake: Sequence[int],
                 face_of: Callable[[str], np.ndarray | None], limit: int = 300, per_folder: int = 48
                 ) -> list[pathlib.Path]:
  """Contact sheets of flagged folders (core green, outliers red, proposed parts blue/orange, fakes grey) and merge
  pairs; at most `limit` sheets: mixed folders, then folders with outliers (lowest score first), unresolved folders,
  and merge pairs (highest score first) with what is left."""
  sheets_dir = pathlib.Path(out) / SHEETS_DIR
  sheets_dir.mkdir(parents=True, exist_ok=True)
  by_folder: dict[str, list[int]] = {}
  for index, key in enumerate(keys):
    by_folder.setdefault(key.split('/', 1)[0], []).append(index)
  flagged = [(name, r) for name, r in result.folder_results.items() if r.unresolved or r.flagged.any()]
  # Mixed folders first, then folders with outliers (lowest score first), then unresolved ones.
  flagged.sort(key=lambda item: (2, 0.0) if item[1].unresolved else (
      0 if item[1].parts else 1, float(np.min(item[1].scores))))
  written = []
  for name, folder in flagged[:limit]:
    members = by_folder[name]
    reals = [i for i in members if not is_fake[i]]
    fakes = [i for i in members if is_fake[i]]
    part_of = {int(i): number for number, part in enumerate(folder.parts, 1) for i in part}
    tiles = []
    for slot, index in enumerate(reals):
      score = folder.scores[slot]
      colour = GREY if folder.unresolved else (BLUE if part_of.get(slot) == 1 else ORANGE if slot in part_of else
                                               RED if folder.flagged[slot] else GREEN)
      tiles.append((face_of(keys[index]), f'{keys[index].split("/", 1)[1]} {score:.2f}', colour))
    tiles += [(face_of(keys[i]), f'{keys[i].split("/", 1)[1]} fake', GREY) for i in fakes]
    kind = 'unresolved' if folder.unresolved else 'mixed' if folder.parts else 'outliers'
    sheet = contact_sheet(tiles[:per_folder], f'{name}: {kind} (green core, red outlier, blue/orange split, grey '
                          'fake or unresolved; caption: file, cosine to the core)')
    path = sheets_dir / f'{kind}_{name}.png'
    sheet.save(path)
    written.append(path)
  for a, b, score in sorted(result.merges, key=lambda m: -m[2])[:max(0, limit - len(written))]:
    tiles = [(face_of(keys[i]), f'{a} {keys[i].split("/", 1)[1]}', GREEN) for i in by_folder[a] if not is_fake[i]][:24]
    tiles += [(face_of(keys[i]), f'{b} {keys[i].split("/", 1)[1]}', BLUE) for i in by_folder[b] if not is_fake[i]][:24]
    sheet = contact_sheet(tiles, f'merge? {a} (green) and {b} (blue): score {score:.3f}')
    path = sheets_dir / f'merge_{a}_{b}.png'
    sheet.save(path)
    written.append(path)
  return written


# ----------------------------------------------------------------------------------------------------------------------
# Command line.


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  defaults = CleanParams()
  parser = argparse.ArgumentParser(
      prog='python -m jaxface.clean', formatter_class=argparse.RawDescriptionHelpFormatter,
      description='Label cleaning: photos that do not belong, folders that mix people or hold the same person, '
                  'near-duplicates.')
  parser.add_argument('data_dir', help='challenge folder with train/images and train/meta.json')
  parser.add_argument('--checkpoint', default=None, help='model to embed with (a workdir or converted checkpoint, '
                      'e.g. runs/mbf_ms1m_init); not needed with --embeddings')
  parser.add_argument('--out', required=True, help='folder for report.csv, exclude.txt, sheets/, embeddings.npz')
  parser.add_argument('--cache-dir', default=None, help='align cache root (default OUT/_align_cache; give '
                      'TFDS_DIR/_align_cache of scripts/preprocess.py to reuse its faces)')
  parser.add_argument('--aligner', default='mtcnn', choices=('dfa', 'mtcnn', 'retinaface', 'none'),
                      help='aligns the photos the cache lacks (default mtcnn, as preprocessing)')
  parser.add_argument('--aligner-path', default=None, help='DFA snapshot folder or RetinaFace .pth')
  parser.add_argument('--embeddings', default=None, help='reuse an embeddings.npz of an earlier run (no aligning, '
                      'no network): to try other thresholds')
  parser.add_argument('--batch-size', type=int, default=128, help='faces per network call')
  for name, text in (('edge', 'cosine joining two photos of a folder'),
                     ('outlier', 'cosine to the folder core below which a photo does not belong'),
                     ('merge', 'mean cross cosine making two folders a merge candidate'),
                     ('duplicate', 'cosine making two photos near-duplicates')):
    parser.add_argument(f'--{name}', type=float, default=getattr(defaults, name),
                        help=f'{text} (default {getattr(defaults, name)}, chosen on injected noise: CleanParams)')
  parser.add_argument('--max-sheets', type=int, default=300, help='contact sheets written at most')
  parser.add_argument('--no-progress', action='store_true', help='no progress bars')
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  progress = not args.no_progress
  out = pathlib.Path(args.out)
  params = CleanParams(edge=args.edge, outlier=args.outlier, merge=args.merge, duplicate=args.duplicate)
  try:
    params.check()
    data_dir = pathlib.Path(args.data_dir)
    if not challenge.meta_path(data_dir).is_file():
      raise CleanError(f'{challenge.meta_path(data_dir)}: not found (give the challenge folder holding train/)')
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    face_of: Callable[[str], np.ndarray | None] = lambda key: None
    if args.embeddings:
      keys, embeddings, is_fake, faceless, info = load_embeddings(args.embeddings)
      meta = challenge.read_meta(data_dir)
      strangers = [key for key in keys if key not in meta]
      if strangers:
        raise CleanError(f'{args.embeddings}: {len(strangers)} of its photos are not in {challenge.meta_path(data_dir)}'
                         f', e.g. {strangers[0]!r} (embed this folder again without --embeddings)')
      face_of = face_reader(data_dir, info)
    else:
      if not args.checkpoint:
        raise CleanError('--checkpoint is needed to embed the photos (or give --embeddings)')
      from jaxface.data import builder  # pylint: disable=import-outside-toplevel
      cache_dir = pathlib.Path(args.cache_dir) if args.cache_dir else out / '_align_cache'
      try:
        keys, embeddings, is_fake, faceless, face_of = embed_data_dir(
            data_dir, args.checkpoint, cache_dir, args.aligner, args.aligner_path, args.batch_size, progress)
      except builder.PreprocessError as error:
        raise CleanError(str(error)) from None
      info = {'data_dir': str(data_dir.absolute()), 'checkpoint': str(args.checkpoint), 'cache_dir': str(cache_dir),
              'aligner': args.aligner}
      save_embeddings(out / EMBEDDINGS_NAME, keys, embeddings, is_fake, faceless, info)
    embed_seconds = time.perf_counter() - start
    result = analyse(keys, embeddings, is_fake, params, faceless=faceless, progress=progress)
  except (CleanError, challenge.DataFormatError) as error:
    print(f'error: {error}', file=sys.stderr)
    return 2
  except OSError as error:
    print(f'error: {error} (check that the folder exists and is writable)', file=sys.stderr)
    return 2
  write_report(out, result.findings)
  write_exclude(out, result.exclude, header=f'python -m jaxface.clean {args.data_dir}: {len(result.exclude)} '
                f'photos that do not belong\nthresholds: {json.dumps(dataclasses.asdict(params))}')
  sheets = write_sheets(out, result, keys, is_fake, face_of, limit=args.max_sheets)
  kinds: dict[str, int] = {}
  for finding in result.findings:
    kinds[finding.kind] = kinds.get(finding.kind, 0) + 1
  summary = {'photos': len(keys), 'folders': len({key.split('/', 1)[0] for key in keys}), 'findings': kinds,
             'excluded': len(result.exclude), 'sheets': len(sheets), 'params': dataclasses.asdict(params),
             'seconds': {'align_and_embed': round(embed_seconds, 1),
                         **{name: round(value, 2) for name, value in result.seconds.items()}}}
  (out / SUMMARY_NAME).write_text(json.dumps(summary, indent=1) + '\n', encoding='utf-8')
  print(json.dumps(summary))
  print(f'report: {out / REPORT_NAME}; exclude list: {out / EXCLUDE_NAME}; sheets: {out / SHEETS_DIR}')
  return 0


def face_reader(data_dir: pathlib.Path, info: dict[str, Any]) -> Callable[[str], np.ndarray | None]:
  """The cached faces behind an embeddings file, for its contact sheets (a lookup only: blank tiles when the
  cache recorded in the file is gone)."""
  from jaxface.align import cache as cache_lib  # pylint: disable=import-outside-toplevel
  root = pathlib.Path(info.get('cache_dir', ''))
  settings_files = sorted(root.glob(f'{info.get("aligner", "mtcnn")}-*/settings.json')) if info.get('cache_dir') else []
  if not settings_files:
    return lambda key: None
  stored = json.loads(settings_files[0].read_text(encoding='utf-8'))
  cache = cache_lib.AlignCache(root, stored['aligner'], stored['settings'])
  images_dir = challenge.train_images_dir(data_dir.absolute())

  def face_of(key: str) -> np.ndarray | None:
    face = cache.get(images_dir / key)
    return None if face is None else decode_face(face.jpeg)

  return face_of

