"""VGG16 (Simonyan & Zisserman 2015) with torchvision's module layout and parameter names.

Parameter names are exactly those of ``torchvision.models.vgg16`` / ``vgg16_bn`` (``features.0.weight``, ...,
``classifier.0.weight``, ``classifier.3.weight``, ``classifier.6.weight``), so a torchvision ImageNet ``state_dict``
loads with :func:`bundle.nets.pretrained.load_pretrained` (first conv ``features.0.weight``, head ``classifier.6.``: the
pretrained fc6/fc7 layers ``classifier.0``/``classifier.3`` are kept).

Input size: any H, W >= 32 (five 2×2 max-poolings); ``AdaptiveAvgPool2d((7, 7))`` brings any feature map to the
7×7×512 that the classifier expects, e.g. (B, 512, 16, 8) at 512×256.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["VGG16", "VGG16_CONFIG"]

#: Conv output channels of VGG16 (configuration "D"); ``"M"`` is a 2×2 max-pooling.
VGG16_CONFIG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", *((512, 512, 512, "M") * 2))


def _make_features(in_channels: int, batch_norm: bool) -> nn.Sequential:
    """3×3 conv (+ BN) + ReLU stacks and max-poolings of :data:`VGG16_CONFIG`, indexed like torchvision."""
    layers: list[nn.Module] = []
    channels = in_channels
    for value in VGG16_CONFIG:
        if value == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        out_channels = int(value)
        layers.append(nn.Conv2d(channels, out_channels, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(nn.ReLU(inplace=True))
        channels = out_channels
    return nn.Sequential(*layers)


class VGG16(nn.Module):
    """VGG16 classifier, torchvision layout.

    Args:
        in_channels: input channels (2: scan + lesion mask; 3 for the ImageNet original). Defaults to 2.
        num_classes: output logits. Defaults to 2.
        batch_norm: add BatchNorm after each conv (torchvision ``vgg16_bn`` names). Defaults to False, the plain
            VGG16 of the paper.
        dropout: dropout probability after fc6 and fc7. Defaults to 0.5.

    Input: (B, in_channels, H, W) with H, W >= 32. Output: logits (B, num_classes).
    """

    def __init__(self, in_channels: int = 2, num_classes: int = 2, batch_norm: bool = False, dropout: float = 0.5):
        super().__init__()
        self.features = _make_features(in_channels, batch_norm)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify.

        Args:
            x: input of shape (B, in_channels, H, W), H and W >= 32.

        Returns:
            Logits of shape (B, num_classes).
        """
        x = self.features(x)  # (B, 512, H // 32, W // 32)
        x = self.avgpool(x)  # (B, 512, 7, 7)
        x = torch.flatten(x, 1)  # (B, 25088)
        return self.classifier(x)
