"""Per-scan inference time at 10 lesions: one backbone pass per scan vs the paper's one pass per lesion (a measurement,
not a test).

Typical usage (from the bundle root)::

    python scripts/benchmark_onepass.py                                   # 256x128 and 512x256, 1 thread, 3 repeats
    python scripts/benchmark_onepass.py --sizes 512x256 --threads 2 --repeats 5 --out /tmp/onepass.json
    python scripts/benchmark_onepass.py --sizes 256x128 --train                # + one training step of each

Both networks run side by side in this one process, in evaluation mode without gradients, through the configs'
``FastInferer`` (channels_last; fp32, and the reduced precision ``autocast_dtype`` picks for this device when it picks
one):

- **per lesion** (the paper): ``build_network('resnet50')`` on one batch of ``--lesions`` 2-channel images (the scan
  and one lesion mask each), the most favourable case for it (inference.yaml runs batches of ``batch_size``);
- **one pass**: :class:`bundle.nets.onepass.OnePassLesionClassifier` (ResNet50 backbone on scan + union of masks,
  pooled at ``layer1``..``layer4``) on the scan (1, 1, H, W) with its ``--lesions`` masks;
- for scale, the paper's network on a single lesion (batch of 1): the one pass costs about that (its pooling and head
  are small), while a batch of 10 costs less than 10 single passes (the per-lesion method gains from batching).

With ``--train``, one training step (train mode, autocast forward, cross-entropy over the 10 lesions, backward, Adam
step) of each is timed the same way; rows give lesions per second for both.

The two are timed alternately (one of each per repeat, after a warm-up of each), so that load from other processes
hits both alike; per-scan times are the median and minimum over the repeats, and the ratio is per-lesion / one-pass
of the medians. Weights are random: the time does not depend on them. Prints a table; ``--out`` writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bundle.engine.inferers import FastInferer, autocast_dtype, prepare_network
from bundle.io import atomic_write_text
from bundle.nets import build_network
from bundle.nets.onepass import OnePassLesionClassifier


def cpu_model() -> str:
    """The CPU's model name, family and model number from /proc/cpuinfo (``platform.processor()`` elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return f"{fields.get('model name', '?')} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')})"


def lesion_inputs(height: int, width: int, lesions: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A random scan (1, 1, H, W) and ``lesions`` square masks (1, L, H, W) of about H/50 pixels a side."""
    generator = torch.Generator().manual_seed(seed)
    scan = torch.rand(1, 1, height, width, generator=generator)
    masks = torch.zeros(1, lesions, height, width)
    side = max(2, height // 50)
    for k in range(lesions):
        row = int(torch.randint(0, height - side, (1,), generator=generator))
        col = int(torch.randint(0, width - side, (1,), generator=generator))
        masks[0, k, row : row + side, col : col + side] = 1
    return scan, masks


def timed(call: Callable[[], torch.Tensor]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def training_step(network: torch.nn.Module, dtype: torch.dtype | None, *inputs: torch.Tensor, **kwargs: torch.Tensor):
    """A closure running one training step of ``network`` (train.yaml's: autocast forward, cross-entropy, backward,
    Adam step) on fixed inputs whose output has one row per lesion."""
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-4)
    loss_function = torch.nn.CrossEntropyLoss()
    lesions = kwargs["lesion_masks"].shape[1] if "lesion_masks" in kwargs else inputs[0].shape[0]
    targets = torch.arange(lesions) % 2

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            loss = loss_function(network(*inputs, **kwargs).float(), targets)
        loss.backward()
        optimizer.step()
        return loss

    return step


def benchmark(sizes: list[tuple[int, int]], lesions: int, repeats: int, train: bool = False) -> list[dict]:
    """Rows of per-scan times (seconds) of both methods for each size and precision; with ``train`` also of one
    training step on the scan's lesions (train mode, channels_last)."""
    device = torch.device("cpu")
    precisions = {"fp32": None}
    reduced = autocast_dtype(device, True)
    if reduced is not None:
        precisions[str(reduced).removeprefix("torch.")] = reduced
    torch.manual_seed(0)
    per_lesion_net = prepare_network(build_network("resnet50").eval(), device, channels_last=True)
    one_pass_net = prepare_network(OnePassLesionClassifier("resnet50").eval(), device, channels_last=True)
    rows = []
    for height, width in sizes:
        scan, masks = lesion_inputs(height, width, lesions)
        valid = torch.ones(1, lesions, dtype=torch.bool)
        two_channel = torch.cat([scan.expand(lesions, -1, -1, -1), masks[0].unsqueeze(1)], dim=1)  # (L, 2, H, W)
        two_channel = two_channel.contiguous(memory_format=torch.channels_last)
        for precision, dtype in precisions.items():
            inferer = FastInferer(dtype=dtype, channels_last=True)
            tasks = {
                "inference": {
                    "per_lesion": lambda inferer=inferer, x=two_channel: inferer(x, per_lesion_net),
                    "one_pass": lambda inferer=inferer, m=masks, v=valid, s=scan: inferer(
                        s, one_pass_net, lesion_masks=m, lesion_valid=v
                    ),
                    # the paper's network on one lesion: the cost the one pass is compared with per scan
                    "one_image": lambda inferer=inferer, x=two_channel[:1]: inferer(x, per_lesion_net),
                }
            }
            if train:
                tasks["training_step"] = {
                    "per_lesion": training_step(per_lesion_net.train(), dtype, two_channel),
                    "one_pass": training_step(
                        one_pass_net.train(), dtype, scan, lesion_masks=masks, lesion_valid=valid
                    ),
                }
            for task, methods in tasks.items():
                for network in (per_lesion_net, one_pass_net):
                    network.train(task == "training_step")
                times: dict[str, list[float]] = {name: [] for name in methods}
                with torch.set_grad_enabled(task == "training_step"):
                    for call in methods.values():
                        call()  # warm-up
                    for _ in range(repeats):
                        for name, call in methods.items():
                            times[name].append(timed(call))
                medians = {name: statistics.median(t) for name, t in times.items()}
                rows.append(
                    {
                        "task": task,
                        "size": f"{height}x{width}",
                        "precision": precision,
                        "lesions": lesions,
                        "per_lesion_s": medians["per_lesion"],
                        "one_pass_s": medians["one_pass"],
                        "per_lesion_min_s": min(times["per_lesion"]),
                        "one_pass_min_s": min(times["one_pass"]),
                        "ratio": medians["per_lesion"] / medians["one_pass"],
                        "per_lesion_lesions_per_s": lesions / medians["per_lesion"],
                        "one_pass_lesions_per_s": lesions / medians["one_pass"],
                        **({"one_image_s": medians["one_image"]} if "one_image" in medians else {}),
                        "times_s": times,
                    }
                )
                print(
                    f"{task:<13} {height}x{width:<4} {precision:<9} per-lesion {medians['per_lesion']:7.3f} s   "
                    f"one-pass {medians['one_pass']:7.3f} s   ratio {rows[-1]['ratio']:5.1f}x"
                    + (
                        f"   (paper's network on 1 lesion {medians['one_image']:6.3f} s)"
                        if "one_image" in medians
                        else ""
                    ),
                    flush=True,
                )
    return rows


def parse_size(text: str) -> tuple[int, int]:
    height, _, width = text.lower().partition("x")
    return int(height), int(width)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", type=parse_size, default=[(256, 128), (512, 256)], help="HxW sizes")
    parser.add_argument("--lesions", type=int, default=10, help="lesions per scan (default 10)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each method (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--train", action="store_true", help="also time one training step of each (default: off)")
    parser.add_argument("--out", type=Path, default=None, help="JSON file of the rows (default: none)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    machine = {"cpu": cpu_model(), "threads": args.threads, "torch": torch.__version__}
    print(f"{machine['cpu']}, {args.threads} thread(s), torch {torch.__version__}", flush=True)
    start = time.perf_counter()
    rows = benchmark(args.sizes, args.lesions, args.repeats, args.train)
    machine["total_s"] = round(time.perf_counter() - start, 1)
    print(f"total {machine['total_s']} s")
    if args.out is not None:
        atomic_write_text(args.out, json.dumps({"machine": machine, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
