"""Offline transformers tokenizer and image processor equal to open_clip's for CLIP-style models.

* :func:`build_tokenizer` builds a :class:`~transformers.CLIPTokenizer` from the BPE vocabulary that
  the ``open_clip_torch`` wheel ships (``open_clip/bpe_simple_vocab_16e6.txt.gz``), with no download.
  Token ids equal ``open_clip.get_tokenizer("ViT-B-32")(texts)`` **including padding**: open_clip pads
  with id 0 (the token ``"!"``), so the tokenizer's ``pad_token`` is ``"!"`` (id 0) rather than the
  ``<|endoftext|>`` padding of the OpenAI checkpoints on the Hub. Call it with
  ``padding="max_length", truncation=True`` for open_clip's fixed 77-token layout: ``<|startoftext|>``,
  up to 75 BPE tokens, ``<|endoftext|>``, zeros.
  Ordinary text is never a special token: transformers registers every named special token (``"!"``
  included) as an added token that would be cut out of the text before BPE, so the tokenizer is built
  with ``split_special_tokens=True`` (saved in ``tokenizer_config.json``, so ``AutoTokenizer`` keeps it):
  a literal ``"!"`` tokenizes as open_clip does (``"a red roof!"`` -> ``… 6449, 256, 49407``, ``"!!"``
  -> ``748``). ``<|startoftext|>``/``<|endoftext|>`` are still added by the post-processor. Padding is
  only what ``attention_mask`` marks 0; a real id-0 token (``"!"`` before other punctuation, e.g.
  ``"c!?"``) keeps mask 1. CLIP pools the text at the first ``<|endoftext|>`` under a causal mask, so the
  padding id does not change text embeddings either way.
  Exceptions: open_clip recognises its own markers ``<start_of_text>``/``<end_of_text>`` when they occur
  literally in a caption; here they are text like every other string, and transformers' CLIP word split
  keeps its markers ``<|startoftext|>``/``<|endoftext|>`` apart from adjacent punctuation (so
  ``"<|startoftext|>!"`` differs from open_clip by one token). ``decode(...,
  skip_special_tokens=True)`` drops id 0 (the pad id) also where it was a real ``"!"`` sub-word.
  Text cleaning: open_clip runs ``ftfy.fix_text`` and ``html.unescape`` before lower-casing; a
  transformers tokenizer cannot (its normaliser is NFC + whitespace collapse + lower-case). Plain text
  tokenizes identically; text with HTML entities (``&amp;``) or mojibake does not — pass it through
  :func:`clean_text` first for exact open_clip ids.
* :func:`build_image_processor` returns a :class:`~transformers.CLIPImageProcessor` configured like
  open_clip's eval transform for an architecture (bicubic resize of the shortest side, center crop,
  mean/std from the model's ``preprocess_cfg``).
* :func:`build_clip_processor` joins both in a :class:`~transformers.CLIPProcessor`.

Example:
    >>> from hqrs.modeling.open_clip_processing import build_tokenizer
    >>> tok = build_tokenizer()
    >>> ids = tok(["Many planes are parked next to a long building."], padding="max_length", truncation=True)
    >>> ids["input_ids"][0][:4], len(ids["input_ids"][0]), tok.pad_token_id
    ([49406, 1346, 12581, 631], 77, 0)
"""

from __future__ import annotations

import gzip
from dataclasses import asdict
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from transformers import CLIPImageProcessor, CLIPProcessor, CLIPTokenizer

__all__ = [
    "BOS_TOKEN",
    "EOS_TOKEN",
    "PAD_TOKEN",
    "build_clip_processor",
    "build_image_processor",
    "build_tokenizer",
    "clean_text",
    "open_clip_preprocess_cfg",
]

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "!"  # id 0: open_clip pads token tensors with zeros
_VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
# open_clip's SimpleTokenizer keeps the first 49152 - 256 - 2 merges of the file.
_N_MERGES = 49152 - 256 - 2


def clean_text(text: str) -> str:
    """open_clip's own ``basic_clean`` (``ftfy.fix_text`` + double ``html.unescape``, then strip).

    The tokenizer itself collapses whitespace and lower-cases, so ``tok(clean_text(t))`` gives exactly
    ``open_clip.get_tokenizer(...)([t])`` ids for any text.
    """
    from open_clip.tokenizer import basic_clean

    return basic_clean(text)


@lru_cache(maxsize=1)
def _vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    # open_clip's byte <-> printable-unicode table: the vocabulary file is written in it
    from open_clip.tokenizer import bytes_to_unicode

    source = resources.files("open_clip").joinpath(_VOCAB_FILE)
    if not source.is_file():
        raise FileNotFoundError(
            f"open_clip's BPE vocabulary {_VOCAB_FILE!r} is missing from the installed open_clip_torch; "
            "reinstall it with `pip install --force-reinstall open_clip_torch`"
        )
    with source.open("rb") as fh:
        lines = gzip.decompress(fh.read()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _N_MERGES + 1]]
    byte_tokens = list(bytes_to_unicode().values())
    tokens = byte_tokens + [t + "</w>" for t in byte_tokens] + ["".join(m) for m in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    return {t: i for i, t in enumerate(tokens)}, merges


def build_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    """A :class:`~transformers.CLIPTokenizer` with open_clip's vocabulary, ids and padding (see module doc).

    Args:
        model_max_length: open_clip's ``context_length`` (77 for every CLIP/CoCa config).

    Example:
        >>> tok = build_tokenizer()
        >>> tok.decode(tok("Two Tennis courts")["input_ids"], skip_special_tokens=True)
        'two tennis courts'
    """
    from transformers import CLIPTokenizer

    if not isinstance(model_max_length, int) or model_max_length < 2:
        raise ValueError(f"model_max_length must be an int >= 2, got {model_max_length!r}")
    vocab, merges = _vocab_and_merges()
    tokenizer = CLIPTokenizer(
        vocab=dict(vocab),
        merges=list(merges),
        unk_token=EOS_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=model_max_length,
        # "!" (the pad) is an ordinary BPE token: never cut it, or any special string, out of the text.
        split_special_tokens=True,
    )
    return tokenizer


def open_clip_preprocess_cfg(model_name: str) -> dict:
    """open_clip's eval preprocessing settings for ``model_name`` (``size``, ``mean``, ``std``, ...).

    The same values ``open_clip.create_model_and_transforms(model_name, pretrained=None)`` uses:
    open_clip's ``PreprocessCfg`` defaults with ``size`` set to the vision tower's ``image_size``.
    """
    import open_clip
    from open_clip.transform import PreprocessCfg

    cfg = open_clip.get_model_config(model_name)
    if cfg is None:
        raise ValueError(
            f"unknown open_clip architecture {model_name!r}; see open_clip.list_models() for the names"
        )
    merged = asdict(PreprocessCfg())
    merged["size"] = cfg.get("vision_cfg", {}).get("image_size", merged["size"])
    return merged


def build_image_processor(model_name: str, backend: str = "torchvision") -> CLIPImageProcessor:
    """A :class:`~transformers.CLIPImageProcessor` equal to open_clip's eval transform for ``model_name``.

    Resize the shortest side to ``image_size`` (bicubic), center-crop ``image_size²``, rescale to
    [0, 1], normalise with the architecture's mean/std. Only open_clip's default ``resize_mode
    ='shortest'`` has a transformers equivalent; other modes raise ``ValueError``.

    ``backend="pil"`` returns ``CLIPImageProcessorPil``, which resizes with PIL exactly as open_clip
    does (bit-identical pixels); the default ``"torchvision"`` backend (what ``AutoProcessor`` picks
    unless given ``backend="pil"``) resizes with torch and differs by at most one 8-bit level
    (≤ 0.0151 after normalisation) on resized images. Both backends center-crop at
    ``(size - crop) // 2`` while torchvision rounds half to even: when the resized long side minus
    the crop size is ≡ 3 (mod 4) (e.g. a 884×977 image at 224) the crop sits one pixel earlier than
    open_clip's along that axis. Square images (all UCM, RSICD, AID, Sydney tiles) are unaffected.

    Example:
        >>> crop = build_image_processor("ViT-L-14-336").crop_size
        >>> crop.height, crop.width
        (336, 336)
    """
    from transformers import CLIPImageProcessor
    from transformers.image_utils import PILImageResampling
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    classes = {"torchvision": CLIPImageProcessor, "pil": CLIPImageProcessorPil}
    if backend not in classes:
        raise ValueError(f"backend must be one of {sorted(classes)}, got {backend!r}")
    cfg = open_clip_preprocess_cfg(model_name)
    size = cfg["size"]
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise ValueError(
                f"{model_name!r}: non-square image size {tuple(size)} has no CLIPImageProcessor form"
            )
        size = size[0]
    if cfg.get("resize_mode", "shortest") != "shortest":
        raise ValueError(
            f"{model_name!r} uses open_clip resize_mode={cfg['resize_mode']!r}; only 'shortest' maps to "
            "CLIPImageProcessor"
        )
    resample = {"bicubic": PILImageResampling.BICUBIC, "bilinear": PILImageResampling.BILINEAR}.get(
        cfg.get("interpolation", "bicubic")
    )
    if resample is None:
        raise ValueError(f"{model_name!r}: interpolation {cfg['interpolation']!r} is not supported")
    return classes[backend](
        do_resize=True,
        size={"shortest_edge": int(size)},
        resample=resample,
        do_center_crop=True,
        crop_size={"height": int(size), "width": int(size)},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(cfg["mean"]),
        image_std=list(cfg["std"]),
        do_convert_rgb=True,
    )


def build_clip_processor(model_name: str) -> CLIPProcessor:
    """:class:`~transformers.CLIPProcessor` = :func:`build_image_processor` + :func:`build_tokenizer`.

    Example:
        >>> proc = build_clip_processor("ViT-B-32")
        >>> type(proc.tokenizer).__name__, proc.image_processor.size.shortest_edge
        ('CLIPTokenizer', 224)
    """
    import open_clip
    from transformers import CLIPProcessor

    cfg = open_clip.get_model_config(model_name)
    if cfg is None:
        raise ValueError(
            f"unknown open_clip architecture {model_name!r}; see open_clip.list_models() for the names"
        )
    context_length = cfg.get("text_cfg", {}).get("context_length", 77)
    return CLIPProcessor(
        image_processor=build_image_processor(model_name),
        tokenizer=build_tokenizer(model_max_length=context_length),
    )
