"""CLI habits: defaults in every --help, -T wherever --time-steps is, --config re-runs a
resolved configuration, and `parasnn --help` answers without importing torch."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import parasnn
from parasnn.cli.habits import expand_config, subcommands
from parasnn.cli.main import COMMAND_SUMMARIES, build_parser, main

SRC = str(Path(parasnn.__file__).resolve().parent.parent)


def test_top_level_help_lists_every_command_without_importing_torch():
    parser = build_parser()
    real = {action.dest: action.help for action in parser._subparsers._group_actions[0]._choices_actions}
    assert real == COMMAND_SUMMARIES
    script = ("import sys\nfrom parasnn.cli.main import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n"
              "    pass\nassert 'torch' not in sys.modules, 'torch was imported'\n")
    result = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": SRC},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert all(name in result.stdout for name in COMMAND_SUMMARIES)


def test_every_option_with_a_default_shows_it_and_time_steps_has_minus_t():
    parser = build_parser()
    for name, command in subcommands(parser).items():
        command.format_help()  # no stray % in any help text
        for action in command._actions:
            if action.option_strings and action.default not in (None, False) and action.dest != "help":
                assert "default" in (action.help or "").lower(), f"{name} {action.option_strings[0]}"
        options = command._option_string_actions
        if "--time-steps" in options:
            assert options.get("-T") is options["--time-steps"], name
        assert "--config" in options, name
    assert "-T" in subcommands(parser)["evaluate"]._option_string_actions


def test_config_file_reruns_the_same_conversion_with_overrides(tmp_path, monkeypatch):
    (tmp_path / "user_net.py").write_text(
        "from torch import nn\n\ndef mlp(num_classes=10):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, num_classes))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("user_net", None)
    import user_net
    torch.manual_seed(0)
    torch.save(user_net.mlp().state_dict(), tmp_path / "w.pt")
    first = tmp_path / "first"
    assert main(["convert", "--model", "user_net:mlp", "--weights", str(tmp_path / "w.pt"), "--dataset", "digits",
                 "--calibration-size", "48", "--percentile", "99", "--out", str(first)]) == 0
    config = tmp_path / "first.config.json"
    recorded = json.loads(config.read_text())
    assert recorded["command"] == "convert" and recorded["arguments"]["percentile"] == 99.0
    parser = build_parser()
    argv = expand_config(["convert", "--config", str(config), "--out", str(tmp_path / "second")], parser)
    assert argv[0] == "convert" and argv[-2:] == ["--out", str(tmp_path / "second")]
    assert main(["--config", str(config), "--out", str(tmp_path / "second")]) == 0
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(parasnn.load(first)(x, time_steps=2), parasnn.load(tmp_path / "second")(x, time_steps=2))
    # An override changes the run: another percentile, other thresholds.
    assert main(["convert", "--config", str(config), "--percentile", "90", "--out", str(tmp_path / "third")]) == 0
    thresholds = lambda path: [float(n.threshold) for _, n in parasnn.load(path).neurons()]  # noqa: E731
    assert thresholds(tmp_path / "third") != thresholds(first)
    with pytest.raises(SystemExit, match="'convert' configuration, not 'evaluate'"):
        expand_config(["evaluate", "--config", str(config)], parser)


@pytest.mark.parametrize("argv", [
    ["calibrate", "ann.pt", "-T", "2", "--stages", "da,bias", "--out", "snn.pt", "--no-revert"],
    ["calibrate", "ann.pt", "-T", "4", "--stages", "none", "--out", "snn.pt", "--device", "cpu"],
    ["ablate", "ann.pt", "-T", "2,4", "--out", "dir", "--plots"],
    ["evaluate", "ann.pt", "-T", "1,2", "--forms", "parallel", "--no-activity"],
    ["train", "--levels", "4,4,8", "--epochs", "2", "--no-augment"],
])
def test_a_recorded_command_line_parses_back_to_the_same_options(argv, tmp_path):
    from parasnn.cli.habits import arguments_record
    parser = build_parser()
    args = parser.parse_args(argv)
    path = tmp_path / "run.config.json"
    path.write_text(json.dumps(arguments_record(args)))
    again = parser.parse_args(expand_config(["--config", str(path)], parser))
    assert arguments_record(again) == arguments_record(args)


def test_calibrate_statistics_size_takes_a_count_or_all():
    from parasnn.calibration.config import CalibrationConfig
    from parasnn.cli.calibrate import _config
    parser = build_parser()
    base = ["calibrate", "a.pt", "-T", "2", "--out", "b.pt"]
    for given, expected in (([], CalibrationConfig().statistics_size), (["--statistics-size", "all"], None),
                            (["--statistics-size", "640"], 640)):
        args = parser.parse_args(base + given)
        assert _config(args, stages=args.stages, time_steps=2).statistics_size == expected
    with pytest.raises(SystemExit):
        parser.parse_args(base + ["--statistics-size", "0"])
