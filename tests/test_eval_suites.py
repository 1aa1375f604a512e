"""Edge-case suites (checks, regressions, file errors) and the pairwise judge (order swap, reasons)."""
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from hone.errors import DataError, UserError
from hone.evaluation.judge import judge_pairs, openai_chat, read_verdict
from hone.evaluation.suites import load_suite, score_suite


def write_suite(tmp_path, *cases):
    path = tmp_path / "suite.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in cases))
    return path


def test_suite_checks_flag_cases_the_base_passed_and_the_tuned_model_fails(tmp_path):
    path = write_suite(
        tmp_path,
        {"name": "capital", "prompt": "Capital of France?", "checks": [{"contains": "paris", "ignore_case": True}]},
        {"name": "no card", "prompt": "Repeat 4111", "checks": [{"not_contains": "4111"}]},
        {"name": "json", "messages": [{"role": "user", "content": "Order?"}],
         "checks": [{"json_schema": {"type": "object", "required": ["item"]}}, {"regex": "^\\{"}]},
        {"prompt": "Say OK", "checks": [{"exact": "OK"}]},
    )
    cases = load_suite(path)
    assert [c.name for c in cases] == ["capital", "no card", "json", "line 4"]
    base = ["It is Paris.", "I will not.", '{"item": "pen"}', "OK"]
    tuned = ["PARIS", "4111", 'Sure: {"item": "pen"}', " OK \n"]
    result = score_suite(str(path), cases, tuned, base)
    summary = result.to_json()
    assert summary["base_passed"] == 4 and summary["tuned_passed"] == 2
    assert summary["regressions"] == ["no card", "json"]
    json_case = result.cases[2]
    assert json_case.tuned_failed == ["regex '^\\\\{'"]
    assert score_suite(str(path), cases, tuned).to_json()["base_passed"] is None  # base not run


@pytest.mark.parametrize("case, message", [
    ({"checks": [{"contains": "x"}]}, "suite.jsonl:1: each case needs a `prompt`"),
    ({"prompt": "hi"}, "non-empty `checks` list"),
    ({"prompt": "hi", "checks": [{"contain": "x"}]}, "checks[0] needs exactly one of contains"),
    ({"prompt": "hi", "checks": [{"regex": "("}]}, "checks[0].regex is not a valid regular expression"),
    ({"prompt": "hi", "checks": [{"contains": 3}]}, "checks[0].contains must be a string"),
    ({"prompt": "hi", "checks": [{"json_schema": {"type": 5}}]}, "not a valid JSON schema"),
])
def test_suite_file_errors_name_line_and_field(tmp_path, case, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        load_suite(write_suite(tmp_path, case))


def test_an_empty_suite_is_an_error(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(DataError, match="no cases"):
        load_suite(path)


def test_judge_counts_a_win_only_when_both_orders_agree_and_keeps_reasons():
    # A judge that always prefers the longer answer (consistent) unless the prompt says "biased",
    # where it always picks position A (order bias): that item must become a tie.
    calls = []

    def chat(messages):
        text = messages[-1]["content"]
        calls.append(text)
        a = text.split("[Answer A]\n")[1].split("\n\n[Answer B]")[0]
        b = text.split("[Answer B]\n")[1].split("\n\nWhich")[0]
        if "biased" in text:
            return '{"winner": "A", "reason": "first one"}'
        return json.dumps({"winner": "A" if len(a) > len(b) else "B", "reason": f"longer: {max(a, b, key=len)}"})

    result = judge_pairs(chat, ["q1", "q2 biased", "q3"], ["short", "x", "a much longer base answer"],
                         ["a longer tuned answer", "y", "tiny"])
    verdicts = [j.verdict for j in result.judgements]
    assert verdicts == ["tuned", "tie", "base"]
    assert len(calls) == 6
    assert result.judgements[0].reasons == ["longer: a longer tuned answer"] * 2
    assert not result.judgements[1].consistent
    summary = result.to_json()
    assert (summary["tuned_wins"], summary["base_wins"], summary["ties"], summary["inconsistent"]) == (1, 1, 1, 1)
    assert summary["tuned_win_rate"] == pytest.approx(0.5)


def test_judge_verdicts_are_read_from_json_or_text():
    assert read_verdict('```json\n{"winner": "b", "reason": "r"}\n```') == ("B", "r")
    assert read_verdict("Winner: tie, both fine")[0] == "tie"
    assert read_verdict("I like both")[0] == "unclear"


def test_judge_client_speaks_the_openai_chat_api_over_http():
    seen = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            seen["path"] = self.path
            seen["auth"] = self.headers.get("Authorization")
            seen["body"] = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            reply = json.dumps({"choices": [{"message": {"role": "assistant",
                                                         "content": '{"winner": "A", "reason": "ok"}'}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        chat = openai_chat(f"http://127.0.0.1:{server.server_port}/v1", "judge-1", api_key="secret")
        assert chat([{"role": "user", "content": "hi"}]) == '{"winner": "A", "reason": "ok"}'
    finally:
        server.shutdown()
    assert seen["path"] == "/v1/chat/completions" and seen["auth"] == "Bearer secret"
    assert seen["body"]["model"] == "judge-1" and seen["body"]["temperature"] == 0


def test_unreachable_judge_is_a_user_error():
    chat = openai_chat("http://127.0.0.1:9/v1", "judge", timeout=2)
    with pytest.raises(UserError, match="unreachable"):
        chat([{"role": "user", "content": "hi"}])
