r"""Real faces on a CPU: the pretrained MobileFaceNet (MS-Celeb-1M) fine-tuned with both heads on realfaces-train.

  python scripts/preprocess.py --data-dir ../shared/data/realfaces-train --aligner mtcnn --out runs/rt-mtcnn
  python -m jaxface.convert ../shared/weights/mobilefacenet_ms1m.pt --arch mobilefacenet --out runs/mbf_ms1m_init
  python -m jaxface.train --config configs/realfaces_mbf.py --workdir runs/realfaces_mbf
  python -m jaxface.evaluate --checkpoint runs/realfaces_mbf --tfds-dir runs/rt-mtcnn --split test --out runs/realfaces_mbf/eval

The config reads runs/rt-mtcnn (data.tfds_dir) and runs/mbf_ms1m_init (init_from): the first two commands write them,
from the shared realfaces-train photos and MobileFaceNet weights (../shared; third_party/README.md says where the
weights come from). `--config configs/realfaces_mbf.py:runlocal` needs neither (synthetic data, random weights).

How it is set, and why:
- The backbone is the converted MobileFaceNet (128-d embedding, ImageNet input normalisation applied inside the
  model: `model.input_norm`). A pretrained embedding is easy to wreck on 14k photos with a freshly initialised
  AdaFace head of 5,858 classes: the head's early gradients are noise. So the backbone moves at 2% of the heads' rate
  (`optim.backbone_lr_mult`), after a half-epoch warm-up, for few epochs. Measured: at 0.2 (and trained on the
  cleaner's exclusion list) the validation EER after one epoch is 0.159, against 0.059 at 0.02.
- Fakes: the 1,500 recorded StyleGAN2 faces plus pseudo-fakes (self-blends, swaps, traces) make a quarter of each
  batch; the fake head has its own AdamW. FFHQ reals and StyleGAN2 fakes share size and JPEG settings in train/, and
  JPEG, blur and downscale augmentations hit reals and fakes alike (`fake_degrade_scale` 1), so neither file size
  nor compression predicts the label.
- `space_to_depth` is off: the pretrained stem reads 3 channels at 112x112.
- `flip_tta`: validation embeds the mirrored face too, so the fuse strength and threshold stored with the best
  checkpoint are calibrated for the flip-TTA scoring that evaluate, verify and export then use by default.

Measured 2026-12-03 on the 2-core CPU (docs/results.md, real-faces table). Without flip TTA: training 22.8 min wall (436
steps, about 27 images/s once compiled, two validations included); realfaces-train test pairs cosine 0.054, fused
0.060. With `flip_tta` (this config): 22.8 min wall on idle cores too (1,368 s, validations with flip included; 39
min when two other jobs shared the cores); the best checkpoint is the same step-218 model (training is
deterministic), validated at cosine 0.052, fused 0.040. realfaces-train test pairs:
fused **0.048**, cosine 0.054 (same vs different 0.056 / 0.054, same vs fake 0.038 / 0.056), TAR at FAR 1e-3 0.888,
fake-in-pair AUC 0.862; realfaces-dev test pairs fused 0.007. The pretrained net alone scores cosine 0.058. The fake
head does not carry over to realfaces-dev's generators (AUC 0.455), so fusing helps only against StyleGAN2 fakes.
A trace branch reading the face at one resolution (`fake_canonical_px=56`, the benchmark's best recipe) was measured
and not taken: realfaces-train test fused 0.054 (+0.006), realfaces-dev 0.0067, dev fake AUC 0.458; it left the model
on 2026-12-07 (research/fake_generalisation/README.md).
"""
from configs import default as default_lib


def get_config(runlocal: bool = False):
  config = default_lib.get_config()
  config.model.arch = 'mobilefacenet'
  config.model.width = 1.0
  config.model.embedding_dim = 128
  config.model.input_norm = 'imagenet'
  config.model.space_to_depth = False
  config.model.dropout = 0.0
  config.model.fake_head = 'traces'

  config.data.source = 'tfds'
  config.data.tfds_dir = 'runs/rt-mtcnn'
  config.data.aligner = 'mtcnn'
  config.data.fake_share = 0.25
  config.data.pseudo_fakes.share = 0.125
  config.data.augment.jpeg = 0.3
  config.data.augment.downscale = 0.2
  config.data.augment.fake_degrade_scale = 1.0
  config.init_from = 'runs/mbf_ms1m_init'
  config.flip_tta = True

  config.batch_size = 64
  config.num_epochs = 2
  config.log_every = 20
  config.checkpoint_every = 100

  config.optim.name = 'sgd'
  config.optim.learning_rate = 0.1
  config.optim.weight_decay = 5e-4
  config.optim.schedule = 'cosine'
  config.optim.warmup_epochs = 0.5
  config.optim.backbone_lr_mult = 0.02
  config.optim.fake_head_lr = 1e-3
  return default_lib.shrink(config) if runlocal else config
