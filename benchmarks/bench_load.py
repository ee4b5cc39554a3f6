"""Time and peak memory of loading a local checkpoint: zooadapt vs. torchvision's recipe.

Each measurement runs in a fresh subprocess, alternating the two methods, so that
neither benefits from the other's allocations. Peak RSS is the process's peak (VmHWM)
minus its RSS just before the call. "+ forward" also runs one forward
pass at batch 1, 224 px, so that memory-mapped weights are actually read.
The peak is reset just before the call (``/proc/self/clear_refs``), so it measures the
call alone; the checkpoint file is in the page cache for every run.

Usage:
    python benchmarks/bench_load.py --model resnet152 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, os, sys, time, warnings
warnings.simplefilter("ignore")
import torch, torchvision
import zooadapt as za
torch.set_num_threads(2)
method, arch, path, forward = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
za.list_models()  # load plugins before measuring
def status(field):
    line = next(l for l in open("/proc/self/status") if l.startswith(field + ":"))
    return int(line.split()[1]) * 1024
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
before = status("VmRSS")
start = time.perf_counter()
if method == "zooadapt":
    model = za.adapt(arch, pretrained=path)
else:
    model = torchvision.models.get_model(arch)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
if forward:
    with torch.no_grad():
        model.eval()(torch.rand(1, 3, 224, 224))
seconds = time.perf_counter() - start
peak = status("VmHWM")
print(json.dumps({"seconds": seconds, "peak_delta": max(peak - before, 0)}))
"""


def run_child(method: str, arch: str, path: Path, forward: bool) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, method, arch, str(path), "1" if forward else "0"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet152")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import torch
    import torchvision

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{args.model}.pth"
        torch.save(torchvision.models.get_model(args.model).state_dict(), path)
        size = path.stat().st_size
        rows = []
        for forward in (False, True):
            results: dict[str, list[dict[str, float]]] = {"zooadapt": [], "torchvision": []}
            for _ in range(args.repeats):
                for method in results:
                    results[method].append(run_child(method, args.model, path, forward))
            for method, runs in results.items():
                rows.append(
                    (
                        method + (" + forward" if forward else ""),
                        statistics.median(r["seconds"] for r in runs),
                        statistics.median(r["peak_delta"] for r in runs) / size,
                    )
                )
    print(
        f"{args.model}: checkpoint {size / 2**20:.1f} MiB, median of {args.repeats} runs, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}"
    )
    print("| method | time (s) | peak RSS increase / checkpoint size |")
    print("|---|---|---|")
    for name, seconds, ratio in rows:
        print(f"| {name} | {seconds:.3f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
