"""Synthetic face data in the challenge layout: hard enough that it takes learning, deterministic for a seed.

    python -m jaxface.data.synthetic --out DIR [--people 50] [--photos-per-person 8] [--seed 0]
        [--fake-fraction 0.15] [--test-pairs 200] [--test-people N] [--size 112] [--overwrite] [--workers 1]

writes `train/images/<8-digit person>/<k>.jpg`, `train/meta.json`, `test_public/<8-digit pair>/{0,1}.jpg`,
`labels.csv` (pair_id,label,kind) and `synthetic.json` (settings, which identity each folder and pair shows, and the
generator traces of every fake). Two runs with the same arguments write byte-identical files.

Every photo is a face crop (the face fills most of the frame, as in the challenge) drawn procedurally with numpy by
`jaxface.data.render`. Training on it (`config.data.source = 'synthetic'`) generates and prepares the set once, in a
cache folder (`jaxface.data.sources`).

What makes it hard:
- Identity lives in geometry, not in colour or pixels at fixed places. Each person has stable traits (face width and
  height, jaw taper, eye spacing, height and size, eyebrow gap, arch, tilt and thickness, nose length and width, mouth
  height, width and lips, hairline height, curve and widow's peak, hair volume and length, a mole, a beard, skin, hair
  and iris colour) drawn from narrow ranges, so two people differ by a few pixels here and there.
- Every photo moves and re-lights the face: rotation, yaw (features shift and foreshorten), scale, position, shading
  from a random light, a brightness gradient across the frame, exposure and colour cast, expression (smile, open
  mouth, raised eyebrows, half-closed eyes, gaze), a random background (colour, blotches, stripes) and clothes, blur,
  sensor noise and JPEG quality 75-95. The per-photo variation is larger than the difference between people, so an
  untrained measure (cosine of raw pixels, colour histograms) scores the test pairs near chance
  (tests/test_synthetic.py checks EER > 0.3).
- Fakes (default 15% of the training photos, marked 1 in meta.json, in the person's own folder) render that person's
  traits, so a model that only learned identity accepts them. Each carries one or two generator traces, subtle but
  strong enough to survive JPEG: `seam` (the inner face blended in with a colour and brightness mismatch and a soft
  edge), `smooth` (no skin texture and little sensor noise inside the face while the rest stays noisy), `checker`
  (rendered at half resolution, upsampled by repetition, plus a periodic 2x2 transposed-convolution pattern) and
  `spectral` (a faint high-frequency periodic pattern: peaks in the spectrum).
- Test people are disjoint from training people; test pairs are `same` (label 1), `different`, `own_fake` (a real
  photo and a fake of the same person) and `other_fake` (a real photo and a fake of someone else), in equal shares.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import ctypes
import io
import json
import logging
import math
import pathlib
import shutil
import sys
import time
from collections.abc import Sequence

import numpy as np
from PIL import Image

from jaxface import pair_kinds
from jaxface.data import challenge
from jaxface.data.render import TRACE_KINDS, render_faces

log = logging.getLogger('jaxface.data.synthetic')

# The kinds of the generated test pairs: every finer kind of the vocabulary (a synthetic pair always knows its kind).
PAIR_KINDS = tuple(kind for kind in pair_kinds.KNOWN_KINDS if kind != 'fake')

# Random streams, one per purpose, so adding draws to one never shifts another.
_PERSON, _TRAIN_PHOTO, _TEST_PHOTO, _FAKE_SLOTS, _PAIRS = range(5)

_SKIN_LIGHT = np.array([0.93, 0.78, 0.67])
_SKIN_DARK = np.array([0.42, 0.28, 0.20])
_HAIR = np.array([[0.07, 0.06, 0.06], [0.20, 0.13, 0.08], [0.38, 0.25, 0.15], [0.74, 0.60, 0.38],
                  [0.52, 0.24, 0.11], [0.60, 0.59, 0.57]])
_HAIR_P = np.array([0.3, 0.25, 0.2, 0.12, 0.06, 0.07])
_IRIS = np.array([[0.30, 0.18, 0.10], [0.15, 0.09, 0.05], [0.30, 0.45, 0.65], [0.30, 0.45, 0.30], [0.45, 0.48, 0.50]])
# 2x2 transposed-convolution fingerprints (zero mean); rows and columns both carry energy so JPEG keeps some of it.
_CHECKER = np.array([[[1.0, 0.1], [-0.2, -0.9]], [[0.8, 0.6], [-0.7, -0.7]], [[0.9, -0.9], [0.3, -0.3]]])


# ----------------------------------------------------------------------------------------------------------------------
# Random draws: who a person is, and how one photo of them was taken.


def person_traits(seed: int, identity: int) -> dict[str, float | np.ndarray]:
  """The stable traits of one person (scalars in face units of about half a head width, colours (3,) in [0, 1])."""
  rng = np.random.default_rng([seed, _PERSON, identity])
  u = rng.uniform
  tone = u(0, 1)
  skin = np.clip(_SKIN_LIGHT * (1 - tone) + _SKIN_DARK * tone + rng.normal(0, 0.025, 3), 0, 1)
  hair = np.clip(_HAIR[rng.choice(len(_HAIR), p=_HAIR_P)] + rng.normal(0, 0.025, 3), 0, 1)
  nose_y = u(0.13, 0.25)
  return dict(
      face_w=u(0.52, 0.63), face_h=u(0.70, 0.80), jaw=u(0.05, 0.35),
      eye_dx=u(0.19, 0.26), eye_y=u(-0.10, 0.0), eye_w=u(0.065, 0.095), eye_h=u(0.028, 0.042),
      brow_gap=u(0.07, 0.12), brow_arch=u(0.0, 0.05), brow_thick=u(0.018, 0.035), brow_tilt=u(-0.03, 0.03),
      brow_w=u(0.08, 0.12),
      nose_y=nose_y, nose_w=u(0.045, 0.08),
      mouth_y=nose_y + u(0.12, 0.20), mouth_w=u(0.13, 0.21), lip=u(0.012, 0.03),
      hairline=u(-0.48, -0.22), hair_curve=u(0.0, 0.35), hair_peak=u(0.0, 0.08), hair_volume=u(1.03, 1.14),
      hair_length=u(-0.3, 0.9),
      mole=float(u() < 0.35), mole_u=u(-0.55, 0.55), mole_v=u(-0.1, 0.5),
      beard=max(0.0, u(-0.8, 0.5)),
      skin=skin, hair=hair,
      iris=np.clip(_IRIS[rng.integers(len(_IRIS))] + rng.normal(0, 0.03, 3), 0, 1),
      lips=np.clip(skin * np.array([0.92, 0.62, 0.62]) + rng.normal(0, 0.02, 3), 0, 1),
  )


def photo_settings(rng: np.random.Generator, is_fake: bool) -> dict[str, float | np.ndarray]:
  """How one photo is taken: pose, light, expression, background, camera; and its generator traces if fake."""
  u = rng.uniform
  settings = dict(
      angle=float(np.clip(rng.normal(0, 0.1), -0.26, 0.26)), scale=u(0.88, 1.06),
      shift_x=u(-0.06, 0.06), shift_y=u(-0.04, 0.07), yaw=u(-0.35, 0.35),
      light=np.array([u(-0.8, 0.8), u(-0.8, 0.5), u(0.5, 1.0)]), ambient=u(0.5, 0.8),
      gradient=u(0.0, 0.45), gradient_angle=u(0, 2 * math.pi), exposure=u(0.7, 1.2),
      cast=np.exp(rng.normal(0, 0.09, 3)),
      smile=u(-0.3, 1.0), mouth_open=max(0.0, u(-0.6, 1.0)) * 0.06, brow_raise=u(0.0, 0.035),
      eye_open=u(0.55, 1.1), gaze=np.array([u(-0.3, 0.3), u(-0.2, 0.2)]),
      background=np.clip(u(0.15, 0.85) + u(-0.25, 0.25, 3), 0.02, 0.98), blotches=u(0.0, 0.3),
      stripes=u(0.0, 0.12) * (u() < 0.35),
      stripe_freq=u(2, 10), stripe_angle=u(0, math.pi), clothes=u(0.05, 0.9, 3),
      blur=u(0.0, 1.1), noise=u(1.5, 5.0) / 255, skin_texture=u(0.008, 0.02), quality=int(rng.integers(75, 96)),
      noise_seed=int(rng.integers(2**62)),
  )
  traces = np.zeros(len(TRACE_KINDS))
  if is_fake:
    chosen = rng.choice(len(TRACE_KINDS), size=1 + int(u() < 0.4), replace=False)
    traces[chosen] = 1

  def sign() -> float:
    return 1.0 if u() < 0.5 else -1.0

  settings.update(
      traces=traces,
      seam_gain=np.array([sign() * u(0.05, 0.12) for _ in range(3)]), seam_offset=sign() * u(0.03, 0.07),
      checker=_CHECKER[rng.integers(len(_CHECKER))] * u(4.0, 6.0) / 255,
      spectral_amp=u(2.0, 3.5) / 255, spectral_period=float(rng.choice([4.0, 5.0, 6.0, 8.0])),
      spectral_angle=float(rng.choice([0.0, 0.5, 0.25, 0.75])) * math.pi, spectral_phase=u(0, 2 * math.pi),
  )
  return settings


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
  """(H, W, 3) uint8 -> JPEG bytes (deterministic for a given Pillow)."""
  buffer = io.BytesIO()
  Image.fromarray(rgb).save(buffer, format='JPEG', quality=int(quality))
  return buffer.getvalue()


# ----------------------------------------------------------------------------------------------------------------------
# The dataset.


def _fake_slots(seed: int, people: int, photos_per_person: int, fake_fraction: float) -> set[tuple[int, int]]:
  """Which (person, k) photos are fakes: exactly round(fraction * total), never a person's last two real photos."""
  rng = np.random.default_rng([seed, _FAKE_SLOTS])
  eligible = []
  for person in range(people):
    order = rng.permutation(photos_per_person)
    eligible.extend((person, int(k)) for k in order[2:])  # two photos of each person stay real
  wanted = min(int(round(fake_fraction * people * photos_per_person)), len(eligible))
  chosen = rng.choice(len(eligible), size=wanted, replace=False) if wanted else []
  return {eligible[i] for i in chosen}


def _render_chunk(chunk: list[tuple[pathlib.Path, dict, dict]], size: int) -> None:
  images = render_faces([job[1] for job in chunk], [job[2] for job in chunk], size)
  for (path, _, photo), rgb in zip(chunk, images):
    path.write_bytes(encode_jpeg(rgb, photo['quality']))


def _render_and_write(jobs: list[tuple[pathlib.Path, dict, dict]], size: int, workers: int,
                      batch_size: int = 32) -> None:
  for folder in sorted({job[0].parent for job in jobs}):
    folder.mkdir(parents=True, exist_ok=True)
  # Batches do not depend on `workers`, so the bytes written do not either.
  chunks = [jobs[start:start + batch_size] for start in range(0, len(jobs), batch_size)]
  if workers <= 1:
    for chunk in chunks:
      _render_chunk(chunk, size)
    return
  with concurrent.futures.ProcessPoolExecutor(max_workers=workers) as pool:
    list(pool.map(_render_chunk, chunks, [size] * len(chunks)))


def _trace_names(photo: dict) -> list[str]:
  return [kind for kind, on in zip(TRACE_KINDS, photo['traces']) if on]


def _check_arguments(people: int, photos_per_person: int, fake_fraction: float, test_pairs: int,
                     test_people: int | None, size: int) -> int:
  """Raises ValueError (one line) on a bad argument of `generate`; returns the number of test people."""
  if people < 1 or photos_per_person < 2:
    raise ValueError(f'need at least 1 person and 2 photos per person, got {people} and {photos_per_person}')
  if size < 32 or size % 2:
    raise ValueError(f'--size must be even and at least 32, got {size}')
  if not 0 <= fake_fraction < 1:
    raise ValueError(f'--fake-fraction must be in [0, 1), got {fake_fraction}')
  if test_pairs < 0:
    raise ValueError(f'--test-pairs must be >= 0, got {test_pairs}')
  test_people = max(4, test_pairs // 4) if test_people is None else test_people
  if test_pairs and test_people < 2:
    raise ValueError(f'--test-people must be at least 2 for different-person pairs, got {test_people}')
  return test_people


def _clear(out_dir: pathlib.Path, overwrite: bool) -> None:
  """Removes what an earlier `generate` wrote into out_dir; ValueError when out_dir is not empty and not overwrite."""
  if out_dir.exists() and any(out_dir.iterdir()):
    if not overwrite:
      raise ValueError(f'{out_dir}: not empty (choose an empty folder or pass --overwrite)')
    for path in [out_dir / name for name in ('train', 'test_public', 'labels.csv', 'synthetic.json')]:
      if path.is_dir():
        shutil.rmtree(path)
      elif path.exists():
        path.unlink()


def _test_pairs(out_dir: pathlib.Path, seed: int, people: int, test_pairs: int, test_people: int, traits_of,
                jobs: list) -> tuple[list[str], list[str], dict[str, dict]]:
  """Draws the test pairs, appending their photos to `jobs`: identities people..people+test_people-1, never seen in
  training, kinds PAIR_KINDS in equal shares. Returns (kinds, labels.csv rows, synthetic.json's test_pairs)."""
  rng = np.random.default_rng([seed, _PAIRS])
  kinds = rng.permutation(np.resize(np.array(PAIR_KINDS), test_pairs)) if test_pairs else []
  labels, pair_info = [], {}
  for index, kind in enumerate(kinds):
    first = people + int(rng.integers(test_people))
    other = people + (first - people + 1 + int(rng.integers(test_people - 1))) % test_people
    second = first if kind in ('same', 'own_fake') else other
    fake_side = int(rng.integers(2)) if kind in ('own_fake', 'other_fake') else -1
    identities = (first, second) if fake_side != 0 else (second, first)
    pair_id = f'{index:08d}'
    info = dict(kind=str(kind), identity0=identities[0], identity1=identities[1])
    for side in (0, 1):
      photo = photo_settings(np.random.default_rng([seed, _TEST_PHOTO, index, side]), side == fake_side)
      info[f'is_fake{side}'] = int(side == fake_side)
      info[f'traces{side}'] = _trace_names(photo)
      jobs.append((out_dir / 'test_public' / pair_id / f'{side}.jpg', traits_of(identities[side]), photo))
    pair_info[pair_id] = info
    labels.append(f'{pair_id},{int(kind == "same")},{kind}')
  return [str(kind) for kind in kinds], labels, pair_info


def generate(out_dir: challenge.PathLike, people: int = 50, photos_per_person: int = 8, seed: int = 0,
             fake_fraction: float = 0.15, test_pairs: int = 200, test_people: int | None = None, size: int = 112,
             overwrite: bool = False, workers: int = 1) -> dict:
  """Writes a synthetic dataset in the challenge layout; see the module docstring.

  Args:
    out_dir: folder to write (created; must be empty unless overwrite, which replaces what a previous run wrote).
    people: training identities (folders 00000000..).
    photos_per_person: photos per training identity, fakes included.
    seed: everything follows from it; the same arguments give byte-identical files.
    fake_fraction: share of training photos that are fakes.
    test_pairs: pairs in test_public/, kinds in equal shares.
    test_people: identities used by the test pairs (disjoint from training); default max(4, test_pairs // 4).
    size: image side in pixels (even, >= 32).
    overwrite: replace what a previous run wrote in out_dir.
    workers: rendering processes; the files do not depend on it.

  Returns:
    A summary: counts of people, real and fake photos, pairs by kind, the output folder and the seconds taken.

  Raises:
    ValueError: bad arguments or a non-empty out_dir without overwrite (one line).
  """
  start = time.perf_counter()
  out_dir = pathlib.Path(out_dir)
  test_people = _check_arguments(people, photos_per_person, fake_fraction, test_pairs, test_people, size)
  _clear(out_dir, overwrite)
  traits = {}

  def traits_of(identity: int) -> dict:
    if identity not in traits:
      traits[identity] = person_traits(seed, identity)
    return traits[identity]

  # Training photos: identity i lives in folder i.
  fakes = _fake_slots(seed, people, photos_per_person, fake_fraction)
  meta, fake_traces, jobs = {}, {}, []
  for person in range(people):
    for k in range(photos_per_person):
      is_fake = (person, k) in fakes
      photo = photo_settings(np.random.default_rng([seed, _TRAIN_PHOTO, person, k]), is_fake)
      key = f'{person:08d}/{k}.jpg'
      meta[key] = int(is_fake)
      if is_fake:
        fake_traces[key] = _trace_names(photo)
      jobs.append((out_dir / 'train' / 'images' / key, traits_of(person), photo))

  kinds, labels, pair_info = _test_pairs(out_dir, seed, people, test_pairs, test_people, traits_of, jobs)
  out_dir.mkdir(parents=True, exist_ok=True)
  _render_and_write(jobs, size, workers)
  (out_dir / 'train' / 'meta.json').write_text(json.dumps(meta, indent=0) + '\n')
  if test_pairs:
    (out_dir / 'labels.csv').write_text('pair_id,label,kind\n' + '\n'.join(labels) + '\n')
  settings = dict(people=people, photos_per_person=photos_per_person, seed=seed, fake_fraction=fake_fraction,
                  test_pairs=test_pairs, test_people=test_people, size=size)
  record = dict(settings=settings, train_identities={f'{i:08d}': i for i in range(people)},
                fake_traces=fake_traces, test_pairs=pair_info)
  (out_dir / 'synthetic.json').write_text(json.dumps(record, indent=1) + '\n')
  by_kind = {kind: int(sum(1 for k in kinds if k == kind)) for kind in PAIR_KINDS}
  return dict(out_dir=str(out_dir), people=people, train_images=len(meta), fake_images=len(fakes),
              real_images=len(meta) - len(fakes), test_people=test_people if test_pairs else 0,
              test_pairs=test_pairs, pairs_by_kind=by_kind, seconds=round(time.perf_counter() - start, 2))


def _keep_freed_memory() -> None:
  """Asks glibc to reuse freed memory instead of returning it to the kernel.

  Every batch allocates the same few-megabyte numpy temporaries; by default each one is fresh mmapped memory, and the
  page faults of zeroing it took about a quarter of a 1000-person run. Only the command line does this: it changes
  the allocator for the whole process. A no-op where glibc is absent.
  """
  try:
    libc = ctypes.CDLL('libc.so.6')
    libc.mallopt(-3, 32 * 2**20)  # M_MMAP_THRESHOLD: serve blocks up to 32 MiB from the heap
    libc.mallopt(-1, 256 * 2**20)  # M_TRIM_THRESHOLD: keep up to 256 MiB of freed heap
  except (OSError, AttributeError):
    pass


def main(argv: Sequence[str] | None = None) -> int:
  """Command line: writes the dataset and prints the summary as JSON; returns 2 with one line on bad input."""
  parser = argparse.ArgumentParser(prog='python -m jaxface.data.synthetic',
                                   description='Write a synthetic face dataset in the challenge layout.')
  parser.add_argument('--out', required=True, help='output folder (empty, or use --overwrite)')
  parser.add_argument('--people', type=int, default=50)
  parser.add_argument('--photos-per-person', type=int, default=8)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--fake-fraction', type=float, default=0.15)
  parser.add_argument('--test-pairs', type=int, default=200)
  parser.add_argument('--test-people', type=int, default=None, help='default max(4, test_pairs // 4)')
  parser.add_argument('--size', type=int, default=112)
  parser.add_argument('--overwrite', action='store_true', help='replace what a previous run wrote in --out')
  parser.add_argument('--workers', type=int, default=1, help='rendering processes (same files for any number)')
  args = parser.parse_args(argv)
  _keep_freed_memory()
  try:
    summary = generate(args.out, people=args.people, photos_per_person=args.photos_per_person, seed=args.seed,
                       fake_fraction=args.fake_fraction, test_pairs=args.test_pairs, test_people=args.test_people,
                       size=args.size, overwrite=args.overwrite, workers=args.workers)
  except (ValueError, OSError) as error:
    print(f'error: {" ".join(str(error).split())}', file=sys.stderr)
    return 2
  print(json.dumps(summary))
  return 0


if __name__ == '__main__':
  sys.exit(main())
