"""``parasnn convert`` and ``parasnn evaluate`` on a checkpoint written by ``parasnn train``
(their parsers are in :mod:`.main`, with train's: they share the data and conversion options).
Converting a checkpoint reads the data set it was trained on and, for ReLU and GELU networks,
its held-apart training slice (thresholds, or the multi-basis fits); evaluating compares the
ANN with the SNN at every T, parallel and serial, and under torchrun each process takes its
shard of the test set."""
from __future__ import annotations

import sys

from .arguments import config_path, forms_list
from .external import convert_external, evaluate_external, require_model_or_checkpoint
from .habits import arguments_record

__all__ = ["command_convert", "command_evaluate", "needs_calibration_data", "check_fitted_time_steps"]


def _dataset_for(checkpoint: dict, data_dir: str | None, *, spec=None, path=None):
    """The data set the checkpoint was trained on (``--data-dir`` overrides where it is read
    from); with ``spec``, its class count and input shape must fit the model's."""
    from ..datasets.data import load_dataset
    from ..io.checkpoint import check_fits_data
    train_config = checkpoint.get("config") or {}
    name = train_config.get("dataset", "fashion-mnist")
    splits = load_dataset(name, data_dir=data_dir or train_config.get("data_dir"))
    if spec is not None:
        check_fits_data(spec, splits.info, path=path)
    return splits


def _calibration_batches(checkpoint: dict, splits, *, size: int, batch_size: int = 256):
    """The held-apart training slice recorded by parasnn train (never the test set)."""
    from ..datasets.data import first_examples, make_loader, recorded_split
    _, held_apart = recorded_split(splits.train, config=checkpoint.get("config") or {}, fallback_size=size)
    return list(make_loader(first_examples(held_apart, size), batch_size=batch_size, shuffle=False))


def needs_calibration_data(spec) -> bool:
    """Conversion records ReLU thresholds (ReLU networks) or fits multi-basis neurons to the
    GELU inputs seen (GELU networks, e.g. vit-tiny) on held-apart training images."""
    from ..zoo.models import ActivationKind
    return spec.activation.kind in (ActivationKind.RELU, ActivationKind.GELU)


def _convert_checkpoint(model, spec, checkpoint, splits, *, method, batchnorm, percentile, levels, calibration_size,
                        function_time_steps=(2, 4, 8, 16), bases=4, keep_levels=True, threshold_scope="layer"):
    from ..conversion.stages import BatchNormMode, ConversionConfig, ThresholdStatistic, convert
    from ..conversion.methods import neuron_factory
    from ..zoo.models import ActivationKind
    config = ConversionConfig(levels=levels, threshold=ThresholdStatistic(percentile, threshold_scope),
                              batchnorm=BatchNormMode(batchnorm), bases=bases,
                              function_time_steps=tuple(dict.fromkeys(function_time_steps)), keep_levels=keep_levels)
    from_relu = spec.activation.kind is ActivationKind.RELU
    data = (_calibration_batches(checkpoint, splits, size=calibration_size) if needs_calibration_data(spec)
            else None)
    return convert(model, calibration_data=data, config=config, neuron=neuron_factory(method)), config, from_relu


def command_convert(args) -> int:
    require_model_or_checkpoint(args, "convert")
    if args.model:
        return convert_external(args)
    from ..io.checkpoint import ann_fingerprint, load_ann, save_snn
    from ..io.files import check_outputs, write_json
    from ..conversion.methods import default_method
    check_outputs({"--out": args.out, "--out's config": config_path(args.out)}, inputs={"checkpoint": args.checkpoint})
    model, spec, checkpoint = load_ann(args.checkpoint)
    fingerprint = ann_fingerprint(checkpoint["state_dict"])
    method = args.method or default_method(spec.activation.kind).value
    splits = (_dataset_for(checkpoint, args.data_dir, spec=spec, path=args.checkpoint)
              if needs_calibration_data(spec) else None)
    network, config, from_relu = _convert_checkpoint(
        model, spec, checkpoint, splits, method=method, batchnorm=args.batchnorm, percentile=args.percentile,
        levels=args.levels, calibration_size=args.calibration_size, function_time_steps=args.function_time_steps,
        bases=args.bases, keep_levels=not args.t_levels, threshold_scope=args.threshold_scope)
    resolved = {"command": "convert", "checkpoint": str(args.checkpoint), "method": method,
                "conversion": config.to_dict(), "from_relu": from_relu, "calibration_size": args.calibration_size,
                **arguments_record(args)}
    save_snn(args.out, network, spec, method=method, from_relu=from_relu, config=resolved, ann_fingerprint=fingerprint)
    write_json(config_path(args.out), resolved)
    print(f"converted {spec.name} ({len(list(network.neurons()))} neuron layers, method {method}) -> {args.out}")
    return 0


def command_evaluate(args) -> int:
    """Under torchrun each process evaluates its shard of the test set; counts are summed and
    rank 0 prints and writes the report."""
    from ..runtime import distributed
    with distributed.process_group():
        return _evaluate(args)


def _evaluate(args) -> int:
    from ..runtime import distributed
    from ..io.checkpoint import check_fits_data, check_snn_matches_ann, load_ann, load_snn
    from ..datasets.data import make_loader
    from ..io.files import check_outputs, write_json
    from ..conversion.methods import default_method, method_spec
    forms = forms_list(args.forms) if isinstance(args.forms, str) else args.forms
    require_model_or_checkpoint(args, "evaluate")
    if args.model:
        return evaluate_external(args, forms)
    if args.json is not None:
        check_outputs({"--json": args.json, "--json's config": config_path(args.json)},
                      inputs={"checkpoint": args.checkpoint, "--snn": args.snn})
    model, spec, checkpoint = load_ann(args.checkpoint)
    method = args.method or default_method(spec.activation.kind).value
    snn_spec = spec
    if args.snn is not None and args.snn.is_dir():  # written by parasnn.save / convert --model
        from ..io.portable import load
        network = load(args.snn)
    elif args.snn is not None:
        network, snn_spec, snn_checkpoint = load_snn(args.snn)
        if not check_snn_matches_ann(snn_checkpoint, checkpoint, snn_path=args.snn, ann_path=args.checkpoint):
            print(f"note: {args.snn} records no ANN fingerprint (written by an older parasnn); cannot check that it "
                  f"was converted from {args.checkpoint}", file=sys.stderr)
        method = snn_checkpoint["method"]
    splits = _dataset_for(checkpoint, args.data_dir, spec=spec, path=args.checkpoint)
    if args.snn is not None:
        check_fits_data(snn_spec, splits.info, path=args.snn)
        check_fitted_time_steps(network, args.time_steps, where=f"--snn {args.snn}")
    else:
        network, _, _ = _convert_checkpoint(model, spec, checkpoint, splits, method=method, batchnorm="keep",
                                            percentile=99.9, levels=8, calibration_size=args.calibration_size,
                                            function_time_steps=args.time_steps, bases=args.bases,
                                            keep_levels=not args.t_levels)
    test = splits.test
    if args.limit is not None:  # a seeded random sample across classes: the same images for every run
        from ..datasets.splits import sample_subset
        test = sample_subset(test, args.limit, seed=0)
    evaluation = method_spec(method)
    if evaluation.single_process and distributed.world_size() > 1:
        raise ValueError(f"parasnn evaluate --method {method} runs in one process; start it without torchrun")
    from ..datasets.splits import is_streamed
    loader = make_loader(distributed.shard(test), batch_size=args.batch_size, shuffle=False)
    batches = loader if is_streamed(test) else list(loader)  # a streamed folder is decoded per pass, never held
    model, network = model.to(args.device), network.to(args.device)
    report = evaluation.evaluate(model, network, batches, time_steps=args.time_steps, forms=forms,
                                 activity=not args.no_activity, options={"accumulation": args.pascal_accumulation})
    if not distributed.is_main_process():  # results are written once
        return 0
    print(evaluation.format(report, title=f"{method}: {spec.name} on {splits.info.name} ({report.samples} test images)"))
    print()
    if args.json:
        resolved = {"command": "evaluate", "method": method, "checkpoint": str(args.checkpoint),
                    "snn": str(args.snn) if args.snn else None, "time_steps": args.time_steps,
                    "forms": [f.value for f in forms], "limit": args.limit, "dataset": splits.info.name,
                    "device": str(args.device), "processes": distributed.world_size(), **arguments_record(args)}
        write_json(args.json, {"config": resolved, "model": spec.to_dict(), **report.to_dict()})
        write_json(config_path(args.json), resolved)
    return 0


def check_fitted_time_steps(network, time_steps, *, where: str) -> None:
    """Refuse, before any work, T values the network's multi-basis neurons were not fitted for."""
    from ..neurons.function_neuron import FunctionNeuron
    fitted = next((sorted(int(t) for t in module.neurons) for module in network.modules()
                   if isinstance(module, FunctionNeuron)), None)
    missing = [t for t in time_steps if fitted is not None and t not in fitted]
    if missing:
        raise ValueError(f"{where} was fitted for T in {fitted}, not T = {','.join(map(str, missing))}; pass "
                         f"--time-steps {','.join(map(str, fitted))}, or convert again with --function-time-steps "
                         f"{','.join(map(str, sorted(set(fitted) | set(missing))))}")
