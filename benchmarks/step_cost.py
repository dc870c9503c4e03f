"""The cost of a product of experts, on simulated data with MLP experts (seconds to run).

Prints seconds per training epoch of each expert alone and of I2M2 on the same batches, the
ratio of I2M2's epoch to the sum of its experts' (aim: at most 1.05: the product should cost
no more than its experts), and I2M2's epoch fed by a standard per-example DataLoader over
the same arrays against the in-memory tensor path that `fit` uses. For the convolutional
experts of AV-MNIST: benchmarks/avmnist.py --timing-only.

    python benchmarks/step_cost.py [--n 50000] [--batch-size 64] [--hidden 64] [--device auto]
"""

import argparse

import torch

import i2m2kit as ik
from i2m2kit.tasks import synthetic
from timing import report_epoch_cost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = ik.resolve_device(args.device)
    sim = ik.SelectionModel(n_classes=2, dims=(8, 8), intra=(1.0, 1.0), inter=2.0, seed=0)
    train = synthetic.dataset(sim.sample(args.n))
    torch.manual_seed(0)
    report_epoch_cost(synthetic.build_model(sim.dims, 2, hidden=args.hidden), train, args.batch_size, device,
                      args.repeats)


if __name__ == "__main__":
    main()
