"""hone serve under hostile requests: each is refused with a 4xx in OpenAI's shape, never a 500.

The requests are the ones a hostile corpus found answered 500 (issue 24), made by hand; the app runs
in-process over the tiny model (tests/test_serve_fuzz.py fuzzes the whole schema)."""
from __future__ import annotations

import json

import pytest

from serve_helpers import chat_rows, in_process_app

HELLO = [{"role": "user", "content": "Say hello"}]


@pytest.fixture(scope="module")
def app(tiny_model, tmp_path_factory):
    served = in_process_app(tiny_model, tmp_path_factory.mktemp("hostile"), max_request_tokens=4096)
    with served.http:   # runs the lifespan: the engine's thread stops with the module
        yield served


def refused(response, status: int = 400, param: str | None = None) -> dict:
    """The OpenAI error body of a refused request, checked for its status and param."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if param is not None:
        assert error["param"] == param, error
    return error


def upload(app, content: bytes, name: str = "train.jsonl"):
    return app.http.post("/v1/files", headers=app.auth, files={"file": (name, content)},
                         data={"purpose": "fine-tune"})


def chat(app, **body):
    return app.http.post("/v1/chat/completions", headers=app.auth,
                         json={"model": "tiny", "messages": HELLO, "max_tokens": 1, "temperature": 0, **body})


# -- uploads ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, text", [
    ("train.jsonl", "\n".join(json.dumps(r) for r in chat_rows(2)) + f'\n{{"messages": [], "n": {"9" * 5000}}}\n'),
    ("train.json", f'[{json.dumps(chat_rows(1)[0])}, {{"n": -{"1" * 5000}}}]'),
])
def test_an_upload_with_a_5000_digit_integer_is_a_400(app, name, text):
    error = refused(upload(app, text.encode(), name), param="file")
    assert error["code"] == "invalid_file_format" and "digits" in error["message"]


def test_an_upload_nested_5000_deep_is_a_400(app):
    deep = '{"messages": ' + "[" * 5000 + "]" * 5000 + "}"
    error = refused(upload(app, deep.encode()), param="file")
    assert error["code"] == "invalid_file_format" and "line 1" in error["message"].lower()


# -- chat ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [2**64, -2**63 - 1, 10**30, 2**53])
def test_a_seed_torch_cannot_take_is_a_400_naming_seed(app, seed):
    refused(chat(app, seed=seed, temperature=1), param="seed")


@pytest.mark.parametrize("seed", [2**53 - 1, -(2**53 - 1), 0])
def test_the_widest_seeds_json_carries_exactly_are_answered(app, seed):
    assert chat(app, seed=seed, temperature=1).status_code == 200


@pytest.mark.parametrize("where, param", [
    ('"messages": [{"role": "user", "content": "hi \\ud800"}]', "messages.0.content"),
    ('"messages": [{"role": "user", "content": [{"type": "text", "text": "\\udfff"}]}]', "messages.0.content.0.text"),
    ('"messages": [{"role": "user", "content": "hi"}], "stop": ["\\ud800"]', "stop.0"),
])
def test_a_lone_surrogate_is_a_400_naming_where_it_is(app, where, param):
    body = '{"model": "tiny", "max_tokens": 1, ' + where + "}"
    error = refused(app.http.post("/v1/chat/completions", headers={**app.auth, "Content-Type": "application/json"},
                                  content=body.encode()), param=param)
    assert "surrogate" in error["message"]


def test_a_lone_surrogate_in_a_completion_prompt_or_a_model_name_is_a_400(app):
    for body, param in (('{"model": "tiny", "prompt": ["ok", "\\ud83d"]}', "prompt.1"),
                        ('{"model": "tiny\\ud800", "prompt": "ok"}', "model")):
        refused(app.http.post("/v1/completions", headers={**app.auth, "Content-Type": "application/json"},
                              content=body.encode()), param=param)


def test_a_paired_surrogate_escape_is_ordinary_text(app):
    body = '{"model": "tiny", "max_tokens": 1, "messages": [{"role": "user", "content": "\\ud83d\\ude00"}]}'
    response = app.http.post("/v1/chat/completions", headers={**app.auth, "Content-Type": "application/json"},
                             content=body.encode())
    assert response.status_code == 200, response.text


# -- the per-request token budget --------------------------------------------------------------------

def test_ten_thousand_prompts_are_refused_before_any_work(app):
    response = app.http.post("/v1/completions", headers=app.auth,
                             json={"model": "tiny", "prompt": ["tell me a story"] * 10_000, "max_tokens": 16})
    error = refused(response, param="prompt")
    assert error["code"] == "request_too_large" and "max_request_tokens" in error["message"]
    assert "4096" in error["message"]   # the limit this server was started with


def test_the_budget_counts_prompts_times_n_times_tokens(app):
    ask = {"model": "tiny", "prompt": ["Once upon"] * 4, "temperature": 0}
    assert app.http.post("/v1/completions", headers=app.auth, json={**ask, "max_tokens": 8, "n": 2}).status_code == 200
    refused(app.http.post("/v1/completions", headers=app.auth, json={**ask, "max_tokens": 500, "n": 4}), param="prompt")
    refused(chat(app, n=16, max_tokens=400), param="messages")   # 16 x (prompt + 400) > 4096


def test_the_budget_is_a_setting_that_travels_to_the_app(tiny_model, tmp_path):
    from hone.serve.settings import ServeSettings

    assert ServeSettings().max_request_tokens > 0
    small = in_process_app(tiny_model, tmp_path, max_request_tokens=20)
    with small.http:
        response = small.http.post("/v1/completions", headers=small.auth,
                                   json={"model": "tiny", "prompt": "Once upon", "max_tokens": 30})
        assert "max_request_tokens" in refused(response)["message"]
    (tmp_path / "off").mkdir()
    unlimited = in_process_app(tiny_model, tmp_path / "off", max_request_tokens=0)   # 0 turns it off
    with unlimited.http:
        response = unlimited.http.post("/v1/completions", headers=unlimited.auth,
                                       json={"model": "tiny", "prompt": ["a"] * 40, "max_tokens": 2})
        assert response.status_code == 200


# -- fine-tuning jobs ---------------------------------------------------------------------------------

@pytest.mark.parametrize("method, param", [
    ({"type": ["supervised"]}, "method.type"),
    ({"type": {"supervised": 1}}, "method.type"),
    ({"type": "supervised", "supervised": "fast"}, "method.supervised"),
    ({"type": "supervised", "supervised": {"hyperparameters": [1, 2]}}, "method.supervised.hyperparameters"),
    ({"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": float("nan")}}},
     "method.supervised.hyperparameters.n_epochs"),
    ({"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": float("inf")}}},
     "method.supervised.hyperparameters.n_epochs"),
    ({"type": "supervised", "supervised": {"hyperparameters": {"learning_rate_multiplier": float("inf")}}},
     "method.supervised.hyperparameters.learning_rate_multiplier"),
    ({"type": "dpo", "dpo": {"hyperparameters": {"beta": float("nan")}}}, "method.dpo.hyperparameters.beta"),
])
def test_a_malformed_method_is_a_400_naming_the_field(app, method, param):
    uploaded = upload(app, "\n".join(json.dumps(r) for r in chat_rows(10)).encode())
    assert uploaded.status_code == 200, uploaded.text
    body = json.dumps({"model": "tiny", "training_file": uploaded.json()["id"], "method": method})  # NaN as JSON does
    refused(app.http.post("/v1/fine_tuning/jobs", headers={**app.auth, "Content-Type": "application/json"},
                          content=body.encode()), param=param)


# -- keys --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("header", ["Bearer  {key}", "Bearer \t{key}", "Bearer {key} x"])
def test_a_key_with_whitespace_around_it_is_a_401_that_says_so(app, header):
    key = app.auth["Authorization"].removeprefix("Bearer ")
    error = refused(app.http.get("/v1/files", headers={"Authorization": header.format(key=key)}), 401)
    assert error["code"] == "invalid_api_key" and "whitespace" in error["message"]
    assert key not in error["message"]


# -- the schema says what the server does ----------------------------------------------------------

def test_a_request_that_fails_validation_is_the_400_the_schema_documents(app):
    schema = app.http.get("/openapi.json").json()
    operation = schema["paths"]["/v1/chat/completions"]["post"]
    assert "422" not in operation["responses"] and "HTTPValidationError" not in schema["components"]["schemas"]
    error = refused(chat(app, temperature="hot"), param="temperature")
    assert operation["responses"]["400"]["content"]["application/json"]["schema"] == \
        {"$ref": "#/components/schemas/ErrorResponse"}
    assert error["type"] == "invalid_request_error"


def test_every_operation_documents_the_statuses_it_sends(app):
    schema = app.http.get("/openapi.json").json()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            statuses = set(operation["responses"])
            assert {"200", "400", "401", "429"} <= statuses and "422" not in statuses, (method, path, statuses)
            if "{" in path:
                assert "404" in statuses, (method, path)
    assert "413" in schema["paths"]["/v1/files"]["post"]["responses"]
    streamed = schema["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
    assert set(streamed) == {"application/json", "text/event-stream"}


@pytest.mark.parametrize("path, allowed", [("/v1/files/file-x", {"GET", "DELETE"}),
                                           ("/v1/models/ft:tiny:acme:x:y", {"GET", "DELETE"}),
                                           ("/v1/files", {"GET", "POST"})])
def test_405_lists_every_method_the_path_takes(app, path, allowed):
    response = app.http.request("PATCH", path, headers=app.auth)
    refused(response, 405)
    assert {m.strip() for m in response.headers["allow"].split(",")} == allowed


def test_a_bare_metadata_filter_is_a_400_not_ignored(app):
    refused(app.http.get("/v1/fine_tuning/jobs?metadata=5", headers=app.auth), param="metadata")
    assert app.http.get("/v1/fine_tuning/jobs?metadata=null", headers=app.auth).status_code == 200
    assert app.http.get("/v1/fine_tuning/jobs?metadata[suite]=e2e", headers=app.auth).status_code == 200
