"""Specs checked offline before anything loads: a model that does not exist, an SAE made for another
model, and a pretrained SAE while the Hugging Face Hub is unreachable (fail at once, not after ~30 s)."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from geomfilter import DEFAULT_MODEL, model_specs, models, saes
from geomfilter.model_specs import ModelSpecError
from geomfilter.saes import SAECompatibilityError, SAESpecError
from tests.tiny import tiny_sae

GPT2_SAE = "gpt2-small-res-jb:blocks.8.hook_resid_pre"
GEMMA_SAE = "gemma-scope-2b-pt-res-canonical:layer_12/width_16k/canonical"


@pytest.fixture()
def no_network(monkeypatch, tmp_path):
    """Every HTTP connection is refused (and recorded), retries do not sleep, the HF cache is empty."""
    httpx2 = pytest.importorskip("httpx2")
    from huggingface_hub import constants
    from huggingface_hub.utils import _http

    calls: list[str] = []

    def refuse(self, request):
        calls.append(str(request.url))
        raise httpx2.ConnectError("connection refused (test: no network)", request=request)

    monkeypatch.setattr(httpx2.HTTPTransport, "handle_request", refuse)
    monkeypatch.setattr(_http.time, "sleep", lambda s: None)  # huggingface_hub's retry backoff
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return calls


@pytest.fixture()
def nothing_loads(monkeypatch):
    """Fail the test if a model is loaded/converted or an SAE downloaded."""
    from sae_lens import SAE

    def boom(*a, **k):
        raise AssertionError("a spec check loaded or downloaded something")

    monkeypatch.setattr(models, "_load", boom)
    monkeypatch.setattr(models, "_gguf_to_hf_dir", boom)
    monkeypatch.setattr(SAE, "from_pretrained", boom)


# --- 1. an SAE release of another model --------------------------------------------------------------------------

def test_release_of_another_model_is_refused_offline(no_network, nothing_loads):
    with pytest.raises(SAECompatibilityError, match=(
            r"SAE release 'gpt2-small-res-jb' is for model 'gpt2-small', not 'smollm2-135m-instruct' \(.*"
            r"use it with --model gpt2-small.*leave out --sae to use its bundled SAE 'smollm2-135m-instruct'")):
        saes.check_spec_for_model(GPT2_SAE, DEFAULT_MODEL)
    with pytest.raises(SAECompatibilityError, match=r"'gemma-scope-2b-pt-res-canonical' is for model 'gemma-2-2b', "
                                                    r"not 'gpt2' \(.*sae-lens releases for gpt2: gpt2-small-res"):
        saes.check_spec_for_model(GEMMA_SAE, "gpt2")
    with pytest.raises(SAECompatibilityError, match="is for model 'gpt2-small', not 'pythia-70m-deduped'"):
        saes.check_spec_for_model(GPT2_SAE, "pythia-70m-deduped")
    assert no_network == []


def test_release_of_the_same_model_passes_under_any_name(tiny_model_dir, nothing_loads):
    for model in ("gpt2", "gpt2-small"):  # TL's official name and its alias
        saes.check_spec_for_model(GPT2_SAE, model)
    # the release says 'gemma-2-2b' (a TL alias); a base-model SAE on the chat model is common practice
    for model in ("google/gemma-2-2b", "gemma-2-2b", "google/gemma-2-2b-it"):
        saes.check_spec_for_model(GEMMA_SAE, model)
    saes.check_spec_for_model(GPT2_SAE, str(tiny_model_dir))  # a local dir has no name: widths are checked on load
    saes.check_spec_for_model("none", "gpt2")
    saes.check_spec_for_model(DEFAULT_MODEL, DEFAULT_MODEL)  # the bundled SAE records model_name = the spec
    with pytest.raises(ModelSpecError, match="unknown model spec 'gtp2'"):  # a bad model spec is the model's error
        saes.check_spec_for_model(GPT2_SAE, "gtp2")


def test_local_sae_folder_is_checked_by_the_model_it_records(tmp_path, nothing_loads):
    unnamed = tiny_sae(seed=1)  # records model_name 'tiny-llama': not a model name we know, so let through
    unnamed.save_model(str(tmp_path / "tiny"))
    saes.check_spec_for_model(str(tmp_path / "tiny"), "gpt2")
    named = tiny_sae(seed=2)
    named.cfg.metadata.model_name = "gpt2-small"
    named.save_model(str(tmp_path / "g"))
    saes.check_spec_for_model(str(tmp_path / "g"), "gpt2")
    with pytest.raises(SAECompatibilityError, match=r"SAE '.*/g' is for model 'gpt2-small', not 'smollm2-135m-"):
        saes.check_spec_for_model(str(tmp_path / "g"), DEFAULT_MODEL)
    with pytest.raises(SAECompatibilityError, match="SAE 'smollm2-135m-instruct' is for model 'smollm2-135m-instruct', "
                                                    "not 'gpt2'"):
        saes.check_spec_for_model(DEFAULT_MODEL, "gpt2")


def test_model_names_are_normalised():
    assert model_specs.official_model_name("GPT2-small") == "gpt2"
    assert model_specs.official_model_name("gemma-2-2b") == "google/gemma-2-2b"
    assert model_specs.official_model_name(DEFAULT_MODEL) == model_specs.EMBEDDED_HF_NAME
    assert model_specs.official_model_name("no-such-model") is None
    assert model_specs.model_family("google/gemma-2-9b-it") == model_specs.model_family("gemma-2-9b") == "gemma-2-9b"
    assert model_specs.model_family(model_specs.EMBEDDED_HF_NAME) == "smollm2-135m"
    assert model_specs.same_model("gpt2-small", "gpt2") and model_specs.same_model("meta-llama/Llama-2-7b-chat-hf", "Llama-2-7b")
    assert not model_specs.same_model("gpt2-small", "gpt2-medium")
    assert not model_specs.same_model("pythia-70m-deduped", "pythia-70m")
    assert model_specs.model_spec_for_name("gpt2-small") == "gpt2-small"
    assert model_specs.model_spec_for_name("GPT2-Small") == "gpt2"
    assert model_specs.model_spec_for_name(model_specs.EMBEDDED_HF_NAME) == DEFAULT_MODEL
    assert model_specs.model_spec_for_name("Qwen/Qwen3.5-2B-Base") is None
    assert model_specs.model_name_for_spec("gpt2-small") == "gpt2"
    assert model_specs.model_name_for_spec(DEFAULT_MODEL) == model_specs.EMBEDDED_HF_NAME


# --- no Hub: fail at once with the release named; a cached copy still loads -----------------------------------------

def test_pretrained_sae_without_network_fails_fast(no_network):
    with pytest.raises(SAESpecError, match=(
            r"cannot load SAE gpt2-small-res-jb:blocks.8.hook_resid_pre \(hub repo .*\): the Hugging Face Hub "
            r"\(.*\) is unreachable: .*not in the local Hugging Face cache")):
        saes.load_sae(GPT2_SAE)
    assert len(no_network) == 1, no_network  # one probe; huggingface_hub's retries (~30 s) never start


def test_pretrained_sae_with_hf_hub_offline_names_the_setting(no_network, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(SAESpecError, match=r"gpt2-small-res-jb:blocks.8.hook_resid_pre .*HF_HUB_OFFLINE is set, "
                                           r"and it is not in the local Hugging Face cache"):
        saes.load_sae(GPT2_SAE)
    assert no_network == []


def test_cached_pretrained_sae_loads_without_network(no_network, tmp_path):
    from huggingface_hub import constants
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    release, sae_id = GPT2_SAE.split(":")
    lookup = get_pretrained_saes_directory()[release]
    root = tmp_path / "hf-cache" / f"models--{lookup.repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    sae = tiny_sae(seed=3)
    sae.save_model(str(root / "snapshots" / commit / lookup.saes_map[sae_id]))
    loaded = saes.load_sae(GPT2_SAE)
    assert saes.describe(loaded)["weights"] == saes.describe(sae)["weights"]
    assert len(no_network) == 1, no_network  # the probe only: loaded from the cache at once
    assert constants.HF_HUB_OFFLINE is False  # offline mode was only switched on for the load


# --- 2. a model spec that names nothing ---------------------------------------------------------------------------

def test_check_model_spec_reports_the_model_without_loading(tmp_path, nothing_loads):
    assert model_specs.check_model_spec(DEFAULT_MODEL) is None
    assert model_specs.check_model_spec("gpt2-small") is None
    with pytest.raises(ModelSpecError, match=r"unknown model spec '/no/such/dir': the path /no/such/dir does not"):
        model_specs.check_model_spec("/no/such/dir")
    (tmp_path / "my-model").mkdir()
    (tmp_path / "my-model" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert model_specs.check_model_spec(str(tmp_path / "my-model")) is None
    with pytest.raises(ModelSpecError, match=r"does not exist \(did you mean: .*my-model\?\)"):
        model_specs.check_model_spec(str(tmp_path / "my-modle"))
    with pytest.raises(ModelSpecError, match=r"spec 'smollm2-135m-instrcut'.*did you mean: smollm2-135m-instruct"):
        model_specs.check_model_spec("smollm2-135m-instrcut")
    with pytest.raises(ModelSpecError, match=r"use the embedded default, --model smollm2-135m-instruct"):
        model_specs.check_model_spec(model_specs.EMBEDDED_HF_NAME)
    with pytest.raises(ModelSpecError, match=r"did you mean: gpt2"):
        model_specs.check_model_spec("GPT2")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ModelSpecError, match="is a file but not a .gguf model"):
        model_specs.check_model_spec(str(tmp_path / "notes.txt"))


@pytest.mark.parametrize("spec", ["/no/such/dir", "gpt2-smal", "x/y.gguf", "smollm2-135m-instrcut"])
def test_check_model_spec_agrees_with_load_model(spec, nothing_loads):
    with pytest.raises(ModelSpecError) as checked:
        model_specs.check_model_spec(spec)
    with pytest.raises(ModelSpecError) as loaded:
        models.load_model(spec)
    assert str(checked.value) == str(loaded.value)


# --- the CLI (needs the calls in geomfilter/cli.py: check_model_spec first, then check_spec_for_model) ---------------

def test_cli_missing_model_is_reported_as_the_model(tmp_path, chat_file):
    from geomfilter.cli import app

    r = CliRunner().invoke(app, ["score", str(chat_file), "--model", "/no/such/dir", "--strategy", "geometry",
                                 "--out", str(tmp_path / "s.csv"), "--cache-dir", str(tmp_path / "c")])
    assert r.exit_code == 2, r.output
    assert "the path /no/such/dir does not exist" in r.output and "needs an SAE" not in r.output


def test_cli_release_of_another_model_is_refused_before_loading(tmp_path, chat_file, no_network, nothing_loads):
    from geomfilter.cli import app

    r = CliRunner().invoke(app, ["cache", str(chat_file), "--sae", GPT2_SAE, "--out", str(tmp_path / "c")])
    assert r.exit_code == 2, r.output
    assert "SAE release 'gpt2-small-res-jb' is for model 'gpt2-small', not 'smollm2-135m-instruct'" in r.output
    assert no_network == []
