"""Recipes are untrusted data (#12.1-#12.3, recipe side): their templates render in jinja2's sandbox,
template paths stay inside the recipe's folder or the shipped templates, and secrets never travel
through ``${VAR}`` into the run directory, logs or requests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hqrs.dataset_builder.mpgi import load_recipe, run_mpgi
from hqrs.dataset_builder.mpgi.loopback import LoopbackServer, prompt_text
from hqrs.dataset_builder.mpgi.prompts import render
from hqrs.dataset_builder.mpgi.recipe import RecipeError, recipe_from_dict
from tests.mpgi_fixtures import loop_recipe, make_records, mpgi_run_argv

pytestmark = pytest.mark.usefixtures("loopback_and_unix_sockets")


# Server-side template injection payloads: each one, in a plain jinja2.Environment, reaches Python
# internals (os.popen, subclasses, globals) or mutates the variables it was given.
SSTI = [
    "{{ cycler.__init__.__globals__.os.popen('touch MARK').read() }}",
    "{{ joiner.__init__.__globals__.os.popen('touch MARK').read() }}",
    "{{ lipsum.__globals__['os'].popen('touch MARK').read() }}",
    "{{ namespace.__init__.__globals__.os.popen('touch MARK').read() }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ record.__class__.__base__.__subclasses__() }}",
    "{% set x = record.update({'image_id': 'pwned'}) %}{{ record.image_id }}",
    "{{ record.pop('image_id') }}",
    "{{ perspective.__class__.__init__.__globals__ }}",
    "{{ self._TemplateReference__context.cycler.__init__.__globals__.os.popen('touch MARK').read() }}",
    "{{ ().__class__.__bases__[0].__subclasses__() }}",
    "{{ (1).__class__.__mro__[-1].__subclasses__() }}",
    "{% include '/etc/passwd' %}",
    "{% extends '../outside.jinja' %}",
    "{% import 'x.jinja' as x %}",
    "{{ 'a' * 10**10 }}",
    "{{ ['a'] * 10**9 }}",
    "{{ 10 ** 100000000 }}",
    "{{ range(10**9) | list }}",
]


def _recipe_with_prompt(
    folder: Path, prompt: str, template: str | None = None, url: str = "http://127.0.0.1:1"
) -> Path:
    if template is not None:
        (folder / "t.jinja").write_text(template)
    path = folder / "r.yaml"
    path.write_text(
        f"name: hostile\nbackends:\n  m: {{server: endpoint, endpoint_url: '{url}', model: x}}\n"
        f"generators:\n  - {{name: g, backend: m, perspective: scene, prompt: '{prompt}'}}\n"
    )
    return path


def _cli_run(tmp_path: Path, prompt: str, template: str | None = None) -> tuple[int, int]:
    """``hqrs mpgi run`` (in process) of two images with a recipe whose generator prompt is ``prompt``,
    against a loopback server: (exit code, requests the server received)."""
    from hqrs.scripts.cli import main

    make_records(tmp_path / "img", 2)
    with LoopbackServer() as server:
        recipe = _recipe_with_prompt(tmp_path, prompt, template, url=server.url)
        rc = main(mpgi_run_argv(recipe, tmp_path / "img", tmp_path / "run", "--no-progress"))
        return rc, sum(server.received.values())


@pytest.mark.parametrize("payload", SSTI)
def test_ssti_payloads_do_not_run(tmp_path, monkeypatch, payload):
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(_recipe_with_prompt(tmp_path, "t.jinja", payload))
    record = {"image_id": "abc"}
    with pytest.raises(
        ValueError, match="sandbox forbids|undefined|unsafe|has no attribute|cannot include|too big"
    ):
        render("t.jinja", recipe, perspective="scene", record=record)
    assert not (tmp_path / "MARK").exists()
    assert record == {"image_id": "abc"}


def test_plain_templates_still_render(tmp_path):
    recipe = load_recipe(
        _recipe_with_prompt(
            tmp_path, "t.jinja", "{% for k in record %}{{ k }}={{ record[k] | upper }} {% endfor %}"
        )
    )
    assert render("t.jinja", recipe, record={"image_id": "abc"}) == "image_id=ABC"


@pytest.mark.parametrize(
    "prompt",
    ["/etc/passwd", "../outside.jinja", "sub/../../outside.jinja", "link.jinja", "/etc/hostname", "passwd"],
)
def test_template_paths_stay_in_the_recipe_folder(tmp_path, prompt):
    folder = tmp_path / "recipe"
    folder.mkdir()
    (tmp_path / "outside.jinja").write_text("SECRET OUTSIDE")
    (folder / "link.jinja").symlink_to(tmp_path / "outside.jinja")
    recipe = load_recipe(_recipe_with_prompt(folder, prompt))
    with pytest.raises(ValueError, match="outside the recipe's folder|not in the recipe's folder|neither"):
        recipe.hash()  # run_mpgi hashes (reads) every template before anything runs
    with pytest.raises(ValueError):
        render(prompt, recipe, perspective="scene")


def test_hostile_template_path_is_one_cli_error_and_sends_nothing(tmp_path, capsys):
    assert _cli_run(tmp_path, "/etc/passwd") == (1, 0)
    err = capsys.readouterr().err
    assert err.count("hqrs: error:") == 1 and "Traceback" not in err
    assert "/etc/passwd" in err and "outside the recipe's folder" in err


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("model", "${HF_TOKEN}"),
        ("description", "made by ${HF_TOKEN}"),
        ("endpoint_url", "http://${OPENAI_API_KEY}@127.0.0.1:1"),
        ("model", "${HQRS_TEST_SECRET:-x}"),
    ],
)
def test_env_expansion_is_limited_to_the_allowlist(monkeypatch, key, value):
    monkeypatch.setenv("HF_TOKEN", "hf_" + "s" * 34)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-" + "s" * 40)
    data = {
        "name": "t",
        "backends": {"m": {"server": "endpoint", "endpoint_url": "http://127.0.0.1:1", "model": "x"}},
    }
    if key == "description":
        data["description"] = value
    else:
        data["backends"]["m"][key] = value
    with pytest.raises(RecipeError, match="is not allowed: a recipe may only read the non-secret settings"):
        recipe_from_dict(data)


def test_allowlisted_settings_still_expand(monkeypatch):
    monkeypatch.setenv("HQRS_MPGI_MODEL", "/models/tiny")
    recipe = load_recipe("cpu-tiny")
    assert recipe.backends["local"].model == "/models/tiny"
    assert recipe.backends["local"].endpoint_url == "http://127.0.0.1:8000"


def test_api_key_reaches_only_the_authorization_header(tmp_path, monkeypatch):
    """The key named by api_key_env is sent to a remote endpoint as a Bearer token and is in no file of
    the run directory (recipe, manifest, logs, checkpoints, stage outputs) and in no request body."""
    secret = "hf_" + "Zq7" * 12
    monkeypatch.setenv("HF_TOKEN", secret)
    records = make_records(tmp_path / "img", 3)
    with LoopbackServer(host="127.0.0.2") as server:
        data = loop_recipe(server.url, api_key_env="HF_TOKEN")
        data["description"] = "uses a remote endpoint"
        report = run_mpgi(records, recipe_from_dict(data), tmp_path / "run", progress=False)
        assert (report.ok, report.failed) == (3, 0), report.errors
    assert set(server.authorizations) == {f"Bearer {secret}"}
    assert not any(secret in prompt_text(p) or secret in str(p) for p in server.payloads)
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert len(files) > 10
    leaks = [str(p) for p in files if secret.encode() in p.read_bytes()]
    assert leaks == []
    assert os.environ["HF_TOKEN"] == secret


@pytest.mark.parametrize(
    "template", ["{{ nope }}", "{{ record.__class__.__mro__ }}", "{% include 'perspective.jinja' %}"]
)
def test_bad_template_is_one_cli_error_before_any_request(tmp_path, capsys, template):
    assert _cli_run(tmp_path, "t.jinja", template) == (1, 0)
    err = capsys.readouterr().err
    assert err.count("hqrs: error:") == 1 and "Traceback" not in err and "t.jinja" in err
