"""Every photo the fake-family study uses: where it is, its source, its fake family, and its split.

Three folders in the challenge layout (`train/images/<folder>/<k>.*`, `train/meta.json`, `train/sources.json`):
realfaces-train, realfaces-dev and fakes-zoo (../shared/data). Their test_public photos are not used here: every
photo comes from a train/ folder and the study makes its own split, by folder (a person, or a DFDC real/fake pair),
so no folder is on both sides.

Fake families (the unit that is held out), each with the real source that looks like it (the negatives of its test):

    classic_swap  lfw_swap (realfaces-dev, landmark face swaps on LFW photos)        vs lfw_real
    gan           stylegan2 (realfaces-train), stylegan3 (realfaces-dev)          vs ffhq_real
    dfdc          dfdc_fake (fakes-zoo 1.jpg, a swap into the real frame 0.jpg)   vs dfdc_real (the same folders)
    ae_swap       ffpp_deepfakes (FF++ autoencoder swap)                          vs ffpp_youtube
    reenact       ffpp_face2face (FF++ expression reenactment)                    vs ffpp_youtube
    t2i           t2i_sdxl, t2i_flux (text-to-image portraits)                    vs reals brought to their look (see
                                                                                     `views.t2i_look`)
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib

from PIL import Image

SHARED = pathlib.Path(os.environ.get('JAXFACE_SHARED', pathlib.Path(__file__).resolve().parents[3] / 'shared'))
DATASETS = ('realfaces-train', 'realfaces-dev', 'fakes-zoo')

FAMILIES = {
    'classic_swap': ('lfw_swap',),
    'gan': ('stylegan2', 'stylegan3'),
    'dfdc': ('dfdc_fake',),
    'ae_swap': ('ffpp_deepfakes',),
    'reenact': ('ffpp_face2face',),
    't2i': ('t2i_sdxl', 't2i_flux'),
}
# The real sources of each family's look: its test negatives, and left out of training when it is held out (a held-out
# look must not be learnt as "real"). FF++ reals are shared by two families: holding one out keeps them for the other.
FAMILY_REALS = {
    'classic_swap': ('lfw_real',),
    'gan': ('ffhq_real',),
    'dfdc': ('dfdc_real',),
    'ae_swap': ('ffpp_youtube',),
    'reenact': ('ffpp_youtube',),
    't2i': (),
}
FAMILY_OF = {source: family for family, sources in FAMILIES.items() for source in sources}
# Kinds of manipulation: full synthesis of the whole image against a change inside a real face.
SYNTHESIS = ('gan', 't2i')
PARTIAL = ('classic_swap', 'dfdc', 'ae_swap', 'reenact')


@dataclasses.dataclass(frozen=True)
class Photo:
  """One photo. source: fine source name; family: its fake family (None for reals); group: the folder it is split by."""
  path: str
  dataset: str
  source: str
  is_fake: int
  group: str

  @property
  def family(self) -> str | None:
    return FAMILY_OF.get(self.source)


def _source(dataset: str, folder_source: str, path: pathlib.Path, is_fake: int) -> str:
  if dataset == 'realfaces-train':
    return 'stylegan2' if folder_source == 'stylegan2_fake' else folder_source
  if dataset == 'realfaces-dev':
    if folder_source.startswith(('orl', 'yale')):
      return folder_source.split('_')[0]
    if folder_source == 'fake':  # the two fake kinds share one source name; their sizes tell them apart
      with Image.open(path) as image:
        return {250: 'lfw_swap', 256: 'stylegan3'}[image.size[0]]
    return folder_source
  if folder_source == 'dfdc':
    return 'dfdc_fake' if is_fake else 'dfdc_real'
  return {'t2i_flux_schnell': 't2i_flux'}.get(folder_source, folder_source)


def list_photos(shared: pathlib.Path = SHARED, datasets=DATASETS) -> list[Photo]:
  """Every train/ photo of the datasets, sorted by path. Raises FileNotFoundError naming a missing dataset."""
  photos = []
  for dataset in datasets:
    root = shared / 'data' / dataset / 'train'
    if not (root / 'meta.json').is_file():
      raise FileNotFoundError(f'{root}/meta.json: dataset {dataset} not found (set JAXFACE_SHARED to the folder '
                              'that holds data/)')
    meta = json.loads((root / 'meta.json').read_text())
    sources = json.loads((root / 'sources.json').read_text())
    for key, is_fake in sorted(meta.items()):
      folder = key.split('/')[0]
      path = root / 'images' / key
      source = _source(dataset, sources[folder], path, int(is_fake))
      photos.append(Photo(str(path), dataset, source, int(is_fake), f'{dataset}/{folder}'))
  return photos


def split_of(photo: Photo, seed: int, test_share: float = 0.3) -> str:
  """'train' or 'test', from a hash of the photo's group and the seed: a folder is never on both sides."""
  digest = hashlib.sha256(f'{seed}:{photo.group}'.encode()).digest()
  return 'test' if int.from_bytes(digest[:8], 'little') / 2**64 < test_share else 'train'
