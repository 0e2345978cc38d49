"""Tests for jaxface.data.check: a clean run, then one deliberately broken dataset per kind of problem."""
from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys

import pytest

from jaxface.data import check

PERSON = '00000003'
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_clean_synthetic_set(synthetic_data_dir, synthetic_settings, capsys):
  report = check.check(synthetic_data_dir)
  total = synthetic_settings['people'] * synthetic_settings['photos_per_person']
  fakes = round(synthetic_settings['fake_fraction'] * total)
  assert report.problems == []
  assert report.ok
  assert report.people == synthetic_settings['people']
  assert (report.real_images, report.fake_images) == (total - fakes, fakes)
  assert report.test_pairs == synthetic_settings['test_pairs']
  quarter = synthetic_settings['test_pairs'] // 4
  assert report.labelled_pairs == {'same': quarter, 'different': quarter, 'own_fake': quarter, 'other_fake': quarter}
  assert report.decoded_images == total + 2 * synthetic_settings['test_pairs']
  assert check.main([str(synthetic_data_dir)]) == 0
  out = capsys.readouterr().out
  assert f'train images: {total} ({total - fakes} real, {fakes} fake)' in out
  assert 'problems: 0' in out


def _edit_meta(root: pathlib.Path, edit) -> None:
  path = root / 'train/meta.json'
  meta = json.loads(path.read_text())
  edit(meta)
  path.write_text(json.dumps(meta))


def _missing_file(root):
  (root / f'train/images/{PERSON}/2.jpg').unlink()
  return f'train/images/{PERSON}/2.jpg', 'named in meta.json but missing'


def _file_without_key(root):
  shutil.copy(root / f'train/images/{PERSON}/0.jpg', root / f'train/images/{PERSON}/99.jpg')
  return f'train/images/{PERSON}/99.jpg', 'without a meta.json key'


def _bad_value(root):
  _edit_meta(root, lambda meta: meta.update({f'{PERSON}/1.jpg': 2}))
  return 'train/meta.json', f"key '{PERSON}/1.jpg' has value 2"


def _malformed_json(root):
  path = root / 'train/meta.json'
  path.write_text(path.read_text()[:-20])
  return 'train/meta.json', 'malformed JSON'


def _duplicate_key(root):
  path = root / 'train/meta.json'
  path.write_text(path.read_text().replace('{', '{' + f'"{PERSON}/0.jpg": 0,', 1))
  return 'train/meta.json', 'duplicate key'


def _truncated_image(root):
  path = root / f'train/images/{PERSON}/4.jpg'
  path.write_bytes(path.read_bytes()[:700])
  return f'train/images/{PERSON}/4.jpg', 'truncated or corrupt'


def _empty_image(root):
  (root / 'test_public/00000005/0.jpg').write_bytes(b'')
  return 'test_public/00000005/0.jpg', 'empty file'


def _not_an_image(root):
  (root / f'train/images/{PERSON}/1.jpg').write_text('<html>404</html>')
  return f'train/images/{PERSON}/1.jpg', 'cannot decode image'


def _pair_missing_image(root):
  (root / 'test_public/00000007/1.jpg').unlink()
  return 'test_public/00000007/1.jpg', 'missing from pair folder 00000007'


def _empty_person_folder(root):
  (root / 'train/images/00000099').mkdir()
  return 'train/images/00000099', 'empty person folder'


def _labels_missing_pair(root):
  lines = (root / 'labels.csv').read_text().splitlines()
  (root / 'labels.csv').write_text('\n'.join(lines + ['00000999,0,different']) + '\n')
  return f'labels.csv: line {len(lines) + 1}', 'pair 00000999 has no folder'


def _labels_bad_label(root):
  path = root / 'labels.csv'
  lines = path.read_text().splitlines()
  pair_id, _, kind = lines[3].split(',')
  lines[3] = f'{pair_id},2,{kind}'
  path.write_text('\n'.join(lines) + '\n')
  return 'labels.csv: line 4', "label '2'"


def _labels_kind_mismatch(root):
  path = root / 'labels.csv'
  lines = path.read_text().splitlines()
  index = next(i for i, line in enumerate(lines) if line.endswith(',same'))
  lines[index] = lines[index].replace(',1,same', ',0,same')
  path.write_text('\n'.join(lines) + '\n')
  return f'labels.csv: line {index + 1}', 'of kind same has label 0, expected 1'


def _labels_bad_kind_name(root):
  path = root / 'labels.csv'
  path.write_text(path.read_text().replace(',different', ',stranger?', 1))
  return 'labels.csv', "kind 'stranger?', not a name"


BREAKAGES = [_missing_file, _file_without_key, _bad_value, _malformed_json, _duplicate_key, _truncated_image,
             _empty_image, _not_an_image, _pair_missing_image, _empty_person_folder, _labels_missing_pair,
             _labels_bad_label, _labels_kind_mismatch, _labels_bad_kind_name]


@pytest.mark.parametrize('breakage', BREAKAGES, ids=lambda f: f.__name__.lstrip('_'))
def test_each_problem_is_reported_on_one_line_naming_the_file(synthetic_data_dir, tmp_path, capsys, breakage):
  root = tmp_path / 'data'
  shutil.copytree(synthetic_data_dir, root)
  where, what = breakage(root)
  report = check.check(root, workers=1)
  assert len(report.problems) == 1, report.problems
  problem = report.problems[0]
  assert problem.startswith(str(root / where)), problem
  assert what in problem
  assert '\n' not in problem
  assert check.main([str(root), '--workers', '1']) == 2
  captured = capsys.readouterr()
  assert problem in captured.out
  assert 'Traceback' not in captured.out + captured.err


def test_folder_without_data(tmp_path, capsys):
  assert check.main([str(tmp_path / 'nowhere')]) == 2
  out = capsys.readouterr().out
  assert 'no train/ or test_public/ folder' in out


def test_command_line_exit_status_without_traceback(synthetic_data_dir, tmp_path):
  root = tmp_path / 'data'
  shutil.copytree(synthetic_data_dir, root)
  (root / 'train/meta.json').write_text('{not json')
  result = subprocess.run([sys.executable, '-m', 'jaxface.data.check', str(root)], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=120)
  assert result.returncode == 2
  assert 'malformed JSON' in result.stdout
  assert 'Traceback' not in result.stdout + result.stderr


def test_realfaces_dev_is_clean(realfaces_dev_dir):
  report = check.check(realfaces_dev_dir)
  assert report.problems == []
  assert report.people > 1000
  assert report.test_pairs == 436
  assert report.labelled_pairs == {'same': 150, 'different': 150, 'fake': 136}
  assert report.fake_images > 0 and report.real_images > report.fake_images
  assert report.decoded_images == report.real_images + report.fake_images + 2 * report.test_pairs
