"""hone: fine-tune language models on your own hardware.

The front door: what the `hone` command does, callable from Python (docs/python.md).

    import hone
    result = hone.train(data="orders.jsonl", max_steps=50)          # -> hone.RunResult
    print(result.metric, result.base_score, result.tuned_score, result.run_dir)
    hone.evaluate(result.run_dir, data="test.jsonl")                # -> an evaluation with intervals
    hone.Predictor(result.run_dir).chat([{"role": "user", "content": "..."}])
    hone.check_data("orders.jsonl")                                 # -> the quality report
    hone.plan(model="smollm2-135m-instruct", methods=["lora", "full"])
    hone.export(result.run_dir, format="gguf", quant="q8_0")        # -> verified artifact + export.json
    hone.create_kb("handbook", "docs/")                             # -> a knowledge base (docs/knowledge.md)
    hone.KnowledgeBase("handbook").search("How do I ...?", k=4)     # -> passages with ids
    hone.synthesise("handbook", "train.jsonl")                      # -> QA pairs grounded in its chunks
    hone.compare_knowledge(run, "handbook", "questions.jsonl")      # -> base, base+kb, tuned, tuned+kb
    hone.sweep(data="orders.jsonl", name="orders-lr", budget="15m")  # -> trials, best, test score once
    hone.merge(["orders:1", "routing:1"], method="ties")            # -> a merged model scored on each task

Imports are deferred to the call: `import hone` stays fast for the CLI and for scripts that only
read a config (torch and transformers load when a function first needs them).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hone.version import __version__

# bitsandbytes (through `kernels` 0.19) warns on every import, when the hub is offline as hone's users
# usually are, that it skips a publisher check for a kernel hone never downloads; it also broke the
# one-line errors of every command on a fresh install.
logging.getLogger("kernels").setLevel(logging.ERROR)

__all__ = ["KnowledgeBase", "Predictor", "RunConfig", "RunResult", "check_data", "compare_knowledge", "create_kb",
           "data_from_traffic", "evaluate", "export", "load_config", "merge", "monitor_model", "plan", "promote",
           "sweep", "synthesise", "train", "__version__"]

if TYPE_CHECKING:
    from hone.config import RunConfig
    from hone.evaluation.contenders import KnowledgeComparison
    from hone.evaluation.predict import Predictor
    from hone.evaluation.promotion import PromotionResult
    from hone.evaluation.run_eval import EvalResult
    from hone.exporting import ExportResult
    from hone.kb import BuildResult, KnowledgeBase
    from hone.kb.synth import SynthResult
    from hone.monitor.from_traffic import TrafficDataset
    from hone.monitor.watch import MonitorResult
    from hone.objectives.lifecycle import RunResult
    from hone.objectives.plan import Plan
    from hone.sweeps import SweepResult
    from hone.sweeps.merge import MergeResult


def load_config(path: str | Path | None = None, sets: list[str] | None = None, **overrides: Any) -> RunConfig:
    """A validated run configuration: a YAML file (optional), `section.field=value` strings, and flags
    named as the CLI's (`data=`, `model=`, `method=`, `objective=`, `lr=`, `epochs=`, `max_steps=`,
    `seed=`, `output=`, `name=`, ...) or any field as `section__field=value`."""
    from hone import config

    return config.load_config(Path(path) if path is not None else None, config.overrides(sets, **overrides))


def train(config_or_path: RunConfig | str | Path | None = None, *, resume: str | Path | None = None,
          console=None, **overrides: Any) -> RunResult:
    """Fine-tune as `hone train` does and return the RunResult (run_dir, metric, base_score, tuned_score,
    forgetting, ...). `resume` continues an interrupted run (its folder, id, NAME:VERSION or 'latest');
    `continue_from="name@production"` trains the next version of a tuned run from its weights, replaying
    its training data (hone train --continue)."""
    from rich.console import Console

    from hone import config, objectives
    from hone.registry.runs import find_run

    run_dir = find_run(resume) if resume is not None else None
    if run_dir is not None and config_or_path is None:  # the interrupted run's own configuration
        cfg = config.load_config(run_dir / "config.yaml")
    elif isinstance(config_or_path, config.RunConfig):
        cfg = config_or_path
        if overrides:
            data = cfg.model_dump(mode="json", exclude_unset=True)
            for key, value in config.overrides(**overrides).items():
                config.set_dotted(data, config.resolve_key(key), value)
            cfg = config.build_config(data, "arguments")
    else:
        cfg = load_config(config_or_path, **overrides)
    return objectives.run(cfg, run_dir=run_dir, console=console or Console(stderr=True))


def sweep(config_or_path: RunConfig | str | Path | None = None, *, name: str, budget: str | float | None = None,
          trials: int | None = None, space: str | list[str] | None = None, seed: int = 42, prune: bool = True,
          workers: bool = False, console=None, **overrides: Any) -> SweepResult:
    """Search the recipe's settings as `hone sweep` does (Optuna TPE with median pruning on validation loss),
    within `budget` (seconds, or '30m') and/or `trials`; `space` names dimensions (hone.sweeps.space.DIMENSIONS).
    The same `name` again resumes the sweep. The test split is read once, after selection, for the best trial.
    `workers`: the trials run on `hone worker --sweeps` processes sharing the database; this call waits for them."""
    from rich.console import Console

    from hone import config
    from hone.sweeps import SweepOptions, run_sweep
    from hone.sweeps.budget import parse_duration
    from hone.sweeps.space import parse_space

    if isinstance(config_or_path, config.RunConfig):
        cfg = config_or_path
    else:
        cfg = load_config(config_or_path, **overrides)
    seconds = float(budget) if isinstance(budget, (int, float)) else parse_duration(budget)
    names = parse_space(space) if isinstance(space, str) or space is None else list(space)
    options = SweepOptions(name, seconds, trials, names, seed, prune, workers)
    return run_sweep(cfg, options, console or Console(stderr=True))


def merge(runs: Sequence[str | Path], *, method: str = "linear", weights: list[float] | None = None,
          name: str | None = None, density: float = 0.5, search: str | float | None = None,
          console=None) -> MergeResult:
    """Merge tuned models of one base as `hone merge` does: LoRA adapters through PEFT (linear, ties, dare_ties,
    cat) or full models by task arithmetic, registered with every parent, and scored at once on each parent's
    test split against each parent and the base. `search` (a budget) tries weights on validation data."""
    from rich.console import Console

    from hone.sweeps.budget import parse_duration
    from hone.sweeps.merge import merge_runs

    seconds = float(search) if isinstance(search, (int, float)) else parse_duration(search)
    return merge_runs([str(r) for r in runs], method, weights, name, density, seconds,
                      console=console or Console(stderr=True))


def evaluate(target: str | Path, data: str | Path | None = None, *, console=None, **options: Any) -> EvalResult:
    """Score a run (or a model) against its base on held-out data, as `hone eval` does; `options` are
    EvalOptions' fields (base, compare_base, metrics, schema, suite, judge_url, limit, seed, ...)."""
    from rich.console import Console

    from hone.evaluation.run_eval import EvalOptions, evaluate_model

    opts = EvalOptions(data=Path(data) if data is not None else None, **options)
    return evaluate_model(str(target), opts, console=console or Console(stderr=True))


def promote(candidate: str | Path, over: str = "production", new_slice: str | Path | None = None, *,
            force: bool = False, limit: int | None = None, max_forgetting: float | None = None, batch_size: int = 32,
            seed: int = 0, console=None) -> PromotionResult:
    """Weigh a candidate run against NAME@`over` as `hone promote` does: the original test split and `new_slice`
    with paired bootstrap intervals, and the forgetting probe; the tag moves only when the candidate is not worse
    on the first, better on the second and within the forgetting limit (or `force`). The decision is recorded."""
    from rich.console import Console

    from hone.evaluation.promotion import promote as weigh

    return weigh(str(candidate), over, Path(new_slice) if new_slice is not None else None, force=force, limit=limit,
                 max_forgetting=max_forgetting, batch_size=batch_size, seed=seed,
                 console=console or Console(stderr=True))


def check_data(*paths: str | Path, model: str | None = None, max_seq_len: int = 1024, format: str | None = None,
               strict: bool = False) -> dict:
    """The quality report `hone data check` prints, as a dict: problems by line, duplicates, conflicts, PII,
    lengths, leakage between the files (train first, then validation and test). `model` counts tokens."""
    from hone.data.quality import check_data as check
    from hone.models.load import counting_tokenizer

    tokenizer, context = counting_tokenizer(model) if model else (None, None)
    return check([Path(p) for p in paths], model, max_seq_len, format, strict, tokenizer=tokenizer, context=context)


def plan(model: str = "smollm2-135m-instruct", methods: list[str] | None = None, length: int = 512,
         batch: int = 8, examples: int = 1000, gpu: str | None = None, threads: int | None = None) -> Plan:
    """Memory and time per epoch of each method before training, as `hone plan` prints them."""
    from hone.objectives.plan import make_plan

    return make_plan(model, methods, length, batch, examples, gpu, threads)


def export(run: str | Path, format: str = "gguf", quant: str | None = None, output: str | Path | None = None, *,
           force: bool = False, prompts: int = 8, console=None) -> ExportResult:
    """Export a finished run as `hone export` does: `format` hf, peft, gguf, ollama or gguf-lora (the table is
    `hone.exporting.FORMATS`), `quant` one of the format's (default its first), into `output` (default
    RUN/exports/FORMAT-QUANT). The artifact is loaded back and compared with the run's own model on `prompts`
    prompts of its test split before it is put in place; a mismatch raises hone.exporting.ExportRejected."""
    from rich.console import Console

    from hone.exporting import export_run

    return export_run(run, format, quant, output, force, prompts, console=console or Console(stderr=True))


def create_kb(name: str, *documents: str | Path, encoder: str = "minilm-l6", chunk_tokens: int | None = None,
              overlap: int | None = None, console=None) -> BuildResult:
    """Build the knowledge base `name` from documents (files or folders: text, Markdown, HTML, JSONL, PDF), as
    `hone kb create` does: a new version when they changed, the same one when not, resumed after an interrupt."""
    from rich.console import Console

    from hone.kb import create_kb as create

    return create(name, [Path(d) for d in documents], encoder, chunk_tokens, overlap,
                  console=console or Console(stderr=True))


def synthesise(kb: str, out: str | Path | None, *, teacher: str = "local", teacher_model: str | None = None,
               per_chunk: int = 3, limit: int | None = None, exclude: str | Path | None = None,
               min_grounding: float = 0.6, with_passages: int = 0, console=None) -> SynthResult:
    """Question-answer pairs grounded in the chunks of `kb`, as `hone data synth` writes them (`out` None: a dry
    run that writes nothing); `teacher` is "local" or an OpenAI-compatible URL."""
    from rich.console import Console

    from hone.evaluation.predict import teacher_for
    from hone.kb import KnowledgeBase
    from hone.kb.synth import synthesise as synth

    ask, name = teacher_for(teacher, teacher_model)
    return synth(KnowledgeBase(kb), ask, name, Path(out) if out is not None else None, per_chunk, limit,
                 Path(exclude) if exclude is not None else None, min_grounding, with_passages=with_passages,
                 console=console or Console(stderr=True))


def compare_knowledge(run: str | Path, kb: str, data: str | Path, *,
                      contenders=("base", "base+kb", "tuned", "tuned+kb"), k: int = 4, console=None,
                      **options: Any) -> KnowledgeComparison:
    """Fine-tune, retrieve or both, scored on the same questions as `hone eval --compare` does; `options` are
    EvalOptions' fields (base, metrics, max_new_tokens, limit, seed, ...). `.metrics()` maps contender -> metrics."""
    from rich.console import Console

    from hone.evaluation.contenders import compare_knowledge as compare
    from hone.evaluation.run_eval import EvalOptions

    return compare(str(run), list(contenders), kb, EvalOptions(data=Path(data), **options), k,
                   console=console or Console(stderr=True))


def monitor_model(model: str, *, since: str | None = None, org: str | None = None, db: str | None = None,
                  training_data: str | Path | None = None, thresholds: str | Path | None = None,
                  console=None) -> MonitorResult:
    """A served model's captured traffic as `hone monitor` reports it: per-day health, input drift against
    its training data, alarms. `.to_json()` is the object `hone monitor --json` prints. (Not `hone.monitor`:
    that name is the package.)"""
    from hone.monitor.alarms import load_thresholds
    from hone.monitor.traffic import parse_since
    from hone.monitor.watch import monitor_model as watch

    return watch(model, parse_since(since), org, db, load_thresholds(Path(thresholds) if thresholds else None),
                 Path(training_data) if training_data else None, console=console)


def data_from_traffic(model: str, output: str | Path, *, include_good: bool = False, since: str | None = None,
                      org: str | None = None, db: str | None = None, keep_pii: bool = False,
                      holdout: float | None = None, holdout_output: str | Path | None = None,
                      seed: int = 0) -> TrafficDataset:
    """The next dataset version from a served model's corrected (and, with include_good, good-rated) answers,
    as `hone data from-traffic` writes it, with FILE.lineage.json beside it and a seeded `holdout` share of the
    corrections (default 0.3) held out in FILE.holdout.jsonl (or `holdout_output`) for `hone promote`."""
    from hone.monitor.from_traffic import DEFAULT_HOLDOUT, dataset_from_traffic
    from hone.monitor.traffic import parse_since

    return dataset_from_traffic(model, Path(output), include_good, parse_since(since), org, db, keep_pii,
                                DEFAULT_HOLDOUT if holdout is None else holdout,
                                Path(holdout_output) if holdout_output else None, seed)


def __getattr__(name: str):
    """The classes of the front door, imported when first used (they pull in torch)."""
    if name == "Predictor":
        from hone.evaluation.predict import Predictor

        return Predictor
    if name == "KnowledgeBase":
        from hone.kb import KnowledgeBase

        return KnowledgeBase
    if name == "RunResult":
        from hone.objectives.lifecycle import RunResult

        return RunResult
    if name == "RunConfig":
        from hone.config import RunConfig

        return RunConfig
    raise AttributeError(f"module 'hone' has no attribute {name!r}")
