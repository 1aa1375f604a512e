"""schemathesis against hone serve's own OpenAPI schema: no 5xx, and every answer is what the schema says.

The whole app (files, jobs, inference over the tiny model as "tiny") is called in-process through ASGI:
no port, no worker. Each operation gets a few valid and a few invalid requests (derandomized, so a run
repeats the last), and answers stay a few tokens long, so the module takes seconds on a 2-core machine.
A failure prints the request that reproduces it as a curl command.
"""
from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from schemathesis.specs.openapi.checks import positive_data_acceptance  # noqa: E402

from serve_helpers import in_process_app  # noqa: E402

EXAMPLES = 8   # requests per operation and mode (valid, invalid): 288 in all
# 400s a schema-valid request may still get: limits of the server and contents of files, which no JSON
# schema states. Any other 400 to a valid request means schema and server disagree.
# Refusals of schema-valid requests for what a schema cannot say: sizes, file contents, combinations of fields,
# a tool's parameters that are not a JSON schema (serve/tools.py INVALID_TOOLS).
SERVER_SIDE = {"request_too_large", "context_length_exceeded", "invalid_file_format", "conflicting_hyperparameters",
               "invalid_tools"}


@pytest.fixture(scope="module")
def served(tiny_model, tmp_path_factory):
    app = in_process_app(tiny_model, tmp_path_factory.mktemp("fuzz"), max_request_tokens=256)
    with app.http:
        yield app


def test_the_api_answers_as_its_schema_says(served):
    """Each operation, valid and invalid requests: no 5xx; statuses, content types, headers and bodies as
    documented; invalid data refused; valid data accepted (schemathesis's checks)."""
    key = served.auth["Authorization"].removeprefix("Bearer ")
    config = schemathesis.Config.from_dict({"auth": {"openapi": {"bearer": {"bearer": key}}}})
    schema = schemathesis.openapi.from_asgi("/openapi.json", served.http.app, config=config)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 32   # 18 of OpenAI's API, /v1/feedback, 13 hone extensions (serve/extensions/)
    for operation in operations:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            fuzz(operation, mode)


def fuzz(operation, mode) -> None:
    # no shrinking: the first failing request is reported as it was sent (a curl line), and a failing
    # run stays as short as a passing one
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case):
        if mode.is_positive and isinstance(case.body, dict) and isinstance(case.body.get("model"), str):
            # a model that exists and short answers, so generation runs rather than a 404 or the budget's 400
            case.body.update(model="tiny", max_tokens=2)
            case.body.pop("max_completion_tokens", None)
        response = case.call_and_validate(excluded_checks=[positive_data_acceptance])
        if mode.is_positive and response.status_code == 400:
            error = response.json()["error"]
            assert error["code"] in SERVER_SIDE, f"a schema-valid {operation.label} was refused: {error}"

    run()
