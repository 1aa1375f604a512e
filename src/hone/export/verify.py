"""Proof that an exported artifact answers like the run it came from.

The run's own model (`load_run_model`: fp32, adapters merged as hone evaluates them) answers a fixed set
of prompts from the run's test split (its train split when it has none) greedily; the artifact, loaded
back by the runtime it targets, must give the same greedy answers, and its logits on the first generated
positions (teacher-forced on the run's answer) must stay within the format's tolerance. Measured
(field notes §7): a merged fp32 model against the unmerged PEFT model 1.2e-4; GGUF round trips 0 (f32),
0.05 (f16), 1.9 (q8_0), each with the same greedy text.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from rich.console import Console
from rich.table import Table

from hone.config import RunConfig
from hone.data.load import load_records
from hone.data.records import ChatExample, PreferenceExample, TextExample
from hone.data.render import prompt_for_generation
from hone.errors import UserError

PROMPTS = 8          # check prompts taken from the run's data
NEW_TOKENS = 32      # greedy answer length compared
POSITIONS = 8        # generated positions whose logits are compared
RAW_PROMPT_CHARS = 200  # a raw-text (continued pre-training) prompt: the start of a test text


@dataclass
class Reference:
    """The run's own model on the check prompts: what every exported artifact must reproduce."""
    labels: list[str]                  # each prompt in a few words, for the table
    prompts: list[str]                 # the prompt texts, chat template applied
    ids: list[list[int]]               # ... as token ids
    answers: list[list[int]]           # the run's greedy answer tokens
    texts: list[str]                   # ... decoded
    logits: list[torch.Tensor]         # [positions, vocab] on the first answer positions


@dataclass
class Verification:
    """How an artifact compared with the run's model; `passed` decides whether the export stands."""
    runtime: str                       # what loaded the artifact back
    max_logit_delta: float
    greedy_same: int
    prompts: int
    tolerance: float                   # largest max |Δlogit| allowed
    greedy_needed: int                 # prompts whose greedy answer must match
    checks: dict = field(default_factory=dict)   # name -> "same" or what differs (tokenizer, template, EOS, ...)
    items: list[dict] = field(default_factory=list)

    @property
    def failed_checks(self) -> dict:
        return {k: v for k, v in self.checks.items() if v != "same" and not isinstance(v, (dict, list))}

    @property
    def passed(self) -> bool:
        return (self.max_logit_delta <= self.tolerance and self.greedy_same >= self.greedy_needed
                and not self.failed_checks)

    def summary(self) -> dict:
        """The figures the run's record keeps about this export."""
        return {"runtime": self.runtime, "max_logit_delta": round(self.max_logit_delta, 5),
                "greedy_same": f"{self.greedy_same}/{self.prompts}", "tolerance": self.tolerance,
                "passed": self.passed}

    def to_json(self) -> dict:
        return {**asdict(self), "max_logit_delta": round(self.max_logit_delta, 6), "passed": self.passed,
                "positions": POSITIONS, "new_tokens": NEW_TOKENS}

    def why(self) -> str:
        """One line on what failed."""
        reasons = []
        if self.max_logit_delta > self.tolerance:
            reasons.append(f"max |Δlogit| {self.max_logit_delta:.3g} > tolerance {self.tolerance:g}")
        if self.greedy_same < self.greedy_needed:
            reasons.append(f"greedy answers same on {self.greedy_same}/{self.prompts} prompts "
                           f"(needed {self.greedy_needed})")
        reasons += [f"{name}: {value}" for name, value in self.failed_checks.items()]
        return "; ".join(reasons)


def check_prompts(config: RunConfig, system_prompt: str | None, tokenizer, limit: int = PROMPTS
                  ) -> tuple[list[str], list[str]]:
    """(labels, prompt texts) of the first `limit` prompts of the run's test split, else its train split."""
    path = config.data.test or config.data.train
    if not path or not Path(path).is_file():
        raise UserError(f"the run's data ({path or 'none recorded'}) is not on this machine, so there are no "
                        "prompts to verify the export on; restore the file or re-run with its data")
    labels, texts = [], []
    for record in load_records(Path(path), config.data.format):
        if isinstance(record, ChatExample):
            messages = list(record.prompt_messages)
        elif isinstance(record, PreferenceExample):
            messages = list(record.prompt)
        elif isinstance(record, TextExample):
            labels.append(record.text[:60].replace("\n", " "))
            texts.append(record.text[:RAW_PROMPT_CHARS])
            continue
        else:
            continue
        if not messages or messages[-1]["role"] == "assistant":
            continue
        if system_prompt and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": system_prompt})
        labels.append(messages[-1]["content"][:60].replace("\n", " "))
        texts.append(prompt_for_generation(tokenizer, messages))
        if len(texts) >= limit:
            break
    if not texts:
        raise UserError(f"{path} has no prompts (chat, preference or text records) to verify the export on")
    return labels[:limit], texts[:limit]


@torch.no_grad()
def greedy(model, ids: list[int], eos: int | list[int] | None, pad: int | None) -> list[int]:
    """The greedy continuation of `ids` (up to NEW_TOKENS tokens, EOS included)."""
    device = next(model.parameters()).device
    prompt = torch.tensor([ids], device=device)
    output = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=NEW_TOKENS,
                            do_sample=False, eos_token_id=eos, pad_token_id=pad)
    return output[0, len(ids):].tolist()


@torch.no_grad()
def answer_logits(model, ids: list[int], answer: list[int]) -> torch.Tensor:
    """Logits that predict the first POSITIONS answer tokens, teacher-forced on `answer` (fp32, CPU)."""
    shown = answer[:POSITIONS]
    device = next(model.parameters()).device
    sequence = torch.tensor([ids + shown[:-1]], device=device)
    logits = model(input_ids=sequence, attention_mask=torch.ones_like(sequence)).logits
    logits = logits[0, -sequence.shape[1]:]  # prompt tuning puts virtual-token positions first
    return logits[len(ids) - 1:].float().cpu()


def reference_outputs(model, tokenizer, labels: list[str], prompts: list[str], console: Console) -> Reference:
    """The run's own model on the check prompts."""
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    answers, logits = [], []
    with console.status(f"  the run's own model answers {len(ids)} check prompts"):
        for prompt in ids:
            answers.append(greedy(model, prompt, tokenizer.eos_token_id, tokenizer.pad_token_id))
            logits.append(answer_logits(model, prompt, answers[-1]))
    texts = [tokenizer.decode(a, skip_special_tokens=True) for a in answers]
    return Reference(labels, prompts, ids, answers, texts, logits)


def compare(reference: Reference, answer: Callable[[list[int]], list[int]],
            logits: Callable[[list[int], list[int]], torch.Tensor], decode: Callable[[list[int]], str],
            runtime: str, quant, console: Console, checks: dict | None = None) -> Verification:
    """An exported artifact, loaded back by `runtime` (its greedy `answer` and teacher-forced `logits` on
    the first answer positions), against the run's answers, prompt by prompt; `quant` holds the tolerance."""
    items: list[dict[str, Any]] = []
    with console.status(f"  verifying: {runtime} answers the {len(reference.ids)} check prompts"):
        for label, ids, expected_answer, text, expected in zip(reference.labels, reference.ids, reference.answers,
                                                               reference.texts, reference.logits):
            got = answer(ids)
            delta = (logits(ids, expected_answer) - expected).abs().max().item()
            items.append({"prompt": label, "answer": text, "same": got == expected_answer, "max_logit_delta": delta,
                          **({} if got == expected_answer else {"export_answer": decode(got)})})
    prompts = len(items)
    return Verification(runtime, max(i["max_logit_delta"] for i in items), sum(i["same"] for i in items), prompts,
                        quant.max_logit_delta, math.ceil(quant.greedy_share * prompts), checks or {}, items)


def compare_model(reference: Reference, model, tokenizer, runtime: str, quant, console: Console,
                  checks: dict | None = None) -> Verification:
    """`compare` for a model loaded back into torch (transformers, peft)."""
    return compare(reference, lambda ids: greedy(model, ids, tokenizer.eos_token_id, tokenizer.pad_token_id),
                   lambda ids, answer: answer_logits(model, ids, answer),
                   lambda ids: tokenizer.decode(ids, skip_special_tokens=True), runtime, quant, console, checks)


def tokenizer_checks(exported, tokenizer, reference: Reference) -> dict:
    """An exported tokenizer against the run's: same ids on the check prompts, EOS, chat template."""
    same_ids = all(exported(p, add_special_tokens=False)["input_ids"] == i
                   for p, i in zip(reference.prompts, reference.ids))
    return {"tokenizer": "same" if same_ids else "different token ids on the check prompts",
            "eos": "same" if exported.eos_token == tokenizer.eos_token else
                   f"{exported.eos_token!r} instead of {tokenizer.eos_token!r}",
            "chat_template": "same" if exported.chat_template == tokenizer.chat_template else "different"}


def print_verification(verification: Verification, console: Console) -> None:
    """The check prompts as a table, then one line: passed or why not."""
    table = Table(header_style="bold", title=f"verification: {verification.runtime} against the run's model")
    for column in ("#", "prompt", "run's greedy answer", "same", "max |Δlogit|"):
        table.add_column(column, overflow="fold", no_wrap=column in ("#", "same"))
    for n, item in enumerate(verification.items, 1):
        same = "yes" if item["same"] else f"[red]no[/red]: {item['export_answer'][:60]!r}"
        table.add_row(str(n), item["prompt"], item["answer"][:60], same, f"{item['max_logit_delta']:.3g}")
    console.print(table)
    checks = ", ".join(f"{k} {v}" for k, v in verification.checks.items() if not isinstance(v, (dict, list)))
    line = (f"max |Δlogit| {verification.max_logit_delta:.3g} (tolerance {verification.tolerance:g}), greedy "
            f"answers same on {verification.greedy_same}/{verification.prompts}" + (f"; {checks}" if checks else ""))
    console.print(f"  [green]passed[/green]: {line}" if verification.passed else
                  f"  [red]failed[/red]: {verification.why()}", highlight=False)
