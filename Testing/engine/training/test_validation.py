"""training.validation: fixed (t, ε) per validation case, the loss by hand, batch- and process-split invariance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import random_model
from lungddpm.training.data import PreparedCases, load_cases
from lungddpm.training.distributed import DistContext
from lungddpm.training.validation import VALIDATION_SPLIT, validation_loss, validation_noise, validation_timesteps


def test_timesteps_are_the_midpoints_of_count_equal_bins():
    assert validation_timesteps(8, 4).tolist() == [1, 3, 5, 7]
    assert validation_timesteps(250, 1).tolist() == [125]
    assert validation_timesteps(250, 4).tolist() == [31, 93, 156, 218]


def test_noise_depends_on_the_case_id_only():
    a = validation_noise("LIDC-0001", 3, (1, 4, 4, 4))
    assert a.shape == (3, 1, 4, 4, 4) and torch.equal(a, validation_noise("LIDC-0001", 3, (1, 4, 4, 4)))
    assert torch.equal(a[:2], validation_noise("LIDC-0001", 2, (1, 4, 4, 4)))  # ε_j does not depend on count
    assert not torch.equal(a, validation_noise("LIDC-0002", 3, (1, 4, 4, 4)))
    assert not torch.equal(a[0], a[1])


@pytest.mark.parametrize("schema", [(), ("texture",)], ids=["plain", "attribute-model"])
def test_loss_is_the_mean_l1_noise_error_by_hand_in_any_batch_and_process_split(prepared16_val, schema, one_thread):
    model = random_model(attributes=schema)
    cases = PreparedCases(load_cases([str(prepared16_val)], VALIDATION_SPLIT)[0], schema)
    assert len(cases) == 2
    count, ab = 4, model.diffusion.alphas_cumprod.float()
    errors = []
    with torch.no_grad():
        for index, case in enumerate(cases.cases):
            x = torch.from_numpy(np.load(case.folder / "x.npy")).float()[None]
            cond = torch.from_numpy(np.load(case.folder / "cond.npy")).float()[None]
            attributes = cases[(index, 0)][2][None] if schema else None  # the case's own (phantoms: texture unknown)
            for j, t in enumerate([1, 3, 5, 7]):  # T = 8: the midpoints of 4 bins
                eps = validation_noise(case.case_id, count, tuple(x.shape[1:]))[j][None]
                x_t = ab[t].sqrt() * x + (1 - ab[t]).sqrt() * eps  # eq. 2
                predicted = model.denoise_fn(torch.cat([x_t, cond], 1), torch.tensor([t]), attributes)
                errors.append((predicted - eps).abs().mean().item())  # eq. 7
    expected = float(np.mean(errors))
    for batch_size in (1, 3):
        assert validation_loss(model.denoise_fn, model.diffusion, cases, count, DistContext(), batch_size=batch_size) == \
            pytest.approx(expected, abs=1e-6)
    # two processes' shares (without a process group each returns its own share of the mean) add up to the whole
    shares = [validation_loss(model.denoise_fn, model.diffusion, cases, count, DistContext(rank=r, world_size=2))
              for r in (0, 1)]
    assert all(s > 0 for s in shares) and sum(shares) == pytest.approx(expected, abs=1e-6)
    assert model.denoise_fn.training is False  # the mode is restored (random_model is in eval mode)
