"""A miniature NLVR2 folder for the tests: real JSON lines, tiny generated photographs.

``dev.json`` and ``test1.json`` hold the first lines of the real files; ``train.json`` holds
later dev lines with their identifiers renamed ``train-...`` and a ``directory`` field, as the
published training file has. Each picture is a 40 x 30 PNG of one colour, different for every
picture, stored in the published layout: ``images/train/<directory>/<pair>-img0.png`` (left),
``...-img1.png`` (right), ``images/dev/...``, ``images/test1/...``.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

FOLDERS = {"train.json": "train", "dev.json": "dev", "test1.json": "test1"}


def colour(k: int, side: int) -> tuple[int, int, int]:
    """The colour of picture ``k`` (a running count of pairs), left (0) or right (1): the blue
    channel tells the side (20 left, 220 right), red and green the pair."""
    return (37 * k + 11) % 256, (91 * k + 5) % 256, 20 + 200 * side


def make_nlvr2(shared_data: Path, root: Path, n: int = 24, n_train: int = 48,
               with_images: bool = True) -> tuple[Path, dict[str, tuple[tuple, tuple]]]:
    """Write the folder ``root``; return it and each identifier's (left, right) colours."""
    source = Path(shared_data) / "nlvr" / "nlvr2"
    root.mkdir(parents=True, exist_ok=True)
    dev = (source / "dev.json").read_text(encoding="utf-8").splitlines()
    test = (source / "test1.json").read_text(encoding="utf-8").splitlines()
    train = []
    for line in dev[n:n + n_train]:
        x = json.loads(line)
        x["identifier"] = "train-" + x["identifier"].split("-", 1)[1]
        x["directory"] = int(x["identifier"].split("-")[1]) % 4
        train.append(json.dumps(x))
    files = {"train.json": train, "dev.json": dev[:n], "test1.json": test[:n]}
    colours, pairs = {}, {}
    for name, rows in files.items():
        (root / name).write_text("\n".join(rows) + "\n", encoding="utf-8")
        for row in rows:
            x = json.loads(row)
            pair = x["identifier"].rsplit("-", 1)[0]
            if pair not in pairs:
                k = len(pairs)
                pairs[pair] = (colour(k, 0), colour(k, 1))
                if with_images:
                    folder = root / "images" / FOLDERS[name] / str(x.get("directory", ""))
                    folder.mkdir(parents=True, exist_ok=True)
                    for side in (0, 1):
                        Image.new("RGB", (40, 30), pairs[pair][side]).save(folder / f"{pair}-img{side}.png")
            colours[x["identifier"]] = pairs[pair]
    return root, colours


def image_path(root: Path, identifier: str, side: int, directory: str = "") -> Path:
    """Where ``make_nlvr2`` put a picture."""
    split = identifier.split("-")[0]
    return root / "images" / split / directory / f"{identifier.rsplit('-', 1)[0]}-img{side}.png"
