r"""The CPU demo: a small two-head model on synthetic challenge data, end to end in minutes.

  python -m jaxface.train                      # same as --config configs/default.py --workdir workdir/default
  python -m jaxface.train --config configs/default.py:runlocal     # any config at CPU smoke size (`shrink` below)

Generates synthetic challenge-layout data on first use (cached under ~/.cache/jaxface, or $JAXFACE_CACHE), aligns it
with the 'none' aligner into a TFDS dataset, trains a quarter-width IR-18 with the AdaFace identity head and the
'traces' deepfake head, and prints the validation EERs. Faces stay 112x112 and are folded to 56x56x12
(space_to_depth): the network costs what a 56x56 model costs, but the 1-2 pixel generator traces that a resize to 56
would average away survive. The fake head trains with its own AdamW (optim.fake_head_lr): with AdaFace's SGD and
clipping it did not move.

What it reaches (measured 2026-11-29 on 2 CPU cores, fresh install and fresh data cache, 6 epochs: 7m30s wall):
validation EER identity-only 0.215, fused 0.146; on the pairs with fakes 0.264 against 0.174; the fake head finds
the fakes of unseen people with a fake-in-pair AUC of 0.79 (0.54 before the changes above). 8 epochs gained little
(fused 0.132) and took the fresh-install run past 10 minutes (10m33s).

Every other config starts from this one and overrides what differs, and ends with
`return default.shrink(config) if runlocal else config`.
"""
import ml_collections


def shrink(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Any config at CPU smoke size (`--config PATH:runlocal`): 8 steps of 32 on 40 synthetic people, an eighth-width
  backbone, no pretrained weights and no paths a user may not have. What makes the config itself stays: the backbone
  family, heads, losses, optimiser, dtype, flip TTA. Tests and scripts/chaos.py start from it.

  Deep IR nets come down to IR-18, as big_vision's runlocal picks a smaller variant: XLA:CPU spent over 6 CPU-minutes
  compiling IR-101's train step and had not finished (2026-12-08, the kryptonite_ir101 smoke, stopped), which no test
  lane can afford. IR-101's own graph is traced forward and backward in tests/test_iresnet.py."""
  config.data.source = 'synthetic'  # generated once, cached under $JAXFACE_CACHE (~/.cache/jaxface)
  config.data.tfds_dir = ''
  config.data.aligner, config.data.aligner_path = 'none', ''
  config.data.synthetic.people = 40
  config.data.synthetic.test_pairs = 40
  config.init_from = ''
  if config.model.arch in ('ir_34', 'ir_50', 'ir_101'):
    config.model.arch = 'ir_18'
  config.model.width = 0.125
  config.batch_size = 32
  config.eval_batch_size = 64
  config.num_steps = 8
  config.eval_every = 0  # once an epoch, and at the last step
  config.log_every = 2
  config.checkpoint_every = 4
  config.progress = False
  return config


def get_config(runlocal: bool = False) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  # ------------------------------------------------------------------------------------------------------------ model
  config.model = ml_collections.ConfigDict()
  config.model.arch = 'ir_18'
  config.model.width = 0.25
  config.model.input_size = 112
  config.model.embedding_dim = 512
  config.model.dropout = 0.0
  config.model.fake_head = 'traces'
  config.model.dtype = 'float32'
  config.model.bn_axis_name = 'batch'
  config.model.space_to_depth = True

  # ------------------------------------------------------------------------------------------------------------- data
  from jaxface.data import data_config  # pylint: disable=g-import-not-at-top
  config.data = data_config.default_data_config()
  config.data.source = 'synthetic'  # 'synthetic' (generated on first use) or 'tfds' (scripts/preprocess.py output)
  config.data.tfds_dir = ''
  config.data.aligner = 'none'  # how the dataset was aligned; evaluation aligns raw photos the same way
  config.data.aligner_path = ''
  config.data.val_fraction = 0.15  # people held out of train for the validation pairs
  config.data.val_pairs_per_person = 4  # validation pairs of each kind per held-out person
  config.data.synthetic = ml_collections.ConfigDict()
  config.data.synthetic.people = 240
  config.data.synthetic.photos_per_person = 10
  config.data.synthetic.fake_fraction = 0.15
  config.data.synthetic.test_pairs = 200
  config.data.synthetic.seed = 0

  # --------------------------------------------------------------------------------------------------------- training
  config.batch_size = 64
  config.eval_batch_size = 128
  config.num_epochs = 6
  config.num_steps = 0  # > 0 overrides num_epochs
  config.eval_every = 0  # steps; 0 = once an epoch
  config.log_every = 10
  config.checkpoint_every = 100
  config.keep_checkpoints = 2
  config.max_nonfinite_steps = 20
  config.init_from = ''  # a folder written by python -m jaxface.convert
  # Validation embeds mirrored faces too, so the fuse strength and threshold are calibrated for flip-TTA scoring;
  # the checkpoint records it and evaluate, verify and export score that way unless told otherwise.
  config.flip_tta = False
  config.distributed = False  # jax.distributed.initialize() (also when JAX_COORDINATOR_ADDRESS is set)
  config.progress = True

  config.optim = ml_collections.ConfigDict()
  config.optim.name = 'sgd'  # sgd | adamw
  config.optim.learning_rate = 0.1
  config.optim.momentum = 0.9
  config.optim.nesterov = False
  config.optim.b1 = 0.9
  config.optim.b2 = 0.999
  config.optim.weight_decay = 5e-4
  config.optim.schedule = 'cosine'  # cosine | step | constant
  config.optim.warmup_epochs = 1.0
  config.optim.final_lr_ratio = 0.01
  config.optim.decay_epochs = (12, 20, 24)
  config.optim.step_factor = 0.1
  config.optim.backbone_lr_mult = 1.0
  config.optim.fake_head_lr = 1e-3  # > 0: the fake head trains with its own AdamW at this peak rate
  config.optim.fake_head_weight_decay = 1e-4
  config.optim.grad_clip = 5.0

  # ----------------------------------------------------------------------------------------------------------- losses
  config.loss = ml_collections.ConfigDict()
  config.loss.identity_weight = 1.0  # AdaFace over real photos only
  config.loss.m = 0.4
  config.loss.h = 0.333
  config.loss.s = 64.0
  config.loss.t_alpha = 0.01
  config.loss.fake_weight = 1.0  # fake-head BCE over all photos
  config.loss.fake_pos_weight = 0.0  # 0 = balance by the batch's real/fake ratio
  config.loss.pushaway_weight = 0.5  # fakes kept away from their person's class centre
  config.loss.pushaway_margin = 0.3
  config.loss.pair_weight = 0.0  # in-batch pair loss with adaptive margin (reference write-up)
  config.loss.pair_s = 64.0
  config.loss.pair_m0 = 0.35
  config.loss.pair_m1 = 0.1
  return shrink(config) if runlocal else config
