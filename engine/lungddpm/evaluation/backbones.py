"""3-D ResNet feature extractors for distribution metrics (FID, MMD), in MedicalNet / Med3D layout.

The network follows Tencent MedicalNet's ``models/resnet.py`` (Med3D, Chen et al. 2019): parameter
names ``conv1``, ``bn1``, ``layer1`` .. ``layer4`` of BasicBlock or Bottleneck blocks, layer3 and
layer4 dilated (2, 4) instead of strided, and shortcut type A (zero-padded identity, no weights) or
B (1x1x1 convolution + batch norm). MedicalNet's ``resnet_10/18/34/50/...`` ``.pth`` files (state
dict under "state_dict", keys prefixed "module.") load directly; their segmentation head
(``conv_seg``) is dropped. The architecture is read from the state dict itself. Features are the
global average of layer4's output: 512 values (BasicBlock) or 2048 (Bottleneck).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lungddpm.model.checkpoints import file_sha256, read_checkpoint
from lungddpm.errors import CheckpointError, ConfigError

# MedicalNet's depths: blocks per layer, block type
DEPTHS = {
    10: ((1, 1, 1, 1), "basic"),
    18: ((2, 2, 2, 2), "basic"),
    34: ((3, 4, 6, 3), "basic"),
    50: ((3, 4, 6, 3), "bottleneck"),
    101: ((3, 4, 23, 3), "bottleneck"),
    152: ((3, 8, 36, 3), "bottleneck"),
    200: ((3, 24, 36, 3), "bottleneck"),
}
HEAD_PREFIX = "conv_seg."  # MedicalNet's segmentation head, not part of the feature extractor


class BasicBlock(nn.Module):
    """Two 3x3x3 convolutions with batch norm and a residual connection (expansion 1)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(inplanes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = nn.Conv3d(planes, planes, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    """1x1x1, 3x3x3 (strided, dilated), 1x1x1 convolutions with batch norm and a residual (expansion 4)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = nn.Conv3d(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(planes * 4)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The bottleneck residual block."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ZeroPadShortcut(nn.Module):
    """Shortcut type A: subsample by stride and pad the extra channels with zeros (no weights)."""

    def __init__(self, planes: int, stride: int) -> None:
        super().__init__()
        self.planes = planes
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x[:, :, ::s, ::s, ::s] with zero channels appended up to planes."""
        out = x[:, :, :: self.stride, :: self.stride, :: self.stride]
        return F.pad(out, (0, 0, 0, 0, 0, 0, 0, self.planes - out.shape[1]))


class ResNet3D(nn.Module):
    """MedicalNet's 3-D ResNet without its segmentation head; forward returns pooled layer4 features."""

    def __init__(self, depth: int = 10, shortcut: str = "B") -> None:
        super().__init__()
        if depth not in DEPTHS:
            raise ConfigError(f"ResNet depth {depth} is not a MedicalNet depth; choose one of {sorted(DEPTHS)}")
        if shortcut not in ("A", "B"):
            raise ConfigError(f"shortcut type {shortcut!r} must be 'A' (zero padding) or 'B' (1x1x1 convolution)")
        layers, kind = DEPTHS[depth]
        self.depth, self.shortcut, self.block = depth, shortcut, BasicBlock if kind == "basic" else Bottleneck
        self.inplanes = 64
        self.conv1 = nn.Conv3d(1, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm3d(64)
        self.maxpool = nn.MaxPool3d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], dilation=2)
        self.layer4 = self._make_layer(512, layers[3], dilation=4)
        self.features = 512 * self.block.expansion
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def _make_layer(self, planes: int, blocks: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
        """A stage of blocks; the first gets a shortcut when the stride or the width changes."""
        out = planes * self.block.expansion
        downsample = None
        if stride != 1 or self.inplanes != out:
            downsample = (ZeroPadShortcut(out, stride) if self.shortcut == "A"
                          else nn.Sequential(nn.Conv3d(self.inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm3d(out)))
        layers = [self.block(self.inplanes, planes, stride, dilation, downsample)]
        self.inplanes = out
        layers += [self.block(out, planes, dilation=dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, D, H, W) -> (B, features): global average of layer4."""
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.mean(dim=(2, 3, 4))


@dataclass(frozen=True)
class BackboneInfo:
    """Which backbone produced a set of features: say it next to every FID or MMD number."""

    name: str
    weights: str  # "random init, seed N" or the weights file name
    sha256: str | None
    features: int

    def describe(self) -> str:
        """One line, e.g. 'MedicalNet resnet_18 (shortcut A), weights resnet_18.pth sha256 ab12...'."""
        digest = f" sha256 {self.sha256}" if self.sha256 else ""
        return f"{self.name}, weights {self.weights}{digest}, {self.features} features"


def random_backbone(depth: int = 10, shortcut: str = "B", seed: int = 0) -> tuple[ResNet3D, BackboneInfo]:
    """A randomly initialised backbone (reproducible from the seed), in eval mode."""
    torch.manual_seed(seed)
    net = ResNet3D(depth, shortcut).eval()
    return net, BackboneInfo(f"MedicalNet-layout resnet_{depth} (shortcut {shortcut})", f"random init, seed {seed}", None, net.features)


def _medicalnet_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The backbone weights of a MedicalNet-style file: 'state_dict' unwrapped, 'module.' and the head removed."""
    obj = read_checkpoint(path)
    sd = obj.get("state_dict", obj)
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors; give a MedicalNet .pth file (e.g. resnet_18.pth)")
    sd = {re.sub(r"^module\.", "", k): v for k, v in sd.items()}
    return {k: v for k, v in sd.items() if not k.startswith(HEAD_PREFIX)}


def _infer_architecture(sd: dict[str, torch.Tensor], path: Path) -> tuple[int, str]:
    """(depth, shortcut) from a state dict's keys: blocks per layer, block type, shortcut weights."""
    if "conv1.weight" not in sd or tuple(sd["conv1.weight"].shape) != (64, 1, 7, 7, 7):
        raise CheckpointError(f"{path} is not a MedicalNet 3-D ResNet (no conv1.weight of shape 64x1x7x7x7); "
                              "give a MedicalNet resnet_*.pth file, or use a random backbone")
    blocks = tuple(len({m.group(1) for k in sd if (m := re.match(rf"layer{n}\.(\d+)\.", k))}) for n in range(1, 5))
    kind = "bottleneck" if "layer1.0.conv3.weight" in sd else "basic"
    depth = next((d for d, (b, t) in DEPTHS.items() if b == blocks and t == kind), None)
    if depth is None:
        raise CheckpointError(f"{path}: blocks per layer {blocks} ({kind}) match no MedicalNet depth {sorted(DEPTHS)}")
    return depth, "B" if "layer2.0.downsample.0.weight" in sd else "A"


def load_backbone(path: str | Path) -> tuple[ResNet3D, BackboneInfo]:
    """A MedicalNet-style 3-D ResNet with the weights of a .pth file (architecture read from it), in eval mode."""
    path = Path(path)
    sd = _medicalnet_state_dict(path)
    depth, shortcut = _infer_architecture(sd, path)
    net = ResNet3D(depth, shortcut)
    missing, unexpected = net.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]  # files saved by older torch lack these
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit MedicalNet resnet_{depth} (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}); give an unmodified MedicalNet resnet_*.pth file")
    return net.eval(), BackboneInfo(f"MedicalNet resnet_{depth} (shortcut {shortcut})", path.name, file_sha256(path), net.features)
