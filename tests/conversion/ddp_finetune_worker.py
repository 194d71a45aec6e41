"""Worker for tests/test_finetune.py::test_torchrun_two_processes: convert a tiny seeded net, fine-tune it for one
epoch on a fixed data set with global batch 16, and (rank 0) save the result. Run under torchrun."""
import sys

import torch
import torch.nn as nn

import snnconv_ext as sc


def tiny_problem(n: int = 64, seed: int = 0):
    """A seeded two-class problem and a small ReLU MLP that half-solves it."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, :4].sum(1) > x[:, 4:].sum(1)).long()
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(30):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net.eval(), x, y


if __name__ == "__main__":
    torch.set_num_threads(1)
    net, x, y = tiny_problem()
    snn = sc.convert(net, "max", [x], progress=False)
    sc.finetune(snn, (x, y), T=2, epochs=1, lr=1e-2, batch_size=16, progress=False)
    if int(__import__("os").environ.get("RANK", "0")) == 0:
        torch.save({k: v.detach() for k, v in snn.state_dict().items()}, sys.argv[1])
