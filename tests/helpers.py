"""Test helpers shared across the layers' test folders (``from helpers import ...``; tests/ is on the path)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from snnconv_ext.core.nodes import spiking_modules


def small_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(16 * 2 * 2, 32), nn.ReLU(), nn.Linear(32, 10))


class Payload:
    """Pickles to 'open(marker, "w")': a file that runs code when unpickled without weights_only."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def run_both_backends(sj_net, st_net, x, T):
    """Simulate a SpikingJelly and an snnTorch conversion of one model for T steps; return both outputs
    ``[T, B, classes]`` and, per spiking layer, whether the two emitted identical spike trains."""
    import snntorch.utils
    from snnconv_ext.core.simulation import simulate_net

    spikes_sj, spikes_st = [], []
    hooks = [m.register_forward_hook(lambda m, i, o: spikes_sj.append(o)) for m in spiking_modules(sj_net).values()]
    hooks += [m.register_forward_hook(lambda m, i, o: spikes_st.append(o)) for m in spiking_modules(st_net).values()]
    a = torch.cat(list(simulate_net(sj_net, x, T, chunk=T)))
    snntorch.utils.reset(st_net)
    b = torch.stack([st_net(x) for _ in range(T)]).cumsum(0)
    for h in hooks:
        h.remove()
    n = len(spikes_sj)
    same = [torch.equal(spikes_sj[k], torch.stack(spikes_st[k::n])) for k in range(n)]
    return a, b, same


class FunctionalReLU(nn.Module):
    """A layer whose activation is called as a function (``F.relu``): the converter refuses it by name."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return F.relu(self.fc(x))
TORCHVISION_ARCHS = ["resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "vgg11_bn", "vgg16", "squeezenet1_1",
                     "densenet121", "mobilenet_v2", "mnasnet1_0", "googlenet", "shufflenet_v2_x1_0", "regnet_y_400mf"]


def fmnist32(n: int = 256, extra: int = 8):
    """The first ``n`` Fashion-MNIST training images at 3x32x32 (bilinear resize, the channel repeated) for BN statistics
    and calibration, and the next ``extra`` to measure on (issue 29's torchvision table)."""
    from snnconv_ext import data
    x = data.fashion_mnist32("train").tensors[0][:n + extra].contiguous()
    return x[:n], x[n:]


def torchvision_model(name: str, x: torch.Tensor) -> nn.Module:
    """``torchvision.models.<name>(num_classes=10)``, randomly initialised (seed 0; GoogLeNet without its auxiliary
    heads), its BatchNorm statistics the plain average over ``x`` (train mode, momentum None), in eval mode."""
    import torchvision
    torch.manual_seed(0)
    kw = dict(aux_logits=False, init_weights=True) if name == "googlenet" else {}
    model = getattr(torchvision.models, name)(num_classes=10, weights=None, **kw)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None
            m.reset_running_stats()
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()
