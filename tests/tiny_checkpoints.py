"""Tiny randomly initialised ``transformers`` checkpoints written with ``save_pretrained``: a
BERT-like text model with its tokenizer, a ViT-like image model with its processor, a
CLIP-like dual encoder with both. Loaded by path, they stand in for hub checkpoints with no
network."""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = ("a the is are of on in left right there one two three red blue green yellow black circle square "
         "triangle box tower touching wall above below what color shape how many yes no").split()
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tokenizer(folder: Path):
    from transformers import BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(SPECIAL + WORDS) + "\n")
    return BertTokenizer(str(folder / "vocab.txt"))


def write_bert(folder: Path, hidden: int = 16, seed: int = 0) -> Path:
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    tokenizer(folder).save_pretrained(folder)
    BertModel(BertConfig(vocab_size=len(SPECIAL) + len(WORDS), hidden_size=hidden, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=64)
              ).save_pretrained(folder)
    return folder


def write_vit(folder: Path, hidden: int = 16, size: int = 32, seed: int = 0) -> Path:
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(seed)
    ViTModel(ViTConfig(hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2, intermediate_size=2 * hidden,
                       image_size=size, patch_size=8), add_pooling_layer=False).save_pretrained(folder)
    ViTImageProcessor(size={"height": size, "width": size}, image_mean=[0.4, 0.5, 0.6],
                      image_std=[0.2, 0.25, 0.3]).save_pretrained(folder)
    return folder


def write_clip(folder: Path, hidden: int = 16, size: int = 32, seed: int = 0) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(seed)
    vocab = len(SPECIAL) + len(WORDS)
    config = CLIPConfig(
        text_config=dict(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=2 * hidden, max_position_embeddings=64, bos_token_id=2, eos_token_id=3,
                         pad_token_id=0),
        vision_config=dict(hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=2 * hidden, image_size=size, patch_size=8),
        projection_dim=8)
    CLIPModel(config).save_pretrained(folder)
    tokenizer(folder).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(folder)
    return folder
