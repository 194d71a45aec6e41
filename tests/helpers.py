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
