"""torchvision ResNet-18 with a configurable head, input channels and small-image stem."""
from __future__ import annotations

import math
import os

import torch
import torch.nn as nn
import torchvision

CLASSIFIERS = ("learned", "etf")
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

    ``classifier="etf"``: the parameter-efficient variant of seed 002 (and of fixed-classifier
    neural-collapse work): the head's weight is fixed to the simplex ETF
    ``W = sqrt(K/(K-1)) (I - 11^T/K)`` (unit-norm rows, pairwise cosine -1/(K-1)), the feature
    dimension is K (a trainable linear projection of the backbone's output) and only the bias of
    the head trains.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, image_size: int = 32, width: int = 64,
                 classifier: str = "learned"):
        super().__init__()
        if num_classes < 1 or in_channels not in (1, 3) or image_size < 4 or width < 4:
            raise ValueError("need num_classes >= 1, in_channels in {1, 3}, image_size >= 4, width >= 4; got "
                             f"{num_classes}, {in_channels}, {image_size}, {width}")
        if classifier not in CLASSIFIERS:
            raise ValueError(f"classifier={classifier!r}: choose one of {list(CLASSIFIERS)}")
        if classifier == "etf" and num_classes < 2:
            raise ValueError("a simplex-ETF classifier needs at least 2 classes")
        net = torchvision.models.resnet18(weights=None)
        if width != 64:
            _narrow(net, width)
        self.small_stem = image_size <= SMALL_IMAGE_MAX
        if self.small_stem:
            net.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif in_channels != 3 or width != 64:
            net.conv1 = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
        for m in (net.conv1,):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self.backbone_dim = 8 * width
        net.fc = nn.Identity()
        self.backbone = net
        self.classifier = classifier
        if classifier == "etf":
            self.feature_dim = num_classes
            self.proj = nn.Linear(self.backbone_dim, num_classes)
            self.fc = nn.Linear(num_classes, num_classes)
            with torch.no_grad():
                self.fc.weight.copy_(simplex_etf(num_classes))
                self.fc.bias.zero_()
            self.fc.weight.requires_grad_(False)
        else:
            self.feature_dim = self.backbone_dim
            self.proj = nn.Identity()
            self.fc = nn.Linear(self.feature_dim, num_classes)
        self.num_classes, self.in_channels, self.image_size, self.width = num_classes, in_channels, image_size, width

    def features(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, H, W] -> [B, d]
        return self.proj(self.backbone((x - 0.5) / 0.25))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # -> logits [B, K]
        return self.fc(self.features(x))

    def meta(self) -> dict:
        return {"arch": "resnet18", "num_classes": self.num_classes, "in_channels": self.in_channels,
                "image_size": self.image_size, "small_stem": self.small_stem, "width": self.width,
                "classifier": self.classifier, "feature_dim": self.feature_dim}


def simplex_etf(k: int) -> torch.Tensor:
    """[k, k] simplex ETF rows: unit norm, pairwise cosine -1/(k-1) (method.md, seed 002)."""
    eye = torch.eye(k)
    return math.sqrt(k / (k - 1)) * (eye - torch.ones(k, k) / k)


def _narrow(net: torchvision.models.ResNet, width: int) -> None:
    """ResNet-18 topology (BasicBlock, [2, 2, 2, 2], same strides) with channels w, 2w, 4w, 8w
    instead of 64..512; torchvision's own initialisation. For CPU-bound experiments only: the
    product's default is torchvision's ResNet-18 (width 64)."""
    from torchvision.models.resnet import BasicBlock

    net.inplanes = width
    net.bn1 = nn.BatchNorm2d(width)
    net.layer1 = net._make_layer(BasicBlock, width, 2)
    net.layer2 = net._make_layer(BasicBlock, 2 * width, 2, stride=2)
    net.layer3 = net._make_layer(BasicBlock, 4 * width, 2, stride=2)
    net.layer4 = net._make_layer(BasicBlock, 8 * width, 2, stride=2)
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)


def build_model(num_classes: int, in_channels: int, image_size: int, pretrained_path: str = "",
                width: int = 64, classifier: str = "learned") -> ResNet18Classifier:
    model = ResNet18Classifier(num_classes, in_channels, image_size, width, classifier)
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
