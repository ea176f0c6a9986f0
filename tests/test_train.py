"""Training helpers that the end-to-end tests do not pin down exactly."""

from __future__ import annotations

import pytest
import torch

from surfad.training.loop import weight_average


def test_weight_average_ramps_up_then_uses_the_decay():
    """The average starts at the first weights and follows min(decay, (1 + n) / (10 + n)) per update."""
    model = torch.nn.Linear(1, 1, bias=False)
    average = weight_average(model, decay=0.5)
    values = [0.0, 10.0, 20.0, 30.0]
    expected = None
    for n, value in enumerate(values):
        model.weight.data.fill_(value)
        average.update_parameters(model)
        if expected is None:
            expected = value  # the first update copies the weights
        else:
            d = min(0.5, (1 + n) / (10 + n))  # after n updates
            expected = d * expected + (1 - d) * value
        assert average.module.weight.item() == pytest.approx(expected)
    assert average.module.weight.item() != pytest.approx(values[-1])  # it lags the raw weights


def test_weight_average_includes_batchnorm_statistics():
    """Running means and variances are averaged too, so the averaged model normalises consistently."""
    model = torch.nn.BatchNorm1d(1)
    average = weight_average(model, decay=0.9)
    average.update_parameters(model)
    model.running_mean.fill_(4.0)
    average.update_parameters(model)
    d = min(0.9, 2 / 11)
    assert float(average.module.running_mean) == pytest.approx(d * 0.0 + (1 - d) * 4.0)
