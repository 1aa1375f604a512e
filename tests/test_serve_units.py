"""hone serve's parts that need no server: hyperparameters, the rate limiter, settings, error bodies."""
from __future__ import annotations

import json

import pytest

from hone.serve.errors import APIError, api_error
from hone.serve.hyperparameters import auto_epochs, parse_method, resolve, top_level


def test_auto_epochs_follow_the_cookbook_rule():
    assert auto_epochs(5) == 20          # the cookbook's worked example: min(25, 100 // 5)
    assert auto_epochs(1) == 25          # capped
    assert auto_epochs(100) == 3         # the target
    assert auto_epochs(20000) == 1       # 25000 // 20000


def test_method_defaults_to_supervised_and_echoes_auto():
    method = parse_method(None, {"n_epochs": 2})
    assert method == {"type": "supervised", "supervised": {"hyperparameters": {
        "n_epochs": 2, "batch_size": "auto", "learning_rate_multiplier": "auto"}}}
    resolved = resolve(method, 40)
    assert resolved["supervised"]["hyperparameters"] == {"n_epochs": 2, "batch_size": 16, "learning_rate_multiplier": 1.0}
    assert top_level(resolved)["batch_size"] == 16
    assert top_level(parse_method({"type": "dpo"}, None)) == {}


@pytest.mark.parametrize("method, param", [
    ({"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 51}}}, "method.supervised.hyperparameters.n_epochs"),
    ({"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 1.5}}}, "method.supervised.hyperparameters.batch_size"),
    ({"type": "dpo", "dpo": {"hyperparameters": {"beta": 0}}}, "method.dpo.hyperparameters.beta"),
    ({"type": "dpo", "dpo": {"hyperparameters": {"learning_rate_multiplier": "fast"}}}, "method.dpo.hyperparameters.learning_rate_multiplier"),
    ({"type": "supervised", "supervised": {"hyperparameters": {"beta": 0.1}}}, "method.supervised.hyperparameters.beta"),
    ({"type": "reinforcement"}, "method.type"),
    # malformed JSON where objects are due (each was a 500: TypeError / AttributeError)
    (["supervised"], "method"),
    ({"type": ["supervised"]}, "method.type"),
    ({"type": {"dpo": {}}}, "method.type"),
    ({"type": "supervised", "supervised": "fast"}, "method.supervised"),
    ({"type": "dpo", "dpo": {"hyperparameters": [["beta", 0.1]]}}, "method.dpo.hyperparameters"),
    # NaN and Infinity, which JSON as Python reads it carries (n_epochs was a 500, the others were stored)
    ({"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": float("nan")}}}, "method.supervised.hyperparameters.n_epochs"),
    ({"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": float("inf")}}}, "method.supervised.hyperparameters.n_epochs"),
    ({"type": "supervised", "supervised": {"hyperparameters": {"learning_rate_multiplier": float("nan")}}},
     "method.supervised.hyperparameters.learning_rate_multiplier"),
    ({"type": "supervised", "supervised": {"hyperparameters": {"learning_rate_multiplier": float("inf")}}},
     "method.supervised.hyperparameters.learning_rate_multiplier"),
    ({"type": "supervised", "supervised": {"hyperparameters": {"learning_rate_multiplier": 10**400}}},
     "method.supervised.hyperparameters.learning_rate_multiplier"),
    ({"type": "dpo", "dpo": {"hyperparameters": {"beta": float("nan")}}}, "method.dpo.hyperparameters.beta"),
    ({"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1e300}}}, "method.supervised.hyperparameters.n_epochs"),
])
def test_bad_hyperparameters_name_their_param(method, param):
    with pytest.raises(APIError) as caught:
        parse_method(method, None)
    assert caught.value.status == 400 and caught.value.param == param


def test_deprecated_hyperparameters_must_be_an_object():
    with pytest.raises(APIError) as caught:
        parse_method(None, [1, 2])
    assert caught.value.status == 400 and caught.value.param == "hyperparameters"


def test_method_and_deprecated_hyperparameters_must_agree():
    method = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}}}
    assert parse_method(method, {"n_epochs": 3})["supervised"]["hyperparameters"]["n_epochs"] == 3
    with pytest.raises(APIError, match="disagree"):
        parse_method(method, {"n_epochs": 4})


def test_error_body_has_all_four_keys_and_no_retry_on_5xx():
    body = json.loads(api_error(404, "No such File object: file-x", param="id").body)
    assert body == {"error": {"message": "No such File object: file-x", "type": "invalid_request_error",
                              "param": "id", "code": None}}
    assert api_error(500, "boom").headers["x-should-retry"] == "false"


def test_rate_limiter_allows_a_burst_then_says_how_long_to_wait():
    from hone.serve.auth import RateLimiter

    limiter = RateLimiter(per_minute=3)
    assert [limiter.allow("key-a") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.allow("key-a")
    assert 0 < wait <= 20  # one request refills every 60 / 3 s
    assert limiter.allow("key-b") == 0.0  # buckets are per key
    assert RateLimiter(per_minute=0).allow("key-a") == 0.0  # 0 turns it off


def test_settings_travel_to_workers_through_the_environment(monkeypatch):
    from hone.serve.settings import ServeSettings, parse_models

    settings = ServeSettings(db="sqlite:////tmp/x.db", base_models=parse_models(["tiny=/models/tiny", "smollm2-135m-instruct"]),
                             max_steps=3, lease_seconds=2.0, max_loaded_models=2, max_batch=3, batch_window_ms=20.0,
                             inference_threads=1, max_request_tokens=100)
    for name, value in settings.to_env().items():
        monkeypatch.setenv(name, value)
    again = ServeSettings.from_env()
    assert again == settings
    assert ServeSettings.from_env(max_steps=9).max_steps == 9  # options beat the environment
    with pytest.raises(Exception, match="NAME or NAME=SPEC"):
        parse_models(["a:b=/x"])


def test_the_engine_takes_the_serve_options(tmp_path):
    from typer.testing import CliRunner

    from hone.cli import app as cli
    from hone.serve.app import create_app
    from hone.serve.settings import ServeSettings

    settings = ServeSettings(db=f"sqlite:///{tmp_path / 'serve.db'}", max_loaded_models=2, max_batch=3,
                             batch_window_ms=20.0, inference_threads=1)
    engine = create_app(settings).state.engine.engine("transformers")   # the router builds each engine on first use
    assert (engine.max_tuned, engine.max_batch, engine.batch_window, engine._threads) == (2, 3, 0.02, 1)
    help_text = CliRunner().invoke(cli, ["serve", "--help"], env={"COLUMNS": "200"}).output
    for option in ("--max-loaded-models", "--max-batch", "--batch-window-ms", "--inference-threads",
                   "--max-request-tokens", "--engine", "--model-engine", "--window-batching", "--gguf-quant"):
        assert option in help_text


def test_keys_are_stored_hashed_and_revocable(tmp_path):
    from sqlalchemy import select

    from hone.serve import db
    from hone.serve.auth import create_key, hash_key, list_keys, revoke_key

    url = f"sqlite:///{tmp_path / 'serve.db'}"
    secret = create_key("acme", url)
    with db.session(url) as s:
        row = s.scalar(select(db.ApiKey))
    assert row.sha256 == hash_key(secret) and secret not in (row.id, row.prefix)
    [listed] = list_keys(url)
    assert listed["org"] == "acme" and not listed["revoked"] and secret not in json.dumps(listed)
    assert revoke_key(listed["id"], url)["revoked"] and list_keys(url)[0]["revoked"]
    from hone.errors import UserError

    with pytest.raises(UserError, match="valid name"):
        create_key("Acme Corp", url)


def test_llamacpp_lora_mode_is_honoured_or_refused(monkeypatch, tmp_path):
    """--llamacpp-lora adapter serves a LoRA run as its adapter over the base GGUF, merged as its own GGUF;
    any other value is refused in one line when the server starts."""
    from pathlib import Path

    from hone.errors import ConfigError, UserError
    from hone.serve.engines import llamacpp
    from hone.serve.engines.table import EngineRouter
    from hone.serve.settings import ServeSettings

    monkeypatch.setattr(llamacpp, "lora_applies", lambda run: None)
    monkeypatch.setattr(llamacpp, "base_gguf", lambda spec, quant: Path("base.gguf"))
    monkeypatch.setattr(llamacpp, "run_lora_gguf", lambda run, quant: Path("adapter.gguf"))
    monkeypatch.setattr(llamacpp, "run_gguf", lambda run, quant: Path("merged.gguf"))
    monkeypatch.setattr(llamacpp.LlamaCppEngine, "_base_spec", lambda self, source: "base")
    run = tmp_path / "run"
    assert llamacpp.LlamaCppEngine()._tuned(None, run) == llamacpp.Served(Path("base.gguf"), Path("adapter.gguf"))
    assert llamacpp.LlamaCppEngine(lora="merged")._tuned(None, run) == llamacpp.Served(Path("merged.gguf"))
    with pytest.raises(UserError, match="--llamacpp-lora both"):
        llamacpp.LlamaCppEngine(lora="both")
    monkeypatch.setenv("HONE_SERVE_LLAMACPP_LORA", "merged")
    settings = ServeSettings.from_env()
    assert settings.llamacpp_lora == "merged" and settings.to_env()["HONE_SERVE_LLAMACPP_LORA"] == "merged"
    with pytest.raises(ConfigError, match="--llamacpp-lora both: choose adapter or merged"):
        EngineRouter(ServeSettings.from_env(llamacpp_lora="both"))
