"""The ``zooadapt`` console script, driven in a subprocess as a user would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

import zooadapt as za
from zooadapt.saving import read_metadata

#: The script installed beside this interpreter (the venv's), else the one on PATH.
BESIDE = Path(sys.executable).with_name("zooadapt")
EXE = str(BESIDE) if BESIDE.exists() else shutil.which("zooadapt")


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    assert EXE, "the zooadapt console script is installed by `pip install -e .`"
    return subprocess.run([EXE, *args], capture_output=True, text=True, env=env, timeout=120)


def one_error_line(result: subprocess.CompletedProcess[str], message: str) -> None:
    """The command failed with exactly one ``zooadapt: error:`` line containing ``message``."""
    assert result.returncode == 1, result.stdout
    assert result.stderr.startswith("zooadapt: error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_help_shows_an_example_of_every_command():
    result = run("--help")
    assert result.returncode == 0, result.stderr
    for command in ("list", "info", "adapt", "predict", "weights", "plugins", "bench", "memory"):
        assert f"\n    {command} " in result.stdout, command  # listed with its help line
        assert f"\n  zooadapt {command} " in result.stdout, command  # and an example


def test_adapt_prints_the_summary():
    result = run(
        "adapt", "resnet18", "--num-classes", "10", "--in-chans", "1", "--pretrained", "none"
    )
    assert result.returncode == 0, result.stderr
    assert "family 'resnet'" in result.stdout
    head = next(line for line in result.stdout.splitlines() if line.startswith("head "))
    assert head.split()[1] == "5,130"  # 512 * 10 + 10


def test_errors_are_one_line_and_exit_non_zero():
    result = run("adapt", "resnet1888", "--pretrained", "none")
    assert result.returncode == 1
    assert result.stderr.startswith("zooadapt: error: unknown model 'resnet1888'")
    assert "torchvision/resnet18" in result.stderr and "Traceback" not in result.stderr


def test_list_counts_and_filters():
    result = run("list", "vit_b_*")
    assert result.stdout.split() == ["torchvision/vit_b_16", "torchvision/vit_b_32"]
    assert "2 models" in result.stderr


def test_list_restricts_to_one_zoo_and_rejects_unknown_zoos():
    result = run("list", "--zoo", "torchvision", "--json")
    assert result.returncode == 0, result.stderr
    names = json.loads(result.stdout)
    assert len(names) == 80 and all(name.startswith("torchvision/") for name in names)
    assert "80 models" in result.stderr

    one_error_line(run("list", "--zoo", "nope"), "unknown zoo 'nope'; zoos: torchvision, timm")


def test_info_shows_family_head_stem_groups_and_weights():
    result = run("info", "densenet121", "--freeze", "last")
    assert result.returncode == 0, result.stderr
    assert "family 'densenet'" in result.stdout and "stem: features.conv0" in result.stdout
    assert "classes: 1000  input: 3 channels, 224x224" in result.stdout
    lines = result.stdout.splitlines()
    assert lines[4:8] == [
        "data: mean (0.485, 0.456, 0.406)  std (0.229, 0.224, 0.225)",
        "      bilinear, resize 256 (crop_pct 0.875), center crop 224x224",
        "      from torchvision IMAGENET1K_V1 weights",
        "labels: 1000: tench, goldfish, great white shark, tiger shark, hammerhead, ... (995 more)",
    ]
    flags = {line.split()[0]: line.split()[-1] for line in lines[9:15]}
    assert flags == {f"block{i}": "no" for i in (1, 2, 3)} | {
        "stem": "no",
        "block4": "yes",
        "head": "yes",
    }
    assert "* IMAGENET1K_V1" in result.stdout and "densenet121-a639ec97.pth" in result.stdout


def test_info_json_applies_classes_and_freeze_and_lists_weights():
    result = run("info", "mobilenet_v2", "--num-classes", "3", "--freeze", "backbone", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert (info["model"], info["family"], info["plugin"]) == (
        "torchvision/mobilenet_v2",
        "mobilenet_v2",
        "mobilenet",
    )
    assert info["head"] == ["classifier.1"] and info["stems"] == ["features.0.0"]
    assert info["data_config"]["resize_size"] == [232]  # the default weights, IMAGENET1K_V2
    assert info["labels"] is None  # a new head of 3 classes: names unknown
    groups = {group["name"]: group for group in info["groups"]}
    assert list(groups)[-1] == "head" and groups["head"]["parameters"] == 1280 * 3 + 3
    assert {name: g["trainable"] for name, g in groups.items()} == {
        name: "yes" if name == "head" else "no" for name in groups
    }
    assert info["trainable_parameters"] == 1280 * 3 + 3 < info["parameters"]
    weights = {w["tag"]: w for w in info["weights"]}
    v1 = weights["IMAGENET1K_V1"]
    assert Path(v1["file"]).name == "mobilenet_v2-b0353104.pth" and v1["sha256"] == "b0353104"
    assert v1["url"].endswith("/mobilenet_v2-b0353104.pth") and isinstance(v1["cached"], bool)
    assert [tag for tag, w in weights.items() if w["default"]] == ["IMAGENET1K_V2"]


def test_adapt_out_writes_a_checkpoint_that_za_load_rebuilds(tmp_path: Path):
    out = tmp_path / "ckpt" / "resnet18-3.safetensors"
    missing = run("adapt", "resnet18", "--pretrained", "none", "--out", str(out))
    assert missing.returncode == 1 and "does not exist (create it first)" in missing.stderr
    assert not out.parent.exists()  # no directory created unasked
    out.parent.mkdir()
    result = run(
        "adapt", "resnet18", "--num-classes", "3", "--in-chans", "1", "--pretrained", "none",
        "--freeze", "backbone", "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == f"saved {out}"
    head = next(line for line in result.stdout.splitlines() if line.startswith("head "))
    assert head.split()[1:] == ["1,539", "1,539", "0"]  # only the head is trainable
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary file left

    metadata = read_metadata(out)
    assert (metadata["model"], metadata["num_classes"], metadata["in_chans"]) == (
        "torchvision/resnet18",
        3,
        1,
    )
    model = za.load(out)
    assert model.fc.out_features == 3 and model.conv1.weight.shape == (64, 1, 7, 7)
    from safetensors.torch import load_file

    saved = load_file(str(out))
    state = model.state_dict()
    assert saved.keys() == state.keys()
    assert all(torch.equal(saved[k], state[k]) for k in saved)


def test_adapt_out_must_be_safetensors(tmp_path: Path):
    out = tmp_path / "resnet18.pt"
    result = run("adapt", "resnet18", "--pretrained", "none", "--out", str(out))
    one_error_line(result, f"--out {out}: the file name must end in .safetensors")
    assert not out.exists()


def test_weights_json_says_where_each_torchvision_file_goes(tmp_path: Path, real_mobilenet_file):
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / real_mobilenet_file.name).symlink_to(real_mobilenet_file)
    result = run(
        "weights", "mobilenet_v2", "--json", env={**os.environ, "TORCH_HOME": str(tmp_path)}
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["model"] == "torchvision/mobilenet_v2"
    weights = {w["tag"]: w for w in data["weights"]}
    assert set(weights) == {"IMAGENET1K_V1", "IMAGENET1K_V2"}
    v1, v2 = weights["IMAGENET1K_V1"], weights["IMAGENET1K_V2"]
    assert v1["file"] == str(checkpoints / "mobilenet_v2-b0353104.pth") and v1["cached"]
    assert v2["file"] == str(checkpoints / "mobilenet_v2-7ebf99e0.pth") and not v2["cached"]
    assert v1["url"] == "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth"
    assert (v1["sha256"], v1["default"], v2["default"]) == ("b0353104", False, True)


def test_weights_of_a_timm_model_name_the_hub_repo_and_how_to_go_offline():
    result = run("weights", "timm/resnet18")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "* a1_in1k" in out and "Hugging Face Hub repo timm/resnet18.a1_in1k" in out
    assert "https://huggingface.co/timm/resnet18.a1_in1k/resolve/main/model.safetensors" in out
    assert "models--timm--resnet18.a1_in1k" in out and "HF_HUB_CACHE" in out
    assert "zooadapt adapt timm/resnet18 --pretrained /path/to/model.safetensors" in out


def test_plugins_json_lists_every_builtin():
    result = run("plugins", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    names = {p["name"] for p in data["plugins"]}
    assert {"torchvision", "timm", "resnet", "generic"} <= names and data["failed"] == []
    resnet = next(p for p in data["plugins"] if p["name"] == "resnet")
    assert resnet["families"] == ["resnet"] and resnet["hooks"] == ["zooadapt_families"]


THIRD_PARTY = """
import zooadapt as za

@za.hookimpl
def zooadapt_rename_rules(family):
    return []
"""


def test_plugins_text_shows_builtin_third_party_and_failed_plugins(tmp_path: Path):
    (tmp_path / "tp_cli_good.py").write_text(THIRD_PARTY)
    (tmp_path / "tp_cli_broken.py").write_text('raise RuntimeError("tp_cli_broken is broken")\n')
    info = tmp_path / "tp_cli-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tp-cli\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[zooadapt]\ntpgood = tp_cli_good\ntpbroken = tp_cli_broken\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    for variable in ("ZOOADAPT_PLUGINS", "ZOOADAPT_DISABLE_PLUGINS", "ZOOADAPT_STRICT_PLUGINS"):
        env.pop(variable, None)
    result = run("plugins", env=env)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()}
    version = f"zooadapt=={za.__version__}"
    assert rows["torchvision"].split()[1:] == [version, "zooadapt_zoos;", "zoos", "torchvision"]
    assert rows["timm"].split()[1] == version
    assert "zooadapt_families, zooadapt_zoos; zoos timm; families timm" in rows["timm"]
    assert "families googlenet, inception_v3" in rows["inception"]
    assert rows["tpgood"].split()[1:] == ["tp-cli==0.1", "zooadapt_rename_rules"]
    assert rows["tpbroken"].split()[1:3] == ["tp-cli==0.1", "FAILED:"]
    assert "tp_cli_broken is broken" in rows["tpbroken"]


def test_memory_prints_each_setting_and_the_largest_batch_in_a_budget():
    result = run("memory", "resnet18", "--settings", "none,backbone", "--input-size", "64")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and "none" in lines[0] and "backbone" in lines[1]

    budget = run(
        "memory",
        "resnet18",
        "--settings",
        "none,backbone",
        "--input-size",
        "64",
        "--budget",
        "1GiB",
        "--json",
    )
    rows = json.loads(budget.stdout)
    full, frozen = (row["max_batch_size"] for row in rows)
    assert 0 < full < frozen
    for row in rows:
        per_batch = za.estimate_memory(
            "resnet18",
            batch_size=row["max_batch_size"],
            input_size=64,
            freeze=None if row["setting"] == "none" else "backbone",
        )
        assert per_batch.total <= 2**30


def test_memory_and_bench_reject_bad_input_in_one_line():
    cases = [
        (("memory", "resnet18", "--budget", "24 parsecs"), "24 parsecs"),
        (("memory", "resnet18", "--batch-size", "0"), "batch_size"),
        (("bench", "resnet18", "--device", "cuda"), "CUDA is not available"),
        (("bench", "vit_b_16", "--input-size", "100"), "vit_b_16 cannot take 100x100"),
    ]
    for args, message in cases:
        if args[-1] == "cuda" and torch.cuda.is_available():
            continue
        result = run(*args)
        assert result.returncode == 1 and message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


# -- the data side: classes, labels, predict -------------------------------------------------


def _photos(tmp_path: Path) -> tuple[Path, Path]:
    from PIL import Image
    from skimage import data

    cat, coffee = tmp_path / "cat.jpg", tmp_path / "coffee.png"
    Image.fromarray(data.chelsea()).save(cat)
    Image.fromarray(data.coffee()).save(coffee)
    return cat, coffee


def _hub_env(tmp_path: Path, real_mobilenet_file: Path) -> dict[str, str]:
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / real_mobilenet_file.name).symlink_to(real_mobilenet_file)
    return {**os.environ, "TORCH_HOME": str(tmp_path), "ZOOADAPT_OFFLINE": "1"}


def test_adapt_classes_then_predict_a_saved_checkpoint(tmp_path: Path, real_mobilenet_file):
    env = _hub_env(tmp_path, real_mobilenet_file)
    cat, coffee = _photos(tmp_path)
    out = tmp_path / "three.safetensors"
    adapting = run(
        "adapt", "mobilenet_v2", "--pretrained", "IMAGENET1K_V1", "--classes",
        "espresso,tabby,moped", "--out", str(out), env=env,
    )  # fmt: skip
    assert adapting.returncode == 0, adapting.stderr
    assert read_metadata(out)["labels"] == ["espresso", "tabby", "moped"]
    result = run("predict", str(out), str(cat), str(coffee), "--top-k", "2", "--json", env=env)
    assert result.returncode == 0, result.stderr
    ranked = json.loads(result.stdout)
    assert [r["image"] for r in ranked] == [str(cat), str(coffee)]
    assert [r["top"][0]["label"] for r in ranked] == ["tabby", "espresso"]
    assert [r["top"][0]["index"] for r in ranked] == [1, 0]
    for r in ranked:
        probabilities = [p["probability"] for p in r["top"]]
        assert len(probabilities) == 2 and probabilities[0] > 0.9 > probabilities[1] >= 0
    text = run("predict", str(out), str(cat), "--top-k", "1", env=env)
    assert text.returncode == 0 and text.stdout.splitlines()[1].endswith("  tabby")


def test_a_near_miss_class_name_warns_in_one_line(tmp_path: Path, real_mobilenet_file):
    env = _hub_env(tmp_path, real_mobilenet_file)
    argv = ["adapt", "mobilenet_v2", "--pretrained", "IMAGENET1K_V1", "--classes", "Tabby,road"]
    result = run(*argv, env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [line for line in lines if line.startswith("zooadapt: warning: ")]
    assert len(lines) == 1 and "did you mean 'tabby'?" in lines[0]


def test_adapt_from_a_file_prints_what_loading_it_did(tmp_path: Path):
    torch.manual_seed(0)
    file = tmp_path / "dp.pth"
    state = torch.nn.DataParallel(za.adapt("resnet18", pretrained=False)).state_dict()
    torch.save(state, file)
    argv = ["adapt", "resnet18", "--pretrained", str(file), "--num-classes", "3"]
    result = run(*argv, "--in-chans", "1")
    assert result.returncode == 0, result.stderr
    report = za.load_report(za.adapt("resnet18", pretrained=file, num_classes=3, in_chans=1))
    assert f"weights: {report}\n" in result.stdout
    assert len(report.renamed) == len(state) and report.dropped == ["fc.weight", "fc.bias"]
    assert report.adapted == ["conv1.weight"]
    assert "module.conv1.weight -> conv1.weight (strip DataParallel/DDP 'module.')" in str(report)
    assert za.load_report(za.adapt("resnet18", pretrained=False)) is None  # nothing loaded


def test_predict_a_registry_name_with_its_pretrained_labels(tmp_path: Path, real_mobilenet_file):
    env = _hub_env(tmp_path, real_mobilenet_file)
    cat, coffee = _photos(tmp_path)
    result = run("predict", "mobilenet_v2", "--pretrained", "IMAGENET1K_V1", str(coffee), env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{coffee}:" and len(lines) == 6 and lines[1].endswith("  espresso")
    assert float(lines[1].split("%")[0]) > 90


def test_predict_errors_are_one_line_and_indices_stand_in_for_labels(tmp_path: Path):
    cat, _ = _photos(tmp_path)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    one_error_line(run("predict", "resnet18", "--pretrained", "none", str(broken)), "broken.jpg")
    missing = run("predict", "resnet18", "--pretrained", "none", str(tmp_path / "nope.png"))
    one_error_line(missing, "cannot read image")
    assert "no such file" in missing.stderr
    unnamed = run("predict", "resnet18", "--pretrained", "none", str(cat), "--top-k", "3")
    assert unnamed.returncode == 0, unnamed.stderr
    assert "has no class names; printing class indices" in unnamed.stderr
    assert [line.split()[-2] for line in unnamed.stdout.splitlines()[1:]] == ["class"] * 3
    one_error_line(run("predict", "resnet18", str(cat), "--top-k", "0"), "--top-k")


def test_adapt_classes_file_and_statistics(tmp_path: Path):
    names = tmp_path / "classes.txt"
    names.write_text("road\nforest\n\nwater\n", encoding="utf-8")
    out = tmp_path / "bands.safetensors"
    result = run(
        "adapt", "timm/resnet18", "--pretrained", "none", "--in-chans", "4", "--classes-file",
        str(names), "--mean", ",,,0.3", "--std", ",,,0.1", "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    info = read_metadata(out)
    assert info["labels"] == ["road", "forest", "water"] and info["num_classes"] == 3
    assert info["data_config"]["mean"] == [0.485, 0.456, 0.406, 0.3]
    assert info["data_config"]["std"][3] == 0.1
    both = run("adapt", "resnet18", "--classes", "a", "--classes-file", str(names))
    one_error_line(both, "--classes or --classes-file")
    one_error_line(run("adapt", "resnet18", "--classes-file", str(tmp_path / "x")), "x: cannot")
    bad_mean = run("adapt", "resnet18", "--mean", "a,b")  # an argparse error: also one line
    assert bad_mean.returncode == 1 and bad_mean.stderr.count("\n") == 1
    assert "argument --mean: 'a,b' is not comma-separated numbers" in bad_mean.stderr
