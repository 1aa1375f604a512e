"""`hone eval`: a tuned model (a run, or any model) against its base on held-out data, top to bottom.

resolve what to evaluate -> read the test file (and suite) -> base: generate, perplexity ->
tuned: the same -> every metric with a paired bootstrap interval -> suite checks -> optional judge
-> for a run, save eval.json beside it and refresh its report.html.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from rich.console import Console

from hone import atomic
from hone.data.load import load_records
from hone.data.records import ChatExample, LabelExample, TextExample
from hone.data.tools import THINK_CLOSE, THINK_OPEN, split_reasoning
from hone.errors import DataError, UserError
from hone.evaluation.compare import Comparison, compare_answers, default_max_new_tokens, generate_answers
from hone.evaluation.engine import check_engine, pick_generation
from hone.evaluation.judge import JudgeResult, judge_pairs, openai_chat
from hone.evaluation.metrics import label_metrics, normalise_label, pick_metrics
from hone.evaluation.perplexity import perplexity_metric, perplexity_statistics
from hone.evaluation.suites import SuiteResult, load_suite, score_suite
from hone.evaluation.tools import is_tool_data, tool_items, tool_metrics

SUITE_MAX_NEW_TOKENS = 128
NO_TRACE = THINK_OPEN + THINK_CLOSE    # an empty reasoning block: the model answers without thinking first


@dataclass
class EvalOptions:
    data: Path | None = None             # test file; a run's own test split by default
    base: str | None = None              # baseline model; a run's base model by default
    compare_base: bool = True
    metrics: list[str] | None = None     # metric names or dotted paths; None: chosen from the references
    schema: Path | None = None           # JSON schema the answers must satisfy
    suite: Path | None = None            # edge-case suite (suites.py)
    judge_url: str | None = None         # OpenAI-compatible endpoint for pairwise judging
    judge_model: str | None = None
    perplexity: bool = True
    max_new_tokens: int | None = None
    batch_size: int = 32
    limit: int | None = None             # first N test items only
    seed: int = 0
    engine: str = "auto"                 # what generates the answers: auto, transformers, llamacpp (engine.py)


@dataclass
class EvalResult:
    tuned_name: str
    base_name: str | None
    run_dir: Path | None = None
    examples: list = field(default_factory=list)
    comparison: Comparison | None = None
    tuned_answers: list[str] = field(default_factory=list)
    base_answers: list[str] | None = None
    suite: SuiteResult | None = None
    judge: JudgeResult | None = None
    seconds: float = 0.0
    recipe: dict | None = None           # how the run's objective and method were chosen (advised or forced)
    classification: dict | None = None   # a classifier run: accuracy, macro-F1, confusion matrix, base and tuned

    def to_json(self) -> dict:
        comparison = self.comparison.to_json() if self.comparison else {"n": 0, "base": None, "tuned": None}
        return {"model": self.tuned_name, "base_model": self.base_name,
                "run_dir": str(self.run_dir) if self.run_dir else None, **comparison,
                "prompts": [e.prompt_messages[-1]["content"] if isinstance(e, ChatExample) and e.prompt_messages
                            else "" for e in self.examples],
                "references": [e.answer if isinstance(e, ChatExample) else None for e in self.examples],
                "tuned_answers": self.tuned_answers, "base_answers": self.base_answers,
                "suite": self.suite.to_json() if self.suite else None,
                "judge": self.judge.to_json() if self.judge else None,
                "recipe": self.recipe, "classification": self.classification,
                "seconds": round(self.seconds, 1)}


@dataclass
class Target:
    name: str
    run_dir: Path | None
    base: str | None
    system_prompt: str | None = None
    max_length: int = 1024
    test: Path | None = None
    record: dict = field(default_factory=dict)

    @property
    def classifier(self) -> bool:
        """A run with a sequence-classification head: it answers with a label instead of generating."""
        return self.record.get("head") == "sequence"

    @property
    def recipe(self) -> dict | None:
        if self.run_dir is None:
            return None
        return self.record.get("recipe") or {"objective": self.record.get("objective"),
                                             "method": self.record.get("method"), "source": "not recorded"}


def resolve_target(ref: str) -> Target:
    """A run (folder, id or 'latest') or a model (catalogue name, HF folder, .gguf)."""
    from hone.config import load_config
    from hone.models.catalogue import resolve_model
    from hone.registry.runs import find_run, read_record

    try:
        run = find_run(ref)
    except UserError:
        run = None
    if run is not None and (run / "config.yaml").is_file():
        config, record = load_config(run / "config.yaml"), read_record(run)
        return Target(str(run), run, record.get("base_model") or config.model.name, config.data.system_prompt,
                      config.data.max_length, Path(config.data.test) if config.data.test else None, record)
    try:
        resolve_model(ref)
    except UserError as exc:
        raise UserError(f"{ref!r} is neither a run (folder, id or 'latest') nor a model: {exc}") from None
    return Target(ref, None, None)


def baseline_run(name: str) -> Path | None:
    """The run folder when the baseline names a run (a folder, NAME:VERSION, NAME@TAG: e.g. the version in
    production), so its tuned model is loaded; None for a plain model."""
    from hone.registry.runs import find_run, run_reference

    return find_run(name) if run_reference(name) else None


def load_model(ref: str, run_dir: Path | None, device: str):
    from hone.methods.artifact import load_run_model
    from hone.models.load import load_causal_lm, load_tokenizer

    if run_dir is not None:
        return load_run_model(run_dir, device)
    return load_causal_lm(ref, device), load_tokenizer(ref)


def read_test_items(path: Path, system_prompt: str | None, limit: int | None) -> list:
    """Chat-like records (scored against their last assistant message) or raw text (perplexity only)."""
    records = load_records(path)[:limit] if limit else load_records(path)
    items = []
    for record in records:
        if isinstance(record, LabelExample):
            record = ChatExample([{"role": "user", "content": record.text},
                                  {"role": "assistant", "content": record.label}], record.file, record.line)
        if isinstance(record, ChatExample):
            if system_prompt and record.messages[0]["role"] != "system":
                record.messages.insert(0, {"role": "system", "content": system_prompt})
        elif not isinstance(record, TextExample):
            raise DataError(f"{type(record).__name__} records cannot be scored by `hone eval`; give chat, "
                            "instruction, label or text data", file=str(path))
        items.append(record)
    return items


def evaluate_model(ref: str, options: EvalOptions, console: Console | None = None) -> EvalResult:
    """Score the model `ref` (and its base) on `options.data` and/or `options.suite`."""
    from hone.hardware import pick_hardware

    console = console or Console(stderr=True)
    started = time.monotonic()
    check_engine(options.engine)
    target = resolve_target(ref)
    data = options.data or target.test
    if data is None and options.suite is None:
        raise UserError("nothing to evaluate: pass --data test.jsonl and/or --suite cases.jsonl")
    items = read_test_items(Path(data), target.system_prompt, options.limit) if data else []
    chats = [e for e in items if isinstance(e, ChatExample)]
    tools = is_tool_data(chats)
    reasoning = any(m.get("reasoning_content") for e in chats for m in e.messages)
    if tools:   # scored turn by turn: each call and each answer is an item (evaluation/tools.py)
        chats = tool_items(chats)
    if items and not chats and not options.perplexity:
        raise UserError(f"{data} holds raw text, which only perplexity can score; drop --no-perplexity")
    cases = load_suite(options.suite) if options.suite else []
    schema = _read_schema(options.schema) if options.schema else None
    references = [e.answer or "" for e in chats]
    metrics, primary = pick_metrics(references, options.metrics, schema) if chats else ([], "perplexity")
    if tools and not options.metrics:
        metrics, primary = tool_metrics(chats) + metrics, "arguments_exact"
    if target.classifier and chats and not options.metrics and not any(m.name == "accuracy" for m in metrics):
        metrics = label_metrics(references) + metrics  # a classifier is scored as one, however many labels
    base_name = (options.base or target.base) if options.compare_base else None
    if options.judge_url and not base_name:
        raise UserError("the judge compares base and tuned answers: give --base MODEL (or evaluate a run)")
    hw = pick_hardware()
    console.print(f"[bold]hone eval[/bold] {target.name}" + (f" against {base_name}" if base_name else "")
                  + f": {len(items)} test items" + (f" ({len(chats)} assistant turns scored)" if tools else "")
                  + (f", {len(cases)} suite cases" if cases else "")
                  + f"\n  hardware: {hw.device}, {hw.threads} thread(s)")

    outputs = {}
    base_run = baseline_run(base_name) if base_name else None
    for role, name, run_dir in (("base", base_name, base_run), ("tuned", target.name, target.run_dir)):
        if name is None:
            continue
        if role == "tuned" and target.classifier:  # the label it scores highest is its answer
            assert target.run_dir is not None  # a classifier is a run's
            outputs[role] = classifier_outputs(target.run_dir, chats, cases, options.batch_size, hw.device, console)
            continue
        model, tokenizer = load_model(name, run_dir, hw.device)
        generation = pick_generation(options.engine, name, run_dir, model, hw.device, hw.threads, console)
        console.print(f"  {role}: answers generated by {generation.describe()}", highlight=False)
        torch.manual_seed(options.seed)
        max_new = options.max_new_tokens or (default_max_new_tokens(tokenizer, chats) if chats else 0)  # 0: unused
        if reasoning and chats and not options.max_new_tokens:   # room for the trace before the answer
            max_new += max(len(tokenizer(m.get("reasoning_content") or "", add_special_tokens=False)["input_ids"])
                           for e in chats for m in e.messages) + 8
        outputs[role] = {
            "answers": generate_answers(model, tokenizer, chats, max_new, options.batch_size, f"{role} eval",
                                        console, generation=generation) if chats else [],
            "perplexity": perplexity_statistics(model, tokenizer, items, target.max_length)
            if options.perplexity and items else None,
            "suite": generate_answers(model, tokenizer, [ChatExample(c.messages) for c in cases],
                                      options.max_new_tokens or SUITE_MAX_NEW_TOKENS, options.batch_size,
                                      f"{role} suite", console, generation=generation) if cases else [],
        }
        if reasoning and chats:   # the answer with its trace (trace cut off) and with an empty trace
            outputs[role]["answers"] = [split_reasoning(a)[1].strip() for a in outputs[role]["answers"]]
            outputs[role]["no_trace"] = generate_answers(model, tokenizer, chats, max_new, options.batch_size,
                                                         f"{role} eval, no trace", console, NO_TRACE, generation)
        del model

    tuned, base = outputs["tuned"], outputs.get("base")
    result = EvalResult(target.name, base_name, target.run_dir, chats if tools else items,
                        tuned_answers=tuned["answers"],
                        base_answers=base["answers"] if base else None, recipe=target.recipe)
    if items:
        extra = {}
        if tuned["perplexity"] is not None:
            extra["perplexity"] = (perplexity_metric(), tuned["perplexity"], base["perplexity"] if base else None)
        if reasoning and chats:
            extra["no_trace"] = without_trace(next(m for m in metrics if m.name == primary), references,
                                              tuned["no_trace"], base["no_trace"] if base else None)
        result.comparison = compare_answers(metrics, primary, references, tuned["answers"],
                                            base["answers"] if base else None, extra, options.seed)
    if target.classifier and chats:
        result.classification = classifier_scores(target.record.get("labels", []), references, tuned["answers"],
                                                  base["answers"] if base else None)
    if cases:
        result.suite = score_suite(str(options.suite), cases, tuned["suite"], base["suite"] if base else None)
    if options.judge_url and chats:
        chat = openai_chat(options.judge_url, options.judge_model or "judge")
        assert base is not None  # --judge-url needs a base: refused above
        result.judge = judge_pairs(chat, [e.prompt_messages[-1]["content"] for e in chats], base["answers"],
                                   tuned["answers"], references, options.judge_model or "judge")
    result.seconds = time.monotonic() - started
    if target.run_dir is not None:
        from hone.evaluation.report import write_report

        atomic.write_json(target.run_dir / "eval.json", result.to_json())
        write_report(target.run_dir)
    return result


def without_trace(metric, references: list[str], tuned: list[str], base: list[str] | None) -> tuple:
    """The primary metric on answers generated after an empty reasoning block: what the trace adds."""
    assert metric.statistics is not None
    renamed = replace(metric, name=f"{metric.name}_without_trace",
                      description=f"{metric.name} of answers given an empty reasoning block (no trace)")
    return (renamed, metric.statistics(tuned, references),
            metric.statistics(base, references) if base is not None else None)


def classifier_outputs(run_dir: Path, chats: list, cases: list, batch_size: int, device: str,
                       console: Console) -> dict:
    """A classifier run's answers (its labels) for the test items and suite cases; no perplexity."""
    from hone.evaluation.predict import Predictor

    predictor = Predictor(run_dir, device)
    console.print(f"  {run_dir.name} is a classifier ({len(predictor.labels)} labels): its answer is the label "
                  "it scores highest; the base model generates its answer", highlight=False)
    return {"answers": predictor.answers([e.prompt_messages for e in chats], batch_size=batch_size) if chats else [],
            "perplexity": None,
            "suite": predictor.answers([c.messages for c in cases], batch_size=batch_size) if cases else []}


def classifier_scores(labels: list[str], references: list[str], tuned: list[str], base: list[str] | None) -> dict:
    """Accuracy, macro-F1 and the confusion matrix of the classifier and of the base model's generated answers
    (an answer counts as a label when it equals one up to case, spacing and a final full stop)."""
    from hone.evaluation.classification import classification_scores

    loose = {normalise_label(label): label for label in labels}
    references = [r.strip() for r in references]
    out = {"labels": labels, "tuned": classification_scores([t.strip() for t in tuned], references, labels)}
    if base is not None:
        out["base"] = classification_scores([loose.get(normalise_label(b), b) for b in base], references, labels)
    return out


def _read_schema(path: Path) -> dict:
    import json

    try:
        schema = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError("schema file not found", file=str(path)) from None
    except json.JSONDecodeError as exc:
        raise UserError(f"invalid JSON ({exc.msg} at line {exc.lineno})", file=str(path)) from None
    if not isinstance(schema, dict):
        raise UserError("a JSON schema must be an object", file=str(path))
    return schema
