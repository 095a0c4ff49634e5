"""The one optimiser set-up of the automatically optimised tasks: decay and no-decay groups, empty ones dropped."""

import functools
import math

import pytest
import torch
from torch import nn

from speechtrain.errors import ConfigError
from speechtrain.tasks.optim import warmup_optimizer, weight_decay_groups


def test_matrices_decay_and_vectors_do_not():
    model = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))
    decayed, not_decayed = weight_decay_groups(model)
    assert [p.shape for p in decayed["params"]] == [torch.Size([3, 4])] and "weight_decay" not in decayed
    assert [p.shape for p in not_decayed["params"]] == [torch.Size([3])] * 3 and not_decayed["weight_decay"] == 0.0


def test_frozen_parameters_and_the_groups_they_empty_are_left_out():
    model = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))
    model[1].requires_grad_(False)
    model[0].bias.requires_grad_(False)
    groups = weight_decay_groups(model)
    assert len(groups) == 1 and groups[0]["params"] == [model[0].weight]


def test_optimizer_and_per_step_schedule():
    model = nn.Linear(4, 3)
    configured = warmup_optimizer(model, functools.partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.1),
                                  estimated_steps=10, warmup_steps=2)
    optimizer, schedule = configured["optimizer"], configured["lr_scheduler"]
    assert [group["weight_decay"] for group in optimizer.param_groups] == [0.1, 0.0]
    assert schedule["interval"] == "step" and math.isclose(optimizer.param_groups[0]["lr"], 0.5e-3)


def test_an_open_ended_run_needs_a_length_free_decay():
    factory = functools.partial(torch.optim.AdamW, lr=1e-3)
    with pytest.raises(ConfigError, match="lr_decay=cosine"):
        warmup_optimizer(nn.Linear(2, 2), factory, estimated_steps=math.inf, decay="cosine")
    assert warmup_optimizer(nn.Linear(2, 2), factory, estimated_steps=math.inf, decay="constant")["optimizer"]
