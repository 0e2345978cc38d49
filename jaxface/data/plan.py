"""The split plan of a prepared dataset: which photos go where, by path only (no pixels, no TensorFlow).

  split_people      the people held out of train (their photos give the val pairs), seeded;
  make_val_pairs    val pairs of the held-out people's photos, of the kinds same, different, own_fake, other_fake;
  make_test_pairs   the test_public pairs with their labels.csv labels and kinds, where known.

Pair kinds and labels are the vocabulary of `jaxface.pair_kinds`.
"""
from __future__ import annotations

import collections
import dataclasses
import itertools
import pathlib
from collections.abc import Sequence

import numpy as np

from jaxface import pair_kinds
from jaxface.data import challenge


def split_people(images: Sequence[challenge.TrainImage], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
  """Splits the people into (train, held out), both sorted, deterministically by seed.

  People with at least two real photos (who can give `same` pairs) and the others are held out separately, each by
  `val_fraction` (at least one of a group when the fraction is positive and the group has two or more people).
  """
  reals = collections.Counter(image.person_id for image in images if not image.is_fake)
  people = sorted({image.person_id for image in images})
  rng = np.random.default_rng(seed)
  held_out = []
  for group in ([p for p in people if reals[p] >= 2], [p for p in people if reals[p] < 2]):
    count = int(round(val_fraction * len(group)))
    if val_fraction > 0 and count == 0 and len(group) >= 2:
      count = 1
    held_out += [group[i] for i in rng.permutation(len(group))[:count]]
  held_out_set = set(held_out)
  return [p for p in people if p not in held_out_set], sorted(held_out)


@dataclasses.dataclass(frozen=True)
class Pair:
  """A pair to write: label 1 same real person, 0 not, -1 unknown; kind '' and is_fake -1 where unknown."""
  pair_id: str
  path0: pathlib.Path
  path1: pathlib.Path
  label: int
  kind: str
  is_fake0: int
  is_fake1: int


def make_val_pairs(images: Sequence[challenge.TrainImage], seed: int, pairs_per_person: int) -> list[Pair]:
  """Builds val pairs from held-out people's photos, deterministically by seed.

  Per person (in sorted order), up to `pairs_per_person` pairs of each kind: `same` (two real photos of the person,
  label 1), `own_fake` (a real photo and a fake of the same person), `different` (real photos of two people),
  `other_fake` (a real photo and a fake of someone else). Repeated pairs are dropped.
  """
  rng = np.random.default_rng([seed, 1])
  reals: dict[str, list[challenge.TrainImage]] = collections.defaultdict(list)
  fakes: dict[str, list[challenge.TrainImage]] = collections.defaultdict(list)
  for image in sorted(images, key=lambda image: (image.person_id, image.rel_path)):
    (fakes if image.is_fake else reals)[image.person_id].append(image)
  all_reals = [image for person in sorted(reals) for image in reals[person]]
  all_fakes = [image for person in sorted(fakes) for image in fakes[person]]

  def other(pool: list[challenge.TrainImage], person: str) -> challenge.TrainImage | None:
    # Rejection sampling: pools are large and one person holds a small share of them.
    for _ in range(20):
      image = pool[rng.integers(len(pool))]
      if image.person_id != person:
        return image
    candidates = [image for image in pool if image.person_id != person]
    return candidates[rng.integers(len(candidates))] if candidates else None

  chosen: list[tuple[str, challenge.TrainImage, challenge.TrainImage]] = []
  for person in sorted(set(reals) | set(fakes)):
    own_reals, own_fakes = reals.get(person, []), fakes.get(person, [])
    if not own_reals:
      continue  # a fake-only person appears as the fake side of other people's other_fake pairs
    combos = list(itertools.combinations(range(len(own_reals)), 2))
    for index in rng.permutation(len(combos))[:pairs_per_person]:
      a, b = combos[index]
      chosen.append(('same', own_reals[a], own_reals[b]))
    for _ in range(pairs_per_person if own_fakes else 0):
      chosen.append(('own_fake', own_reals[rng.integers(len(own_reals))], own_fakes[rng.integers(len(own_fakes))]))
    for kind, pool in (('different', all_reals), ('other_fake', all_fakes)):
      for _ in range(pairs_per_person if pool else 0):
        partner = other(pool, person)
        if partner is not None:
          chosen.append((kind, own_reals[rng.integers(len(own_reals))], partner))

  pairs, seen = [], set()
  for kind, image0, image1 in chosen:
    key = tuple(sorted((image0.rel_path, image1.rel_path)))
    if key in seen:
      continue
    seen.add(key)
    pairs.append(Pair(pair_id=f'val{len(pairs):07d}', path0=image0.path, path1=image1.path,
                      label=pair_kinds.KNOWN_LABEL[kind], kind=kind, is_fake0=image0.is_fake, is_fake1=image1.is_fake))
  return pairs


def make_test_pairs(data_dir: challenge.PathLike, labels_path: challenge.PathLike | None) -> list[Pair]:
  """The test_public pairs with their labels (label -1 and kind '' where unknown); fake flags are unknown (-1)."""
  labels = challenge.read_labels(labels_path) if labels_path else {}
  pairs = []
  for test_pair in challenge.list_test_pairs(data_dir):
    known = labels.get(test_pair.pair_id)
    pairs.append(Pair(pair_id=test_pair.pair_id, path0=test_pair.path0, path1=test_pair.path1,
                      label=known.label if known else -1, kind=(known.kind or '') if known else '',
                      is_fake0=-1, is_fake1=-1))
  return pairs
