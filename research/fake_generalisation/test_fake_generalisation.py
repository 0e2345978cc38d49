"""The generalisation benchmark's parts: laundering, shortcut probes, the frozen-backbone head trainer, row splits."""
from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxface.data import pseudofakes
from jaxface.metrics import roc_auc
from jaxface.models.heads import mean_std_pool
from jaxface.models.mobilefacenet import MobileFaceNet
from research.fake_generalisation import benchmark as fg
from research.fake_generalisation import fakebench, launder

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def _photo(seed: int = 0, size: tuple[int, int] = (40, 30)) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def test_launderings_keep_rgb_uint8_and_report_their_scale():
  photo = _photo()
  for name in launder.LAUNDERINGS:
    out, scale = launder.launder(photo, name)
    assert out.dtype == np.uint8 and out.shape[2] == 3
    assert out.shape[:2] == (round(40 * scale), round(30 * scale))
  assert launder.launder(photo, 'resize_0.5')[1] == 0.5
  grey, _ = launder.launder(photo, 'grey')
  assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
  blurred, _ = launder.launder(photo, 'blur_1')
  assert blurred.astype(float).std() < photo.astype(float).std()  # a blur of noise loses contrast
  with pytest.raises(ValueError, match='unknown laundering'):
    launder.launder(photo, 'sharpen')


def test_random_launder_is_seeded_and_changes_the_photo():
  photo = _photo(1, (64, 64))
  a, scale_a = launder.random_launder(photo, np.random.default_rng(3))
  b, scale_b = launder.random_launder(photo, np.random.default_rng(3))
  assert scale_a == scale_b and np.array_equal(a, b)
  assert a.shape != photo.shape or not np.array_equal(a, photo)


def test_probes_read_side_saturation_qtable_and_size(tmp_path):
  grey = np.repeat(_photo(2, (50, 50))[..., :1], 3, axis=2)
  Image.fromarray(grey).save(tmp_path / 'grey.jpg', quality=90)
  Image.fromarray(_photo(3, (100, 100))).save(tmp_path / 'colour.jpg', quality=50)
  Image.fromarray(_photo(3, (100, 100))).save(tmp_path / 'colour.png')
  g, c, p = (launder.probe_values(tmp_path / n) for n in ('grey.jpg', 'colour.jpg', 'colour.png'))
  assert g['side'] == 50 and c['side'] == 100
  assert g['saturation'] < 3 < c['saturation']
  assert c['jpeg_qtable'] > g['jpeg_qtable'] > 0 and p['jpeg_qtable'] == 0
  assert c['file_size'] == (tmp_path / 'colour.jpg').stat().st_size
  # A probe counts in its better direction: a detector that ranks fakes lowest still separates them.
  assert launder.probe_auc(np.array([0, 0, 1, 1]), np.array([3.0, 4.0, 1.0, 2.0])) == 1.0


@pytest.fixture(scope='module')
def mbf_variables():
  """Random-init MobileFaceNet variables for a test-sized (56 px) face; jitted: one compile, not one per op."""
  return jax.jit(MobileFaceNet().init)(jax.random.PRNGKey(1), jnp.zeros((1, 56, 56, 3)))


def test_the_stem_is_mobilefacenets_own_and_stage2_stats_pool_exactly(mbf_variables):
  images = jax.random.uniform(jax.random.PRNGKey(0), (2, 56, 56, 3), minval=-1, maxval=1)
  variables = mbf_variables
  _, stages = jax.jit(MobileFaceNet().apply)(variables, images)
  mine = fakebench.MobileFaceNetStem().apply(fakebench.stem_variables(variables), images)
  np.testing.assert_allclose(mine['stem'], stages['stem'], atol=1e-5)
  np.testing.assert_allclose(mine['stage1'], stages['stage1'], atol=1e-5)
  faces = np.asarray((images + 1) * 127.5, np.uint8)
  s2 = stages['stage2']
  built = fakebench.head_stages(fakebench.stem_variables(variables), jnp.asarray(faces), s2.mean(axis=(1, 2)),
                                s2.var(axis=(1, 2)))
  np.testing.assert_allclose(mean_std_pool(built['stage2']), mean_std_pool(s2), rtol=1e-4, atol=1e-5)
  assert built['residual'].shape == (2, 28, 28, 12)


def test_sampling_weights_balance_classes_and_sources():
  labels = np.array([0, 0, 0, 0, 1, 1])
  sources = np.array(['a', 'a', 'a', 'b', 'f', 'g'])
  natural = fakebench.sampling_weights(labels, sources, balance_sources=False)
  balanced = fakebench.sampling_weights(labels, sources, balance_sources=True)
  assert natural[labels == 0].sum() == pytest.approx(0.5) and natural[3] == pytest.approx(0.125)
  assert balanced[3] == pytest.approx(0.25) and balanced[0] == pytest.approx(0.25 / 3)
  with pytest.raises(ValueError, match='no fake examples'):
    fakebench.sampling_weights(labels[:4], sources[:4], False)


def test_strata_make_a_statistic_independent_of_the_label_in_the_draws():
  rng = np.random.default_rng(0)
  # Sharpness-like statistic: reals mostly sharp, fakes mostly soft, some overlap; one fake stratum has no real.
  labels = np.array([0] * 60 + [1] * 40)
  value = np.concatenate([rng.normal(1.0, 0.6, 60), rng.normal(0.0, 0.6, 40)])
  strata = fakebench.quantile_strata(value, 5)
  assert strata.min() == 0 and strata.max() == 4 and np.bincount(strata).min() >= 19
  strata[labels == 1] = np.where(strata[labels == 1] == 0, 9, strata[labels == 1])  # 9: fakes only
  weights = fakebench.sampling_weights(labels, np.array(['s'] * 100), False, strata)
  assert weights.sum() == pytest.approx(1.0) and weights[labels == 0].sum() == pytest.approx(0.5)
  assert weights[strata == 9].sum() == 0  # nothing to contrast them with
  for b in np.unique(strata[weights > 0]):
    real, fake = weights[(strata == b) & (labels == 0)].sum(), weights[(strata == b) & (labels == 1)].sum()
    assert real == pytest.approx(fake)  # P(stratum | real) == P(stratum | fake)
  # Without strata the classes' stratum distributions differ a lot (the statistic predicts the label).
  natural = fakebench.sampling_weights(labels, np.array(['s'] * 100), False)
  gap = sum(abs(natural[(strata == b) & (labels == 0)].sum() - natural[(strata == b) & (labels == 1)].sum())
            for b in np.unique(strata))
  assert gap > 0.3
  with pytest.raises(ValueError, match='one stratum per example'):
    fakebench.sampling_weights(labels, labels, False, strata[:5])
  with pytest.raises(ValueError, match='no stratum holds both'):
    fakebench.sampling_weights(labels, labels, False, labels)


def test_the_spectrum_detector_sees_an_upsampling_pattern_that_survives_contrast():
  rng = np.random.default_rng(3)
  n, side = 80, 32
  base = rng.normal(128, 30, (n, side // 4, side // 4)).repeat(4, 1).repeat(4, 2)  # smooth-ish faces
  checker = np.indices((side, side)).sum(0) % 2 * 2 - 1.0
  labels = np.arange(n) % 2
  contrast = rng.uniform(0.5, 1.5, n)[:, None, None]  # says nothing about the label
  faces = (base - 128) * contrast + 128 + labels[:, None, None] * 6 * checker
  faces = np.clip(faces, 0, 255).astype(np.uint8)[..., None].repeat(3, -1)
  feats = fakebench.spectrum_features(faces)
  assert feats.shape == (n, int(np.sqrt(2) * side / 2) + 1) and np.allclose(feats.mean(1), 0, atol=1e-5)
  assert feats[labels == 1, -1].mean() > feats[labels == 0, -1].mean() + 1  # the pattern lives at the top ring
  # Contrast alone shifts every ring equally, which the per-photo centring removes.
  scaled = fakebench.spectrum_features(np.clip((faces[:1].astype(float) - 128) * 0.5 + 128, 0, 255).astype(np.uint8))
  assert np.abs(scaled - feats[:1]).max() < 0.5
  train, test = np.arange(n) < 60, np.arange(n) >= 60
  weights = fakebench.sampling_weights(labels[train], labels[train].astype(str), False)
  model = fakebench.train_spectrum(feats[train], labels[train], weights)
  assert roc_auc(labels[test], model.decision_function(feats[test])) > 0.95
  with pytest.raises(ValueError, match='squares'):
    fakebench.spectrum_features(faces[:, :, :20])


@pytest.mark.slow  # trains the head
def test_the_trace_head_learns_a_checkerboard_on_a_frozen_stem(mbf_variables):
  rng = np.random.default_rng(0)
  n, side = 64, 48  # small faces keep the test fast; the head adapts to the input side
  faces = rng.integers(60, 200, (n, side, side, 3)).astype(np.float32)
  labels = (np.arange(n) % 2).astype(np.int32)
  board = (np.indices((side, side)).sum(0) % 2 * 2 - 1)[None, :, :, None] * 12.0
  faces = np.clip(faces + board * labels[:, None, None, None], 0, 255).astype(np.uint8)
  stem = fakebench.stem_variables(mbf_variables)
  # Embedding and stage-2 statistics carry no signal: only the trace branch can tell.
  inputs = fakebench.HeadInputs(faces, rng.normal(size=(n, 128)).astype(np.float32),
                                rng.normal(size=(n, 64)).astype(np.float32), np.ones((n, 64), np.float32))
  half = np.arange(n) < n // 2
  recipe = fakebench.Recipe(steps=25, batch_size=16)
  variables = fakebench.train_head(stem, inputs.take(np.flatnonzero(half)), labels[half],
                                   np.full(half.sum(), 1.0 / half.sum()), recipe)
  logits = fakebench.score_head(variables, stem, inputs.take(np.flatnonzero(~half)), 'traces')
  assert roc_auc(labels[~half], logits) > 0.9


def _item(source, label, role='pool', base=None):
  return fg.Item(source, label, None, np.zeros((5, 2)), np.zeros((112, 112, 3), np.uint8), 'f', base or source, role)


def test_rows_hold_out_the_fake_source_and_its_reals_everywhere():
  items = [_item('lfw_real', 0), _item('lfw_swap', 1), _item('ffhq_real', 0), _item('stylegan2', 1),
           _item('stylegan3', 1), _item('orl', 0), _item('self_blend', 1, base='lfw_real'),
           _item('swap', 1, base='orl'), _item('celeba_wild', 0, 'test_real'), _item('celeba_wild', 0, 'base'),
           _item('trace', 1, 'test_fake', 'celeba_wild'), _item('self_blend', 1, base='celeba_wild'),
           _item('twin_trace', 0, 'twin', 'lfw_real'), _item('twin_swap', 0, 'twin', 'orl'),
           _item('twin_trace', 0, 'twin', 'orl')]
  train, test = fg.row_split(items, 'lfw_swap', ('lfw_real',))
  assert [items[i].source for i in test] == ['lfw_real', 'lfw_swap']
  assert not {'lfw_real', 'lfw_swap'} & {items[i].source for i in train}
  assert all(items[i].base_source != 'lfw_real' and items[i].role != 'test_fake' for i in train)
  train, test = fg.row_split(items, 'trace', ('celeba_wild',))
  assert sorted(items[i].role for i in test) == ['test_fake', 'test_real']
  assert all(items[i].base_source != 'celeba_wild' and items[i].source != 'trace' for i in train)
  # A twin is a real made by the held-out kind's change: it stays out with its kind and with its base photo's source.
  assert [items[i].base_source for i in train if items[i].role == 'twin'] == ['orl']
  train, _ = fg.row_split(items, 'swap', ('celeba_wild',))
  assert [items[i].source for i in train if items[i].role == 'twin'] == ['twin_trace', 'twin_trace']


def _real_face(seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  ys, xs = np.mgrid[0:112, 0:112] / 112
  face = 90 + 80 * np.stack([xs, ys, 1 - xs], -1) + rng.normal(0, 12, (112, 112, 3))
  return np.clip(face, 0, 255).astype(np.uint8)


def test_pseudo_fakes_come_with_real_twins_and_are_made_again_from_the_same_reals():
  reals = [fg.Item('orl', 0, None, np.zeros((5, 2)), _real_face(k), f'p{k}', 'orl', 'pool') for k in range(3)]
  reals.append(fg.Item('celeba_wild', 0, None, np.zeros((5, 2)), _real_face(9), 'p9', 'celeba_wild', 'base'))
  made = fg.make_pseudo_fakes(reals, seed=4)
  assert [(it.source, it.role, it.label) for it in made] == [
      ('self_blend', 'pool', 1), ('twin_self_blend', 'twin', 0), ('swap', 'pool', 1), ('twin_swap', 'twin', 0),
      ('trace', 'pool', 1), ('twin_trace', 'twin', 0), ('self_blend', 'test_fake', 1), ('swap', 'test_fake', 1),
      ('trace', 'test_fake', 1), ('self_blend', 'pool', 1), ('twin_self_blend', 'twin', 0)]
  assert all(it.base_source == base.source for it, base in zip(made, [reals[0]] * 2 + [reals[1]] * 2 +
                                                               [reals[2]] * 2 + [reals[3]] * 5))
  # The twin has no seam: it differs from its photo at the border too, where the fake equals the photo.
  border = ~pseudofakes.face_region(112)
  fake, twin = made[0].face, made[1].face
  np.testing.assert_array_equal(fake[border], reals[0].face[border])
  assert np.abs(twin[border].astype(int) - reals[0].face[border].astype(int)).mean() > 1
  # Items read back from inputs.npz hold the reals and the fakes: the same reals and seed give the same fakes.
  again = fg.make_pseudo_fakes(reals + made, seed=4)
  assert all(np.array_equal(a.face, b.face) for a, b in zip(made, again)) and len(again) == len(made)


def test_canonical_faces_erase_sharpness_differences_and_keep_smooth_faces():
  rng = np.random.default_rng(0)
  small = rng.integers(40, 200, (14, 14, 3)).astype(np.uint8)
  smooth = np.asarray(Image.fromarray(small).resize((112, 112), Image.Resampling.BILINEAR))[None]
  sharp = np.clip(smooth.astype(int) + rng.normal(0, 25, smooth.shape), 0, 255).astype(np.uint8)
  before = fg.face_sharpness(np.concatenate([smooth, sharp]))
  canon = fg.canonical_faces(np.concatenate([smooth, sharp]), 56)
  after = fg.face_sharpness(canon)
  assert canon.shape == (2, 112, 112, 3) and canon.dtype == np.uint8
  assert before[1] - before[0] > 1.0 and abs(after[1] - after[0]) < 0.5 * (before[1] - before[0])
  assert np.abs(canon[0].astype(int) - smooth[0].astype(int)).mean() < 3  # what 56 px can hold survives


_DEV = REPO_ROOT.parent / 'shared' / 'data' / 'realfaces-dev'
_TRAIN = REPO_ROOT.parent / 'shared' / 'data' / 'realfaces-train'


def test_every_source_of_the_shared_data_is_found():
  # The script's default caches: what scripts/preprocess.py --aligner mtcnn --out runs/rd-mtcnn (and rt-mtcnn) leave.
  caches = [REPO_ROOT / 'runs' / 'rd-mtcnn' / '_align_cache', REPO_ROOT / 'runs' / 'rt-mtcnn' / '_align_cache']
  if not (_DEV.is_dir() and _TRAIN.is_dir()) or not all(any(c.glob('mtcnn-*')) for c in caches if c.is_dir()) \
      or not all(c.is_dir() for c in caches):
    pytest.skip('needs ../shared/data/realfaces-dev and -train and their MTCNN align caches under runs/')
  items = fg.load_items({'dev': _DEV, 'train': _TRAIN}, {'dev': fg._open_cache(caches[0]),
                                                         'train': fg._open_cache(caches[1])}, 2, 0)
  sources = {it.source for it in items}
  assert sources == {'orl', 'yale', 'lfw_real', 'lfw_swap', 'stylegan3', 'celeba_wild', 'celeba_aligned', 'ffhq_real',
                     'stylegan2'}
  assert {it.role for it in items if it.source == 'celeba_wild'} == {'test_real', 'base'}


@pytest.mark.slow  # trains the head twice
def test_train_stem_tunes_the_stem_and_scores_with_it_while_the_default_leaves_it(mbf_variables):
  rng = np.random.default_rng(1)
  n, side = 32, 32
  faces = rng.integers(0, 255, (n, side, side, 3)).astype(np.uint8)
  labels = (np.arange(n) % 2).astype(np.int32)
  inputs = fakebench.HeadInputs(faces, rng.normal(size=(n, 128)).astype(np.float32),
                                rng.normal(size=(n, 64)).astype(np.float32), np.ones((n, 64), np.float32))
  stem = fakebench.stem_variables(mbf_variables)
  weights = np.full(n, 1.0 / n)
  frozen = fakebench.train_head(stem, inputs, labels, weights, fakebench.Recipe(steps=3, batch_size=8))
  tuned = fakebench.train_head(stem, inputs, labels, weights, fakebench.Recipe(steps=3, batch_size=8, train_stem=True))
  unchanged = lambda v: all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(v['stem']['params']),
                                                                  jax.tree.leaves(stem['params'])))
  assert unchanged(frozen) and not unchanged(tuned)
  # Scoring uses the stem the head was trained with: swapping it in by hand gives the same logits.
  by_record = fakebench.score_head(tuned, stem, inputs, 'traces')
  by_hand = fakebench.score_head({k: v for k, v in tuned.items() if k != 'stem'}, tuned['stem'], inputs, 'traces')
  np.testing.assert_allclose(by_record, by_hand, rtol=1e-5, atol=1e-5)


def test_draws_are_summarised_as_mean_and_sd_and_paired_against_the_baseline():
  def draw(base, other):
    row = lambda auc: {'original': auc, 'jpeg_75': auc - 0.1, 'resize_0.5': auc - 0.2, 'train_auc': 0.9}
    return {'probes': {f: {'side': 0.5, 'file_size': 0.7} for f, _ in fg.ROWS},
            'recipes': {'baseline': {f: row(base) for f, _ in fg.ROWS}, 'twins': {f: row(other) for f, _ in fg.ROWS}}}
  summary = fg.summarise([draw(0.4, 0.5), draw(0.6, 0.8)], ['baseline', 'twins'])
  twins = summary['recipes']['twins']
  assert twins['stylegan3']['original']['mean'] == pytest.approx(0.65)
  assert twins['mean']['original']['sd'] == pytest.approx(np.std([0.5, 0.8], ddof=1))
  assert twins['mean_minus_baseline']['values'] == pytest.approx([0.1, 0.2])
  assert 'mean_minus_baseline' not in summary['recipes']['baseline']
  assert summary['probes']['swap']['mean'] == pytest.approx(0.7)
  text = fg._summary_markdown(summary)  # pylint: disable=protected-access
  assert '| twins | 2 | 0.650 +- 0.212' in text and '0.150 +- 0.071 |' in text
  # A recipe only some draws have is summarised over those.
  third = draw(0.5, 0.5)
  del third['recipes']['twins']
  summary = fg.summarise([draw(0.4, 0.5), draw(0.6, 0.8), third], ['baseline', 'twins'])
  assert summary['recipes']['twins']['draws'] == 2 and summary['recipes']['baseline']['draws'] == 3
  assert summary['recipes']['twins']['mean_minus_baseline']['values'] == pytest.approx([0.1, 0.2])


def test_a_recipe_reads_the_canonical_faces_alone_or_with_their_backbone_features():
  def inputs_of(value):
    return fakebench.HeadInputs(np.full((3, 4, 4, 3), value, np.uint8), np.full((3, 2), value, np.float32),
                                np.full((3, 2), value, np.float32), np.full((3, 2), value, np.float32))
  inputs = {'test_index': np.arange(3), 'original': inputs_of(1), 'jpeg_75': inputs_of(2),
            'c56/original': inputs_of(11), 'c56/jpeg_75': inputs_of(12)}
  view = fg._view(inputs, 56)  # pylint: disable=protected-access
  assert view['original'].faces[0, 0, 0, 0] == 11 and view['jpeg_75'].embedding[0, 0] == 12
  view = fg._view(inputs, 56, canonical_scope='traces')  # pylint: disable=protected-access
  assert view['original'].faces[0, 0, 0, 0] == 11 and view['original'].embedding[0, 0] == 1
  assert view['jpeg_75'].faces[0, 0, 0, 0] == 12 and view['jpeg_75'].stage2_var[0, 0] == 2
  view = fg._view(inputs, 0, traces_only=True)  # pylint: disable=protected-access
  assert view['original'].faces[0, 0, 0, 0] == 1 and not view['original'].embedding.any()
  assert not view['jpeg_75'].stage2_mean.any() and not view['jpeg_75'].stage2_var.any()
  with pytest.raises(ValueError, match='canonical_scope'):
    fg._view(inputs, 56, canonical_scope='stem')  # pylint: disable=protected-access


def test_cut_fakes_keeps_every_real_and_count_fakes_of_the_drawn_families():
  labels = np.array([0] * 10 + [1] * 30)
  sources = np.array(['r'] * 10 + ['a'] * 10 + ['b'] * 10 + ['c'] * 10)
  train = np.arange(40)
  cut, kept = fg._cut_fakes(train, labels, sources, 2, 12, (0, 1))  # pylint: disable=protected-access
  assert len(kept) == 2 and set(kept) <= {'a', 'b', 'c'}
  assert set(cut[labels[cut] == 0]) == set(range(10)) and (labels[cut] == 1).sum() == 12
  assert set(sources[cut][labels[cut] == 1]) <= set(kept)
  assert fg._cut_fakes(train, labels, sources, 2, 12, (0, 1))[1] == kept  # pylint: disable=protected-access
  whole, names = fg._cut_fakes(train, labels, sources, 0, 0, (0, 1))  # pylint: disable=protected-access
  assert names == ['a', 'b', 'c'] and np.array_equal(whole, train)


def test_family_heads_train_one_head_per_family_and_score_the_largest_standardised(monkeypatch):
  labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
  sources = np.array(['ffhq_real', 'orl', 'orl', 'lfw_real', 'stylegan2', 'stylegan2', 'swap', 'trace'])
  train = np.arange(8)
  faces = np.arange(8, dtype=np.float32)[:, None]  # one number per photo stands in for its face
  view = {'original': fakebench.HeadInputs(faces, faces, faces, faces)}
  seen = []

  def fake_train(stem, inputs, lab, weights, recipe):  # each "head" scores a photo as +-its number
    seen.append((inputs.faces[:, 0].astype(int).tolist(), lab.tolist()))
    return {'sign': 1.0 if len(seen) == 1 else -1.0}

  monkeypatch.setattr(fakebench, 'train_head', fake_train)
  monkeypatch.setattr(fakebench, 'score_head', lambda v, stem, inp, mode: v['sign'] * inp.faces[:, 0])
  score = fg._family_heads(train, labels, sources, False, None, view, None,  # pylint: disable=protected-access
                           fakebench.Recipe(steps=1))
  # 'blend' (swap, trace) then 'gan' (stylegan2), each with every training real.
  assert seen == [([0, 1, 2, 3, 6, 7], [0, 0, 0, 0, 1, 1]), ([0, 1, 2, 3, 4, 5], [0, 0, 0, 0, 1, 1])]
  reals = np.arange(4.0)
  z = lambda x, sign: (sign * x - (sign * reals).mean()) / ((sign * reals).std() + 1e-6)
  probe = fakebench.HeadInputs(*(np.array([[-3.0], [1.5], [9.0]], np.float32),) * 4)
  expected = np.maximum(z(probe.faces[:, 0], 1.0), z(probe.faces[:, 0], -1.0))
  np.testing.assert_allclose(score(probe), expected, rtol=1e-5)
