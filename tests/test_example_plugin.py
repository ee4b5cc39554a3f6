"""The example plugin, pip-installed into a fresh virtual environment, and its own tests.

The fresh environment is made with ``python -m venv`` and sees this environment's packages
(torch, zooadapt, setuptools) through a ``.pth`` file, so nothing is downloaded: the example
is built by ``pip install --no-build-isolation --no-index`` with the setuptools already here
and installed into the fresh environment's own site-packages, from where its entry point
registers it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "zooadapt-tinynet"
PLUGIN_VARIABLES = ("ZOOADAPT_PLUGINS", "ZOOADAPT_DISABLE_PLUGINS", "ZOOADAPT_STRICT_PLUGINS")


def environment() -> dict[str, str]:
    """This process's environment, without plugin selection."""
    return {k: v for k, v in os.environ.items() if k not in PLUGIN_VARIABLES}


def run(*command: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``command``; fail the test with its output if it fails."""
    done = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr}"
    return done


class Fresh:
    """A fresh virtual environment with the example installed, and a folder to work in."""

    def __init__(self, root: Path) -> None:
        self.venv = root / "venv"
        self.work = root / "work"
        self.work.mkdir()
        # Without pip: ensurepip would also install Python's bundled (older) setuptools in
        # front of this environment's. pip itself comes from this environment, by the .pth.
        run(sys.executable, "-m", "venv", "--without-pip", self.venv, cwd=root)
        self.python = self.venv / "bin" / "python"
        self.site = Path(self.query("import sysconfig; print(sysconfig.get_paths()['purelib'])"))
        outer = sysconfig.get_paths()["purelib"]
        # addsitedir (not a bare path line) also runs the .pth files there: editable installs.
        (self.site / "zz_outer_environment.pth").write_text(
            f"import site; site.addsitedir({outer!r})\n"
        )

    def query(self, code: str) -> str:
        """What ``code`` prints when run by the fresh environment's Python."""
        return run(self.python, "-c", code, cwd=self.work).stdout.strip()

    def zooadapt(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run the ``zooadapt`` command line in the fresh environment."""
        return run(self.python, "-m", "zooadapt.cli", *args, cwd=self.work)


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Fresh:
    """A fresh venv with a copy of the example pip-installed (the copy keeps builds out)."""
    root = tmp_path_factory.mktemp("fresh")
    env = Fresh(root)
    source = root / "zooadapt-tinynet"
    junk = shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache")
    shutil.copytree(EXAMPLE, source, ignore=junk)
    run(
        env.python,
        "-m",
        "pip",
        "install",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "--no-cache-dir",
        source,
        cwd=env.work,
    )
    return env


def test_the_example_is_installed_in_the_fresh_site_packages(fresh: Fresh) -> None:
    location = Path(fresh.query("import zooadapt_tinynet; print(zooadapt_tinynet.__file__)"))
    assert location.is_relative_to(fresh.site)
    assert not location.is_relative_to(EXAMPLE)
    version = fresh.query(
        "from importlib.metadata import version; print(version('zooadapt-tinynet'))"
    )
    assert version == "0.1.0"
    # This environment does not have it: only the fresh one was changed.
    assert not any((Path(p) / "zooadapt_tinynet").exists() for p in sys.path if p)


def test_zooadapt_plugins_lists_the_example_and_the_builtins(fresh: Fresh) -> None:
    listing = fresh.zooadapt("plugins").stdout
    assert "tinynet" in listing
    assert "zooadapt-tinynet==0.1.0" in listing
    data = json.loads(fresh.zooadapt("plugins", "--json").stdout)
    plugins = {entry["name"]: entry for entry in data["plugins"]}
    assert data["failed"] == []
    tinynet = plugins["tinynet"]
    assert tinynet["dist"] == "zooadapt-tinynet==0.1.0"
    assert tinynet["families"] == ["tinynet"]
    assert tinynet["zoos"] == ["tinynet"]
    assert tinynet["hooks"] == ["zooadapt_families", "zooadapt_rename_rules", "zooadapt_zoos"]
    assert {"resnet", "timm", "torchvision", "generic"} <= set(plugins)
    assert plugins["resnet"]["dist"].startswith("zooadapt==")


def test_zooadapt_adapt_writes_the_adapted_example_model(fresh: Fresh) -> None:
    out = fresh.work / "x.safetensors"
    done = fresh.zooadapt(
        "adapt",
        "tinynet/tinynet_s",
        "--num-classes",
        "3",
        "--pretrained",
        "none",
        "--out",
        "x.safetensors",
    )
    assert "tinynet" in done.stdout
    assert out.is_file()
    rebuilt = fresh.query(
        "import torch, zooadapt as za\n"
        "model = za.load('x.safetensors')\n"
        "out = model.eval()(torch.rand(2, 3, 32, 32))\n"
        "print(type(model).__module__, type(model).__name__, tuple(out.shape))"
    )
    assert rebuilt == "zooadapt_tinynet.model TinyNet (2, 3)"


def test_the_example_own_tests_pass_without_installing_it() -> None:
    # The example's pyproject puts src/ on the path for pytest: no install needed.
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist"],
        cwd=EXAMPLE,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert " passed" in done.stdout
