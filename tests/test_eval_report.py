"""The report renders every section from a real (tiny) run; `hone eval` and `hone report` from the CLI."""
import json
import subprocess
import sys
from html.parser import HTMLParser

import pytest

from conftest import write_chat
from hone.config import build_config
from hone.evaluation.report import SECTIONS, write_report
from hone.objectives.sft import run_sft


class Page(HTMLParser):
    """Section ids with their text, inline SVG count, and every external reference."""

    def __init__(self):
        super().__init__()
        self.sections, self.current, self.svgs, self.external, self.scripts = {}, None, 0, [], 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.current = attrs.get("id")
            self.sections[self.current] = ""
        if tag == "svg":
            self.svgs += 1
        if tag == "script":
            self.scripts += 1
        for key in ("src", "href"):
            if attrs.get(key, "").startswith(("http:", "https:", "//")):
                self.external.append(attrs[key])

    def handle_endtag(self, tag):
        if tag == "section":
            self.current = None

    def handle_data(self, data):
        if self.current:
            self.sections[self.current] += data


def parse(path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


@pytest.fixture(scope="module")
def tiny_run(tiny_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("report-run")
    files = {name: write_chat(folder / f"{name}.jsonl", n, seed)
             for name, n, seed in (("train", 24, 1), ("validation", 6, 2), ("test", 6, 3))}
    config = build_config({
        "model": {"name": str(tiny_model)}, "output": str(folder / "run"),
        "data": {"train": str(files["train"]), "validation": str(files["validation"]),
                 "test": str(files["test"]), "max_length": 64},
        "method": {"name": "lora", "lora_r": 4, "lora_alpha": 8},
        "train": {"lr": 5e-3, "batch_size": 8, "micro_batch_size": 8, "threads": 1, "max_steps": 4, "eval_every": 2},
        "eval": {"max_new_tokens": 8},
    })
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HONE_HOME", str(folder / "home"))
        result = run_sft(config)
    return result.run_dir, files


def test_a_finished_run_has_a_report_with_every_section(tiny_run):
    run, _ = tiny_run
    page = parse(run / "report.html")
    assert list(page.sections) == list(SECTIONS)
    assert page.svgs >= 3  # loss, learning rate, differences with intervals
    assert page.external == [] and page.scripts == 0  # opens offline
    metrics = page.sections["metrics"]
    assert "json_match" in metrics and "95% interval" in metrics and "chrf" in metrics
    assert "Not run: this run has no forgetting probe results" in page.sections["forgetting"]
    assert "tokens trained" in page.sections["cost"] and "peak memory" in page.sections["cost"]
    assert "Best validation loss" in page.sections["training"]
    assert (run / "tensorboard").is_dir() and any((run / "tensorboard").iterdir())


def test_report_shows_forgetting_results_and_an_eval_suite(tiny_run, tmp_path):
    run, files = tiny_run
    record = json.loads((run / "run.json").read_text())
    record["forgetting"] = {"base": 0.62, "tuned": 0.55, "drop": 7.0, "ci": [3.1, 10.9], "gate": 5, "passed": False}
    (run / "run.json").write_text(json.dumps(record))
    suite = tmp_path / "suite.jsonl"
    suite.write_text(json.dumps({"name": "says reversed", "prompt": "Reverse apple", "checks": [{"contains": "reversed"}]}) + "\n")
    result = subprocess.run([sys.executable, "-m", "hone.cli", "eval", str(run), "--suite", str(suite),
                             "--max-new-tokens", "6", "--json"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["n"] == 6 and set(summary["base"]) == set(summary["tuned"])
    assert {"json_match", "exact_match", "token_f1", "rouge_l", "bleu", "chrf", "perplexity"} <= set(summary["tuned"])
    assert summary["suite"]["n"] == 1
    page = parse(run / "report.html")  # `hone eval` on a run refreshes its report
    forgetting = page.sections["forgetting"]
    assert "62.0%" in forgetting and "55.0%" in forgetting and "+7.0 points" in forgetting and "failed" in forgetting
    assert "says reversed" in page.sections["suite"]
    assert "perplexity" in page.sections["metrics"]


def test_eval_of_a_plain_model_without_base_prints_json(tiny_model, tmp_path):
    test = write_chat(tmp_path / "test.jsonl", 3, 5)
    result = subprocess.run([sys.executable, "-m", "hone.cli", "eval", str(tiny_model), "--data", str(test),
                             "--metric", "exact_match", "--metric", "token_f1", "--max-new-tokens", "4", "--json"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["base"] is None and summary["n"] == 3
    assert set(summary["tuned"]) == {"exact_match", "token_f1", "perplexity"}


def test_eval_and_report_errors_are_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "hone.cli", "eval", str(tmp_path / "nowhere"), "--data", "x.jsonl"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "is neither a run" in result.stderr
    with pytest.raises(Exception, match="not a run folder"):
        write_report(tmp_path)


def test_eval_of_raw_text_reports_perplexity_only(tiny_model, tmp_path):
    from hone.evaluation.run_eval import EvalOptions, evaluate_model

    text = tmp_path / "domain.jsonl"
    text.write_text('{"text": "Rivers carry stones to the sea."}\n{"text": "Maple leaves turn red."}\n')
    result = evaluate_model(str(tiny_model), EvalOptions(data=text, base=str(tiny_model)))
    summary = result.to_json()
    assert summary["n"] == 2 and set(summary["tuned"]) == {"perplexity"}
    assert summary["tuned"]["perplexity"] == pytest.approx(summary["base"]["perplexity"])  # same model twice
    assert summary["metrics"][0]["interval"] == pytest.approx([0.0, 0.0])
