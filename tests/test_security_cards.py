"""Card inputs are data, never templates (#12): template-injection payloads in everything a user or a
hostile build folder supplies to a card (source names and licences, the MpGI run manifest's recipe and
models, base model, dataset ids) come out literally in the staged card and run nothing."""

from __future__ import annotations

import json

import pytest
import tiny_models
from huggingface_hub import DatasetCard, ModelCard

from hqrs.hub_cards.cards import render_dataset_card, render_model_card
from hqrs.scripts import cli

PAYLOADS = [
    "{{ cycler.__init__.__globals__.os.popen('touch {marker}').read() }}",
    "{% for x in ().__class__.__base__.__subclasses__() %}{{ x }}{% endfor %}",
    "{{ 7*7 }}",
]


@pytest.fixture(scope="module")
def demo_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("cards") / "hqrs-it-demo"
    assert cli.main(["-qq", "build", "--demo", "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.mark.parametrize("payload", PAYLOADS)
def test_dataset_card_inputs_stay_literal(demo_build, tmp_path, payload):
    marker = tmp_path / "ran"
    text = payload.replace("{marker}", str(marker))
    manifest = demo_build / "mpgi_run" / "manifest.json"
    saved = manifest.read_text()
    try:
        data = json.loads(saved)
        data["recipe"] = text
        manifest.write_text(json.dumps(data))
        card = render_dataset_card(
            demo_build, "me/hqrs-it", sources=[{"name": text, "license": text, "citation": text}]
        )
    finally:
        manifest.write_text(saved)
    assert not marker.exists()
    assert text in card.text
    DatasetCard(str(card))  # the YAML header still parses


@pytest.mark.parametrize("payload", PAYLOADS)
def test_model_card_inputs_stay_literal(tmp_path, payload):
    marker = tmp_path / "ran"
    text = payload.replace("{marker}", str(marker))
    model = tiny_models.tiny_clip_dir(tmp_path / "clip")
    card = render_model_card(model, "me/clip", base_model="openai/clip-vit-base-patch32", datasets=[text])
    assert not marker.exists()
    assert text in str(card)
    assert ModelCard(str(card)).data.datasets == [text]
