"""What an AV-MNIST I2M2 training step costs in other numerical set-ups, against the plain one.

One SGD step of I2M2 (``ik.train_step``, the step ``fit`` takes; the published widths, batch
40, random inputs of the AV-MNIST shapes) in float32, with channels-last tensors, under
bfloat16 autocast, and (``--compile``) through ``torch.compile``. The variants take turns, a few steps each per round, and each keeps its
best round; printed as milliseconds per step and as a ratio to float32 (below 1 is faster).
Only float32 is what ``fit`` does on a CPU; the others are candidates, measured here before
anyone adopts one (autocast changes the numbers, compile costs minutes of compiling).

    python benchmarks/step_variants.py [--device auto] [--steps 20] [--rounds 3] [--compile]
"""

import argparse
import time

import torch

import i2m2kit as ik
from i2m2kit.tasks import avmnist


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=40)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile)")
    args = parser.parse_args()
    device = ik.resolve_device(args.device)
    torch.manual_seed(0)
    inputs = {"image": torch.rand(args.batch_size, 1, 28, 28, device=device),
              "audio": torch.rand(args.batch_size, 1, 112, 112, device=device)}
    targets = torch.randint(0, avmnist.N_CLASSES, (args.batch_size,), device=device)

    def variant(channels_last=False, autocast=False, compiled=False):
        model = avmnist.build_model().to(device)
        batch = inputs
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
            batch = {m: x.contiguous(memory_format=torch.channels_last) for m, x in inputs.items()}
        if compiled:
            for expert in model.experts.values():
                expert.net = torch.compile(expert.net)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)

        def step():  # amp=False: float32, as fit on a CPU; a dtype: autocast to it on any device
            ik.train_step(model, batch, targets, opt, amp=torch.bfloat16 if autocast else False)
        step()  # warm-up (and, compiled, the compiling)
        return step

    builders = {"float32": {}, "channels_last": {"channels_last": True}, "bfloat16 autocast": {"autocast": True}}
    if args.compile:
        builders["torch.compile"] = {"compiled": True}
    steps = {}
    for name, options in builders.items():
        started = time.perf_counter()
        steps[name] = variant(**options)
        print(f"{name}: ready in {time.perf_counter() - started:.1f} s", flush=True)
    best = {name: float("inf") for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            for _ in range(args.steps):
                step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            best[name] = min(best[name], (time.perf_counter() - started) / args.steps)
    print(f"ms per I2M2 training step (batch {args.batch_size}, {device}, {torch.get_num_threads()} threads, "
          f"best of {args.rounds} rounds of {args.steps} steps):")
    for name, seconds in best.items():
        print(f"  {name:18s} {1000 * seconds:8.2f}  ratio to float32 {seconds / best['float32']:.3f}")


if __name__ == "__main__":
    main()
