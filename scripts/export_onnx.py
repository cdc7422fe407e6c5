"""Export the bundle's network to ONNX with MONAI's exporter and check the file against PyTorch with onnxruntime.

Typical usage (from any folder; needs the optional extra: ``pip install -e .[onnx]``)::

    python scripts/export_onnx.py --ckpt_file models/model.pt --filepath models/model.onnx

The export is MONAI's ``onnx_export`` (the same as ``python -m monai.bundle onnx_export network_def --filepath F
--ckpt_file C --meta_file configs/metadata.json --config_file configs/inference.yaml --bundle_root .``), with the
input named ``image`` (B, 2, H, W) float32 with a dynamic batch size, (H, W) from ``metadata.json`` (512, 256), and
the output ``logits`` (B, 2): softmax gives (P(benign), P(malignant)), the bundle's ``pred``. This script adds the
check: onnxruntime runs the file on seeded random inputs of batch sizes 1 and 3, and the script fails (exit 1) when
its output differs from PyTorch's by more than ``--atol``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser, onnx_export

BUNDLE_ROOT = Path(__file__).resolve().parent.parent
logger = logging.getLogger("export_onnx")


def bundle_file(path: str | os.PathLike) -> Path:
    """``path`` as given when absolute, else relative to the bundle root."""
    return Path(path) if os.path.isabs(path) else BUNDLE_ROOT / path


def load_network(ckpt_file: str | os.PathLike, config_file: Path, net_id: str = "network_def") -> torch.nn.Module:
    """``net_id`` of ``config_file`` (read under the bundle root) with the weights of ``ckpt_file``, eval mode, CPU.

    Input (B, 2, H, W), output logits (B, 2).
    """
    parser = ConfigParser()
    parser.read_config(config_file)
    parser["bundle_root"] = str(BUNDLE_ROOT)
    network = parser.get_parsed_content(net_id)
    network.load_state_dict(torch.load(ckpt_file, map_location="cpu", weights_only=True))
    return network.eval()


def input_shape(meta_file: Path) -> tuple[int, int, int]:
    """(C, H, W) of the network input from ``metadata.json`` (``network_data_format.inputs.image``)."""
    spec = json.loads(meta_file.read_text())["network_data_format"]["inputs"]["image"]
    return (int(spec["num_channels"]), *(int(s) for s in spec["spatial_shape"]))


def onnx_max_difference(
    network: torch.nn.Module, filepath: str | os.PathLike, shape: Sequence[int], batch_sizes: Sequence[int] = (1, 3)
) -> float:
    """Largest absolute difference between onnxruntime's and PyTorch's logits on seeded random inputs."""
    import onnxruntime  # optional extra: pip install -e .[onnx]

    session = onnxruntime.InferenceSession(str(filepath), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for batch_size in batch_sizes:
        x = torch.rand(batch_size, *shape, generator=generator)
        with torch.no_grad():
            expected = network(x).numpy()
        got = session.run(["logits"], {"image": x.numpy()})[0]
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--ckpt_file", required=True, help="weights: a state_dict file (e.g. models/model.pt)")
    parser.add_argument("--filepath", default="models/model.onnx", help="ONNX file to write (default: %(default)s)")
    parser.add_argument(
        "--config_file", default="configs/inference.yaml", help="bundle config, from the bundle root (%(default)s)"
    )
    parser.add_argument("--meta_file", default="configs/metadata.json", help="input shape source (%(default)s)")
    parser.add_argument("--net_id", default="network_def", help="network id in the config (default: %(default)s)")
    parser.add_argument("--atol", type=float, default=1e-4, help="allowed |onnx - torch| (default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not os.path.isfile(args.ckpt_file):
        print(f"error: {os.path.abspath(args.ckpt_file)}: checkpoint not found", file=sys.stderr)
        return 2

    config_file, meta_file = bundle_file(args.config_file), bundle_file(args.meta_file)
    shape = input_shape(meta_file)
    Path(args.filepath).parent.mkdir(parents=True, exist_ok=True)
    onnx_export(
        net_id=args.net_id,
        filepath=args.filepath,
        ckpt_file=args.ckpt_file,
        meta_file=str(meta_file),
        config_file=str(config_file),
        bundle_root=str(BUNDLE_ROOT),
        use_trace=True,
        input_shape=[1, *shape],
        converter_kwargs={
            "input_names": ["image"],
            "output_names": ["logits"],
            "dynamic_axes": {"image": {0: "batch"}, "logits": {0: "batch"}},
        },
    )
    difference = onnx_max_difference(load_network(args.ckpt_file, config_file, args.net_id), args.filepath, shape)
    logger.info(f"exported {args.filepath}: input image (B, {', '.join(map(str, shape))}), output logits (B, 2)")
    logger.info(f"onnxruntime vs PyTorch: max |difference| = {difference:.3g} (allowed {args.atol:g})")
    if not difference <= args.atol:
        logger.error("ONNX output does not match the PyTorch model")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
