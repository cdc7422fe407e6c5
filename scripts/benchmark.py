"""Benchmark the bundle against the raw network and a plain PyTorch loop (a measurement, not a test).

Typical usage (from the bundle root)::

    python scripts/benchmark.py --out docs/benchmark_cpu.json                  # the paper's 512x256, batch 8
    python scripts/benchmark.py --compile --out docs/benchmark_gpu.json        # on a CUDA machine: + torch.compile
    python scripts/benchmark.py --spatial_size 64 32 --patients 6 --batch_size 2 --steps 1 --repeats 1 \\
        --guard_spatial_size 64 32 --guard_patients 6 --out /tmp/smoke.json   # seconds: smoke run

Every number comes from this one run on this machine, so the ratios compare like with like:

- preprocessing of one lesion from a scan file of 2x the network size (1024x512 for 512x256), uncached;
- the training data pipeline (train.yaml's cached dataset + random flip + DataLoader) vs training images/s;
- train.yaml's ``SupervisedTrainer`` step vs a plain PyTorch loop on the same DataLoader, same precision;
- inference.yaml end to end (load -> preprocess -> network -> write) vs the raw network on pre-made tensors;
- fp32, fp32 + channels_last, and reduced precision + channels_last (bf16 autocast on CPU; fp16 AMP and bf16
  on CUDA) for the training step and the forward pass; optionally ``torch.compile`` (``--compile``);
- accuracy guard: AUC with fp32 vs bf16 autocast on phantom test lesions (``--guard_checkpoint``: trained weights);
- the estimated time of the paper's protocol (15k lesions x 300 epochs x 5 folds) from the measured speeds.

Times are minima over ``--repeats`` (steps: over ``--steps``) after a warm-up, so that other processes on a shared
machine inflate them as little as possible. CUDA timings synchronise the device; peak memory is
``torch.cuda.max_memory_allocated``. Prints a table and writes all rows, the machine and the command as JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

BUNDLE_ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = {"lesions": 15_000, "epochs": 300, "folds": 5}
GOALS = {"inference_ratio": 0.9, "trainer_overhead": 0.05, "pipeline_ratio": 10.0, "auc_difference": 0.005}
logger = logging.getLogger("benchmark")


@dataclass
class Row:
    """One line of the result table."""

    group: str
    name: str
    setting: str
    value: float
    unit: str
    goal: str = ""
    ok: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Variant:
    """A precision / memory-format setting: autocast dtype (None = fp32), channels_last, fp16 GradScaler."""

    name: str
    dtype: torch.dtype | None
    channels_last: bool
    scaler: bool = False


def variants(device: torch.device) -> list[Variant]:
    """fp32, fp32 + channels_last, and the reduced precisions this device type offers (with channels_last)."""
    out = [Variant("fp32", None, False), Variant("fp32+channels_last", None, True)]
    if device.type == "cuda":
        out.append(Variant("fp16-amp+channels_last", torch.float16, True, scaler=True))
        if torch.cuda.is_bf16_supported():
            out.append(Variant("bf16+channels_last", torch.bfloat16, True))
    else:
        out.append(Variant("bf16+channels_last", torch.bfloat16, True))
    return out


def machine_info(device: torch.device) -> dict[str, Any]:
    """CPU model, cores, bf16 hardware, GPU and library versions."""
    from bundle.engine.inferers import cpu_has_native_bf16

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import monai

    info = {
        "cpu": cpu,
        "cpu_cores_visible": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_native_bf16": cpu_has_native_bf16(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "platform": platform.platform(),
    }
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def min_time(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Smallest wall time of ``fn()`` over ``repeats`` calls after ``warmup`` calls (seconds)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def fresh_network(template: torch.nn.Module, device: torch.device, variant: Variant) -> torch.nn.Module:
    """A copy of ``template`` on ``device`` in the variant's memory format."""
    net = copy.deepcopy(template).to(device)
    return net.to(memory_format=torch.channels_last) if variant.channels_last else net


def as_input(x: torch.Tensor, device: torch.device, variant: Variant) -> torch.Tensor:
    x = x.as_tensor() if hasattr(x, "as_tensor") else x
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if variant.channels_last else x


def cycle(loader: Any) -> Iterator[dict]:
    while True:
        yield from loader


class PlainLoop:
    """A plain PyTorch training loop (Adam, cross-entropy, autocast/GradScaler as the variant says) on a DataLoader.

    Args:
        template: the network to copy (not modified).
        loader: yields dicts with ``image`` (B, 2, H, W) and one-hot ``label`` (B, 2).
        variant: precision and memory format.
        device: where to train.
    """

    def __init__(self, template: torch.nn.Module, loader: Any, variant: Variant, device: torch.device) -> None:
        self.net = fresh_network(template, device, variant).train()
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=1e-3)
        self.loss_fn = torch.nn.CrossEntropyLoss()
        self.scaler = torch.amp.GradScaler(device.type, enabled=variant.scaler)
        self.batches = cycle(loader)
        self.variant = variant
        self.device = device

    def step(self) -> float:
        """One step (fetching the batch included); returns its wall time in seconds."""
        start = time.perf_counter()
        batch = next(self.batches)
        x = as_input(batch["image"], self.device, self.variant)
        y = batch["label"].to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.variant.dtype, enabled=self.variant.dtype is not None):
            loss = self.loss_fn(self.net(x).float(), y)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        loss.item()
        sync(self.device)
        return time.perf_counter() - start


# ---- bundle objects ----------------------------------------------------------------------------------------------


def bundle_parser(config_files: Sequence[str], overrides: dict[str, Any]) -> Any:
    """A MONAI ``ConfigParser`` of the bundle's configs (paths relative to the bundle root) with overrides; it loads
    from any working directory (``bundle_root`` set)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(BUNDLE_ROOT / f) for f in config_files])
    parser.read_meta(str(BUNDLE_ROOT / "configs" / "metadata.json"))
    parser.update({"bundle_root": str(BUNDLE_ROOT), **overrides})
    return parser


def make_phantom(out: Path, patients: int, spatial_size: Sequence[int], seed: int) -> Path:
    """A phantom data set whose scans are 2x the network size (1024x512 for 512x256; at least 256x128, the
    phantom's minimum), with both classes in every fold."""
    from bundle.data.datalist import check_entries
    from bundle.phantom.dataset import generate_dataset
    from bundle.phantom.scan import PhantomConfig

    config = PhantomConfig(height=max(256, 2 * spatial_size[0]), width=max(128, 2 * spatial_size[1]))
    num_folds = 5 if patients >= 15 else 2
    for attempt in range(50):
        target = out / f"seed{seed + attempt}"
        content = generate_dataset(target, patients=patients, seed=seed + attempt, config=config, num_folds=num_folds)
        if not check_entries(content["training"], content["num_folds"]):
            return target
    raise RuntimeError(f"no phantom of {patients} patients with both classes in every fold")


# ---- measurements ------------------------------------------------------------------------------------------------


class Benchmark:
    """Runs the measurements and collects :class:`Row` s."""

    def __init__(self, args: argparse.Namespace, work_dir: Path) -> None:
        self.args = args
        self.work_dir = work_dir
        self.device = torch.device(args.device)
        self.rows: list[Row] = []
        self.spatial = list(args.spatial_size)
        self.data_dir = make_phantom(work_dir / "phantom", args.patients, self.spatial, args.seed)
        self.common = {
            "dataset_dir": str(self.data_dir),
            "spatial_size": self.spatial,
            "batch_size": args.batch_size,
            "device": f"$torch.device('{self.device}')",
        }
        if args.num_workers is not None:
            self.common["num_workers"] = args.num_workers

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        logger.info(f"{row.group:<10} {row.name:<34} {row.setting:<26} {row.value:10.4g} {row.unit}")
        return row

    # -- data --------------------------------------------------------------------------------------------------

    def train_parser(self) -> Any:
        overrides = {
            **self.common,
            "output_dir": str(self.work_dir / "train_out"),
            "max_epochs": 1,
            # enough patients on both sides of the inner split of small phantoms
            "val_fraction": 0.1 if self.args.patients >= 30 else (0.34 if self.args.patients >= 12 else 0.5),
            "val_interval": 10**6,  # no validation inside the timed epoch
            "validate_data": False,
            "train#trainer#epoch_length": self.args.steps + 1,
        }
        return bundle_parser(["configs/train.yaml"], overrides)

    def measure_preprocessing(self, parser: Any) -> None:
        """One lesion from its scan file (2x the network size) to the 2-channel tensor, uncached, one process."""
        from monai.transforms import Compose

        transform = Compose(parser.get_parsed_content("train#deterministic_transforms"))
        items = parser.get_parsed_content("train#dataset#data")
        n = min(len(items), max(4, self.args.repeats * 4))
        seconds = min_time(lambda: [transform(items[i]) for i in range(n)], self.device, self.args.repeats) / n
        scan = transform.transforms[0](dict(items[0]))["image"].shape[-2:]
        self.add(Row("data", "preprocess one lesion (uncached)", f"scan {scan[0]}x{scan[1]}", 1000 * seconds, "ms"))

        # inference: the scan's share once per scan (ScanCachedCompose), over all lesions in order
        infer = bundle_parser(["configs/inference.yaml"], {**self.common, "checkpoint": "", "output_dir": ""})
        dataset = infer.get_parsed_content("dataset")
        n = len(dataset)
        per_scan = n / len({str(item["image"]) for item in dataset.data})

        def preprocess_all() -> None:
            dataset.transform._cache.clear()
            for i in range(n):
                dataset[i]

        seconds = min_time(preprocess_all, self.device, self.args.repeats) / n
        setting = f"{per_scan:.1f} lesions/scan, scan cached"
        self.add(Row("data", "preprocess one lesion (inference)", setting, 1000 * seconds, "ms"))

    def measure_pipeline(self, loader: Any) -> float:
        """Images/s that train.yaml's DataLoader delivers (cached deterministic part, random flip, collation)."""
        iterator = cycle(loader)
        batches = max(2, self.args.steps + 1)
        seconds = min_time(lambda: [next(iterator) for _ in range(batches)], self.device, self.args.repeats)
        workers = loader.num_workers
        ips = batches * loader.batch_size / seconds
        self.add(Row("data", "training data pipeline", f"cached, {workers} workers", ips, "img/s"))
        return ips

    # -- training ------------------------------------------------------------------------------------------------

    def plain_train_step_time(self, template: torch.nn.Module, loader: Any, variant: Variant) -> tuple[float, float]:
        """Minimum seconds per step of a plain PyTorch loop on ``loader`` after one warm-up step; peak MiB."""
        loop = PlainLoop(template, loader, variant, self.device)
        reset_peak(self.device)
        loop.step()
        seconds = min(loop.step() for _ in range(self.args.steps))
        return seconds, peak_mib(self.device) or 0.0

    def bundle_train_step_times(self, parser: Any, plain: PlainLoop) -> tuple[list[float], list[float]]:
        """Seconds per step of train.yaml's SupervisedTrainer (its handlers, metrics, postprocessing) and of
        ``plain``, one plain step after each trainer step, so that each pair sees the same machine load (the first
        pair, a warm-up, is left out)."""
        from ignite.engine import Events

        trainer = parser.get_parsed_content("train#trainer")
        bundle_times: list[float] = []
        plain_times: list[float] = []
        mark: list[float] = []

        @trainer.on(Events.EPOCH_STARTED)
        def _start(engine: Any) -> None:
            mark.append(time.perf_counter())

        @trainer.on(Events.ITERATION_COMPLETED)  # registered last: runs after the trainer's own handlers
        def _step(engine: Any) -> None:
            sync(self.device)
            bundle_times.append(time.perf_counter() - mark[-1])
            plain_times.append(plain.step())
            mark.append(time.perf_counter())

        trainer.run()
        return bundle_times[1:], plain_times[1:]

    def measure_training(self, parser: Any) -> None:
        loader = parser.get_parsed_content("train#dataloader")
        template = copy.deepcopy(parser.get_parsed_content("network_def")).cpu()
        batch = loader.batch_size
        pipeline_ips = self.measure_pipeline(loader)

        plain: dict[str, float] = {}
        for variant in self.variant_list:
            seconds, peak = self.plain_train_step_time(template, loader, variant)
            plain[variant.name] = seconds
            extra = {"peak_memory_mib": peak} if self.device.type == "cuda" else {}
            self.add(Row("train", "plain PyTorch loop", variant.name, batch / seconds, "img/s", extra=extra))

        bundle_variant = self.bundle_variant(parser)
        bundle_times, plain_times = self.bundle_train_step_times(
            parser, PlainLoop(template, loader, bundle_variant, self.device)
        )
        seconds = min(bundle_times)
        self.add(Row("train", "bundle SupervisedTrainer", bundle_variant.name, batch / seconds, "img/s"))
        # median of the paired ratios: robust to the load of a shared machine changing between pairs
        overhead = float(np.median(np.array(bundle_times) / np.array(plain_times))) - 1
        self.add(
            Row(
                "ratio",
                "SupervisedTrainer overhead vs plain loop",
                bundle_variant.name,
                100 * overhead,
                "%",
                goal=f"<= {100 * GOALS['trainer_overhead']:.0f}%",
                ok=overhead <= GOALS["trainer_overhead"],
                extra={"trainer_step_s": bundle_times, "plain_step_s": plain_times, "statistic": "median ratio"},
            )
        )
        self.train_ips = batch / seconds
        ratio = pipeline_ips / self.train_ips
        self.add(
            Row(
                "ratio",
                "data pipeline / training images/s",
                bundle_variant.name,
                ratio,
                "x",
                goal=f">= {GOALS['pipeline_ratio']:g}x",
                ok=ratio >= GOALS["pipeline_ratio"],
            )
        )
        if self.args.compile:
            compiled = Variant(bundle_variant.name + "+compile", bundle_variant.dtype, bundle_variant.channels_last)
            seconds, _ = self.plain_train_step_time(torch.compile(template), loader, compiled)
            self.add(Row("train", "plain PyTorch loop", compiled.name, batch / seconds, "img/s"))

    # -- inference -----------------------------------------------------------------------------------------------

    def bundle_variant(self, parser: Any) -> Variant:
        """The precision/memory format the bundle config resolves to on this device."""
        dtype = parser.get_parsed_content("amp_dtype")
        channels_last = bool(parser.get_parsed_content("channels_last"))
        scaler = self.device.type == "cuda" and bool(parser.get_parsed_content("amp")) and dtype is None
        if scaler:
            dtype = torch.float16
        name = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16-amp"}[dtype]
        return Variant(name + ("+channels_last" if channels_last else ""), dtype, channels_last, scaler)

    def raw_forward_time(self, template: torch.nn.Module, variant: Variant, compiled: bool = False) -> float:
        """Minimum seconds of one forward pass of a batch of pre-made tensors (already on the device)."""
        net = fresh_network(template, self.device, variant).eval()
        if compiled:
            net = torch.compile(net)
        x = as_input(torch.rand(self.args.batch_size, 2, *self.spatial), self.device, variant)

        def forward() -> None:
            with (
                torch.no_grad(),
                torch.autocast(self.device.type, dtype=variant.dtype, enabled=variant.dtype is not None),
            ):
                net(x).float().cpu()

        reset_peak(self.device)
        return min_time(forward, self.device, self.args.repeats, warmup=2 if compiled else 1)

    def bundle_inference_time(self, parser: Any) -> tuple[float, int]:
        """Seconds of one inference.yaml epoch (data loading, preprocessing, forward, writing) and its lesions."""
        from ignite.engine import Events

        evaluator = parser.get_parsed_content("evaluator")
        stamps: dict[str, float] = {}
        evaluator.add_event_handler(Events.EPOCH_STARTED, lambda e: stamps.setdefault("start", time.perf_counter()))
        # registered after the result writer: the time includes writing the files
        evaluator.add_event_handler(Events.EPOCH_COMPLETED, lambda e: stamps.setdefault("end", time.perf_counter()))
        reset_peak(self.device)
        evaluator.run()
        return stamps["end"] - stamps["start"], len(parser.get_parsed_content("dataset"))

    def measure_inference(self) -> None:
        template_parser = self.train_parser()
        template = copy.deepcopy(template_parser.get_parsed_content("network_def")).cpu()
        checkpoint = self.work_dir / "model.pt"
        torch.save(template.state_dict(), checkpoint)
        batch = self.args.batch_size

        raw: dict[str, float] = {}
        for variant in self.variant_list:
            seconds = self.raw_forward_time(template, variant)
            raw[variant.name] = seconds
            extra = {"peak_memory_mib": peak_mib(self.device)} if self.device.type == "cuda" else {}
            self.add(Row("inference", "raw network forward", variant.name, batch / seconds, "img/s", extra=extra))
        if self.args.compile:
            bundle_variant = self.bundle_variant(template_parser)
            seconds = self.raw_forward_time(template, bundle_variant, compiled=True)
            self.add(
                Row("inference", "raw network forward", bundle_variant.name + "+compile", batch / seconds, "img/s")
            )

        overrides = {**self.common, "checkpoint": str(checkpoint), "output_dir": str(self.work_dir / "infer_out")}
        variant = self.bundle_variant(template_parser)
        best, best_raw = float("inf"), raw[variant.name]
        for _ in range(self.args.repeats + 1):  # the first pass warms up (file cache, allocator)
            parser = bundle_parser(["configs/inference.yaml"], overrides)
            seconds, lesions = self.bundle_inference_time(parser)
            best = min(best, seconds)
            # the raw forward again after each pass: both see the same machine load
            best_raw = min(best_raw, self.raw_forward_time(template, variant))
        bundle_ips = lesions / best
        extra = {"lesions": lesions, "peak_memory_mib": peak_mib(self.device)}
        self.add(Row("inference", "bundle inference.yaml end to end", variant.name, bundle_ips, "img/s", extra=extra))
        raw_ips = batch / best_raw
        ratio = bundle_ips / raw_ips
        self.add(
            Row(
                "ratio",
                "bundle inference / raw forward",
                variant.name,
                ratio,
                "x",
                goal=f">= {GOALS['inference_ratio']:g}x",
                ok=ratio >= GOALS["inference_ratio"],
                extra={"bundle_s_per_image": 1 / bundle_ips, "raw_s_per_image": 1 / raw_ips, "interleaved": True},
            )
        )
        self.infer_ips = raw_ips

    # -- accuracy guard -----------------------------------------------------------------------------------------------

    def measure_guard(self) -> None:
        """AUC of fp32 vs bf16 autocast probabilities on phantom lesions the weights never saw."""
        from monai.data import DataLoader, Dataset
        from monai.transforms import Compose
        from sklearn.metrics import roc_auc_score

        from bundle.engine.inferers import FastInferer

        spatial = list(self.args.guard_spatial_size)
        data_dir = make_phantom(self.work_dir / "guard", self.args.guard_patients, spatial, seed=1000)
        parser = bundle_parser(
            ["configs/train.yaml"],
            {"dataset_dir": str(data_dir), "spatial_size": spatial, "device": f"$torch.device('{self.device}')"},
        )
        network = parser.get_parsed_content("network_def").to(self.device).eval()
        trained = bool(self.args.guard_checkpoint)
        if trained:
            network.load_state_dict(torch.load(self.args.guard_checkpoint, map_location="cpu", weights_only=True))
        from bundle.data.datalist import load_split

        items = load_split(data_dir / "datalist.json", data_dir, part="all")
        transform = Compose(parser.get_parsed_content("train#deterministic_transforms"))
        loader = DataLoader(Dataset(items, transform), batch_size=self.args.batch_size, num_workers=0)
        probabilities: dict[str, list[float]] = {"fp32": [], "bf16": []}
        labels: list[int] = []
        inferers = {"fp32": FastInferer(None, channels_last=True), "bf16": FastInferer(torch.bfloat16, True)}
        with torch.no_grad():
            for batch in loader:
                x = batch["image"].to(self.device)
                labels += batch["label"].argmax(1).tolist()
                for name, inferer in inferers.items():
                    probabilities[name] += torch.softmax(inferer(x, network), 1)[:, 1].cpu().tolist()
        auc = {k: float(roc_auc_score(labels, v)) for k, v in probabilities.items()}
        difference = abs(auc["bf16"] - auc["fp32"])
        max_dp = float(np.abs(np.array(probabilities["bf16"]) - np.array(probabilities["fp32"])).max())
        setting = f"{len(labels)} lesions, {spatial[0]}x{spatial[1]}, " + ("trained" if trained else "untrained")
        extra = {"auc_fp32": auc["fp32"], "auc_bf16": auc["bf16"], "max_probability_difference": max_dp}
        extra["checkpoint"] = str(self.args.guard_checkpoint) if trained else None
        self.add(
            Row(
                "accuracy",
                "|AUC bf16 - AUC fp32|",
                setting,
                difference,
                "",
                goal=f"< {GOALS['auc_difference']}",
                ok=difference < GOALS["auc_difference"],
                extra=extra,
            )
        )

    # -- all -------------------------------------------------------------------------------------------------------

    def run(self) -> None:
        self.variant_list = variants(self.device)
        parser = self.train_parser()
        self.measure_preprocessing(parser)
        self.measure_training(parser)
        self.measure_inference()
        if not self.args.skip_guard:
            self.measure_guard()
        self.add_protocol_estimate()

    def add_protocol_estimate(self) -> None:
        """Hours of the paper's protocol at the measured bundle training and raw forward speeds (batch as run)."""
        images = PROTOCOL["lesions"] * PROTOCOL["epochs"] * PROTOCOL["folds"]
        # the round figure: every lesion trained on in every epoch of every fold (an upper bound: a fold
        # trains on the ~72% of the lesions outside its test fold and inner validation split)
        train_hours = images / self.train_ips / 3600
        # plus the inner validation split (~8% of the lesions) forwarded every epoch
        val_hours = 0.1 * 0.8 * images / self.infer_ips / 3600
        size = f"{self.spatial[0]}x{self.spatial[1]}, batch {self.args.batch_size}"
        extra = {"training_images": images, "train_hours": train_hours, "validation_hours": val_hours}
        self.add(Row("estimate", "paper protocol (15k x 300 x 5)", size, train_hours + val_hours, "h", extra=extra))


def print_table(rows: Sequence[Row]) -> str:
    lines = [
        f"{'group':<10} {'measurement':<40} {'setting':<32} {'value':>10} {'unit':<6} {'goal':<10} ok",
        "-" * 118,
    ]
    for r in rows:
        ok = "" if r.ok is None else ("yes" if r.ok else "NO")
        lines.append(f"{r.group:<10} {r.name:<40} {r.setting:<32} {r.value:>10.4g} {r.unit:<6} {r.goal:<10} {ok}")
    text = "\n".join(lines)
    print(text)
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmark.json", help="JSON file to write (default: %(default)s)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    parser.add_argument("--spatial_size", type=int, nargs=2, default=[512, 256], help="network H W (512 256)")
    parser.add_argument("--batch_size", type=int, default=8, help="batch size (default: %(default)s)")
    parser.add_argument("--patients", type=int, default=12, help="phantom patients (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per setting (default: 3)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each timing, minimum kept (default: 3)")
    parser.add_argument("--num_workers", type=int, default=None, help="DataLoader workers (default: train.yaml's)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd forward and training")
    parser.add_argument("--guard_checkpoint", default=None, help="trained state_dict for the accuracy guard")
    parser.add_argument("--guard_spatial_size", type=int, nargs=2, default=None, help="guard H W (default: as run)")
    parser.add_argument("--guard_patients", type=int, default=20, help="phantom patients of the guard (default: 20)")
    parser.add_argument("--skip_guard", action="store_true", help="no accuracy guard")
    parser.add_argument("--seed", type=int, default=0, help="phantom seed (default: %(default)s)")
    args = parser.parse_args(argv)
    if min(args.patients, args.guard_patients) < 6:
        parser.error("--patients and --guard_patients must be at least 6 (folds need both classes)")
    args.guard_spatial_size = args.guard_spatial_size or args.spatial_size
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("ignite", "monai", "bundle"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    sys.path.insert(0, str(BUNDLE_ROOT))
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="benchmark_") as work_dir:
        bench = Benchmark(args, Path(work_dir))
        info = machine_info(bench.device)
        logger.info(f"benchmark on {info['cpu']} ({info['cpu_cores_visible']} cores), device {info['device']}")
        bench.run()
    table = print_table(bench.rows)
    content = {
        "command": " ".join(["python", "scripts/benchmark.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": info,
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "seconds": time.time() - started,
        "goals": GOALS,
        "rows": [asdict(r) for r in bench.rows],
        "table": table,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(content, indent=1) + "\n")
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
