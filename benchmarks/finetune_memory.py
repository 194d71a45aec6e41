"""Peak memory of SNN fine-tuning (Datta & Beerel Sec. V, Fig. 3b) for T = 1..4 on the zoo Net4.

Each T runs in a fresh process: convert fmnist-net4 with ``datta`` for T, fine-tune a few batches, and report the
peak resident memory (CPU, ``ru_maxrss``) or the peak allocated CUDA memory, before and during fine-tuning.

    python benchmarks/finetune_memory.py [--model fmnist-net4] [--batch-size 64] [--batches 5] [--device cpu]
"""
import argparse
import json
import resource
import subprocess
import sys


def child(model: str, T: int, batch_size: int, batches: int, device: str) -> dict:
    import torch
    import snnconv_ext as sc
    from snnconv_ext import data, zoo
    train = data.fashion_mnist("train")
    calib = data.loader(data.subset(train, 128, seed=0), batch_size=128)  # small, so conversion's peak stays low
    snn = sc.convert(zoo.load(model), "datta", calib, T=T, progress=False, device=torch.device(device))
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.max_memory_allocated()
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    info = sc.finetune(snn, train, T=T, epochs=1, batch_size=batch_size, max_batches=batches, progress=False,
                       device=torch.device(device))
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"T": T, "peak_mib": peak / 2**20, "before_mib": before / 2**20,
            "seconds_per_batch": info["seconds"] / max(info["batches"], 1), "device": device}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="fmnist-net4")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--batches", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--timesteps", default="1,2,3,4")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child is not None:
        print(json.dumps(child(a.model, a.child, a.batch_size, a.batches, a.device)))
        return
    print(f"{'T':>2} {'peak MiB':>9} {'after conversion MiB':>21} {'s/batch':>8}")
    for T in [int(t) for t in a.timesteps.split(",")]:
        out = subprocess.run([sys.executable, __file__, "--child", str(T), "--model", a.model, "--batch-size",
                              str(a.batch_size), "--batches", str(a.batches), "--device", a.device],
                             capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(f"{T:>2} {r['peak_mib']:>9.0f} {r['before_mib']:>21.0f} {r['seconds_per_batch']:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
