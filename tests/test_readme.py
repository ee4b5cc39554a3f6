"""The README's Python example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_python_example_runs(capsys):
    block = re.search(r"## In Python\n\n```python\n(.*?)```", README, re.S).group(1)
    exec(compile(block, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "torch.Size([2, 10])" in out and "('fc',) conv1" in out and "layer4" in out


def test_freezing_example_runs_and_prints_what_it_says(capsys):
    section = README.split("## Freezing and optimizers", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(block, "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "['head', 'head.no_decay']"
    assert lines[1].startswith("[('layer4', 0.0001)")


def test_fit_speed_and_cache_examples_run():
    section = README.split("## Will it fit", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 2
    namespace: dict = {}
    for block in blocks:
        exec(compile("import zooadapt as za\n" + block, "README.md", "exec"), namespace)
    assert namespace["est"].total > namespace["est"].params > 0
    assert namespace["cache"].num_samples == 12


def test_data_side_example_prints_what_it_says(capsys, cached_mobilenet, offline):
    section = README.split("## The data side", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile("import zooadapt as za\n" + block, "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["('tabby', 'espresso', 'my cat')", "tabby", "[0.449, 0.226]"]


def test_volume_example_runs_and_trains_the_classifier_alone(capsys):
    section = README.split("## Volumes", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile("import zooadapt as za\n" + block, "README.md", "exec"), namespace)
    held = {id(p) for g in namespace["opt"].param_groups for p in g["params"]}
    head = namespace["model"].class_layers.out
    assert held == {id(head.weight), id(head.bias)} and head.out_features == 3
    assert float(capsys.readouterr().out) > 100  # MiB for a batch of four 96^3 volumes
