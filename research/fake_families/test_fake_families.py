"""The fake-family study's parts on generated photos: the catalog and its split, the views, the probes, the rows'
training and test sets, source balancing and the KYC accept shares. Nothing here reads ../shared or trains a network."""
from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from research.fake_families import benchmark, catalog, kyc, probes, views
from research.fake_families.items import Item


def _write(path: pathlib.Path, size: tuple[int, int], seed: int) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
  Image.fromarray(pixels).save(path, quality=90)


def _dataset(root: pathlib.Path, name: str, folders: dict[str, tuple[str, list[tuple[int, tuple[int, int]]]]]) -> None:
  """folders: {folder: (source, [(is_fake, size), ...])} -> root/data/<name>/train/{images,meta.json,sources.json}."""
  train = root / 'data' / name / 'train'
  meta, sources = {}, {}
  for index, (folder, (source, photos)) in enumerate(sorted(folders.items())):
    sources[folder] = source
    for k, (is_fake, size) in enumerate(photos):
      _write(train / 'images' / folder / f'{k}.jpg', size, index * 10 + k)
      meta[f'{folder}/{k}.jpg'] = is_fake
  (train / 'meta.json').write_text(json.dumps(meta))
  (train / 'sources.json').write_text(json.dumps(sources))


@pytest.fixture(scope='module')
def shared(tmp_path_factory) -> pathlib.Path:
  root = tmp_path_factory.mktemp('shared')
  _dataset(root, 'realfaces-train', {f'{i:08d}': (s, [(f, (40, 40))]) for i, (s, f) in enumerate(
      [('celeba_wild', 0)] * 6 + [('ffhq_real', 0)] * 4 + [('stylegan2_fake', 1)] * 4)})
  _dataset(root, 'realfaces-dev', {'00000000': ('lfw_real', [(0, (50, 50))]), '00000001': ('fake', [(1, (250, 250))]),
                                   '00000002': ('fake', [(1, (256, 256))]), '00000003': ('orl_s1', [(0, (92, 112))])})
  _dataset(root, 'fakes-zoo', {**{f'{i:08d}': ('dfdc', [(0, (32, 32)), (1, (32, 32))]) for i in range(4)},
                               '00000010': ('ffpp_youtube', [(0, (30, 30))]),
                               '00000011': ('ffpp_face2face', [(1, (30, 30))]),
                               '00000012': ('t2i_flux_schnell', [(1, (30, 30))])})
  return root


def test_catalog_names_sources_and_families(shared):
  photos = catalog.list_photos(shared)
  by_source = {}
  for photo in photos:
    by_source.setdefault(photo.source, []).append(photo)
  assert {'lfw_swap', 'stylegan3', 'orl', 'stylegan2', 'dfdc_real', 'dfdc_fake', 't2i_flux'} <= set(by_source)
  assert by_source['lfw_swap'][0].family == 'classic_swap' and by_source['stylegan3'][0].family == 'gan'
  assert by_source['dfdc_fake'][0].family == 'dfdc' and by_source['dfdc_real'][0].family is None
  assert all(p.is_fake == (p.family is not None) for p in photos)
  with pytest.raises(FileNotFoundError, match='nowhere/data/fakes-zoo/train/meta.json: dataset fakes-zoo not found'):
    catalog.list_photos(pathlib.Path('/nowhere'), datasets=('fakes-zoo',))


def test_split_is_by_folder_and_seeded(shared):
  photos = catalog.list_photos(shared)
  dfdc = [p for p in photos if p.source.startswith('dfdc')]
  for seed in range(5):
    by_group = {}
    for photo in dfdc:
      by_group.setdefault(photo.group, set()).add(catalog.split_of(photo, seed))
    assert all(len(splits) == 1 for splits in by_group.values())  # a real frame and its fake never part
  many = [catalog.Photo(f'p{i}', 'd', 's', 0, f'g{i}') for i in range(2000)]
  share = np.mean([catalog.split_of(p, 0) == 'test' for p in many])
  assert 0.27 < share < 0.33
  assert [catalog.split_of(p, 0) for p in many[:50]] != [catalog.split_of(p, 1) for p in many[:50]]


def test_native_view_cuts_without_resampling():
  photo = np.arange(300 * 200 * 3, dtype=np.int64).reshape(300, 200, 3) % 251
  photo = photo.astype(np.uint8)
  marks = np.array([[90, 140], [110, 140], [100, 150], [92, 160], [108, 160]], np.float32)
  patch = views.native(photo, marks)
  assert patch.shape == (views.NATIVE_PX, views.NATIVE_PX, 3)
  cy, cx = np.round(marks.mean(axis=0)[::-1]).astype(int)
  np.testing.assert_array_equal(patch, photo[cy - 48:cy + 48, cx - 48:cx + 48])  # the photo's own pixels
  small = views.native(photo[:40, :40], marks / 5)  # smaller than the patch: reflected borders, still the size
  assert small.shape == (views.NATIVE_PX, views.NATIVE_PX, 3)


def test_launderings_and_the_t2i_look_move_landmarks_with_the_photo():
  photo = np.random.default_rng(0).integers(0, 256, (200, 160, 3), dtype=np.uint8)
  marks = np.array([[60, 80], [100, 80], [80, 100], [65, 120], [95, 120]], np.float32)
  for name in views.LAUNDERINGS:
    out, moved = views.launder(photo, marks, name)
    assert out.dtype == np.uint8 and out.ndim == 3
    np.testing.assert_allclose(moved / marks, [[out.shape[1] / 160, out.shape[0] / 200]] * 5, rtol=1e-5)
  looked, moved = views.t2i_look(photo, marks)
  assert views.eye_px(moved) == pytest.approx(views.T2I_EYE_PX, rel=0.02)  # 40 px apart -> 28
  tiny = marks * 0.5  # 20 px apart: never upscaled
  assert views.t2i_look(photo, tiny)[0].shape == photo.shape
  with pytest.raises(ValueError, match='unknown laundering'):
    views.launder(photo, marks, 'sepia')


def test_probes_find_a_shortcut_in_either_direction():
  labels = np.array([0, 0, 0, 1, 1, 1])
  readings = [dict(side=s, file_size=1.0, jpeg_qtable=0.0, saturation=float(i), face_px=1.0, sharpness=1.0)
              for i, s in enumerate([300, 310, 320, 100, 110, 120])]
  table = probes.table(readings, labels)
  assert table['side'] == 1.0 and table['best_name'] == 'side'  # smaller means fake: still a perfect probe
  assert table['file_size'] == 0.5  # constant: knows nothing
  assert table['saturation'] == 1.0


def _items():
  def photo(source, fake, group, family_split='train'):
    return Item(catalog.Photo(f'/{group}.jpg', 'd', source, fake, group), '', family_split)
  out = []
  for split in ('train', 'test'):
    for i in range(3):
      out += [photo('dfdc_real', 0, f'dfdc{split}{i}', split), photo('dfdc_fake', 1, f'dfdc{split}{i}', split),
              photo('ffpp_youtube', 0, f'yt{split}{i}', split), photo('ffpp_face2face', 1, f'f2f{split}{i}', split),
              photo('ffpp_deepfakes', 1, f'df{split}{i}', split), photo('celeba_wild', 0, f'cw{split}{i}', split),
              photo('t2i_sdxl', 1, f't2i{split}{i}', split), photo('ffhq_real', 0, f'ffhq{split}{i}', split),
              photo('stylegan2', 1, f'sg{split}{i}', split)]
  return out


def test_a_held_out_family_and_its_look_never_train():
  items = _items()
  train, test = benchmark.row_sets('dfdc', items)
  assert not any(it.photo.source.startswith('dfdc') for it in train)
  assert {it.photo.source for it in test} == {'dfdc_real', 'dfdc_fake'} and all(it.split == 'test' for it in test)
  train, test = benchmark.row_sets('reenact', items)
  assert 'ffpp_face2face' not in {it.photo.source for it in train}
  assert 'ffpp_youtube' not in {it.photo.source for it in train}  # the held-out family's look
  assert {it.photo.source for it in test} == {'ffpp_youtube', 'ffpp_face2face'}
  train, test = benchmark.row_sets('t2i', items)
  assert {it.transform for it in test} == {'look:t2i'} and 't2i_sdxl' not in {it.photo.source for it in train}
  assert {it.photo.source for it in test} == {'t2i_sdxl', 'celeba_wild', 'ffpp_youtube'}  # benchmark.T2I_REALS


def test_source_weights_balance_sources_and_classes():
  items = [it for it in _items() if it.split == 'train'][:-2]  # uneven counts
  weights = benchmark.source_weights(items, balanced=True)
  totals = {}
  for it, w in zip(items, weights):
    totals.setdefault((it.is_fake, it.source), 0.0)
    totals[it.is_fake, it.source] += w
  for label in (0, 1):
    values = [v for (fake, _), v in totals.items() if fake == label]
    np.testing.assert_allclose(values, values[0])
    assert sum(values) == pytest.approx(len(items) / 2)


def test_kyc_accept_shares_per_kind():
  rows = [{'kind': 'video_swap', 'similarity': s} for s in ('0.9', '0.1', '0.5', '0.2')] + \
         [{'kind': 'same', 'similarity': '0.7'}]
  assert kyc.accept_shares(rows, 'similarity', 0.5) == {'same': 1.0, 'video_swap': 0.5}
