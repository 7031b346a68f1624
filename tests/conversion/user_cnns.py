"""User CNNs written the way a user would, for the conversion tests (not a test module).

Plain torch only: the SpikingJelly peer script (``peer_spikingjelly_convert.py``) imports
this module in the peer environment, where spikebridge is not installed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def sequential_cnn(channels: int = 1, classes: int = 10, width: int = 8) -> nn.Sequential:
    """Conv-BN-ReLU-MaxPool twice, then flatten and a linear readout (input 16x16)."""
    return nn.Sequential(
        nn.Conv2d(channels, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.BatchNorm2d(2 * width),
        nn.ReLU(inplace=True),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * width * 4 * 4, 32),
        nn.ReLU(),
        nn.Linear(32, classes),
    )


class ResidualCNN(nn.Module):
    """A custom forward: a residual add, max pooling, a functional ReLU, a shared ReLU module
    called twice, ``x.view(x.size(0), -1)`` and global average pooling."""

    def __init__(self, channels: int = 1, classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(channels, width, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)  # used twice, as torchvision's blocks do
        self.pool = nn.MaxPool2d(2)
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.head = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu(self.stem_bn(self.stem(x))))
        y = F.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(y)) + x)
        x = torch.relu(self.head(x))
        x = F.adaptive_avg_pool2d(x, 1)
        return self.fc(x.view(x.size(0), -1))


class FashionCNN(nn.Module):
    """The peer test's network (28x28 grey images): distinct ``nn.ReLU`` modules, because
    SpikingJelly's rate-coding recipe converts ``nn.ReLU`` modules only."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu1 = (
            nn.Conv2d(1, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        )
        self.pool1 = nn.MaxPool2d(2)
        self.conv2, self.bn2, self.relu2 = (
            nn.Conv2d(width, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        )
        self.conv3, self.bn3, self.relu3 = (
            nn.Conv2d(width, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        )
        self.pool2 = nn.MaxPool2d(2)
        self.conv4, self.bn4, self.relu4 = (
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
        )
        self.pool3 = nn.AvgPool2d(7)
        self.fc = nn.Linear(2 * width, 10)  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.bn1(self.conv1(x))))
        y = self.relu2(self.bn2(self.conv2(x)))
        x = self.pool2(self.relu3(self.bn3(self.conv3(y)) + x))
        x = self.pool3(self.relu4(self.bn4(self.conv4(x))))
        return self.fc(torch.flatten(x, 1))


def fashion_sequential_cnn(width: int = 16) -> nn.Sequential:
    """An ``nn.Sequential`` for 28x28 grey images: conv-BN-ReLU-MaxPool twice, then a
    two-layer linear head (the user-CNN benchmark's network (a))."""
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
        nn.BatchNorm2d(2 * width),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * width * 7 * 7, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


class _ConvBN(nn.Sequential):
    """A bias-free 3x3 convolution and its BatchNorm."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout))


class DeepResidualCNN(nn.Module):
    """A deeper VGG-like network for 28x28 grey images (the benchmark's network (c)): nine
    convolutions in three stages (28, 14, 7 pixels), each stage a widening conv and a
    two-conv residual block, MaxPool between stages, global average pooling and a linear
    readout; every ReLU a distinct ``nn.ReLU`` (SpikingJelly converts modules only)."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        widths = (width, 2 * width, 4 * width)
        self.entry = nn.ModuleList()
        self.body = nn.ModuleList()
        self.relus = nn.ModuleList(nn.ReLU() for _ in range(9))
        cin = 1
        for w in widths:
            self.entry.append(_ConvBN(cin, w))
            self.body.append(nn.ModuleList([_ConvBN(w, w), _ConvBN(w, w)]))
            cin = w
        self.pools = nn.ModuleList([nn.MaxPool2d(2), nn.MaxPool2d(2)])
        self.gap = nn.AvgPool2d(7)  # a module: SpikingJelly's recipe refuses the functional one
        self.fc = nn.Linear(4 * width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in range(3):
            if stage:
                x = self.pools[stage - 1](x)
            x = self.relus[3 * stage](self.entry[stage](x))
            first, second = self.body[stage]
            y = self.relus[3 * stage + 1](first(x))
            x = self.relus[3 * stage + 2](second(y) + x)
        return self.fc(torch.flatten(self.gap(x), 1))
