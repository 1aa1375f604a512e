"""`hone merge`: tuned models of one base combined into one, registered, and scored on what each parent learned.

    LoRA adapters   PEFT's add_weighted_adapter: linear (weighted sum; equal ranks), cat (ranks side by side:
                    exact sum of the updates), ties and dare_ties (TIES-Merging, Yadav et al. 2023; DARE, Yu et
                    al. 2023: trim or drop-and-rescale, then a sign election)
    full models     task arithmetic (Ilharco et al. 2023): base + the weighted task vectors (tuned - base),
                    with PEFT's ties / dare_ties functions on the task vectors for those methods

The merge is a new run folder (adapter/ or model/) registered with the first parent as its parent and every
parent in run.json's `merge`; it is scored at once on each parent's test split against the base and each
parent. `--search` tries weights on the parents' validation splits (mean validation loss) within a budget.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from rich.console import Console

from hone import atomic
from hone.config import RunConfig, build_config
from hone.errors import UserError
from hone.methods.artifact import METHOD_FILE, read_method
from hone.registry.runs import find_run, new_run_dir, read_record, update_record
from hone.registry.store import get_run

COMBINATIONS = ("linear", "ties", "dare_ties", "cat")
LORA_FAMILY = ("lora", "dora")


@dataclass
class Parent:
    run_dir: Path
    ref: str              # NAME:VERSION in the registry (or the folder name)
    record: dict
    config: RunConfig
    artifact: Path        # adapter/ or model/
    kind: str             # "peft" or "model"


@dataclass
class MergeResult:
    run_dir: Path
    method: str
    weights: list[float]
    parents: list[str]
    metric: str | None = None
    table: list[dict] = field(default_factory=list)   # one row per test split: base, each parent, merged
    searched: list[dict] = field(default_factory=list)  # --search: weights tried and their validation loss

    def to_json(self) -> dict:
        return {"run_dir": str(self.run_dir), "method": self.method, "weights": self.weights,
                "parents": self.parents, "metric": self.metric, "table": self.table, "searched": self.searched}


def read_parent(ref: str) -> Parent:
    run_dir = find_run(ref)
    record = read_record(run_dir)
    if record.get("status") != "succeeded":
        raise UserError(f"{ref}: the run has not succeeded (status {record.get('status', 'unknown')}); merge "
                        "finished runs")
    config = build_config(yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")),
                          str(run_dir / "config.yaml"))
    for name, kind in (("adapter", "peft"), ("model", "model")):
        folder = run_dir / name
        if folder.is_dir():
            info = read_method(folder)
            if kind == "peft" and (info["saved"] != "peft" or info["method"] not in LORA_FAMILY):
                raise UserError(f"{ref}: a {info['method']} artifact; merge takes LoRA/DoRA adapters or full models")
            try:
                registered = get_run(str(run_dir.name)).ref
            except UserError:
                registered = run_dir.name
            return Parent(run_dir, registered, record, config, folder, kind)
    raise UserError(f"{ref}: no adapter/ or model/ in {run_dir}")


def base_identity(parent: Parent) -> str:
    """What the parent was trained from: its base model's content hash when the registry has it, else its path."""
    try:
        row = get_run(parent.run_dir.name)
        if row.base_model_hash:
            return row.base_model_hash
    except UserError:
        pass
    return str(Path(parent.record.get("base_path") or parent.record.get("base_model", "")).resolve())


def check_parents(parents: list[Parent], method: str, weights: list[float] | None) -> None:
    """One base, one kind of artifact, a method that applies to it, one weight per parent: else one line."""
    if len(parents) < 2:
        raise UserError("merge needs at least two runs")
    if method not in COMBINATIONS:
        raise UserError(f"--method {method!r}: use one of {', '.join(COMBINATIONS)}")
    first = base_identity(parents[0])
    for other in parents[1:]:
        if base_identity(other) != first:
            raise UserError(f"{other.ref} was trained on {other.record.get('base_model')} and {parents[0].ref} on "
                            f"{parents[0].record.get('base_model')}: only models tuned from the same base merge")
    kinds = {p.kind for p in parents}
    if len(kinds) > 1:
        raise UserError("these runs mix LoRA adapters and full models; merge adapters with adapters, full models "
                        "with full models")
    if kinds == {"model"} and method == "cat":
        raise UserError("--method cat puts LoRA ranks side by side; full models have none: use linear, ties or "
                        "dare_ties")
    if weights is not None and len(weights) != len(parents):
        raise UserError(f"--weights gives {len(weights)} numbers for {len(parents)} runs")


def default_weights(method: str, n: int) -> list[float]:
    """linear: the average; the others add task vectors at full strength (TIES's and DARE's usual setting)."""
    return [1.0 / n] * n if method == "linear" else [1.0] * n


def merge_runs(refs: list[str], method: str = "linear", weights: list[float] | None = None,
               name: str | None = None, density: float = 0.5, search_seconds: float | None = None,
               console: Console | None = None) -> MergeResult:
    """Merge the runs `refs`, register the merge, and score it on each parent's test split (module docstring)."""
    console = console or Console(stderr=True)
    parents = [read_parent(ref) for ref in refs]
    check_parents(parents, method, weights)
    searched: list[dict] = []
    if search_seconds:
        if weights is not None:
            raise UserError("--search chooses the weights: give --weights or --search, not both")
        weights, searched = search_weights(parents, method, density, search_seconds, console)
    weights = weights or default_weights(method, len(parents))
    base = parents[0].record.get("base_path") or parents[0].record["base_model"]
    started = time.monotonic()
    run_dir = new_merge_folder(parents, method, weights, name)
    console.print(f"[bold]hone merge[/bold] {', '.join(p.ref for p in parents)} ({method}, weights "
                  f"{', '.join(f'{w:g}' for w in weights)}) -> {run_dir}", highlight=False)
    if parents[0].kind == "peft":
        merge_adapters(parents, base, method, weights, density, run_dir / "adapter")
    else:
        merge_full(parents, base, method, weights, density, run_dir / "model")
    result = MergeResult(run_dir, method, list(weights), [p.ref for p in parents], searched=searched)
    evaluate_merge(result, parents, base, console)
    update_record(run_dir, status="succeeded", results={"metric": result.metric, "merge_table": result.table},
                  total_seconds=round(time.monotonic() - started, 2))
    return result


def new_merge_folder(parents: list[Parent], method: str, weights: list[float], name: str | None) -> Path:
    first = parents[0]
    data = first.config.model_dump(mode="json", exclude_unset=True)
    data.pop("output", None)
    data["name"] = name or "merge-" + "-".join(p.config.name or p.run_dir.name for p in parents)[:60]
    data["model"] = {"name": first.record.get("base_model") or first.config.model.name,
                     "parent": str(first.run_dir.resolve())}
    data["data"] = {"train": None, "test": None}
    data.pop("recipe", None)
    run_dir = new_run_dir(build_config(data, "merge"))
    merge = {"method": method, "weights": list(weights), "parents": [p.ref for p in parents],
             "parent_runs": [str(p.run_dir.resolve()) for p in parents]}
    update_record(run_dir, status="running", objective=first.record.get("objective"), method=first.record.get("method"),
                  base_model=first.record.get("base_model"), base_path=first.record.get("base_path"),
                  parent=str(first.run_dir.resolve()), merge=merge)
    return run_dir


def peft_with_parents(parents: list[Parent], base: str):
    """The base with every parent's adapter loaded under the names p0, p1, ..."""
    from peft import PeftModel

    from hone.methods.peft_methods import quiet_peft_warnings
    from hone.models.load import load_causal_lm

    model = load_causal_lm(base)
    with quiet_peft_warnings():
        peft = PeftModel.from_pretrained(model, str(parents[0].artifact), adapter_name="p0")
        for i, parent in enumerate(parents[1:], start=1):
            peft.load_adapter(str(parent.artifact), adapter_name=f"p{i}")
    return peft


def add_merged_adapter(peft, n: int, method: str, weights: list[float], density: float, name: str) -> None:
    try:
        peft.add_weighted_adapter([f"p{i}" for i in range(n)], list(weights), name, combination_type=method,
                                  density=density if method in ("ties", "dare_ties") else None)
    except ValueError as exc:  # PEFT's own reason: unequal ranks for linear, mixed target modules, ...
        raise UserError(f"--method {method}: {exc}; --method cat merges adapters of any ranks") from None


def merge_adapters(parents: list[Parent], base: str, method: str, weights: list[float], density: float,
                   out: Path) -> None:
    """The merged adapter in PEFT's format, with hone_method.json (rank from the merged config)."""
    peft = peft_with_parents(parents, base)
    add_merged_adapter(peft, len(parents), method, weights, density, "merged")
    info = read_method(parents[0].artifact)
    with atomic.folder(out) as tmp:
        peft.save_pretrained(str(tmp), selected_adapters=["merged"])
        saved = tmp / "merged"  # PEFT writes a non-default adapter into a folder of its name
        for path in saved.iterdir():
            shutil.move(str(path), tmp / path.name)
        saved.rmdir()
        config = json.loads((tmp / "adapter_config.json").read_text(encoding="utf-8"))
        settings = info["settings"] | {"lora_r": config["r"], "lora_alpha": config["lora_alpha"]}
        (tmp / METHOD_FILE).write_text(json.dumps({**info, "settings": settings}, indent=2), encoding="utf-8")
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
            if (parents[0].artifact / name).is_file():
                shutil.copy(parents[0].artifact / name, tmp / name)


def merge_full(parents: list[Parent], base: str, method: str, weights: list[float], density: float,
               out: Path) -> None:
    """Task arithmetic in fp32: base + combine(tuned_i - base), written as a whole model."""
    import torch
    from peft.utils import merge_utils

    from hone.models.load import load_causal_lm, load_tokenizer

    merged = load_causal_lm(base)
    tuned = [load_causal_lm(str(p.artifact)).state_dict() for p in parents]
    scale = torch.tensor(weights, dtype=torch.float32)
    with torch.no_grad():
        for key, value in merged.state_dict().items():
            if not value.is_floating_point():
                continue
            deltas = [t[key].float() - value.float() for t in tuned]
            if method == "ties":
                delta = merge_utils.ties(deltas, scale, density)
            elif method == "dare_ties":
                delta = merge_utils.dare_ties(deltas, scale, density)
            else:
                delta = sum(w * d for w, d in zip(weights, deltas))
            value.add_(delta.to(value.dtype))
    with atomic.folder(out) as tmp:
        merged.save_pretrained(tmp)
        load_tokenizer(str(parents[0].artifact)).save_pretrained(tmp)
        (tmp / METHOD_FILE).write_text(json.dumps({"method": "full", "saved": "model",
                                                   "settings": {"name": "full"}}), encoding="utf-8")


def evaluate_merge(result: MergeResult, parents: list[Parent], base: str, console: Console) -> None:
    """Each parent's test split, scored for the base, every parent and the merge (the same metric per split)."""
    from hone.evaluation.compare import default_max_new_tokens, evaluate_answers
    from hone.evaluation.metrics import pick_metric
    from hone.evaluation.run_eval import read_test_items
    from hone.methods.artifact import load_tuned
    from hone.models.load import load_causal_lm, load_tokenizer

    tests = [(p, read_test_items(Path(p.config.data.test), p.config.data.system_prompt, None))
             for p in parents if p.config.data.test]
    if not tests:
        console.print("  [yellow]no parent has a test split: the merge is saved unscored[/yellow]")
        return
    tokenizer = load_tokenizer(base)
    folder = result.run_dir / ("adapter" if parents[0].kind == "peft" else "model")
    models: list[tuple[str, Path | None]] = [("base", None), *[(p.ref, p.artifact) for p in parents],
                                             ("merged", folder)]
    rows = {p.ref: {"test": p.ref, "data": str(p.config.data.test), "n": len(items)} for p, items in tests}
    metrics: dict[str, str] = {}
    for label, artifact in models:  # one model in memory at a time
        model = None
        for parent, items in tests:
            metric = metrics.setdefault(parent.ref, parent.record.get("results", {}).get("metric")
                                        or pick_metric([e.answer or "" for e in items]))
            rows[parent.ref]["metric"] = metric
            if (known := scored_in_run(parent, label, metric)) is not None:
                rows[parent.ref][label] = known
                continue
            model = model or (load_causal_lm(base) if artifact is None else load_tuned(base, artifact))
            max_new = parent.config.eval.max_new_tokens or default_max_new_tokens(tokenizer, items)
            scored = evaluate_answers(model, tokenizer, items, metric, max_new, parent.config.eval.batch_size,
                                      f"{label} on {parent.ref}", console)
            rows[parent.ref][label] = scored.score
        del model
    result.table = list(rows.values())
    result.metric = ", ".join(sorted(set(metrics.values())))
    for row in result.table:
        kept = ", ".join(f"{k} {row[k]:.3f}" for k in ["base", *[p.ref for p in parents], "merged"])
        console.print(f"  {row['test']} test ({row['metric']}, n={row['n']}): {kept}", highlight=False)


def scored_in_run(parent: Parent, label: str, metric: str) -> float | None:
    """The base's or the parent's own score on the parent's test split as its run measured it (same items, same
    metric, greedy answers), so the merge does not generate them again; None when the run did not."""
    results = parent.record.get("results") or {}
    if results.get("metric") != metric:
        return None
    if label == "base":
        return results.get("base_score")
    return results.get("tuned_score") if label == parent.ref else None


def search_weights(parents: list[Parent], method: str, density: float, seconds: float,
                   console: Console) -> tuple[list[float], list[dict]]:
    """Weights that minimise the mean validation loss over the parents' validation splits, tried by Optuna's
    TPE within `seconds`; the test splits stay unread."""
    import optuna
    import torch

    from hone.hardware import pick_hardware
    from hone.objectives.sft import read_chat_splits, render_chats
    from hone.training.step import validation_loss

    base = parents[0].record.get("base_path") or parents[0].record["base_model"]
    hw = pick_hardware("fp32", None)
    val_sets = []
    for p in parents:
        cfg = p.config.model_copy(update={"data": p.config.data.model_copy(update={"test": None})})
        rendered = render_chats(cfg, read_chat_splits(cfg))
        val_sets.append((rendered.val_set[:64], rendered.tokenizer.pad_token_id))
    peft = peft_with_parents(parents, base)
    peft.eval()
    tried: list[dict] = []

    def objective(trial) -> float:
        weights = [trial.suggest_float(f"w{i}", 0.1, 1.0) for i in range(len(parents))]
        add_merged_adapter(peft, len(parents), method, weights, density, "candidate")
        peft.set_adapter("candidate")
        with torch.no_grad():
            loss = sum(validation_loss(peft, vs, 8, pad, hw) for vs, pad in val_sets) / len(val_sets)
        peft.delete_adapter("candidate")
        tried.append({"weights": [round(w, 4) for w in weights], "val_loss": round(loss, 5)})
        console.print(f"  search: weights {', '.join(f'{w:.2f}' for w in weights)} -> mean validation loss "
                      f"{loss:.4f}", highlight=False)
        return loss

    if parents[0].kind != "peft":
        raise UserError("--search tries adapter weights; full models merge with --weights")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    study.enqueue_trial({f"w{i}": w for i, w in enumerate(default_weights(method, len(parents)))})
    study.optimize(objective, timeout=seconds)
    best = study.best_trial
    return [best.params[f"w{i}"] for i in range(len(parents))], tried
