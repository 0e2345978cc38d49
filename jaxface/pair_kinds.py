"""The pair vocabulary: what a pair's kind says about its label and its photos. No dependencies, no jaxface imports.

The five known kinds:
  same        two real photos of one person: the only genuine kind (label 1)
  different   real photos of two people (label 0)
  own_fake    a real photo and a fake of the same person (label 0)
  other_fake  a real photo and a fake of someone else (label 0)
  fake        a pair holding a fake whose finer kind is unknown (realfaces-dev, realfaces-train's test pairs; label 0)

A labels.csv may also name kinds of its own (`fake_diffusion`, `same_glasses`, ...): any name of letters, digits, `_`
and `-`, with either label. Every kind, known or not, gets its own figures in the reports (`jaxface.metrics`). A
custom kind counts as holding a fake, for the pooled fake-in-pair AUC, when `fake` is one of its words (split on `_`
and `-`: `fake_diffusion`, `diffusion-fake`); other custom kinds are left out of that pooled figure, since nothing
says whether their photos are real.
"""
from __future__ import annotations

import re

KNOWN_KINDS = ('same', 'different', 'own_fake', 'other_fake', 'fake')
KNOWN_LABEL = {'same': 1, 'different': 0, 'own_fake': 0, 'other_fake': 0, 'fake': 0}  # the challenge's pair label
REAL_KINDS = ('same', 'different')  # both photos real
FAKE_KINDS = ('own_fake', 'other_fake', 'fake')  # one photo generated
NEGATIVE_KINDS = ('different', *FAKE_KINDS)  # label 0, in the order reports list them

_NAME = re.compile(r'[A-Za-z0-9][A-Za-z0-9_-]*')


def kind_problem(kind: str, label: int) -> str | None:
  """Why a pair of this kind and label cannot be used, to follow "pair <id> ..."; None when it can.

  A known kind must carry its own label (a `same` pair labelled 0 is a typo); a custom kind may carry either.
  """
  if not _NAME.fullmatch(kind):
    return f'has kind {kind!r}, not a name of letters, digits, _ and -'
  if kind in KNOWN_LABEL and label != KNOWN_LABEL[kind]:
    return f'of kind {kind} has label {label}, expected {KNOWN_LABEL[kind]}'
  return None


def holds_fake(kind: str | None) -> int:
  """1 when a pair of this kind holds a generated photo, 0 when both photos are real, -1 when the kind does not say
  (no kind, or a custom kind without the word `fake`)."""
  if not kind:
    return -1
  if kind in FAKE_KINDS:
    return 1
  if kind in REAL_KINDS:
    return 0
  return 1 if 'fake' in re.split(r'[_-]', kind.lower()) else -1


def report_order(kinds) -> list[str]:
  """The distinct non-empty kinds in the order reports list them: the known ones first, then the others sorted."""
  present = {kind for kind in kinds if kind}
  return [kind for kind in KNOWN_KINDS if kind in present] + sorted(present - set(KNOWN_KINDS))
