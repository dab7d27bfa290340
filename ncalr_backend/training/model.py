"""torchvision ResNet-18 with a configurable head, input channels and small-image stem."""
from __future__ import annotations

import os

import torch
import torch.nn as nn
import torchvision

SMALL_IMAGE_MAX = 64  # inputs this size or smaller get the 3x3 stride-1 stem and no max-pool


def pick_device(preference: str = "auto") -> torch.device:
    """'auto' -> CUDA when present, else the CPU; 'cuda' without a GPU is an error that says so."""
    if preference == "cpu":
        return torch.device("cpu")
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for but torch sees no GPU; use 'auto' or 'cpu'")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class ResNet18Classifier(nn.Module):
    """ResNet-18 split into ``features`` (penultimate, 512-d) and a linear ``fc`` head.

    Inputs are float images in [0, 1], shape [B, C, H, W]; they are normalised inside the model so
    that every caller (trainer, service, benchmarks) feeds the same thing.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, image_size: int = 32):
        super().__init__()
        if num_classes < 1 or in_channels not in (1, 3) or image_size < 4:
            raise ValueError("need num_classes >= 1, in_channels in {1, 3}, image_size >= 4; got "
                             f"{num_classes}, {in_channels}, {image_size}")
        net = torchvision.models.resnet18(weights=None)
        self.small_stem = image_size <= SMALL_IMAGE_MAX
        if self.small_stem:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.feature_dim = net.fc.in_features
        net.fc = nn.Identity()
        self.backbone = net
        self.fc = nn.Linear(self.feature_dim, num_classes)
        self.num_classes, self.in_channels, self.image_size = num_classes, in_channels, image_size

    def features(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, H, W] -> [B, 512]
        return self.backbone((x - 0.5) / 0.25)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # -> logits [B, K]
        return self.fc(self.features(x))

    def meta(self) -> dict:
        return {"arch": "resnet18", "num_classes": self.num_classes, "in_channels": self.in_channels,
                "image_size": self.image_size, "small_stem": self.small_stem}


def build_model(num_classes: int, in_channels: int, image_size: int, pretrained_path: str = "") -> ResNet18Classifier:
    model = ResNet18Classifier(num_classes, in_channels, image_size)
    if pretrained_path:
        load_backbone_weights(model, pretrained_path)
    return model


def load_backbone_weights(model: ResNet18Classifier, path: str) -> list[str]:
    """Initialise the backbone from a local torchvision-style ResNet-18 state dict.

    Tensors whose shape does not fit (the stem of a small-image or grayscale model, the head) are
    left at their initialisation; the names of those skipped are returned. Never downloads.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained weights file {path!r} does not exist (weights are never downloaded)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    own = model.backbone.state_dict()
    usable, skipped = {}, []
    for k, v in state.items():
        k2 = k[len("backbone."):] if k.startswith("backbone.") else k
        if k2 in own and own[k2].shape == v.shape:
            usable[k2] = v
        else:
            skipped.append(k)
    if not usable:
        raise ValueError(f"{path!r} holds no tensor that fits a ResNet-18 backbone")
    model.backbone.load_state_dict(usable, strict=False)
    return skipped
