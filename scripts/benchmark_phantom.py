"""Measure the phantom generator's speed in patients per minute, pinned to one CPU core.

Typical usage::

    python scripts/benchmark_phantom.py                 # 200 patients, NIfTI, one core
    python scripts/benchmark_phantom.py --patients 500 --format png --workers 2 --cores 0,1

Reports two figures: simulation only (``generate_patient``) and the whole data set on disk (``generate_dataset``:
simulation + NIfTI/PNG writing + datalist), each as wall-clock and as CPU-time rate (the two agree on an idle machine;
on a busy one the CPU-time rate is the generator's own speed). The skeleton template (~0.3 s) is built before timing.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.phantom import PhantomConfig, generate_dataset, generate_patient, patient_rng
from bundle.phantom.anatomy import reference_skeleton


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=200, help="patients per measurement (default: 200)")
    parser.add_argument("--format", default="nifti", help="output format (default: nifti)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes for the on-disk run (default: 1)")
    parser.add_argument("--cores", default="0", help="CPU cores to pin to, comma separated (default: 0)")
    parser.add_argument("--seed", type=int, default=0, help="data-set seed (default: 0)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    cores = {int(c) for c in args.cores.split(",")}
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores)
    reference_skeleton()  # build the template once, outside the timings
    config = PhantomConfig()

    start, cpu = time.perf_counter(), time.process_time()
    for k in range(args.patients):
        generate_patient(patient_rng(args.seed, k), config)
    simulate, simulate_cpu = time.perf_counter() - start, time.process_time() - cpu

    with tempfile.TemporaryDirectory() as tmp:
        start, cpu = time.perf_counter(), time.process_time()
        datalist = generate_dataset(
            Path(tmp) / "phantom", args.patients, args.seed, config=config, fmt=args.format, workers=args.workers
        )
        on_disk, on_disk_cpu = time.perf_counter() - start, time.process_time() - cpu
        size_mb = sum(f.stat().st_size for f in (Path(tmp) / "phantom").rglob("*") if f.is_file()) / 1e6

    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
    print(f"cores: {sorted(cores)}, workers: {args.workers}, patients: {args.patients}, format: {args.format}")
    for name, seconds, cpu_seconds in (
        ("simulation only", simulate, simulate_cpu),
        ("data set on disk", on_disk, on_disk_cpu if args.workers == 1 else float("nan")),
    ):
        rate, each_ms = args.patients / seconds * 60, seconds / args.patients * 1e3
        cpu_rate = args.patients / cpu_seconds * 60
        print(f"{name + ':':18s} {rate:5.0f} patients/min wall ({each_ms:.0f} ms each), {cpu_rate:5.0f} per CPU-minute")
    print("(wall time counts time the core spends on other processes; CPU time is this process's own)")
    print(f"lesions: {len(datalist['training'])}, disk: {size_mb:.0f} MB ({size_mb / args.patients:.2f} MB/patient)")


if __name__ == "__main__":
    main()
