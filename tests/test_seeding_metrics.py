"""The shared helpers: per-sample seeded noise and the mean ± sd of seed tables, against hand values."""
import math

import torch

from anomalign.metrics import mean_sd
from anomalign.seeding import seeded_noise


def test_seeded_noise_depends_on_each_rows_seed_only():
    a = seeded_noise([3, 4], (2, 5))
    b = seeded_noise([9, 4, 3], (2, 5))
    assert torch.equal(a[0], b[2]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], a[1])
    assert torch.equal(a[0], torch.randn(2, 5, generator=torch.Generator().manual_seed(3)))
    assert seeded_noise([1], (3,), dtype=torch.float64).dtype == torch.float64


def test_mean_sd_by_hand():
    assert mean_sd([0.40, 0.50, 0.60], scale=100) == "50.0 ± 10.0"  # sample sd of 40, 50, 60
    assert mean_sd([1.0, 2.0], fmt="{:.3f}") == f"1.500 ± {math.sqrt(0.5):.3f}"
    assert mean_sd([0.471, None, float("nan")], scale=100) == "47.1"  # missing values left out
    assert mean_sd([], empty="not run") == "not run"
    assert mean_sd([-0.02, 0.04], fmt="{:+.2f}") == "+0.01 ± 0.04"  # the sd carries no sign
