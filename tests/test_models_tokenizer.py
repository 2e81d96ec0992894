"""Ordinary text is never a special token (#11.1): ids equal open_clip's for any text, padding from the mask.

The pad id 0 is also the BPE token ``"!"``; a tokenizer that registers ``"!"`` as a special token turns
every literal ``"!"`` into padding. Checked on every whole-word vocabulary entry, every ``rs_real`` caption and
punctuation-heavy strings, with and without ``padding="max_length"``, in memory and after a save/load.
"""

from __future__ import annotations

import open_clip
import pytest
import torch
from open_clip.tokenizer import bytes_to_unicode
from transformers import AutoTokenizer

from hqrs.modeling.open_clip_processing import (
    _vocab_and_merges,
    build_tokenizer,
    clean_text,
)
from tests.test_open_clip_processing import _all_captions

PUNCTUATION = [
    "!",
    "!!",
    "!!!",
    "?!",
    "!?",
    "a red roof!",
    "a red roof !",
    "a,b;c!?..",
    "wow!!! planes?!",
    "!abc",
    "(!)",
    "roads -- !!",
    "🛩️ planes 🛩️!",
    "ships ⛵⛵!?",
    "100% !important",
    "a\t!\n!",
    "<|endoftext|> is text",
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def oc_tokenizer():
    return open_clip.get_tokenizer("ViT-B-32")


def _whole_words() -> list[str]:
    """Every ``…</w>`` vocabulary entry as the text it stands for (entries that are not whole UTF-8 are skipped)."""
    to_byte = {v: k for k, v in bytes_to_unicode().items()}
    words = []
    for token in _vocab_and_merges()[0]:
        if token.endswith("</w>"):
            try:
                words.append(bytes(to_byte[c] for c in token[:-4]).decode("utf-8"))
            except UnicodeDecodeError:
                continue  # a partial multi-byte sequence: no text tokenizes to it alone
    return words


def _assert_same(tokenizer, oc_tokenizer, texts: list[str]) -> None:
    ref = oc_tokenizer(texts)
    padded = tokenizer(texts, padding="max_length", truncation=True, return_tensors="pt")
    differ = (ref != padded.input_ids).any(dim=1).nonzero().flatten().tolist()
    assert differ == [], [(texts[i], padded.input_ids[i][:8].tolist()) for i in differ[:5]]
    # padding is exactly what the mask marks 0: everything after the first <|endoftext|>
    eot = (ref == tokenizer.eos_token_id).int().argmax(dim=1)
    assert torch.equal(padded.attention_mask.bool(), torch.arange(ref.shape[1])[None] <= eot[:, None])
    unpadded = tokenizer(texts, truncation=True)["input_ids"]
    for i, ids in enumerate(unpadded):
        assert ids == ref[i, : int(eot[i]) + 1].tolist(), texts[i]


def test_literal_exclamation_marks_are_bpe_tokens(tokenizer):
    assert tokenizer("a red roof!")["input_ids"] == [49406, 320, 736, 6449, 256, 49407]
    assert tokenizer("!!")["input_ids"] == [49406, 748, 49407]
    enc = tokenizer(["a!"], padding="max_length")
    assert enc["input_ids"][0][:5] == [49406, 320, 256, 49407, 0]
    assert enc["attention_mask"][0][:5] == [1, 1, 1, 1, 0]


def test_punctuation_and_emoji_equal_open_clip(tokenizer, oc_tokenizer):
    _assert_same(tokenizer, oc_tokenizer, PUNCTUATION)
    # a real id-0 token ("!" before other punctuation) stays a real token: mask 1
    enc = tokenizer(["a,b;c!?.."], padding="max_length")
    assert 0 in enc["input_ids"][0][:8] and sum(enc["attention_mask"][0]) == 9


def test_every_whole_word_of_the_vocabulary_equals_open_clip(tokenizer, oc_tokenizer):
    words = _whole_words()
    assert len(words) > 34_000
    ftfy_changed = [w for w in words if clean_text(w) != w]
    # the documented exception: control characters ftfy removes (28 one-byte entries); clean_text closes it
    assert len(ftfy_changed) <= 40 and all(len(w) == 1 for w in ftfy_changed)
    _assert_same(tokenizer, oc_tokenizer, [w for w in words if clean_text(w) == w])
    ref = oc_tokenizer(ftfy_changed)
    got = tokenizer([clean_text(w) for w in ftfy_changed], padding="max_length", truncation=True)
    assert torch.equal(ref, torch.tensor(got["input_ids"]))


def test_every_rs_caption_with_and_without_padding(rs_real, tokenizer, oc_tokenizer):
    captions = _all_captions(rs_real)
    assert len(captions) > 11_000
    _assert_same(tokenizer, oc_tokenizer, captions)


def test_saved_tokenizer_keeps_ordinary_text(tmp_path, tokenizer, oc_tokenizer):
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.pad_token_id == 0
    _assert_same(loaded, oc_tokenizer, PUNCTUATION)


def test_documented_marker_exceptions(tokenizer, oc_tokenizer):
    # open_clip's own marker in a caption becomes its special id; here it is text (never a special token)
    assert oc_tokenizer(["<start_of_text>"])[0, :3].tolist() == [49406, 49406, 49407]
    assert 49406 not in tokenizer("<start_of_text>")["input_ids"][1:]
    # transformers' CLIP word split keeps its own marker apart from adjacent punctuation
    ref = oc_tokenizer(["<|startoftext|>!"])[0, :10].tolist()
    assert tokenizer("<|startoftext|>!")["input_ids"] != ref[: ref.index(49407) + 1]


def test_rs_coca_padding_and_caption_loss_come_from_the_attention_mask(tokenizer):
    from hqrs.modeling.configuration_rs_coca import RSCoCaConfig
    from hqrs.modeling.modeling_rs_coca import RSCoCaModel

    torch.manual_seed(0)
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4)
    vision = dict(small, hidden_size=64, intermediate_size=128, image_size=32, patch_size=8)
    vision.update(pooler_hidden_size=32, attn_pooler_queries=8, attn_pooler_heads=4)
    config = RSCoCaConfig(vision_config=vision, text_config=small, multimodal_config=small, projection_dim=32)
    model = RSCoCaModel(config).eval()
    enc = tokenizer(["a,b;c!?..", "!!"], padding="max_length", max_length=12, return_tensors="pt")
    assert (enc.input_ids[0, :9] == 0).any()  # a real id-0 token inside the caption
    torch.manual_seed(0)
    pixels = torch.randn(2, 3, model.config.vision_config.image_size, model.config.vision_config.image_size)
    with torch.no_grad():
        out = model(pixel_values=pixels, input_ids=enc.input_ids, attention_mask=enc.attention_mask)
        labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
        explicit = model(
            pixel_values=pixels, input_ids=enc.input_ids, attention_mask=enc.attention_mask, labels=labels
        )
        # no mask = no padding: every position is a real token
        full = model(pixel_values=pixels, input_ids=enc.input_ids)
        ones = model(
            pixel_values=pixels, input_ids=enc.input_ids, attention_mask=torch.ones_like(enc.input_ids)
        )
    torch.testing.assert_close(out.caption_loss, explicit.caption_loss)
    torch.testing.assert_close(full.text_embeds, ones.text_embeds)
    torch.testing.assert_close(full.caption_loss, ones.caption_loss)
    assert not torch.allclose(full.text_embeds, out.text_embeds)


def test_rs_coca_processor_fixes_tokenizers_saved_before(tmp_path):
    from transformers import CLIPTokenizer

    from hqrs.modeling.open_clip_processing import _vocab_and_merges
    from hqrs.modeling.processing_rs_coca import RSCoCaProcessor

    vocab, merges = _vocab_and_merges()
    old = CLIPTokenizer(  # what build_tokenizer wrote before: "!" registered as a special token
        vocab=dict(vocab),
        merges=list(merges),
        unk_token="<|endoftext|>",
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="!",
        model_max_length=76,
    )
    assert old("a red roof!")["input_ids"][-2] == 0
    old.save_pretrained(tmp_path)
    from hqrs.modeling.open_clip_processing import build_image_processor

    processor = RSCoCaProcessor(
        build_image_processor("coca_ViT-B-32"), AutoTokenizer.from_pretrained(tmp_path)
    )
    assert processor(text=["a red roof!"], padding=False)["input_ids"][0] == [
        49406,
        320,
        736,
        6449,
        256,
        49407,
    ]
