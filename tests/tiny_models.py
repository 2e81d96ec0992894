"""Tiny HQRS-CLIP and RS-CoCa folders for tests: real transformers models from small configs,
with the offline open_clip tokenizer and image processor (no download)."""

from __future__ import annotations

from pathlib import Path

import torch


def tiny_clip_dir(out: Path, image_size: int = 32) -> Path:
    """Save a random-init 2-layer ``CLIPModel`` and its processor (``image_size`` px) to ``out``."""
    from transformers import CLIPConfig, CLIPModel

    from hqrs.modeling.open_clip_processing import build_clip_processor

    torch.manual_seed(0)
    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    text = dict(
        tower,
        max_position_embeddings=77,
        vocab_size=49408,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=0,
    )
    vision = dict(tower, image_size=image_size, patch_size=8)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    processor = build_clip_processor("ViT-B-32")
    processor.image_processor.size = {"shortest_edge": image_size}
    processor.image_processor.crop_size = {"height": image_size, "width": image_size}
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def tiny_coca_dir(out: Path, image_size: int = 32) -> Path:
    """Save a random-init 1-layer RS-CoCa (remote-code folder) and its processor to ``out``."""
    from hqrs.modeling.configuration_rs_coca import RSCoCaConfig
    from hqrs.modeling.convert_rs_coca import save_hf_coca
    from hqrs.modeling.modeling_rs_coca import RSCoCaModel
    from hqrs.modeling.open_clip_processing import build_image_processor, build_tokenizer
    from hqrs.modeling.processing_rs_coca import RSCoCaProcessor

    torch.manual_seed(0)
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4)
    config = RSCoCaConfig(
        vision_config=dict(
            small,
            hidden_size=64,
            intermediate_size=128,
            image_size=image_size,
            patch_size=8,
            pooler_hidden_size=32,
            attn_pooler_queries=8,
            attn_pooler_heads=4,
        ),
        text_config=small,
        multimodal_config=small,
        projection_dim=32,
    )
    image_processor = build_image_processor("coca_ViT-B-32")
    image_processor.size = {"shortest_edge": image_size}
    image_processor.crop_size = {"height": image_size, "width": image_size}
    processor = RSCoCaProcessor(image_processor, build_tokenizer(model_max_length=76))
    save_hf_coca(RSCoCaModel(config).eval(), processor, out)
    return out
