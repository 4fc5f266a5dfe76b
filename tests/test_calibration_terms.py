"""Calibration as data: per-stage options, the deprecated flat spelling, learned terms and
applying them without touching the input network."""
import warnings

import pytest
import torch

from parasnn.calibration.baseline import convert_for_calibration
from parasnn.calibration.batches import split_batches
from parasnn.calibration.batchnorm import BN_TERMS, fit_batchnorm
from parasnn.calibration.bias import fit_temporal_bias
from parasnn.calibration.config import (FLAT_NAMES, BatchNormConfig, BiasConfig, CalibrationConfig, CalibrationError,
                                        DAConfig, QuantizerGradient, Stage)
from parasnn.calibration.da import fit_distribution
from parasnn.calibration.pipeline import STAGES
from parasnn.calibration.terms import BiasTerms, DATerms, apply_terms
from test_calibrate import _data, _relu_net


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items() if torch.is_tensor(v)}


def test_flat_names_build_the_same_config_with_a_deprecation_warning():
    nested = CalibrationConfig(da=DAConfig(momentum=0.9, epochs=2), bn=BatchNormConfig(epochs=1, gradient="ste"),
                               bias=BiasConfig(patience=3, clip_norm=2.0))
    with pytest.warns(DeprecationWarning, match="flat spelling"):
        flat = CalibrationConfig(momentum=0.9, da_epochs=2, bn_epochs=1, bn_gradient="ste", patience=3, clip_norm=2.0)
    assert flat == nested and flat.bn.gradient is QuantizerGradient.STRAIGHT_THROUGH
    with pytest.warns(DeprecationWarning, match="config.bias.patience"):
        assert nested.patience == 3
    with pytest.warns(DeprecationWarning):
        assert nested.replace(bias_epochs=7).bias.epochs == 7
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the nested spelling and a round trip warn about nothing
        assert nested.replace(seed=4).seed == 4 and nested.replace(seed=4).bias == nested.bias
        assert CalibrationConfig.from_dict(nested.to_dict()) == nested
        # A configuration saved flat by parasnn 0.1 (e.g. in a *.config.json) reads back as is.
        old = {"stages": ["bn"], "time_steps": 2, "momentum": 0.9, "da_epochs": 2, "bn_epochs": 1, "bn_gradient": "ste",
               "patience": 3, "clip_norm": 2.0}
        assert CalibrationConfig.from_dict(old) == nested.replace(stages="bn", time_steps=2)
    assert set(FLAT_NAMES) >= {"momentum", "bn_learning_rate", "bias_final_learning_rate", "validation_interval"}
    with pytest.raises(TypeError, match="bogus"):
        CalibrationConfig(bogus=1)
    with pytest.raises(CalibrationError, match="BiasConfig: patience must be an integer >= 1"):
        BiasConfig(patience=0)


def test_stages_return_terms_and_applying_them_leaves_the_input_alone():
    model = _relu_net()
    data = _data(count=4)
    config = CalibrationConfig(time_steps=2, batch_size=32, bn=BatchNormConfig(epochs=1, learning_rate=1e-2),
                               bias=BiasConfig(epochs=1, learning_rate=0.05))
    network, originals = convert_for_calibration(model, data, config=config)
    before = _state(network)
    da_terms, _ = fit_distribution(network, data, originals=originals, config=config)
    bn_terms, _ = fit_batchnorm(network, data, config=config)
    bias_terms, _ = fit_temporal_bias(network, data, config=config)
    assert all(torch.equal(v, _state(network)[k]) for k, v in before.items())  # fitting modifies nothing
    paths = [p for p, _ in network.neurons()]
    assert isinstance(da_terms, DATerms) and set(da_terms.pre_shift) == set(paths)
    assert set(bn_terms.layers) == {"bn1", "bn2"} and set(bn_terms.layers["bn1"]) == set(BN_TERMS)
    assert isinstance(bias_terms, BiasTerms) and {p: t.shape for p, t in bias_terms.temporal_bias.items()} == {
        "act1": (4,), "act2": (6,), "act3": (12,)}
    for terms in (da_terms, bn_terms, bias_terms):
        applied = apply_terms(network, terms)
        assert all(torch.equal(v, _state(network)[k]) for k, v in before.items())  # applying neither
        after = _state(applied)
        for path, values in terms.assignments().items():
            for name, value in values.items():
                assert torch.equal(after[f"graph_module.{path}.{name}"], value)
        assert not any(p.requires_grad for p in applied.parameters()) and not applied.training
    assert set(STAGES) == set(Stage)


def test_split_batches_holds_out_a_seeded_random_choice_not_the_last_batches():
    batches = list(range(20))
    held = {tuple(split_batches(batches, validation_fraction=0.2, seed=seed)[1]) for seed in range(6)}
    assert len(held) > 1 and all(len(h) == 4 for h in held)
    training, validation = split_batches(batches, validation_fraction=0.2, seed=3)
    assert sorted(training + validation) == batches and training == sorted(training)
    assert split_batches(batches, validation_fraction=0.2, seed=3) == (training, validation)


def test_with_training_data_the_stages_learn_on_it_and_the_held_apart_batches_only_judge():
    model = _relu_net()
    training, held = _data(count=5, seed=1), _data(count=2, seed=2)
    config = CalibrationConfig(time_steps=2, batch_size=32, bn=BatchNormConfig(epochs=1),
                               bias=BiasConfig(epochs=2, patience=1000, validation_interval=1))
    from parasnn.calibration.pipeline import calibrate_with_report
    network, report = calibrate_with_report(model, held, config=config, training_data=training)
    steps = {stage.stage: stage.steps for stage in report.stages}
    assert steps == {"da": len(training), "bn": len(training), "bias": 2 * len(training)}
    assert all(values["samples"] == 64 for values in report.validation.values())  # every held-apart image judges
    # Thresholds are recorded on the training data too: the same network as converting on it.
    on_training, _ = convert_for_calibration(model, training, config=config)
    on_held, _ = convert_for_calibration(model, held, config=config)
    thresholds = {path: n.threshold for path, n in network.neurons()}
    assert all(torch.equal(thresholds[p], n.threshold) for p, n in on_training.neurons())
    assert any(not torch.equal(thresholds[p], n.threshold) for p, n in on_held.neurons())


def test_calibrate_command_records_what_the_stages_learned_on(tmp_path):
    import json

    from parasnn.cli.main import main
    from parasnn.io.checkpoint import save_ann
    from parasnn.zoo.models import ActivationKind, ActivationSpec, ModelSpec, build_model
    pytest.importorskip("sklearn")
    spec = ModelSpec(name="vgg-small", input_shape=(1, 8, 8), num_classes=10, width=4,
                     activation=ActivationSpec(kind=ActivationKind.RELU))
    torch.manual_seed(0)
    path = tmp_path / "model.pt"
    save_ann(path, build_model(spec).eval(), spec, config={"dataset": "digits", "holdout": 200, "seed": 0})
    for learn_on, size in (("training", 96), ("held-apart", None)):
        out = tmp_path / f"{learn_on}.pt"
        arguments = ["calibrate", str(path), "--stages", "bias", "--time-steps", "2", "--out", str(out),
                     "--calibration-size", "64", "--batch-size", "32", "--bias-epochs", "1", "--learn-on", learn_on,
                     "--device", "cpu"] + (["--training-size", str(size)] if size else [])
        assert main(arguments) == 0
        resolved = json.loads((tmp_path / f"{learn_on}.config.json").read_text())
        assert resolved["learn_on"] == learn_on and resolved["calibration"]["training_size"] == size
        bias = resolved["report"]["stages"][0]
        # Training set: 96 images in 3 batches; held-apart: 64 images, 20 % (1 batch) held out, 1 trains.
        assert bias["steps"] == (3 if learn_on == "training" else 1)
        assert resolved["report"]["validation"]["fs-pc"]["samples"] == (64 if learn_on == "training" else 32)
