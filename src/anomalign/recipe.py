"""The measured recipe: the one home of the defaults this project measured as best (docs/results.md,
docs/segmenter.md, docs/run.md).

``train-segmenter`` and ``train-generator`` take their option defaults from here, ``anomalign run``'s plan
(``plan.Plan``) takes its fields' defaults from here, and the Python API goes through both; a test
(tests/test_recipe.py) reads these values and checks that the commands, the plan and the API agree. The
sampler's defaults (sampler, steps, guidance) have their own home beside the sampler:
``generator.sampler.DEFAULT_SAMPLER``, ``DEFAULT_STEPS`` and ``DEFAULT_GUIDANCE``.

A value that differs between a standalone command and ``run`` is two settings, each named here, with the
measurement behind it in the plan's reason (``plan.make_plan``).
"""
from __future__ import annotations

# The segmenter (train-segmenter's defaults, and the plan's baseline and arms).
SEGMENTER = {
    "preset": "unet-tiny",       # a small U-Net: 41-49 test mIoU on magnetic tile where a random Segformer got 7.9
    "norm": "group",
    "size": 128,                 # px: the crop at native resolution (magnetic tile, CrackForest)
    "max_steps": 3200,           # real only gained 8 mIoU from 2 400 to 3 200 steps on magnetic tile
    "batch_size": 16,
    "learning_rate": 1e-3,
    "train_normals": False,      # with normals in the batch the anomaly class drowned (val mIoU 0)
    "synthetic_fraction": 0.2,   # 4 synthetic crops beside 16 real ones
    "synthetic_weight": 0.3,     # w_syn of Eq. 6
    "anomaly_weight": 5.0,
    "dice_weight": 1.0,
    "photometric": 0.5,
    "colour": 0.0,               # saturation/white-balance jitter: off for train-segmenter; run's plan sets it
    # Generative Feedback (Eq. 8-11)
    "temperature": 0.1,          # λ of Eq. 8
    "w_fb": 1.0,
    "fb_every": 2,
    "fb_rows": 4,
}

# The generator (train-generator's defaults).
GENERATOR = {
    "alpha": 0.7,                # α of Eq. 5 (the paper's)
    "max_steps": 600,
    "batch_size": 16,
    "learning_rate": 1e-4,
    "normals": 16,
    "crops_per_image": 8,
}

# What `anomalign run` does differently from the standalone commands (the plan's reasons say why).
RUN = {
    "gen_steps_crops": 150,      # the tiny base already follows masks: these steps adapt it to the data
    "gen_steps_whole": 200,
    "gen_crops_per_image": 4,
    "synthetic": 300,            # pairs kept: 47.9 ± 1.8 vs 40.2 ± 9.2 unfiltered on magnetic tile
    "min_alignment": 0.3,        # oracle IoU below which a synthetic pair is dropped
    "synthesis_batch_size": 16,
}


def synthetic_per_step(batch_size: int = SEGMENTER["batch_size"],
                       fraction: float = SEGMENTER["synthetic_fraction"]) -> int:
    """Synthetic crops added to ``batch_size`` real ones so that they are ``fraction`` of the step's batch."""
    return round(batch_size * fraction / (1 - fraction))
