"""One training run on simulated data, driven from the command line: the process that the
multi-process (torchrun) and crash (SIGKILL) tests start. Rank 0 writes ``result.json``
(history, validation and test metrics) and ``state.pt`` (the final state_dict) to --out."""

import argparse
import functools
import json
from pathlib import Path

import torch

import i2m2kit as ik
from i2m2kit import distributed
from i2m2kit.tasks import synthetic


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=63)
    parser.add_argument("--regime", default="pretrain_finetune")
    parser.add_argument("--checkpoint-dir")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()

    sim = ik.SelectionModel(n_classes=2, dims=(6, 6), intra=(1.0, 1.0), inter=3.0, seed=0)
    train, valid, test = (synthetic.dataset(sim.sample(n)) for n in (args.n_train, 1000, 2000))
    torch.manual_seed(0)
    model = synthetic.build_model(sim.dims, sim.n_classes, hidden=16)
    result = ik.fit(model, train, valid, epochs=args.epochs, pretrain_epochs=1, regime=args.regime,
                    batch_size=args.batch_size, optimizer=functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9),
                    clip_grad_norm=5.0, monitor="accuracy", seed=3, progress=False,
                    checkpoint_dir=args.checkpoint_dir, resume=args.resume)
    test_metrics = ik.evaluate(model, test)  # every rank takes part; each gets the same numbers
    if distributed.is_main():
        args.out.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), args.out / "state.pt")
        (args.out / "result.json").write_text(json.dumps(
            {"history": result.history, "best": result.best, "test": test_metrics,
             "world_size": distributed.world_size()}))


if __name__ == "__main__":
    main()
