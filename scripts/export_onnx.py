"""Export the bundle's network to ONNX and check it against the PyTorch model with onnxruntime.

Typical usage (from the bundle root; needs the optional extra: ``pip install -e .[onnx]``)::

    python scripts/export_onnx.py --ckpt_file models/model.pt --filepath models/model.onnx

The network is ``network_def`` of ``configs/inference.yaml`` (the same one ``ckpt_export`` scripts to TorchScript)
with the weights of ``--ckpt_file`` (a plain ``state_dict``, as ``checkpoints/model.pt`` of a training run). The
ONNX graph takes ``image`` (B, 2, H, W) float32 with a dynamic batch size and (H, W) from ``metadata.json``
(512, 256), and returns ``logits`` (B, 2): softmax gives (P(benign), P(malignant)), the bundle's ``pred``.
After writing, onnxruntime runs the file on random inputs of batch sizes 1 and 3 and the script fails (exit 1)
when its output differs from PyTorch's by more than ``--atol``.
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

BUNDLE_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BUNDLE_ROOT))  # the configs name `bundle.*` objects: importable without `pip install -e .`
logger = logging.getLogger("export_onnx")


def load_network(
    ckpt_file: str | os.PathLike, config_file: str | os.PathLike = "configs/inference.yaml", net_id: str = "network_def"
) -> torch.nn.Module:
    """Build ``net_id`` from ``config_file`` (resolved from the bundle root) and load ``ckpt_file`` into it.

    Returns:
        The network in eval mode, on CPU: input (B, 2, H, W), output logits (B, 2).
    """
    from monai.bundle import ConfigParser

    cwd = os.getcwd()
    os.chdir(BUNDLE_ROOT)  # `%configs/train.yaml#...` macros are relative to the bundle root
    try:
        parser = ConfigParser()
        parser.read_config(config_file)
        network = parser.get_parsed_content(net_id)
    finally:
        os.chdir(cwd)
    state_dict = torch.load(ckpt_file, map_location="cpu", weights_only=True)
    if isinstance(state_dict, dict) and "model" in state_dict and isinstance(state_dict["model"], dict):
        state_dict = state_dict["model"]  # a full checkpoint {"model": ..., "optimizer": ...}
    network.load_state_dict(state_dict)
    return network.eval()


def input_shape(meta_file: str | os.PathLike) -> tuple[int, int, int]:
    """(C, H, W) of the network input from ``metadata.json`` (``network_data_format.inputs.image``)."""
    spec = json.loads(Path(meta_file).read_text())["network_data_format"]["inputs"]["image"]
    return (int(spec["num_channels"]), *(int(s) for s in spec["spatial_shape"]))


def export_onnx(network: torch.nn.Module, filepath: str | os.PathLike, shape: Sequence[int]) -> None:
    """Write ``network`` as ONNX (input ``image`` of shape (B, *shape), dynamic B; output ``logits`` (B, 2))."""
    Path(filepath).parent.mkdir(parents=True, exist_ok=True)
    example = torch.rand(2, *shape)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad():
        torch.onnx.export(
            network,
            (example,),
            str(filepath),
            input_names=["image"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
            dynamo=True,
            optimize=True,
            external_data=False,  # one self-contained file (the weights are far below the 2 GB protobuf limit)
            verbose=False,
        )


def onnx_max_difference(
    network: torch.nn.Module, filepath: str | os.PathLike, shape: Sequence[int], batch_sizes: Sequence[int] = (1, 3)
) -> float:
    """Largest absolute difference between onnxruntime's and PyTorch's logits on seeded random inputs."""
    import onnxruntime

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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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

    network = load_network(args.ckpt_file, args.config_file, args.net_id)
    meta_file = args.meta_file if os.path.isabs(args.meta_file) else BUNDLE_ROOT / args.meta_file
    shape = input_shape(meta_file)
    export_onnx(network, args.filepath, shape)
    difference = onnx_max_difference(network, args.filepath, shape)
    logger.info(f"exported {args.filepath}: input image (B, {', '.join(map(str, shape))}), output logits (B, 2)")
    logger.info(f"onnxruntime vs PyTorch: max |difference| = {difference:.3g} (allowed {args.atol:g})")
    if not difference <= args.atol:
        logger.error("ONNX output does not match the PyTorch model")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
