"""HQRS-CLIP and RS-CoCa as Hugging Face transformers models (``hqrs.modeling``)."""
