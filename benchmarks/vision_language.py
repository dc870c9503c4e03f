"""VQA and NLVR (v1): the five models over seeds, against the prior / majority baseline.

Trains every model (uni:image, uni:text, intra, inter, I2M2) with ``vision_language``
experts, selects each run's epoch on the validation split and reports the test metric (mean
and std over seeds): the VQA score on VQA (easy-VQA by default), accuracy on NLVR (v1,
trained on the training examples at hand: 3,525 of the published ~75,000 with
``train_partial.json``, selected on dev). Then I2M2 with a modality removed, and on VQA-VS the
score of every model on each out-of-distribution test set. Prepares the data first unless the
prepared folder exists.

    python benchmarks/vision_language.py vqa --prepared data/vqa --seeds 0 1 2
    python benchmarks/vision_language.py vqa --dataset vqa-vs --raw VQA-VS --images COCO --prepared data/vqa-vs \
        --regime frozen_backbone --image-size 64
    python benchmarks/vision_language.py nlvr --raw ../shared/data/nlvr/nlvr1 --prepared data/nlvr --seeds 0 1 2
"""

import argparse
import time

import i2m2kit as ik
from i2m2kit import vision_language
from i2m2kit.cli import format_table
from i2m2kit.io import write_json_atomic
from i2m2kit.runner import prepare_data
from i2m2kit.tasks import nlvr, vqa


def load(args):
    """(data, build_model, recipe (an ``ik.Recipe``), metric, baseline on test) for the task."""
    shared = args.regime == "frozen_backbone"
    if args.task == "vqa":
        images = ("--images", args.images) if args.images else ()
        prepare_data("vqa", args.raw or vqa.easy_vqa_dir(), args.prepared,
                     args=("--dataset", args.dataset, "--min-answer-count", str(args.min_answer_count), *images))
        data = vqa.load(args.prepared, args.text_model, image_size=args.image_size, limit=args.n_train)
        return (data, lambda: vqa.build_model(data, fusion=args.fusion, shared_backbone=shared, image_model=args.image_model),
                vqa.recipe(args.epochs, args.regime, args.lr), "vqa_score", ("prior", vqa.prior_baseline(data)["test"]))
    prepare_data("nlvr", args.raw or "../shared/data/nlvr/nlvr1", args.prepared, args=("--downsample", str(args.downsample)))
    data = nlvr.load(args.prepared, args.text_model, downsample=args.downsample, limit=args.n_train)
    return (data, lambda: nlvr.build_model(data, fusion=args.fusion, shared_backbone=shared, image_model=args.image_model),
            nlvr.recipe(args.epochs, args.regime, args.lr), "accuracy", ("majority", nlvr.majority_baseline(data)["test"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=["vqa", "nlvr"])
    parser.add_argument("--raw", help="raw files (default: the installed easy-VQA; ../shared/data/nlvr/nlvr1)")
    parser.add_argument("--prepared", help="prepared folder, made if missing (default data/<task>)")
    parser.add_argument("--dataset", default="auto", choices=["auto", "easy-vqa", "vqa-v2", "vqa-vs"], help="VQA only")
    parser.add_argument("--images", help="VQA v2 / VQA-VS: the folder of COCO's train2014/, val2014/ (default --raw)")
    parser.add_argument("--min-answer-count", type=int, default=9, help="VQA v2 / VQA-VS: answer candidates seen this often")
    parser.add_argument("--image-size", type=int, default=32, help="VQA: pictures averaged down to this size")
    parser.add_argument("--downsample", type=int, default=5, choices=[1, 2, 5, 10], help="NLVR: image size 1/d")
    parser.add_argument("--text-model", default="auto", help=f"one of {vision_language.TEXT_MODELS}, or a transformers "
                                                             "checkpoint (hub name or folder)")
    parser.add_argument("--image-model", default="scratch", help="scratch, or a transformers vision checkpoint")
    parser.add_argument("--regime", default="joint", choices=["joint", "frozen_backbone", "pretrain_finetune"])
    parser.add_argument("--fusion", help="joint expert: attention, concat or product (default: concat for VQA, "
                                         "attention for NLVR)", choices=vision_language.FUSIONS)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--n-train", type=int, help="use only the first N training examples")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", help="also write the rows to this JSON file")
    args = parser.parse_args()
    args.prepared = args.prepared or f"data/{args.task}"
    args.fusion = args.fusion or ("concat" if args.task == "vqa" else "attention")

    data, build, recipe, metric, (baseline, baseline_value) = load(args)
    started = time.perf_counter()
    rows, trained = ik.compare_across_seeds(build, data.splits["train"], data.splits["valid"], data.splits["test"],
                                            seeds=args.seeds, recipe=recipe, device=args.device)
    seconds = time.perf_counter() - started
    removed = [ik.evaluate_missing(models["i2m2"], data.splits["test"], device=args.device) for models in trained]
    for i, r in enumerate(removed[0]):
        values = [m[i][metric] for m in removed]
        rows.append({"model": f"i2m2, {r['modalities']} only" if "+" not in r["modalities"] else "i2m2 (both)",
                     metric: sum(values) / len(values), f"{metric}_runs": values})
    rows.insert(0, {"model": baseline, metric: baseline_value})
    print(f"{args.task}: {data.text.model} text encoder, {args.image_model} image encoder, regime {args.regime}, "
          f"fusion {args.fusion}; "
          f"trained on {len(data.splits['train'])}, selected on {len(data.splits['valid'])}, "
          f"test {len(data.splits['test'])}; seeds {args.seeds}, {args.epochs} epochs, {seconds:.0f} s")
    print(format_table(rows, [("model", "model"), (metric, f"test {metric}"), (f"{metric}_std", "std"),
                              ("best_epoch", "best epoch (mean)")]))
    ood = {}
    if args.task == "vqa" and data.metadata.get("ood_sets"):  # VQA-VS: the mean over seeds per test set
        for name in trained[0]:
            per_seed = [vqa.ood_scores(ik.predict(models[name], data.splits["test"], device=args.device).probs, data)
                        for models in trained]
            ood[name] = {s: sum(r[s] for r in per_seed) / len(per_seed) for s in per_seed[0]}
        sets = list(ood["i2m2"])
        print("test VQA score in distribution (IID) and on each out-of-distribution set, mean over seeds:")
        print(format_table([{"model": m, **per} for m, per in ood.items()], [("model", "model")] + [(s, s) for s in sets]))
    if args.out:
        write_json_atomic({"args": vars(args), "rows": rows, "ood": ood, "seconds": seconds}, args.out)


if __name__ == "__main__":
    main()
