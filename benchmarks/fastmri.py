"""fastMRI knee: training and inference speed of I2M2 (three PreAct-ResNet18) in slices per second.

Times one training epoch (the second of two: the first pays for warm-up) of each expert alone
(uni:magnitude, uni:phase, inter) and of I2M2 on the same slices and batches, with mixed
precision on a GPU (bfloat16 where supported), and I2M2's inference; prints slices per second
and the ratio of I2M2's epoch time to the sum of its three experts' (a product of experts
should cost no more than its experts). On a GPU the slices live in GPU memory, so the numbers
measure the model, not the disk.

Speed does not depend on what the slices show: without ``--data`` the slices are random
(320 x 320 float16, as prepared); with it, the first ``--slices`` training slices of a
prepared folder.

    python benchmarks/fastmri.py                                    # GPU: full size, 512 slices
    python benchmarks/fastmri.py --width 8 --downsample 4 --slices 64   # a small CPU run (seconds)
    python benchmarks/fastmri.py --data data/fastmri --slices 2048
"""

import argparse
import functools
import time

import torch

import i2m2kit as ik
from i2m2kit.cli import format_table
from i2m2kit.io import write_json_atomic
from i2m2kit.tasks import fastmri


def slices(args: argparse.Namespace) -> ik.TensorData:
    """``args.slices`` training slices: from a prepared folder, or random ones of the prepared shape."""
    if args.data:
        train = fastmri.load(args.data, downsample=args.downsample, splits=("train",))["train"]
        keep = list(range(min(args.slices, len(train))))
        inputs, targets = train[keep]
        return ik.TensorData({m: x.clone() for m, x in inputs.items()}, targets.clone())
    size = 320 // args.downsample
    g = torch.Generator().manual_seed(0)
    inputs = {m: torch.rand(args.slices, 1, size, size, generator=g).half() for m in fastmri.MODALITIES}
    return ik.TensorData(inputs, (torch.rand(args.slices, len(fastmri.LABELS), generator=g) < 0.3).float())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def epoch_seconds(model: ik.I2M2, data: ik.TensorData, args: argparse.Namespace, device: torch.device) -> float:
    times = []
    for epoch in range(2):
        _sync(device)
        started = time.perf_counter()
        ik.fit(model, data, epochs=1, batch_size=args.batch_size, device=device, amp=not args.no_amp,
               progress=False, seed=epoch, optimizer=functools.partial(torch.optim.AdamW, lr=1e-4))
        _sync(device)
        times.append(time.perf_counter() - started)
    return times[-1]


def inference_seconds(model: ik.I2M2, data: ik.TensorData, args: argparse.Namespace, device: torch.device) -> float:
    times = []
    for _ in range(2):
        _sync(device)
        started = time.perf_counter()
        ik.predict(model, data, batch_size=4 * args.batch_size, device=device, amp=not args.no_amp)
        _sync(device)
        times.append(time.perf_counter() - started)
    return times[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="prepared fastMRI folder (default: random slices of the same shape)")
    parser.add_argument("--slices", type=int, default=512, help="training slices per epoch (default 512)")
    parser.add_argument("--width", type=int, default=64, help="ResNet width (64: PreAct-ResNet18 as published)")
    parser.add_argument("--downsample", type=int, default=1, help="pool the 320 x 320 images by this factor")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-amp", action="store_true", help="full precision on the GPU too")
    parser.add_argument("--out", help="also write the numbers to this JSON file")
    args = parser.parse_args()
    device = ik.resolve_device(args.device)
    data = slices(args)
    if device.type == "cuda":  # no host-to-device copies in the timed loop
        data = ik.TensorData({m: x.to(device) for m, x in data.inputs.items()}, data.targets.to(device))
    size = tuple(data.inputs["magnitude"].shape[-2:])
    precision = "fp32" if args.no_amp or device.type != "cuda" else (
        "bf16" if torch.cuda.is_bf16_supported() else "fp16")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} thread(s)"
    print(f"{len(data)} slices {size}, width {args.width}, batch {args.batch_size}, {precision}, on {name}")

    torch.manual_seed(0)
    model = fastmri.build_model(width=args.width)
    rows = []
    for expert in model.experts:
        seconds = epoch_seconds(model.subset(expert), data, args, device)
        rows.append({"model": f"expert {expert} alone", "train_s": seconds, "train_slices_per_s": len(data) / seconds})
    seconds = epoch_seconds(model, data, args, device)
    inference = inference_seconds(model, data, args, device)
    rows.append({"model": "i2m2", "train_s": seconds, "train_slices_per_s": len(data) / seconds,
                 "predict_slices_per_s": len(data) / inference})
    print(format_table(rows, [("model", "model"), ("train_s", "epoch s"), ("train_slices_per_s", "train slices/s"),
                              ("predict_slices_per_s", "predict slices/s")]))
    ratio = seconds / sum(r["train_s"] for r in rows[:-1])
    print(f"ratio I2M2 epoch / (sum of the three experts alone): {ratio:.3f}")
    if device.type == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")
    if args.out:
        write_json_atomic({"args": vars(args), "device": name, "precision": precision, "rows": rows,
                           "ratio_i2m2_to_experts": ratio}, args.out)


if __name__ == "__main__":
    main()
