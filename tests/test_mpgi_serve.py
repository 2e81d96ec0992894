"""MpGI end to end through ``transformers serve`` (a real OpenAI-compatible server) on loopback.

The test builds a tiny chat model from a config: a byte-level BPE tokenizer trained here with the
``tokenizers`` library on a few hundred words, wrapped in ``PreTrainedTokenizerFast`` with a chat
template, and a 2-layer ``Qwen2ForCausalLM`` (hidden size 32), both saved to a temporary directory.
``transformers serve`` loads it lazily from that path when the first request names it as ``model``
(``HF_HUB_OFFLINE=1``). The ``cpu-tiny`` recipe then runs on three real DOTA images.

A random model never writes the integration JSON, so what is asserted is what is deterministic: every
record has a result, each request the engine counted reached the server (its access log), the relay
perspective is exactly the server's greedy answer to that prompt, perspectives carry the model path
and prompt id, token usage reaches the run manifest, and the status accounting adds up.

A tiny VLM is not served here: ``transformers serve`` would need a multimodal processor (image
processor + tokenizer with an image token + chat template) saved next to a tiny multimodal model;
the ``cpu-tiny`` recipe is text-only, and image data URLs are covered by the loopback-server tests.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import urllib.request
from pathlib import Path

import pytest

from hqrs.dataset_builder.mpgi import iter_results, load_recipe, run_mpgi, run_status
from hqrs.dataset_builder.mpgi.prompts import chat_payload, image_data_url, render
from hqrs.dataset_builder.mpgi.recipe import recipe_from_dict
from hqrs.dataset_builder.rules import rule_facts
from hqrs.dataset_builder.sources import SkipReport, load_source
from tests.mpgi_fixtures import transformers_serve

pytest.importorskip("uvicorn", reason="transformers serve needs transformers[serving] (fastapi, uvicorn)")
pytest.importorskip("fastapi", reason="transformers serve needs transformers[serving] (fastapi, uvicorn)")

N_RECORDS = 3
WORDS = (
    "a an the of and with in on near at from to by is are there this image aerial satellite view remote "
    "sensing scene site harbor port ship ships plane planes airport runway storage tank tanks small large "
    "vehicle vehicles road roads bridge river building buildings residential industrial farmland field "
    "fields forest tree trees grass water sea coast beach parking lot court swimming pool roundabout "
    "left right top bottom center middle upper lower corner side north south east west covers about "
    "meter meters m area land use cover dense sparse many few one two three four five six seven several "
    "caption captions short medium long text sources json rule relay describe description object objects"
).split()


CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'text' %}{{ c['text'] }}{% elif c['type'] == 'image' %}<image>{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def train_tokenizer(vocab_size: int = 512):
    """A byte-level BPE tokenizer trained here on 300 lines of RS words, with chat and image tokens."""
    import random

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(0)
    corpus = [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(300)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<image>"},
        chat_template=CHAT_TEMPLATE,
    )


def _text_config(tokenizer):
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _save(model, processor, tokenizer, folder: Path) -> Path:
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    folder.mkdir(parents=True, exist_ok=True)
    processor.save_pretrained(folder)
    model.save_pretrained(folder)  # model.safetensors
    return folder


def build_tiny_chat_model(folder: Path) -> Path:
    """The trained tokenizer plus a random 2-layer Qwen2 causal LM (hidden size 32)."""
    import torch
    from transformers import Qwen2ForCausalLM

    tokenizer = train_tokenizer()
    torch.manual_seed(0)
    return _save(Qwen2ForCausalLM(_text_config(tokenizer)), tokenizer, tokenizer, folder)


def build_tiny_vlm(folder: Path) -> Path:
    """A tiny LLaVA: 2-layer CLIP vision tower on 32×32 pixels (4 patches) + the tiny Qwen2 LM, with a
    ``LlavaProcessor`` (CLIP image processor + the trained tokenizer with an ``<image>`` token)."""
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = train_tokenizer()
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
        patch_size=16,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=16,
        projection_dim=32,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=_text_config(tokenizer),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    torch.manual_seed(0)
    return _save(LlavaForConditionalGeneration(config), processor, tokenizer, folder)


def _post_json(url: str, payload: dict, timeout: float = 120) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def served_model(tmp_path_factory):
    """({"llm": dir, "vlm": dir}, server URL, server log path) of a running ``transformers serve``."""
    exe = shutil.which("transformers", path=str(Path(sys.executable).parent)) or shutil.which("transformers")
    if exe is None:
        pytest.skip("the `transformers` console script is not installed")
    root = tmp_path_factory.mktemp("serve")
    models = {
        "llm": root / "tiny-qwen2",
        "vlm": root / "tiny-llava",
    }  # loaded at the first request naming them
    log_path = root / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "warning"}
    with transformers_serve(log_path, [exe], env, "--log-level", "info") as (url, wait_ready):
        build_tiny_chat_model(models["llm"])  # while the server starts
        build_tiny_vlm(models["vlm"])
        wait_ready(240)
        yield models, url, log_path


def _prompt(generator, recipe, result, record) -> str:
    """The prompt the engine sent ``generator`` for ``record`` (rendered again from the same inputs)."""
    return render(
        generator.prompt,
        recipe,
        perspective=generator.perspective,
        relay_rules=generator.relay_rules,
        rule_text=result.rule_text,
        record=json.loads(json.dumps(record.to_dict())),
        facts=json.loads(json.dumps(rule_facts(record).to_dict())),
    )


def _served_chat_requests(log_path: Path) -> int:
    return len(re.findall(r'"POST /v1/chat/completions HTTP/1\.1" 200', log_path.read_text(errors="replace")))


# 37-65 s on 2 shared cores (server start-up, building both models, lazy loads, two runs): it is the
# issue's end-to-end test through a real `transformers serve`, so it runs in the default suite.
def test_cpu_tiny_recipe_through_transformers_serve(served_model, rs_real, tmp_path):
    models, url, log_path = served_model
    model_dir, vlm_dir = models["llm"], models["vlm"]
    records = list(load_source(f"dota:{rs_real}/detection_dota/labelTxt").records(SkipReport()))[:N_RECORDS]
    assert len(records) == N_RECORDS and all(r.objects for r in records)
    data = load_recipe(
        "cpu-tiny",
        {
            "backends.local.model": str(model_dir),
            "backends.local.endpoint_url": url + "/v1",  # the /v1 form works as well as the root
            "backends.local.retry_backoff": 0.1,
            "generators.0.sampling.max_tokens": 24,
            "integrator.sampling.max_tokens": 48,
            # random weights never stop by themselves: every answer ends at max_tokens
            "checks.accept_truncated": True,
        },
    ).to_dict()
    # plus an image perspective from the tiny VLM behind the same server (a second generation stage)
    data["backends"]["vlm"] = {**data["backends"]["local"], "model": str(vlm_dir), "max_image_side": 64}
    data["generators"].append(
        {"name": "tiny-vlm", "backend": "vlm", "perspective": "scene", "sampling": {"max_tokens": 16}}
    )
    recipe = recipe_from_dict(data)
    before = _served_chat_requests(log_path)
    report = run_mpgi(records, recipe, tmp_path / "run", progress=False)
    served = _served_chat_requests(log_path) - before

    # status accounting: every record finished, ok or failed with a reason
    assert report.records == N_RECORDS and report.pending == 0
    assert report.ok + report.failed == N_RECORDS == report.processed
    results = {r.image_id: r for r in iter_results(tmp_path / "run")}
    assert sorted(results) == sorted(r.image_id for r in records)
    status = run_status(tmp_path / "run")
    assert (status["ok"], status["failed"], status["pending"]) == (report.ok, report.failed, 0)
    for stage in ("gen:local", "gen:vlm"):
        assert status["passes"][0]["stages"][stage] == {"done": N_RECORDS, "failed": 0, "pending": 0}

    # every request the engine counted reached the server, and nothing else did
    engine_requests = sum(int(r.stats.get("requests", 0)) for r in results.values())
    assert engine_requests >= N_RECORDS * 3  # relay + VLM + at least one integration request each
    assert served == engine_requests

    gen, vlm_gen = recipe.generators
    for record in records:
        result = results[record.image_id]
        assert [p.generator for p in result.perspectives] == ["rule", "tiny-relay", "tiny-vlm"]
        relay, scene = result.perspectives[1:]
        assert (relay.model, scene.model) == (str(model_dir), str(vlm_dir))
        assert relay.prompt_id.startswith("perspective.jinja@") and scene.prompt_id == relay.prompt_id
        # the relay text is the server's (greedy, hence reproducible) answer to exactly this prompt
        prompt = _prompt(gen, recipe, result, record)
        answer = _post_json(
            f"{url}/v1/chat/completions",
            {"model": str(model_dir), **chat_payload(prompt, None, gen.sampling)},
        )
        assert relay.text == " ".join(answer["choices"][0]["message"]["content"].split()) != ""
        # the VLM saw the image: the same prompt with it is answered as the perspective says
        prompt = _prompt(vlm_gen, recipe, result, record)
        image = image_data_url(record.image, 64)
        answer = _post_json(
            f"{url}/v1/chat/completions",
            {"model": str(vlm_dir), **chat_payload(prompt, image, vlm_gen.sampling)},
        )
        assert scene.text == " ".join(answer["choices"][0]["message"]["content"].split()) != ""
        text_only = _post_json(
            f"{url}/v1/chat/completions",
            {"model": str(vlm_dir), **chat_payload(prompt, None, vlm_gen.sampling)},
        )
        assert answer["usage"]["prompt_tokens"] == text_only["usage"]["prompt_tokens"] + 4  # 2×2 patches
        if result.status == "ok":
            assert 1 <= len(result.captions) and all(c.sources for c in result.captions)
        else:  # random model: no valid integration JSON after the repair round
            assert result.error.startswith("integration:") and result.captions == []
        assert result.stats["prompt_tokens"] > 0 and result.stats["completion_tokens"] > 0

    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["models"] == {"local": str(model_dir), "vlm": str(vlm_dir)}
    assert manifest["totals"]["prompt_tokens"] == report.prompt_tokens > 0
    assert manifest["totals"]["completion_tokens"] == report.completion_tokens > 0
    assert manifest["totals"]["ok"] + manifest["totals"]["failed"] == N_RECORDS

    # a rerun retries only the failed records and reuses their relay perspective (no generation request)
    if report.failed:
        before = _served_chat_requests(log_path)
        again = run_mpgi(records, recipe, tmp_path / "run", progress=False)
        assert (again.skipped, again.processed) == (report.ok, report.failed)
        latest = {r.image_id: r for r in iter_results(tmp_path / "run")}
        retried = [latest[i] for i in results if results[i].status != "ok"]
        assert all(r.stats.get("reused") == 2 for r in retried)
        assert all(r.perspectives == results[r.image_id].perspectives for r in retried)
        assert _served_chat_requests(log_path) - before == sum(int(r.stats["requests"]) for r in retried)
