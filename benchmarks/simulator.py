"""Sampling throughput of the selection-variable simulator, against torch.randn.

Prints accepted samples per second and the ratio of the sampler's time to the time
torch.randn takes to draw the same number of floats (the samples' x and x' coordinates),
both measured in this run. Target: a ratio under 3 at one million samples.

    python benchmarks/simulator.py [--n 1000000] [--device auto] [--repeats 3]
"""

import argparse
import time

import torch

import i2m2kit as ik


def best_time(fn, repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dims", type=int, nargs=2, default=(16, 16))
    parser.add_argument("--classes", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = ik.resolve_device(args.device)
    sim = ik.SelectionModel(n_classes=args.classes, dims=args.dims, seed=0, device=device)
    sim.sample(10_000)  # warm-up
    batch = sim.sample(args.n)
    t_sample = best_time(lambda: sim.sample(args.n), args.repeats, device)
    floats = args.n * sum(args.dims)
    t_randn = best_time(lambda: torch.randn(floats, device=device), args.repeats, device)
    print(f"device {device}, {args.n:,} accepted samples of dims {tuple(args.dims)}, "
          f"acceptance {batch.acceptance:.3f}")
    print(f"sampler:     {t_sample:.3f} s  ({args.n / t_sample:,.0f} accepted samples/s)")
    print(f"torch.randn: {t_randn:.3f} s  for the same {floats:,} floats")
    print(f"ratio sampler / randn: {t_sample / t_randn:.2f}  (target < 3)")


if __name__ == "__main__":
    main()
