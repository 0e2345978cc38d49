"""Pseudo-fakes: shape, dtype, range, determinism, and that only the face region changes."""
from __future__ import annotations

import numpy as np
import pytest

from jaxface.data import pipeline  # noqa: F401  (hides GPUs from TF first)
from jaxface.data import pseudofakes

import tensorflow as tf  # noqa: E402


def _face(size: int, seed: int) -> np.ndarray:
  """A textured, face-like test image: smooth shading + noise + darker eyes and mouth at the template landmarks."""
  rng = np.random.RandomState(seed)
  ys, xs = np.mgrid[0:size, 0:size] / size
  base = 90 + 80 * np.stack([xs, ys, 1 - xs], -1) + rng.normal(0, 12, (size, size, 3))
  for x, y in pseudofakes.template_landmarks(size).numpy():
    base[(ys * size - y) ** 2 + (xs * size - x) ** 2 < (size / 30) ** 2] -= 60
  return np.clip(base, 0, 255).astype(np.uint8)


def _kinds(size):
  donor = _face(size, 99)
  return {
      'self_blend': lambda im, s: pseudofakes.self_blend(im, s),
      'swap': lambda im, s: pseudofakes.swap(im, donor, s),
      'checkerboard': lambda im, s: pseudofakes.trace(im, s, kind=0),
      'spectral': lambda im, s: pseudofakes.trace(im, s, kind=1),
      'smooth': lambda im, s: pseudofakes.trace(im, s, kind=2),
  }


@pytest.mark.parametrize('size', [56, 112])
def test_each_kind_changes_only_the_face(size):
  face = _face(size, 0)
  region = pseudofakes.face_region(size)
  # The region leaves the image corners and borders alone but covers the inner face.
  assert not region[0, 0] and not region[-1, -1] and not region[:, :2].any()
  assert region[int(size * 0.64), size // 2]  # nose tip
  assert 0.3 < region.mean() < 0.8
  for name, make in _kinds(size).items():
    for k in range(3):
      seed = tf.constant([7, k], tf.int64)
      out = make(face, seed).numpy()
      assert out.shape == (size, size, 3) and out.dtype == np.uint8, name
      diff = np.abs(out.astype(np.int32) - face.astype(np.int32)).max(-1)
      assert (diff[~region] == 0).all(), f'{name} changed {(diff[~region] > 0).sum()} pixels outside the face'
      changed = diff[region] > 0
      assert changed.mean() > 0.2, f'{name} changed only {changed.mean():.2f} of the face region'
      # Subtle, not garish: the mean change inside the region stays within a few tens of levels.
      assert 0.5 < diff[region].mean() < 40, f'{name}: mean change {diff[region].mean():.1f}'


def test_deterministic_for_a_seed():
  face = _face(56, 1)
  for name, make in _kinds(56).items():
    a = make(face, tf.constant([3, 4], tf.int64)).numpy()
    b = make(face, tf.constant([3, 4], tf.int64)).numpy()
    c = make(face, tf.constant([3, 5], tf.int64)).numpy()
    np.testing.assert_array_equal(a, b, err_msg=name)
    assert (a != c).any(), f'{name} ignores its seed'


def test_face_mask_range_and_support():
  size = 56
  region = pseudofakes.face_region(size)
  nose = pseudofakes.template_landmarks(size).numpy()[2].round().astype(int)
  for k in range(6):
    mask = pseudofakes.face_mask(size, tf.constant([0, k])).numpy()[:, :, 0]
    assert mask.dtype == np.float32 and mask.min() >= 0.0 and mask.max() <= 1.0
    assert (mask[~region] == 0).all()
    assert mask[nose[1], nose[0]] >= 0.6  # the blend strength is at least 0.6 at the centre of the face


def test_pseudo_fake_dispatch():
  face, donor = _face(56, 2), _face(56, 3)
  kinds = set()
  for k in range(12):
    out, kind = pseudofakes.pseudo_fake(face, donor, tf.constant(False), tf.constant([1, k]), (1.0, 1.0, 1.0))
    assert out.shape == (56, 56, 3) and out.dtype == tf.uint8
    kinds.add(int(kind))
  assert kinds == {0, 1, 2}
  # Two photos of one person make no swap: a self-blend instead.
  for k in range(4):
    _, kind = pseudofakes.pseudo_fake(face, donor, tf.constant(True), tf.constant([1, k]), (0.0, 1.0, 0.0))
    assert int(kind) == 0
  with pytest.raises(ValueError, match='weights'):
    pseudofakes.pseudo_fake(face, donor, tf.constant(False), tf.constant([1, 1]), (0.0, 0.0, 0.0))


def test_rejects_non_square_faces():
  with pytest.raises(ValueError, match='square'):
    pseudofakes.self_blend(np.zeros((56, 40, 3), np.uint8), tf.constant([0, 0]))



@pytest.mark.parametrize('kind, trace_kind, mask_seed', [('self_blend', None, (4, 3)), ('swap', None, (4, 0)),
                                                         ('trace', 0, (3, 2)), ('trace', 1, (3, 2)),
                                                         ('trace', 2, (3, 2))])
def test_a_real_twin_is_the_pseudo_fakes_change_on_the_whole_face_without_seam_or_pattern(kind, trace_kind,
                                                                                          mask_seed):
  face, donor = _face(112, 0), _face(112, 99)
  seed = tf.constant([5, 7], tf.int64)
  fake = {'self_blend': lambda: pseudofakes.self_blend(face, seed),
          'swap': lambda: pseudofakes.swap(face, donor, seed),
          'trace': lambda: pseudofakes.trace(face, seed, kind=trace_kind)}[kind]().numpy()
  twin = pseudofakes.real_twin(kind, face, seed, donor=donor, trace_kind=trace_kind).numpy()
  assert twin.shape == face.shape and twin.dtype == np.uint8
  count, index = mask_seed
  seeds = pseudofakes._seeds(seed, count)  # pylint: disable=protected-access
  mask = pseudofakes.face_mask(112, seeds[index]).numpy()[..., 0]
  assert mask.max() > 0.5
  blend = mask[..., None] * twin.astype(np.float64) + (1 - mask[..., None]) * face.astype(np.float64)
  inner = mask > 0.5
  if kind == 'trace' and trace_kind in (0, 1):
    # The fake's inner face is the twin plus the generator pattern; the twin has the resampling (or nothing) only.
    pattern = fake.astype(np.float64)[inner] - blend[inner]
    assert 0.5 < np.abs(pattern).mean() < 5
  else:
    # The fake is the photo blended with its twin through the mask (the twin is rounded to uint8: +-1).
    assert np.abs(fake.astype(np.float64) - blend).max() <= 1.0 + 1e-6
  outside = ~pseudofakes.face_region(112)
  if kind == 'trace' and trace_kind == 1:
    np.testing.assert_array_equal(twin, face)  # the spectral pattern is the evidence: its twin is the photo itself
  else:
    # ...applied to the whole photo, so no seam: the border changes as the inner face did.
    assert np.abs(twin[outside].astype(int) - face[outside].astype(int)).mean() > 1.0
    np.testing.assert_array_equal(fake[outside], face[outside])


def test_a_real_twin_names_what_it_lacks():
  face = _face(112, 0)
  with pytest.raises(ValueError, match='donor'):
    pseudofakes.real_twin('swap', face, tf.constant([1, 2], tf.int64))
  with pytest.raises(ValueError, match='not one of'):
    pseudofakes.real_twin('diffusion', face, tf.constant([1, 2], tf.int64))
