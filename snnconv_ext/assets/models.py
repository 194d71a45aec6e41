"""Net1..Net6 from Table 1 of Han et al. (2023), "Symmetric-threshold ReLU for fast and nearly
lossless ANN-SNN conversion", built as plain nn.Sequential models ready for conversion.

Conversion-friendly choices: average pooling (never max pooling), every activation is a separate
nn.Module made by ``act()`` (so a converter can swap it for a spiking neuron), nn.Flatten before the
fully connected part, bias=True everywhere.

Paper topologies (MACs per image checked against its Table 5, see below)::

  Net1  1200-1200-10                                   (MNIST,   784 inputs)
  Net2  12c5-p2-64c5-p2-10                             (MNIST,   5x5 valid convs: 28-24-12-8-4)
  Net3  6400-10                                        (F-MNIST, one hidden layer of 6400 units)
  Net4  32c5-p2-64c5-p2-1024-10                        (F-MNIST, 5x5 valid convs: 28-24-12-8-4)
  Net5  128c3-128c3-p2-256c3-256c3-p2-512c3-512c3-p2-1024-10   (CIFAR10, padding 1)
  Net6  VGG-16, CIFAR style (13 3x3 convs with BN, 5 pools, one 512-10 classifier)

tests/test_models.py checks Net1-Net4 and Net6 against Table 5 exactly (Net6 counting BN as one MAC per
element); Net5 as listed here counts 615.92e6 against the paper's 610.08e6: within 1%, not equal.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from ..core.activations import BY_NAME

ActFactory = Callable[[], nn.Module]

__all__ = ["ARCHS", "build", "net1", "net2", "net3", "net4", "net5", "net6", "vgg", "vgg_bn", "tv_resnet18",
           "tv_vgg11_bn"]


def _valid_conv_pool_size(image_size: int, n_blocks: int, kernel: int, arch: str) -> int:
    """Spatial size after ``n_blocks`` of (valid conv ``kernel`` -> 2x2 average pool)."""
    size = image_size
    for _ in range(n_blocks):
        size = (size - kernel + 1) // 2
        if size < 1:
            raise ValueError(
                f"{arch}: image_size={image_size} is too small for {n_blocks} blocks of "
                f"{kernel}x{kernel} valid conv + 2x2 pooling (needs at least 16 for 5x5)."
            )
    return size


def _check_pool_size(image_size: int, n_pools: int, arch: str) -> int:
    """Spatial size after ``n_pools`` 2x2 poolings of same-padded convs; must stay >= 1."""
    size = image_size >> n_pools
    if size < 1 or image_size % (1 << n_pools):
        raise ValueError(
            f"{arch}: image_size={image_size} must be a multiple of {1 << n_pools} "
            f"({n_pools} 2x2 poolings)."
        )
    return size


def net1(act: ActFactory = nn.ReLU, in_channels: int = 1, image_size: int = 28,
         num_classes: int = 10) -> nn.Sequential:
    """Net1: fully connected 1200-1200-10 (paper: MNIST)."""
    n_in = in_channels * image_size * image_size
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(n_in, 1200), act(),
        nn.Linear(1200, 1200), act(),
        nn.Linear(1200, num_classes),
    )


def net2(act: ActFactory = nn.ReLU, in_channels: int = 1, image_size: int = 28,
         num_classes: int = 10) -> nn.Sequential:
    """Net2: 12c5-p2-64c5-p2-10 with valid 5x5 convolutions (paper: MNIST)."""
    s = _valid_conv_pool_size(image_size, 2, 5, "net2")
    return nn.Sequential(
        nn.Conv2d(in_channels, 12, 5), act(), nn.AvgPool2d(2),
        nn.Conv2d(12, 64, 5), act(), nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * s * s, num_classes),
    )


def net3(act: ActFactory = nn.ReLU, in_channels: int = 1, image_size: int = 28,
         num_classes: int = 10) -> nn.Sequential:
    """Net3: one hidden fully connected layer of 6400 units, 6400-10 (paper: Fashion-MNIST)."""
    n_in = in_channels * image_size * image_size
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(n_in, 6400), act(),
        nn.Linear(6400, num_classes),
    )


def net4(act: ActFactory = nn.ReLU, in_channels: int = 1, image_size: int = 28,
         num_classes: int = 10) -> nn.Sequential:
    """Net4: 32c5-p2-64c5-p2-1024-10 with valid 5x5 convolutions (paper: Fashion-MNIST)."""
    s = _valid_conv_pool_size(image_size, 2, 5, "net4")
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 5), act(), nn.AvgPool2d(2),
        nn.Conv2d(32, 64, 5), act(), nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * s * s, 1024), act(),
        nn.Linear(1024, num_classes),
    )


def _conv_block(c_in: int, c_out: int, act: ActFactory, batch_norm: bool) -> list[nn.Module]:
    """3x3 same-padded conv, optional BatchNorm, activation."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(act())
    return layers


def net5(act: ActFactory = nn.ReLU, in_channels: int = 3, image_size: int = 32,
         num_classes: int = 10, batch_norm: bool = False) -> nn.Sequential:
    """Net5: 128c3-128c3-p2-256c3-256c3-p2-512c3-512c3-p2-1024-10, padding 1 (paper: CIFAR10).

    ``batch_norm=True`` puts BatchNorm before each conv activation, as the paper does for its VGG nets.
    """
    s = _check_pool_size(image_size, 3, "net5")
    layers: list[nn.Module] = []
    c = in_channels
    for width in (128, 256, 512):
        layers += _conv_block(c, width, act, batch_norm)
        layers += _conv_block(width, width, act, batch_norm)
        layers.append(nn.AvgPool2d(2))
        c = width
    layers += [nn.Flatten(), nn.Linear(512 * s * s, 1024), act(), nn.Linear(1024, num_classes)]
    return nn.Sequential(*layers)


VGG16_CFG: tuple[int | str, ...] = (64, 64, "P", 128, 128, "P", 256, 256, 256, "P",
                                    512, 512, 512, "P", 512, 512, 512, "P")


def net6(act: ActFactory = nn.ReLU, in_channels: int = 3, image_size: int = 32,
         num_classes: int = 10, batch_norm: bool = True) -> nn.Sequential:
    """Net6: VGG-16, CIFAR style: 13 3x3 convs (+BN), 5 average pools, Linear(512*s*s, classes)."""
    s = _check_pool_size(image_size, 5, "net6")
    layers: list[nn.Module] = []
    c = in_channels
    for item in VGG16_CFG:
        if item == "P":
            layers.append(nn.AvgPool2d(2))
        else:
            layers += _conv_block(c, int(item), act, batch_norm)
            c = int(item)
    layers += [nn.Flatten(), nn.Linear(512 * s * s, num_classes)]
    return nn.Sequential(*layers)


def vgg(act: ActFactory = nn.ReLU, in_channels: int = 1, image_size: int = 28, num_classes: int = 10,
        width: int = 32, batch_norm: bool = False) -> nn.Sequential:
    """Small VGG-style CNN for 28x28 inputs (w-w-p-2w-2w-p-4w-4w-p-256-classes, 3x3 convs, padding 1, average
    pooling); without BN by default: the no-BN twin of :func:`vgg_bn` (calibration paper, Table 1c)."""
    side = image_size // 8  # three 2x2 average poolings, flooring: 28 -> 14 -> 7 -> 3
    if side < 1:
        raise ValueError(f"vgg: image_size={image_size} is too small for three 2x2 poolings")
    chans = [in_channels, width, width, 2 * width, 2 * width, 4 * width, 4 * width]
    layers: list[nn.Module] = []
    for i in range(6):
        layers += _conv_block(chans[i], chans[i + 1], act, batch_norm=batch_norm)
        if i % 2 == 1:
            layers.append(nn.AvgPool2d(2))
    layers += [nn.Flatten(), nn.Linear(4 * width * side * side, 256)]
    layers += [nn.BatchNorm1d(256)] if batch_norm else []
    layers += [act(), nn.Linear(256, num_classes)]
    return nn.Sequential(*layers)


def vgg_bn(act: ActFactory = nn.ReLU, in_channels: int = 1, image_size: int = 28,
           num_classes: int = 10, width: int = 32) -> nn.Sequential:
    """:func:`vgg` with BN after every conv and the hidden linear layer: the BN network the calibration and
    DNISNM chapters convert."""
    return vgg(act, in_channels, image_size, num_classes, width, batch_norm=True)


ARCHS: dict[str, Callable[..., nn.Sequential]] = {
    "net1": net1, "net2": net2, "net3": net3, "net4": net4, "net5": net5, "net6": net6, "vgg": vgg, "vgg_bn": vgg_bn,
}


def build(arch: str, act: str | ActFactory = "relu", **kw) -> nn.Sequential:
    """Build architecture ``arch`` (a key of ARCHS) with activation ``act`` (a key of ``activations.BY_NAME``
    or a zero-argument factory); ``kw`` goes to the net function (in_channels, image_size, ...)."""
    try:
        fn = ARCHS[arch]
    except KeyError:
        raise ValueError(f"unknown arch {arch!r}; known: {sorted(ARCHS)}") from None
    if isinstance(act, str):
        try:
            act_factory = BY_NAME[act]
        except KeyError:
            raise ValueError(f"unknown activation {act!r}; known: {sorted(BY_NAME)}") from None
    else:
        act_factory = act
    return fn(act=act_factory, **kw)


# --- ResNets (CIFAR style, He et al. 2016) for the calibration (Li et al. 2022) and TTRBR (Meng et al. 2022)
# chapters. Every activation is its own module instance so a converter can swap each for its own neurons;
# downsampling shortcuts are 1x1 conv + BN ("option B"), which fold and convert like any conv.

class BasicBlock(nn.Module):
    """Two 3x3 convs with BN. ``restructured=False``: the original block, act(F(x) + shortcut(x)): the IF
    neurons replacing ``act`` integrate the sum, and their spikes replace the sum on both paths.
    ``restructured=True``: TTRBR Fig. 6 / Sec. 4, the "pre-activation" block (He et al. 2016b), F(act(x)) +
    shortcut(x). The sum is not activated on the skip path: it flows on as an analog current into the next
    block's sum (or its 1x1 shortcut conv), so no IF neuron re-quantizes the residual stream. The next block's
    ``act_in`` still receives the sum as its input current, but its spikes only drive that block's branch.
    Unlike He et al.'s BN-ReLU-conv, BN stays right after each conv so it folds into the conv weights."""

    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int, act: ActFactory, restructured: bool = False) -> None:
        super().__init__()
        c_out = width * self.expansion
        self.restructured = restructured
        self.act_in = act() if restructured else nn.Identity()
        self.branch = self._branch(c_in, width, stride, act)
        self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
        self.act_out = nn.Identity() if restructured else act()

    def _branch(self, c_in: int, width: int, stride: int, act: ActFactory) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(c_in, width, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(width), act(),
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width))

    def forward(self, x):
        return self.act_out(self.branch(self.act_in(x)) + self.shortcut(x))


class Bottleneck(BasicBlock):
    """1x1 - 3x3 - 1x1 bottleneck (expansion 4); original or restructured as :class:`BasicBlock`."""

    expansion = 4

    def _branch(self, c_in: int, width: int, stride: int, act: ActFactory) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(c_in, width, 1, bias=False), nn.BatchNorm2d(width), act(),
            nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(width), act(),
            nn.Conv2d(width, width * 4, 1, bias=False), nn.BatchNorm2d(width * 4))


class ResNet(nn.Module):
    """CIFAR-style ResNet: 3x3 stem conv + BN, three stages of ``n`` blocks (widths w, 2w, 4w; stride 2 at
    stages 2 and 3), global average pooling, one linear classifier. depth = 6n + 2 (basic) or 9n + 2
    (bottleneck). The restructured net applies one final activation to the residual stream before pooling.
    ``head="plain"``: global average pooling and one linear readout (the zoo's ResNets); ``head="ttrbr"``: the
    paper's head (Sec. 5.1), an activation (IF) after the pooling and BN + activation after the last FC."""

    def __init__(self, depth: int = 20, width: int = 16, bottleneck: bool = False, restructured: bool = False,
                 act: ActFactory = nn.ReLU, in_channels: int = 1, image_size: int = 28, num_classes: int = 10,
                 head: str = "plain") -> None:
        super().__init__()
        per = 9 if bottleneck else 6
        if (depth - 2) % per or depth < per + 2:
            raise ValueError(f"resnet depth must be {per}n+2 for {'bottleneck' if bottleneck else 'basic'} blocks, "
                             f"got {depth}")
        if image_size < 4:
            raise ValueError(f"resnet: image_size={image_size} is too small for two stride-2 stages")
        n = (depth - 2) // per
        block = Bottleneck if bottleneck else BasicBlock
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width))
        self.stem_act = nn.Identity() if restructured else act()
        blocks, c = [], width
        for stage, w in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                blocks.append(block(c, w, 2 if (stage > 0 and i == 0) else 1, act, restructured))
                c = w * block.expansion
        self.blocks = nn.Sequential(*blocks)
        if head not in ("plain", "ttrbr"):
            raise ValueError(f"resnet head must be 'plain' or 'ttrbr', got {head!r}")
        self.final_act = act() if restructured else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        # head="ttrbr" (Meng et al. Sec. 5.1): an activation (IF) after the average pooling, and BN + activation
        # after the last FC, so the SNN's output layer spikes too
        self.pool_act = act() if head == "ttrbr" else nn.Identity()
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c, num_classes)
        self.fc_bn = nn.BatchNorm1d(num_classes) if head == "ttrbr" else nn.Identity()
        self.out_act = act() if head == "ttrbr" else nn.Identity()

    def forward(self, x):
        x = self.stem_act(self.stem(x))
        x = self.final_act(self.blocks(x))
        x = self.flatten(self.pool_act(self.pool(x)))
        return self.out_act(self.fc_bn(self.fc(x)))


def resnet20(act: ActFactory = nn.ReLU, **kw) -> ResNet:
    """ResNet-20 (16-32-64, 0.27 M parameters with 1x1 projection shortcuts), original blocks."""
    return ResNet(20, 16, act=act, **kw)


def resnet20_pre(act: ActFactory = nn.ReLU, **kw) -> ResNet:
    """ResNet-20 with TTRBR's restructured (pre-activation) blocks (Fig. 6)."""
    return ResNet(20, 16, restructured=True, act=act, **kw)


def resnet56_w8(act: ActFactory = nn.ReLU, **kw) -> ResNet:
    """ResNet-56 at half width (8-16-32): deep but small enough to train on two CPU cores."""
    return ResNet(56, 8, act=act, **kw)


def resnet56_w8_pre(act: ActFactory = nn.ReLU, **kw) -> ResNet:
    """ResNet-56 at half width with restructured blocks."""
    return ResNet(56, 8, restructured=True, act=act, **kw)


ARCHS.update({"resnet20": resnet20, "resnet20_pre": resnet20_pre, "resnet56_w8": resnet56_w8,
              "resnet56_w8_pre": resnet56_w8_pre})
__all__ += ["ResNet", "BasicBlock", "Bottleneck", "resnet20", "resnet20_pre", "resnet56_w8", "resnet56_w8_pre"]


# --- Datta & Beerel 2022 (Sec. IV-A): no BatchNorm (dropout instead), no bias, max pooling kept -----------------

def net4_datta(act: ActFactory = nn.ReLU, in_channels: int = 1, image_size: int = 28, num_classes: int = 10,
               dropout: float = 0.2) -> nn.Sequential:
    """Net4 (32c5-p2-64c5-p2-1024-10) as Datta & Beerel train their nets: bias-free layers, 2x2 max pooling,
    dropout instead of BN (Sec. IV-A)."""
    s = _valid_conv_pool_size(image_size, 2, 5, "net4_datta")
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 5, bias=False), act(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, bias=False), act(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(dropout),
        nn.Linear(64 * s * s, 1024, bias=False), act(), nn.Dropout(dropout),
        nn.Linear(1024, num_classes, bias=False),
    )


def vgg_datta(act: ActFactory = nn.ReLU, in_channels: int = 1, image_size: int = 28, num_classes: int = 10,
              width: int = 16, dropout: float = 0.2) -> nn.Sequential:
    """Small VGG-style CNN as in Datta & Beerel Sec. IV-A: w-w-M-2w-2w-M-4w-4w-M-256-classes, 3x3 same convs,
    no bias, no BN, dropout after each block, 2x2 max pooling."""
    side = image_size // 8
    if side < 1:
        raise ValueError(f"vgg_datta: image_size={image_size} is too small for three 2x2 poolings")
    chans = [in_channels, width, width, 2 * width, 2 * width, 4 * width, 4 * width]
    layers: list[nn.Module] = []
    for i in range(6):
        layers += [nn.Conv2d(chans[i], chans[i + 1], 3, padding=1, bias=False), act()]
        if i % 2 == 1:
            layers += [nn.MaxPool2d(2), nn.Dropout(dropout / 2)]
    layers += [nn.Flatten(), nn.Linear(4 * width * side * side, 256, bias=False), act(), nn.Dropout(dropout),
               nn.Linear(256, num_classes, bias=False)]
    return nn.Sequential(*layers)


ARCHS.update({"net4_datta": net4_datta, "vgg_datta": vgg_datta})
__all__ += ["net4_datta", "vgg_datta"]


def _torchvision(name: str, act: ActFactory, in_channels: int, image_size: int, num_classes: int) -> nn.Module:
    """``torchvision.models.<name>(num_classes=num_classes)``, unmodified and randomly initialised: the
    architecture a user brings (issue 29), converted through the graph normalisation stage. It takes 3-channel
    input and uses its own ReLU modules, so ``act`` must be ReLU and ``in_channels`` 3 (use the
    ``fashion_mnist32`` dataset: 28x28 resized to 32x32, the channel repeated)."""
    import torchvision  # only for these entries: the package does not need torchvision otherwise
    if act is not nn.ReLU:
        raise ValueError(f"tv_{name}: torchvision's {name} has its own ReLU modules; act must be 'relu'")
    if in_channels != 3:
        raise ValueError(f"tv_{name}: torchvision's {name} takes 3-channel input, got in_channels={in_channels}; "
                         "train on the fashion_mnist32 dataset (the channel repeated)")
    if image_size < 32:
        raise ValueError(f"tv_{name}: image_size={image_size} is below 32 (five stride-2 stages)")
    return getattr(torchvision.models, name)(num_classes=num_classes, weights=None)


def tv_resnet18(act: ActFactory = nn.ReLU, in_channels: int = 3, image_size: int = 32,
                num_classes: int = 10) -> nn.Module:
    """torchvision's ResNet-18, unmodified (7x7 stride-2 stem, max pooling, shared ReLU per block)."""
    return _torchvision("resnet18", act, in_channels, image_size, num_classes)


def tv_vgg11_bn(act: ActFactory = nn.ReLU, in_channels: int = 3, image_size: int = 32,
                num_classes: int = 10) -> nn.Module:
    """torchvision's VGG-11 with BN, unmodified (max pooling, adaptive 7x7 average pooling, dropout)."""
    return _torchvision("vgg11_bn", act, in_channels, image_size, num_classes)


ARCHS.update({"tv_resnet18": tv_resnet18, "tv_vgg11_bn": tv_vgg11_bn})
