"""The newcomer's path, one command per step: a torchvision ResNet-18 with the user's own
weights file → parasnn convert --model → parasnn.load in a fresh process → parasnn export
--format nir → nir.read. Plus the user's own factory, safetensors weights, evaluate, and the
refusal of pickled models."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import load_file, save_file

import parasnn
from parasnn.cli.main import main
from parasnn.zoo.external import ModelError, dataset_for, external_model, strip_escapes

SRC = str(Path(parasnn.__file__).resolve().parent.parent)


def _run(*args, cwd):
    environment = {**os.environ, "PYTHONPATH": SRC}
    result = subprocess.run([sys.executable, *args], cwd=cwd, env=environment, capture_output=True, text=True,
                            timeout=300)
    return result


def test_resnet18_from_a_state_dict_converts_saves_loads_and_exports_to_nir(tmp_path):
    pytest.importorskip("nir")
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), tmp_path / "w.pt")
    convert = _run("-m", "parasnn.cli", "convert", "--model", "torchvision:resnet18", "--weights", "w.pt",
                   "--num-classes", "10", "--input-shape", "3,32,32", "--dataset", "digits",
                   "--calibration-size", "32", "--out", "net", cwd=tmp_path)
    assert convert.returncode == 0, convert.stderr
    assert (tmp_path / "net" / "network.json").is_file() and (tmp_path / "net.config.json").is_file()

    load = _run("-c", textwrap.dedent("""
        import parasnn, torch
        from safetensors.torch import save_file
        network = parasnn.load("net")
        x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            save_file({"y": network(x, time_steps=2)}, "y.safetensors")
        """), cwd=tmp_path)
    assert load.returncode == 0, load.stderr
    # The same conversion in this process gives the same bits.
    model = external_model("torchvision:resnet18", tmp_path / "w.pt", num_classes=10)
    images = dataset_for("digits", (3, 32, 32)).train.tensors[0][:32]
    network = parasnn.convert(model, calibration_data=[images])
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = network(x, time_steps=2)
    assert torch.equal(load_file(str(tmp_path / "y.safetensors"))["y"], expected)

    export = _run("-m", "parasnn.cli", "export", "net", "--format", "nir", "--out", "net.nir",
                  "--max-pool", "sum-pool", cwd=tmp_path)
    assert export.returncode == 0, export.stderr
    read = _run("-c", "import nir; g = nir.read('net.nir'); print(sum(type(n).__name__ == 'IF' "
                      "for n in g.nodes.values()))", cwd=tmp_path)
    assert read.returncode == 0, read.stderr
    assert int(read.stdout) == len(list(network.neurons())) == 17
    from parasnn.io.nir import read_nir
    with torch.no_grad():
        assert torch.equal(read_nir(tmp_path / "net.nir")(x, time_steps=2), expected)


FACTORY = '''
from torch import nn


def small_cnn(num_classes=10):
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AvgPool2d(2),
                         nn.Flatten(), nn.Linear(4 * 4 * 4, num_classes))
'''


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    (tmp_path / "user_models.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("user_models", None)
    import user_models
    torch.manual_seed(0)
    model = user_models.small_cnn()
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    return model


def test_own_factory_with_safetensors_converts_calibrates_and_evaluates(tmp_path, factory_module, capsys):
    common = ["--model", "user_models:small_cnn", "--weights", str(tmp_path / "w.safetensors"), "--dataset",
              "digits", "--calibration-size", "64"]
    assert main(["convert", *common, "--out", str(tmp_path / "net")]) == 0
    expected = parasnn.convert(factory_module.eval(), calibration_data=[
        dataset_for("digits", None).train.tensors[0][:64]])
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(parasnn.load(tmp_path / "net")(x, time_steps=3), expected(x, time_steps=3))
    assert main(["calibrate", *common, "--time-steps", "2", "--stages", "da", "--validation-fraction", "0",
                 "--out", str(tmp_path / "calibrated")]) == 0
    assert main(["evaluate", *common, "--snn", str(tmp_path / "calibrated"), "--time-steps", "2",
                 "--forms", "parallel", "--limit", "64", "--no-activity"]) == 0
    assert "user_models:small_cnn on digits (64 test images)" in capsys.readouterr().out


def test_pickled_models_and_wrong_weights_are_refused_with_the_fix(tmp_path, factory_module, capsys):
    torch.save(factory_module, tmp_path / "full.pt")
    code = main(["convert", "--model", "user_models:small_cnn", "--weights", str(tmp_path / "full.pt"),
                 "--out", str(tmp_path / "net")])
    error = capsys.readouterr().err
    assert code == 2 and "\x1b" not in error
    assert "pickled Python object (it names torch.nn.modules.container.Sequential)" in error
    assert "torch.save(model.state_dict(), 'weights.pt')" in error
    with pytest.raises(ModelError, match=r"fc\.weight \(1000, 512\) vs \(10, 512\).*--num-classes"):
        torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "imagenet.pt")
        external_model("torchvision:resnet18", tmp_path / "imagenet.pt", num_classes=10)
    with pytest.raises(ModelError, match="expected torchvision:NAME"):
        external_model("resnet18", None)
    with pytest.raises(ModelError, match="no callable 'nothing'"):
        external_model("user_models:nothing", None)
    (tmp_path / "broken.pt").write_bytes(b"not a torch file")
    with pytest.raises(ModelError, match="corrupt or truncated"):
        external_model("user_models:small_cnn", tmp_path / "broken.pt")
    assert main(["convert", "--out", str(tmp_path / "x")]) == 2
    assert "either a checkpoint file or --model" in capsys.readouterr().err
    assert strip_escapes("\x1b[1mbold\x1b[0m text") == "bold text"
