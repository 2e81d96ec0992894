"""Zero-shot classification, image-text retrieval and caption metrics (``hqrs.evaluation``)."""

from pathlib import Path


def caption_metrics_path() -> str:
    """Folder of the ``rs_caption_metrics`` ``evaluate`` module: ``evaluate.load(caption_metrics_path())``."""
    return str(Path(__file__).resolve().parent / "rs_caption_metrics")


__all__ = ["caption_metrics_path"]
