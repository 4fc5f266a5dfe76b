"""The objective of stages bn and bias: the labels' cross-entropy ([STDC]) or distillation
from the ANN's logits (docs/maths.md §4e)."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch import nn

from parasnn.calibration.baseline import convert_for_calibration
from parasnn.calibration.batchnorm import fit_batchnorm
from parasnn.calibration.bias import fit_temporal_bias
from parasnn.calibration.config import CalibrationConfig, CalibrationError
from parasnn.calibration.objective import (Objective, TeacherLogits, calibration_loss, distillation_loss)
from parasnn.calibration.pipeline import run_stages
from test_calibrate import _config, _data, _qcfs_net


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), temperature=st.floats(0.25, 8.0), classes=st.integers(2, 12))
def test_distillation_loss_is_the_scaled_kl_divergence(seed, temperature, classes):
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(5, classes, generator=generator, dtype=torch.float64) * 3
    teacher = torch.randn(5, classes, generator=generator, dtype=torch.float64) * 3
    p = torch.softmax(teacher / temperature, dim=1)
    q = torch.softmax(student / temperature, dim=1)
    expected = (p * (p.log() - q.log())).sum(dim=1).mean() * temperature ** 2
    loss = distillation_loss(student, teacher, temperature=temperature)
    torch.testing.assert_close(loss, expected, rtol=1e-9, atol=1e-12)
    assert float(distillation_loss(teacher, teacher, temperature=temperature)) == pytest.approx(0.0, abs=1e-12)
    assert float(loss) >= -1e-12


def test_labels_objective_is_the_cross_entropy_and_ignores_the_teacher():
    logits, labels = torch.randn(4, 3), torch.tensor([0, 2, 1, 1])
    for teacher in (None, torch.randn(4, 3)):
        loss = calibration_loss(logits, labels, teacher, objective=Objective.LABELS, temperature=3.0)
        assert torch.equal(loss, F.cross_entropy(logits, labels))


def test_distillation_gradient_points_towards_the_teacher():
    teacher = torch.tensor([[4.0, 0.0, -2.0]])
    student = torch.zeros(1, 3, requires_grad=True)
    calibration_loss(student, torch.tensor([2]), teacher, objective=Objective.DISTILLATION, temperature=1.0).backward()
    # Descent raises the teacher's favourite class and lowers its least likely one, whatever the label says.
    assert student.grad[0, 0] < 0 < student.grad[0, 2]


def test_teacher_logits_are_computed_once_per_batch_without_gradients_in_eval_mode():
    calls = []

    class Counting(nn.Linear):
        def forward(self, x):
            calls.append(self.training)
            return super().forward(x)

    model = Counting(3, 2).train()
    teacher = TeacherLogits(model)
    x = torch.randn(4, 3)
    first = teacher(0, x)
    again = teacher(0, torch.zeros(4, 3))  # the cache is keyed by batch index
    assert again is first and calls == [False] and not first.requires_grad
    assert model.training  # restored
    teacher(1, x)
    assert len(calls) == 2


@pytest.mark.parametrize("objective, temperature", [("nonsense", 1.0), ("labels", 0.0), ("labels", float("nan")),
                                                    ("labels", float("inf")), ("labels", True)])
def test_bad_objective_options_are_refused(objective, temperature):
    with pytest.raises(CalibrationError, match="objective|temperature"):
        CalibrationConfig(objective=objective, temperature=temperature)


def test_objective_round_trips_through_the_saved_config():
    config = CalibrationConfig(objective="distillation", temperature=2.5)
    assert config.objective is Objective.DISTILLATION
    data = config.to_dict()
    assert data["objective"] == "distillation"
    assert CalibrationConfig.from_dict(data) == config
    assert CalibrationConfig.from_dict({k: v for k, v in data.items() if k not in ("objective", "temperature")}
                                       ).objective is Objective.LABELS  # configs saved before the option


def test_distillation_without_a_teacher_fails_before_any_work():
    model, data = _qcfs_net(levels=4), _data()
    config = _config(stages="bn,bias", objective="distillation")
    network, originals = convert_for_calibration(model, data, config=config)
    with pytest.raises(CalibrationError, match="teacher=ann"):
        run_stages(network, data, config=config, originals=originals)
    with pytest.raises(ValueError, match="stage bn: .*teacher"):
        fit_batchnorm(network, data, config=config)
    with pytest.raises(ValueError, match="stage bias: .*teacher"):
        fit_temporal_bias(network, data, config=config)


def test_stage_bias_learns_from_the_teacher_not_the_labels():
    """Under distillation the labels play no part: other labels give bit-equal biases, while
    another teacher gives other biases; under the labels' objective other labels matter. No
    held-out data, so early stopping (which judges on the labels) stays out of it."""
    model, data = _qcfs_net(levels=4), _data(count=4)
    relabelled = [(x, (y + 1) % 5) for x, y in data]
    other_teacher = _qcfs_net(levels=2)
    start, originals = convert_for_calibration(model, data, config=_config())

    def biases(objective, batches, teacher):
        config = _config(stages="bias", objective=objective, bias_learning_rate=5e-2)
        network, report = run_stages(start, batches, config=config, originals=originals, teacher=teacher)
        assert report.stages[0].details["objective"] == objective
        return torch.cat([neuron.temporal_bias.flatten() for _, neuron in network.neurons()])

    distilled = biases("distillation", data, model)
    assert distilled.abs().sum() > 0
    assert torch.equal(distilled, biases("distillation", relabelled, model))
    assert not torch.equal(distilled, biases("distillation", data, other_teacher))
    assert not torch.equal(biases("labels", data, None), biases("labels", relabelled, None))
