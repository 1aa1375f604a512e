"""Knowledge bases: reading, chunking, building, resuming, searching, and the errors a user sees."""
from __future__ import annotations

import json

import pytest

from hone.errors import UserError
from hone.kb import KnowledgeBase, create_kb, find_kb, list_kbs, remove_kb, with_passages
from hone.kb.chunking import chunk_sections, word_counter
from hone.kb.documents import Section, read_sections

PLANTED = "The zorblax daemon listens on port 7319 and writes its log to /var/log/zorblax."


@pytest.fixture(scope="module")
def encoder():
    from hone.kb.embed import Encoder

    return Encoder()


def write_pdf(path, text: str):
    """A one-page PDF with `text` in Helvetica, cross-reference table and all."""
    stream = f"BT /F1 12 Tf 10 100 Td ({text}) Tj ET".encode()
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 400 144] /Contents 4 0 R "
               b"/Resources << /Font << /F1 5 0 R >> >> >>",
               b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    path.write_bytes(bytes(out))
    return path


@pytest.fixture
def docs(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "guide.md").write_text("# Install\n\nRun the installer; it takes two minutes.\n\n## On Linux\n\n"
                                     f"{PLANTED}\n\n```\n# not a heading inside a fence\n```\n\n# Billing\n\n"
                                     "Invoices are sent on the first day of each month. Refunds take ten days.\n")
    (folder / "page.html").write_text("<html><head><style>p {color: red}</style></head><body><h1>Returns</h1>"
                                      "<p>Items can be returned within 30 days.</p><script>var x = 1;</script>"
                                      "<h2>Damaged</h2><p>Send a photo of the damage.</p></body></html>")
    (folder / "faq.jsonl").write_text(json.dumps({"id": "parking", "title": "Parking",
                                                  "text": "Parking is free on level B2."}) + "\n"
                                      + json.dumps({"id": "hours", "text": "The office opens at 9 am."}) + "\n")
    write_pdf(folder / "vault.pdf", "The vault code is 4417.")
    return folder


def test_markdown_sections_follow_headings_not_fenced_lines(docs):
    sections = read_sections(docs / "guide.md", "guide.md")
    assert [s.title for s in sections] == ["Install", "Install > On Linux", "Billing"]
    assert "# not a heading inside a fence" in sections[1].text


def test_html_jsonl_and_pdf_sections(docs):
    html = read_sections(docs / "page.html", "page.html")
    assert [(s.title, s.text) for s in html] == [("Returns", "Items can be returned within 30 days."),
                                                  ("Returns > Damaged", "Send a photo of the damage.")]
    records = read_sections(docs / "faq.jsonl", "faq.jsonl")
    assert [(s.source, s.title) for s in records] == [("faq.jsonl:parking", "Parking"), ("faq.jsonl:hours", "")]
    assert read_sections(docs / "vault.pdf", "vault.pdf") == [Section("vault.pdf", "page 1", "The vault code is 4417.")]


def test_chunks_fit_the_size_overlap_and_never_cross_a_section():
    words = [f"w{i}" for i in range(100)]
    paragraphs = "\n\n".join(" ".join(words[i:i + 10]) + "." for i in range(0, 100, 10))
    sections = [Section("a.md", "One", paragraphs), Section("a.md", "Two", "short tail.")]
    chunks = chunk_sections(sections, max_tokens=30, overlap=10, count=word_counter)
    assert all(len(c.text.split()) <= 30 for c in chunks)
    assert [c.id for c in chunks] == [f"a.md#{i}" for i in range(1, len(chunks) + 1)]
    one = [c for c in chunks if c.title == "One"]
    for before, after in zip(one, one[1:]):   # each chunk starts with the paragraph the one before ended with
        assert after.text.split()[:10] == before.text.split()[-10:]
    assert {w for c in one for w in c.text.rstrip(".").replace(".", "").split()} == set(words)
    assert chunks[-1].title == "Two" and chunks[-1].text == "short tail."


def test_long_sentence_is_cut_into_windows_within_the_size():
    chunks = chunk_sections([Section("b.txt", "", " ".join(["word"] * 95))], 20, 0, word_counter)
    assert len(chunks) >= 5 and all(len(c.text.split()) <= 20 for c in chunks)
    assert sum(len(c.text.split()) for c in chunks) == 95


def test_build_search_and_reopen_find_the_planted_passage(docs, encoder):
    result = create_kb("support", [docs], embedder=encoder)
    assert (result.version, result.status, result.documents) == (1, "built", 4)
    kb = KnowledgeBase("support", encoder=encoder)   # reopened from disk: index, words, manifest
    for mode in ("hybrid", "dense", "bm25"):
        assert kb.search("Which port does the zorblax daemon listen on?", 2, mode)[0].id == "guide.md#2", mode
    assert kb.search("what is the code of the vault", 1)[0].id == "vault.pdf#1"
    assert kb.search("where can I park my car", 1)[0].id == "faq.jsonl:parking#1"
    assert kb.search('"unbalanced (quotes AND', 1) is not None   # FTS5 syntax in a question is just text
    prompt = with_passages([{"role": "user", "content": "Which port?"}], kb.search("zorblax port", 1))
    assert "[guide.md#2] Install > On Linux\n" + PLANTED in prompt[0]["content"]
    assert prompt[0]["content"].endswith("Question: Which port?")


def test_same_sources_are_unchanged_changed_sources_make_a_new_version(docs, encoder):
    create_kb("support", [docs], embedder=encoder)
    assert create_kb("support", [docs], embedder=encoder).status == "unchanged"
    (docs / "faq.jsonl").write_text(json.dumps({"id": "wifi", "text": "The wifi password is hunter2."}) + "\n")
    second = create_kb("support", [docs], embedder=encoder)
    assert (second.version, second.status) == (2, "built")
    assert KnowledgeBase("support", encoder=encoder).search("wifi password", 1)[0].id == "faq.jsonl:wifi#1"
    assert find_kb("support:1").name == "1"
    assert [f"{m['name']}:{m['version']}" for m in list_kbs()] == ["support:1", "support:2"]
    assert remove_kb("support:1") == ["support:1"]
    assert remove_kb("support") == ["support:2"] and list_kbs() == []


class Interrupting:
    """The real encoder, stopped (as by Ctrl-C) on its `stop_at`-th document; counts what it embedded."""

    def __init__(self, encoder, stop_at=None):
        self.encoder, self.stop_at, self.calls, self.texts = encoder, stop_at, 0, []

    def __getattr__(self, name):
        return getattr(self.encoder, name)

    def embed(self, texts, batch_size=32):
        self.calls += 1
        if self.calls == self.stop_at:
            raise KeyboardInterrupt
        self.texts += texts
        return self.encoder.embed(texts, batch_size)


def test_interrupted_build_resumes_with_the_documents_it_had(docs, encoder):
    whole = create_kb("whole", [docs], embedder=encoder)
    first = Interrupting(encoder, stop_at=3)
    with pytest.raises(KeyboardInterrupt):
        create_kb("part", [docs], embedder=first)
    with pytest.raises(UserError, match="was not finished .2 of 4 documents.; run the same hone kb create again"):
        KnowledgeBase("part")
    second = Interrupting(encoder)
    resumed = create_kb("part", [docs], embedder=second)
    assert (resumed.status, resumed.version, resumed.chunks) == ("resumed", 1, whole.chunks)
    assert second.calls == 2 and not set(second.texts) & set(first.texts)   # the first two were not embedded again
    a, b = KnowledgeBase("whole", encoder=encoder), KnowledgeBase("part", encoder=encoder)
    assert sorted(p.id for p in a.chunks()) == sorted(p.id for p in b.chunks())
    question = "How long do refunds take?"
    assert [p.id for p in a.search(question, 3)] == [p.id for p in b.search(question, 3)]


def test_unreadable_document_and_empty_kb_are_one_line_errors(tmp_path, encoder):
    binary = tmp_path / "scan.txt"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0")
    with pytest.raises(UserError, match=f"^{binary}: looks binary"):
        create_kb("bad", [binary], embedder=encoder)
    latin = tmp_path / "notes.md"
    latin.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(UserError, match=f"^{latin}: not UTF-8 text"):
        create_kb("bad", [latin], embedder=encoder)
    broken = tmp_path / "manual.pdf"
    broken.write_text("not a pdf")
    with pytest.raises(UserError, match=f"^{broken}: not a readable PDF"):
        create_kb("bad", [broken], embedder=encoder)
    blank = tmp_path / "blank.md"
    blank.write_text("\n\n   \n")
    with pytest.raises(UserError, match="knowledge base empty would be empty: no text in blank.md"):
        create_kb("empty", [blank], embedder=encoder)
    assert list_kbs() == [] or all(m["name"] != "empty" for m in list_kbs())
    with pytest.raises(UserError, match="no knowledge base 'nope'"):
        KnowledgeBase("nope")


class FakeTeacher:
    """An OpenAI-compatible endpoint on a free local port that answers like a teacher would: one grounded
    pair per passage, one from outside knowledge, one duplicate, and one that repeats an evaluation question."""

    def __init__(self):
        import http.server
        import threading

        teacher = self
        self.requests = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                teacher.requests.append(body)
                passage = body["messages"][-1]["content"].split("Passage:\n", 1)[1]
                sentence = passage.splitlines()[-1].split(". ")[0].rstrip(".")
                pairs = [{"question": f"Is it true that {sentence}?", "answer": sentence},
                         {"question": "Who won the 1998 football World Cup?", "answer": "France"},
                         {"question": f"is it true that {sentence} ?", "answer": sentence},
                         {"question": "Which port does the zorblax daemon listen on?", "answer": "7319"}]
                reply = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                         "choices": [{"index": 0, "finish_reason": "stop", "message": {
                             "role": "assistant", "content": "```json\n" + json.dumps(pairs) + "\n```"}}]}
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_synth_keeps_source_ids_and_drops_ungrounded_duplicate_and_leaked_pairs(docs, encoder, tmp_path):
    from hone.kb.synth import openai_teacher, synthesise

    create_kb("support", [docs], embedder=encoder)
    kb = KnowledgeBase("support", encoder=encoder)
    questions = tmp_path / "questions.jsonl"
    questions.write_text(json.dumps({"messages": [{"role": "user", "content": "Which port does the zorblax daemon "
                                                   "listen on?"}, {"role": "assistant", "content": "7319"}]}) + "\n")
    fake = FakeTeacher()
    try:
        out = tmp_path / "train.jsonl"
        result = synthesise(kb, openai_teacher(fake.url, "teacher-x"), "fake", out, per_chunk=4, exclude=questions)
    finally:
        fake.close()
    chunks = {p.id: p.passage for p in kb.chunks()}
    assert fake.requests[0]["model"] == "teacher-x" and len(fake.requests) == len(chunks)
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(written) == len(chunks) == len(result.kept)
    for example in written:   # every kept answer comes from the chunk it names
        assert example["messages"][1]["content"] in chunks[example["source"]]
    n = len(chunks)
    # "France" everywhere, "7319" everywhere but the chunk it is in (where it is the evaluation question)
    assert result.dropped() == {"ungrounded": n + n - 1, "duplicate": n, "leak": 1}
    report = json.loads((tmp_path / "train.jsonl.synth.json").read_text())
    assert report["kept"] == n and {d["reason"] for d in report["dropped_examples"]} >= {"ungrounded", "duplicate"}
    # Again, with passages in the prompts: the teacher's replies come from the cache (its endpoint is closed now)
    again = synthesise(kb, openai_teacher(fake.url, "teacher-x"), "fake", out, per_chunk=4, exclude=questions,
                       with_passages=2)
    assert len(again.kept) == n
    for example in (json.loads(line) for line in out.read_text().splitlines()):
        prompt = example["messages"][0]["content"]
        assert prompt.count("\n\n[") == 2 and f"[{example['source']}] " in prompt
        assert prompt.rsplit("\n\nQuestion: ", 1)[1].startswith("Is it true that ")   # the teacher's question last


def test_teacher_endpoint_that_is_down_is_one_line_naming_the_url():
    import socket

    from hone.kb.synth import openai_teacher

    with socket.socket() as s:   # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    with pytest.raises(UserError, match=f"^teacher endpoint {url} is unreachable"):
        openai_teacher(url, "m", timeout=5)([[{"role": "user", "content": "hi"}]])


def test_chat_with_kb_gives_the_model_the_passages_and_prints_their_ids(docs, encoder, tiny_model):
    from hone.evaluation.predict import Predictor, chat_loop

    create_kb("support", [docs], embedder=encoder)
    predictor = Predictor(str(tiny_model))
    seen = []
    stream = predictor.stream
    predictor.stream = lambda messages, *a: (seen.append(messages), stream(messages, *a))[1]  # type: ignore
    questions, written = iter(["Which port does the zorblax daemon listen on?", ""]), []
    history = chat_loop(predictor, lambda: next(questions), written.append, max_new_tokens=4,
                        kb=KnowledgeBase("support", encoder=encoder), k=2)
    assert PLANTED in seen[0][-1]["content"] and seen[0][-1]["content"].endswith("Question: Which port does the "
                                                                                  "zorblax daemon listen on?")
    assert written[-1].startswith("sources: [guide.md#2]")
    assert history[0]["content"] == "Which port does the zorblax daemon listen on?"   # history keeps the question
    answer, passages = predictor.ask(question_only := [{"role": "user", "content": "zorblax port?"}],
                                     KnowledgeBase("support", encoder=encoder), k=1, max_new_tokens=2)
    assert isinstance(answer, str) and [p.id for p in passages] == ["guide.md#2"]
    assert question_only == [{"role": "user", "content": "zorblax port?"}]   # the caller's messages unchanged


def test_four_way_comparison_scores_every_contender_on_the_same_questions(docs, encoder, tiny_model, chat_files,
                                                                          tmp_path, monkeypatch):
    import hone
    from hone.evaluation.contenders import compare_knowledge, print_comparison
    from hone.evaluation.run_eval import EvalOptions

    create_kb("support", [docs], embedder=encoder)
    monkeypatch.setattr("hone.kb.embed.Encoder", lambda spec: encoder)   # the kb's encoder, loaded once
    run = hone.train(data=chat_files["train"], model=str(tiny_model), max_steps=1, output=tmp_path / "run",
                     train__threads=1, train__batch_size=4, train__micro_batch_size=4, eval__forgetting=False).run_dir
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in [
        {"messages": [{"role": "user", "content": "Which port does the zorblax daemon listen on?"},
                      {"role": "assistant", "content": "7319"}], "source": "guide.md"},
        {"messages": [{"role": "user", "content": "Where is parking free?"},
                      {"role": "assistant", "content": "level B2"}], "source": "faq.jsonl:parking"},
        {"messages": [{"role": "user", "content": "What is the vault code?"},
                      {"role": "assistant", "content": "4417"}], "source": "page.html"},   # a wrong gold source
        {"messages": [{"role": "user", "content": "When does the office open?"},
                      {"role": "assistant", "content": "9 am"}]}]))
    report = compare_knowledge(str(run), ["base", "base+kb", "tuned", "tuned+kb"], "support",
                               EvalOptions(data=questions, max_new_tokens=3, batch_size=4), k=2)
    metrics = report.metrics()
    assert list(metrics) == ["base", "base+kb", "tuned", "tuned+kb"]
    assert all({"exact_match", "token_f1", "rouge_l"} <= set(m) for m in metrics.values())
    assert metrics["base+kb"]["recall_at_2"] == pytest.approx(2 / 3) and "recall_at_2" not in metrics["base"]
    assert metrics["base+kb"]["tokens_per_answer"] > metrics["base"]["tokens_per_answer"]   # the passages cost tokens
    assert report.primary == "token_f1" and report.choice in metrics and report.recommendation.startswith("Deploy ")
    assert report.contenders[1].against_first["token_f1"].interval is not None   # paired against `base`
    assert json.loads((run / "compare-kb.json").read_text())["metrics"] == json.loads(json.dumps(metrics))
    from rich.console import Console

    console = Console(record=True, width=120)
    print_comparison(report, console)
    shown = console.export_text()
    assert "tuned+kb" in shown and "recall@2: 0.667 (3 questions name their source)" in shown
    with pytest.raises(UserError, match="'tuned' needs a run"):
        compare_knowledge(str(tiny_model), ["base", "tuned"], "support", EvalOptions(data=questions))


def test_advice_prefers_the_simpler_contender_when_the_best_is_not_significantly_better():
    import numpy as np

    from hone.evaluation.compare import compare_metric
    from hone.evaluation.contenders import Contender, recommend
    from hone.evaluation.metrics import TEXT_METRICS

    f1 = TEXT_METRICS["token_f1"]()
    per_item = {"base": [0.0] * 20, "base+kb": [1.0] * 9 + [0.0] * 11, "tuned": [0.0] * 20,
                "tuned+kb": [1.0] * 10 + [0.0] * 10}
    contenders = [Contender(name, "m", ["x"] * 20, 20.0, 100.0, 5.0, {"token_f1": float(np.mean(v))})
                  for name, v in per_item.items()]
    best = contenders[3]
    for c in contenders:
        c.against_best = compare_metric(f1, np.array(per_item[c.name])[:, None], np.array(per_item[best.name])[:, None])
    choice, advice = recommend(contenders, best, "token_f1")
    assert choice.name == "base+kb"
    assert advice.startswith("Deploy base+kb: tuned+kb scores best on token_f1 (0.500")
    assert "needs no training run" in advice and "Significantly worse: base 0.000" in advice


def test_served_answer_with_hone_kb_carries_its_citations(docs, encoder, tiny_model, monkeypatch):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from hone.serve.catalog import ModelSource
    from hone.serve.errors import install_error_handlers
    from hone.serve.inference import make_inference_router

    class Catalog:
        model = ModelSource("tiny", str(tiny_model), None, "system", 1700000000)

        def resolve(self, org, model_id):
            return self.model if model_id == "tiny" else None

    create_kb("support", [docs], embedder=encoder)
    monkeypatch.setattr("hone.kb.embed.Encoder", lambda spec: encoder)
    app = FastAPI()
    install_error_handlers(app)
    create_kb("private", [docs], embedder=encoder)
    router = make_inference_router(Catalog(), lambda: "acme", knowledge_bases=("support", "nope"))
    app.include_router(router)
    question = [{"role": "user", "content": "Which port does the zorblax daemon listen on?"}]
    with TestClient(app) as http:
        from openai import OpenAI

        official = OpenAI(base_url="http://testserver/v1", api_key="x", http_client=http, max_retries=0)
        reply = official.chat.completions.create(model="tiny", messages=question, max_tokens=3, temperature=0,
                                                 extra_body={"hone_kb": {"name": "support", "k": 2}})
        citations = (reply.model_extra or {})["hone_citations"]
        assert citations[0]["id"] == "guide.md#2" and len(citations) == 2
        assert reply.usage is not None and reply.usage.prompt_tokens > 60   # the passages were in the prompt
        missing = http.post("/v1/chat/completions", json={"model": "tiny", "messages": question,
                                                          "hone_kb": {"name": "nope"}})
        assert missing.status_code == 404 and missing.json()["error"]["param"] == "hone_kb"
        assert "no knowledge base 'nope'" in missing.json()["error"]["message"]
        unoffered = http.post("/v1/chat/completions", json={"model": "tiny", "messages": question,
                                                            "hone_kb": {"name": "private"}})   # exists, not offered
        assert unoffered.status_code == 404 and "not offered by this server" in unoffered.json()["error"]["message"]
        folder = str(next((docs.parent / "hone-home" / "kb" / "support").iterdir()))   # a path, not a name
        by_path = http.post("/v1/chat/completions", json={"model": "tiny", "messages": question,
                                                          "hone_kb": {"name": folder}})
        assert by_path.status_code == 404 and "not offered by this server" in by_path.json()["error"]["message"]
        streamed = http.post("/v1/chat/completions", json={"model": "tiny", "messages": question, "stream": True,
                                                           "max_tokens": 2, "hone_kb": {"name": "support", "k": 2}})
        frames = [json.loads(line[6:]) for line in streamed.text.splitlines()
                  if line.startswith("data: {")]
        assert [c["id"] for c in frames[0]["hone_citations"]] == [c["id"] for c in citations]
        assert all("hone_citations" not in f for f in frames[1:]) and streamed.text.endswith("data: [DONE]\n\n")
    router.engine.close()


def test_cli_errors_are_one_line_with_exit_status_2(tmp_path):
    import subprocess
    import sys

    missing = tmp_path / "nowhere"
    for args, message in ((["kb", "create", "docs", str(missing)], f"error: {missing}: no such file or folder"),
                          (["kb", "show", "nope"], "error: no knowledge base 'nope'; create one with hone kb create"),
                          (["eval", "latest", "--compare", "base,kb"],
                           "error: --compare and --kb go together: hone eval RUN --compare base,base+kb,tuned,"
                           "tuned+kb --kb NAME --data questions.jsonl")):
        done = subprocess.run([sys.executable, "-m", "hone.cli", *args], capture_output=True, text=True)
        assert done.returncode == 2 and done.stderr.strip().splitlines()[-1] == message, done.stderr
