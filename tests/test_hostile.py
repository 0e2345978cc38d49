"""Hostile input through every entry point: check, preprocess, evaluate --data-dir and verify.

One challenge folder (tiny synthetic people) gets a hostile photo of every kind, in train/ (with its meta.json entry)
and as photo 0 of a test pair: a 0-byte file, a truncated JPEG, text named .jpg, a decompression bomb (a PNG header
claiming 40000x40000 pixels), a folder and a symlink loop where a photo should be, and photos that are fine but unusual
(grey, RGBA, CMYK, 16-bit PNG, EXIF-rotated, 1x1 px, a path with spaces and non-ASCII). meta.json also lacks a photo on
disk and lists a missing one, and one test pair has no 1.jpg. Folders of their own hold a meta.json that is not JSON
and one with a value other than 0 or 1. Noise with no face goes through the MTCNN aligner.

For each: no traceback, one line naming the file and what to do, exit 2 where the run cannot go on, and every other
photo processed. No image file is committed: the test writes them all.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import struct
import subprocess
import sys
import zlib

import ml_collections
import numpy as np
import pytest
from PIL import Image

from jaxface import checkpoints, preprocess
from jaxface import evaluate as evaluate_lib
from jaxface import verify as verify_lib
from jaxface.data import challenge, check, synthetic

REPO = pathlib.Path(__file__).resolve().parents[1]
BAD = ('zero_byte', 'truncated_jpeg', 'text_as_jpg', 'bomb', 'folder', 'symlink_loop')  # unreadable
ODD = ('grey', 'rgba', 'cmyk', 'png16', 'exif_rotated', 'one_pixel', 'spaces_non_ascii')  # readable
ODD_NAME = {'spaces_non_ascii': 'zoë ø 1.jpg'}
HOSTILE_PERSON = 'hostile person é'


def _photo(seed: int = 0) -> np.ndarray:
  """A face-sized photo with structure (so JPEG and the EXIF twin are meaningful)."""
  rng = np.random.default_rng(seed)
  base = np.kron(rng.integers(0, 256, (8, 7, 3)), np.ones((16, 16, 1)))[:128, :112]
  return np.clip(base + rng.integers(-10, 10, base.shape), 0, 255).astype(np.uint8)


def _bomb_png() -> bytes:
  """A valid PNG header claiming 40000x40000 grey pixels (1.6 gigapixels) with a tiny, short IDAT."""
  chunk = lambda kind, data: (struct.pack('>I', len(data)) + kind + data
                              + struct.pack('>I', zlib.crc32(kind + data) & 0xffffffff))
  ihdr = struct.pack('>IIBBBBB', 40000, 40000, 8, 0, 0, 0, 0)
  return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr) + chunk(b'IDAT', zlib.compress(b'\0' * 40001)) + chunk(b'IEND', b'')


def write_kind(path: pathlib.Path, kind: str, seed: int = 0) -> pathlib.Path:
  """Writes one hostile photo of `kind` at `path` (a .jpg name whatever the format inside, as the challenge names)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  photo = _photo(seed)
  if kind == 'zero_byte':
    path.write_bytes(b'')
  elif kind == 'truncated_jpeg':
    Image.fromarray(photo).save(path, quality=95)
    path.write_bytes(path.read_bytes()[:700])
  elif kind == 'text_as_jpg':
    path.write_text('this is a text file, not a photo\n')
  elif kind == 'bomb':
    path.write_bytes(_bomb_png())
  elif kind == 'folder':
    path.mkdir()
  elif kind == 'symlink_loop':
    os.symlink(path.name, path)  # points at itself
  elif kind == 'grey':
    Image.fromarray(photo[..., 0]).save(path, format='JPEG', quality=95)
  elif kind == 'rgba':
    Image.fromarray(np.dstack([photo, np.full(photo.shape[:2], 200, np.uint8)])).save(path, format='PNG')
  elif kind == 'cmyk':
    Image.fromarray(photo).convert('CMYK').save(path, format='JPEG', quality=95)
  elif kind == 'png16':
    Image.fromarray(photo[..., 1].astype(np.uint16) * 257).save(path, format='PNG')
  elif kind == 'exif_rotated':  # stored rotated a quarter turn, with the EXIF orientation that displays it upright
    img = Image.fromarray(np.ascontiguousarray(np.rot90(photo, 1)))  # counter-clockwise; orientation 6 turns it back
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(path, format='PNG', exif=exif)
  elif kind == 'upright_twin':
    Image.fromarray(photo).save(path, format='PNG')
  elif kind == 'one_pixel':
    Image.fromarray(photo[:1, :1]).save(path, format='JPEG', quality=95)
  elif kind == 'noise':
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (160, 160, 3), np.uint8)).save(path, quality=90)
  else:  # 'plain' and 'spaces_non_ascii': an ordinary JPEG
    Image.fromarray(photo).save(path, format='JPEG', quality=95)
  return path


def _name(kind: str) -> str:
  return ODD_NAME.get(kind, f'{kind}.jpg')


@pytest.fixture(scope='module')
def hostile(tmp_path_factory) -> dict:
  """The hostile challenge folder and where each kind lies."""
  root = tmp_path_factory.mktemp('hostile data')
  synthetic.generate(root, people=6, photos_per_person=3, test_pairs=4, size=112, seed=3)
  meta = json.loads(challenge.meta_path(root).read_text())
  train = {}
  for kind in BAD + ODD + ('upright_twin',):
    path = write_kind(challenge.train_images_dir(root) / HOSTILE_PERSON / _name(kind), kind)
    meta[f'{HOSTILE_PERSON}/{path.name}'] = 0
    train[kind] = path
  write_kind(challenge.train_images_dir(root) / HOSTILE_PERSON / 'unlisted.jpg', 'plain')  # on disk, not in meta.json
  meta[f'{HOSTILE_PERSON}/missing.jpg'] = 0  # in meta.json, not on disk
  challenge.meta_path(root).write_text(json.dumps(meta, ensure_ascii=False))
  pairs = {}
  for i, kind in enumerate(BAD + ODD):
    pair_dir = challenge.test_pairs_dir(root) / (f'pär {i}' if kind == 'spaces_non_ascii' else f'h{i:07d}')
    write_kind(pair_dir / '0.jpg', kind, seed=i)
    write_kind(pair_dir / '1.jpg', 'plain', seed=100 + i)
    pairs[kind] = pair_dir
  no_second = challenge.test_pairs_dir(root) / 'h_no_1'
  write_kind(no_second / '0.jpg', 'plain', seed=7)
  pairs['no_1_jpg'] = no_second
  return {'root': root, 'train': train, 'pairs': pairs}


def _no_traceback(text: str) -> None:
  assert 'Traceback' not in text, text[-3000:]


def _lines_naming(text: str, path: pathlib.Path) -> list[str]:
  return [line for line in text.splitlines() if str(path) in line]


# ----------------------------------------------------------------------------------------------------------------------
# check


def test_check_names_every_problem_once(hostile):
  result = subprocess.run([sys.executable, '-m', 'jaxface.data.check', str(hostile['root'])], capture_output=True,
                          text=True, cwd=REPO, timeout=300)
  text = result.stdout + result.stderr
  _no_traceback(text)
  assert result.returncode == 2, text
  for kind in BAD:
    for path in (hostile['train'][kind], hostile['pairs'][kind] / '0.jpg'):
      assert len(_lines_naming(text, path)) == 1, (kind, path, text)
  for kind in ODD:
    for path in (hostile['train'][kind], hostile['pairs'][kind] / '0.jpg'):
      assert not _lines_naming(text, path), (kind, text)
  person = challenge.train_images_dir(hostile['root']) / HOSTILE_PERSON
  assert len([l for l in text.splitlines() if 'unlisted.jpg' in l]) == 1, text
  assert len([l for l in text.splitlines() if 'missing.jpg' in l]) == 1, text
  assert len(_lines_naming(text, hostile['pairs']['no_1_jpg'] / '1.jpg')) == 1 or \
      len([l for l in text.splitlines() if 'h_no_1' in l]) == 1, text
  assert person.is_dir()


@pytest.mark.parametrize('meta_text, expected', [
    ('{"a/0.jpg": 0,', 'malformed JSON'),
    ('{"a/0.jpg": 2}', "has value 2, expected 0 (real) or 1 (generated)"),
])
def test_bad_meta_json_is_one_line_exit_2(tmp_path, meta_text, expected, capsys):
  root = tmp_path / 'data'
  write_kind(root / 'train' / 'images' / 'a' / '0.jpg', 'plain')
  challenge.meta_path(root).write_text(meta_text)
  assert check.main([str(root)]) == 2
  out = capsys.readouterr()
  lines = [l for l in (out.out + out.err).splitlines() if 'meta.json' in l]
  assert len(lines) == 1 and expected in lines[0], out
  assert preprocess.main(['--data-dir', str(root), '--out', str(tmp_path / 'out'), '--aligner', 'none',
                          '--no-progress']) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and str(challenge.meta_path(root)) in err[0] and expected in err[0], err


# ----------------------------------------------------------------------------------------------------------------------
# preprocess



def test_preprocess_skips_each_bad_photo_and_aligns_the_rest(hostile, tmp_path, capsys):
  out = tmp_path / 'out'
  code = preprocess.main(['--data-dir', str(hostile['root']), '--out', str(out), '--aligner', 'none', '--no-progress',
                         '--batch-size', '4'])
  printed = capsys.readouterr()
  _no_traceback(printed.out + printed.err)
  assert code == 1, printed  # some photos skipped: the report says which
  report = json.loads((out / 'preprocess_report.json').read_text())
  unreadable = {item['path']: item['error'] for item in report['unreadable']}
  bad_paths = [hostile['train'][k] for k in BAD] + [hostile['pairs'][k] / '0.jpg' for k in BAD]
  bad_paths.append(hostile['pairs']['no_1_jpg'] / '1.jpg')
  assert set(unreadable) == {str(p) for p in bad_paths}, unreadable
  for path, error in unreadable.items():
    assert error.startswith(f'{path}: ') and '\n' not in error and '(' in error, error  # names the file, what to do
  counts = report['counts']
  assert counts['aligned'] == counts['images'] - len(bad_paths)  # every other photo
  skipped_pairs = {hostile['pairs'][k].name for k in BAD} | {'h_no_1'}
  assert set(report['skipped_test_pairs']) == skipped_pairs
  assert report['splits']['test'] == len(list(challenge.test_pairs_dir(hostile['root']).iterdir())) - len(skipped_pairs)
  # meta.json's missing photo and the photo it does not list: one line each in what the run printed.
  for name in ('missing.jpg', 'unlisted.jpg'):
    assert len([l for l in printed.out.splitlines() if name in l]) == 1, printed.out
  _assert_exif_twin_aligns_alike(out, hostile)


def _assert_exif_twin_aligns_alike(out: pathlib.Path, hostile: dict) -> None:
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from jaxface.data import prepared  # pylint: disable=import-outside-toplevel
  builder = tfds.builder_from_directory(str(prepared.dataset_dir(out, prepared.FACES)))
  faces = {ex['source'].decode(): ex['image'] for ex in tfds.as_numpy(builder.as_dataset('train'))}
  rel = lambda path: path.relative_to(hostile['root']).as_posix()
  rotated, upright = faces[rel(hostile['train']['exif_rotated'])], faces[rel(hostile['train']['upright_twin'])]
  assert np.abs(rotated.astype(int) - upright.astype(int)).mean() < 1.0


def test_preprocess_with_a_detector_says_no_face_found(tmp_path, capsys):
  pytest.importorskip('torch')
  root = tmp_path / 'data'
  meta = {}
  for k in range(2):
    write_kind(root / 'train' / 'images' / 'noise' / f'{k}.jpg', 'noise', seed=k)
    meta[f'noise/{k}.jpg'] = 0
  challenge.meta_path(root).write_text(json.dumps(meta))
  for side in range(2):  # test pairs keep faceless photos (as centre crops), so the dataset is not empty
    write_kind(root / 'test_public' / 'p0' / f'{side}.jpg', 'noise', seed=10 + side)
  code = preprocess.main(['--data-dir', str(root), '--out', str(tmp_path / 'out'), '--aligner', 'mtcnn',
                         '--no-progress', '--device', 'cpu'])
  printed = capsys.readouterr()
  _no_traceback(printed.out + printed.err)
  assert code == 1, printed  # photos skipped
  text = printed.out + printed.err
  for k in range(2):
    lines = _lines_naming(text, root / 'train' / 'images' / 'noise' / f'{k}.jpg')
    assert len(lines) == 1 and 'no face found' in lines[0], text


# ----------------------------------------------------------------------------------------------------------------------
# evaluate --data-dir and verify, on a tiny random model


def _tiny_workdir(path: pathlib.Path) -> pathlib.Path:
  import jax  # pylint: disable=import-outside-toplevel
  from jaxface.inference import build_inference_model  # pylint: disable=import-outside-toplevel
  config = ml_collections.ConfigDict()
  config.model = ml_collections.ConfigDict(dict(
      arch='small_cnn', width=0.25, input_size=56, embedding_dim=64, dropout=0.0, fake_head='features',
      dtype='float32', bn_axis_name='batch'))
  config.data = ml_collections.ConfigDict(dict(aligner='none', aligner_path='', tfds_dir=''))
  checkpoints.save_config(path, config)
  model = build_inference_model(config.model)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), np.zeros((1, 56, 56, 3), np.float32)))
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda s: rng.normal(0, 0.05, s.shape).astype(s.dtype) + (s.ndim == 1), shapes)
  manager = checkpoints.best_manager(path)
  checkpoints.save(manager, 1, variables, {'step': 1, 'scoring': {'fuse_strength': 1.0, 'threshold': 0.5}},
                   force=True)
  manager.close()
  return path


@pytest.fixture(scope='module')
def workdir(tmp_path_factory) -> pathlib.Path:
  return _tiny_workdir(tmp_path_factory.mktemp('run'))


def test_evaluate_names_every_bad_photo(hostile, workdir, tmp_path, capsys):
  code = evaluate_lib.main(['--checkpoint', str(workdir), '--data-dir', str(hostile['root']), '--out',
                            str(tmp_path / 'eval'), '--no-progress', '--batch-pairs', '4'])
  printed = capsys.readouterr()
  assert code == 2, printed  # a submission needs every pair: it cannot go on
  lines = printed.err.strip().splitlines()
  bad = [hostile['pairs'][k] / '0.jpg' for k in BAD] + [hostile['pairs']['no_1_jpg'] / '1.jpg']
  for path in bad:
    assert len(_lines_naming(printed.err, path)) == 1, (path, printed.err)
  assert len(lines) == len(bad) + 1, lines  # one per photo, and the summary
  for kind in ODD:  # read and aligned: never named
    assert not _lines_naming(printed.err, hostile['pairs'][kind] / '0.jpg'), printed.err


def test_evaluate_scores_a_folder_of_odd_but_valid_photos(hostile, workdir, tmp_path, capsys):
  root = tmp_path / 'odd data'
  for kind in ODD:
    shutil.copytree(hostile['pairs'][kind], root / 'test_public' / hostile['pairs'][kind].name)
  assert evaluate_lib.main(['--checkpoint', str(workdir), '--data-dir', str(root), '--out', str(tmp_path / 'eval'),
                            '--no-progress']) == 0, capsys.readouterr()
  rows = (tmp_path / 'eval' / 'submission.csv').read_text(encoding='utf-8').splitlines()
  assert len(rows) == 1 + len(ODD)


@pytest.mark.parametrize('kind', BAD + ODD)
def test_verify(hostile, workdir, kind, capsys):
  good = hostile['train']['upright_twin']
  code = verify_lib.main([str(hostile['train'][kind]), str(good), '--checkpoint', str(workdir)])
  printed = capsys.readouterr()
  if kind in BAD:
    assert code == 2
    lines = printed.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f'error: {hostile["train"][kind]}: ') and '(' in lines[0], lines
  else:
    assert code in (0, 1), printed
    assert printed.out.startswith(('same person', 'not the same person')), printed


def test_verify_and_evaluate_with_a_detector_say_no_face_found(workdir, tmp_path, capsys):
  pytest.importorskip('torch')
  noise = write_kind(tmp_path / 'data' / 'test_public' / 'p0' / '0.jpg', 'noise', seed=1)
  write_kind(tmp_path / 'data' / 'test_public' / 'p0' / '1.jpg', 'noise', seed=2)
  assert verify_lib.main([str(noise), str(noise), '--checkpoint', str(workdir), '--aligner', 'mtcnn']) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err == [f'error: {noise}: no face found (use a photo showing one face, roughly frontal)'], err
  code = evaluate_lib.main(['--checkpoint', str(workdir), '--data-dir', str(tmp_path / 'data'), '--out',
                            str(tmp_path / 'eval'), '--no-progress', '--aligner', 'mtcnn'])
  printed = capsys.readouterr()
  assert code == 0, printed
  for side in range(2):
    lines = _lines_naming(printed.out + printed.err, noise.parent / f'{side}.jpg')
    assert len(lines) == 1 and 'no face found' in lines[0], printed
