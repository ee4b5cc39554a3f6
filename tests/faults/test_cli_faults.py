"""The command line under bad input: one ``zooadapt: error:`` line and exit 1 for every
error, advice in CLI syntax, arguments and output paths checked before any work."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import pytest
import torch

import zooadapt as za

EXE = shutil.which("zooadapt")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=300)


def one_line(result: subprocess.CompletedProcess[str], message: str) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("zooadapt: error: "), result.stderr
    assert message in lines[0] and "Traceback" not in result.stderr
    return lines[0]


def test_version():
    result = run("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"zooadapt {za.__version__}"


def test_help_version_and_argument_errors_do_not_import_torch():
    code = (
        "import sys\n"
        "from zooadapt.cli import main\n"
        "calls = (['--help'], ['--version'], ['bench'], ['info', 'x', '--num-classes', 'ten'])\n"
        "for argv in calls:\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as stop:\n"
        "        print(argv[0], stop.code)\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.splitlines()[-1] == "False", result.stdout
    codes = [line for line in result.stdout.splitlines() if line.endswith((" 0", " 1"))]
    assert codes == ["--help 0", "--version 0", "bench 1", "info 1"]
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert errors == [
        "zooadapt bench: error: the following arguments are required: MODEL "
        "(see zooadapt bench --help)",
        "zooadapt info: error: argument --num-classes: invalid int value: 'ten' "
        "(see zooadapt info --help)",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("bench", "resnet18", "--device", "bogus"), "--device bogus: not a device"),
        (("bench", "resnet18", "--json", "."), "--json .: cannot write"),
        (("bench", "resnet18", "--plot", "/nonexistent/p.png"), "does not exist"),
        (
            ("adapt", "resnet18", "--pretrained", "none", "--out", "/nonexistent/x.safetensors"),
            "does not exist",
        ),
        (("adapt", "resnet18", "--pretrained", "none", "--num-classes", "100000000000"), "Error"),
        (("memory", "resnet18", "--batch-size", "0"), "batch_size must be a positive int"),
    ],
    ids=["device", "json-dir", "plot-dir", "out-dir", "num-classes", "batch-size"],
)
def test_bad_arguments_give_one_line(args, message):
    one_line(run(*args), message)


def test_an_integer_checkpoint_gives_one_line_and_the_report_in_a_file(tmp_path):
    model = za.adapt("resnet18", pretrained=False)
    state = {k: v.long() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save(state, tmp_path / "int.pth")
    result = run("adapt", "resnet18", "--pretrained", str(tmp_path / "int.pth"))
    line = one_line(result, "cannot be loaded into ResNet (full report: ")
    report = pathlib.Path(line.split("full report: ")[1].split(";")[0])
    assert "int64 where the model holds float32" in report.read_text(encoding="utf-8")


def test_pickled_objects_point_to_trust_pickle(tmp_path):
    model = za.adapt("resnet18", num_classes=3, pretrained=False)
    torch.save(model, tmp_path / "whole.pt")  # a whole pickled model
    line = one_line(
        run("adapt", "resnet18", "--pretrained", str(tmp_path / "whole.pt")), "--trust-pickle"
    )
    assert "trust_pickle=True" not in line
    trusted = run("adapt", "resnet18", "--pretrained", str(tmp_path / "whole.pt"), "--trust-pickle")
    assert trusted.returncode == 0, trusted.stderr
