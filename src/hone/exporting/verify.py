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
# A greedy answer may part from the run's where the run's own model had two tokens within this many logits
# (probabilities within 1.65x): measured on the demo's q8_0 export, one of 8 answers parted at a token whose
# two candidates were 0.12 logits apart in the run's model (its top-2 margin there: 0.014).
NEAR_TIE = 0.5
RAW_PROMPT_CHARS = 200  # a raw-text (continued pre-training) prompt: the start of a test text


@dataclass
class Reference:
    """The run's own model on the check prompts: what every exported artifact must reproduce."""
    labels: list[str]                  # each prompt in a few words, for the table
    prompts: list[str]                 # the prompt texts, chat template applied
    ids: list[list[int]]               # ... as token ids
    answers: list[list[int]]           # the run's greedy answer tokens
    texts: list[str]                   # ... decoded
    logits: list[torch.Tensor]         # [answer tokens, vocab], teacher-forced on the answer


@dataclass
class Verification:
    """How an artifact compared with the run's model; `passed` decides whether the export stands."""
    runtime: str                       # what loaded the artifact back
    max_logit_delta: float
    greedy_agree: int                  # prompts whose greedy answer is identical, or parts only at a near-tie
    prompts: int
    tolerance: float                   # largest max |Δlogit| allowed
    greedy_needed: int                 # prompts whose greedy answer must match
    checks: dict = field(default_factory=dict)   # name -> "same" or what differs (tokenizer, template, EOS, ...)
    items: list[dict] = field(default_factory=list)

    @property
    def failed_checks(self) -> dict:
        return {k: v for k, v in self.checks.items() if v != "same" and not isinstance(v, (dict, list))}

    @property
    def near_ties(self) -> int:
        return sum(1 for i in self.items if i.get("near_tie"))

    @property
    def passed(self) -> bool:
        return (self.max_logit_delta <= self.tolerance and self.greedy_agree >= self.greedy_needed
                and not self.failed_checks)

    def to_json(self) -> dict:
        return {**asdict(self), "max_logit_delta": round(self.max_logit_delta, 6), "near_ties": self.near_ties,
                "passed": self.passed, "positions": POSITIONS, "new_tokens": NEW_TOKENS, "near_tie": NEAR_TIE}

    def why(self) -> str:
        """One line on what failed."""
        reasons = []
        if self.max_logit_delta > self.tolerance:
            reasons.append(f"max |Δlogit| {self.max_logit_delta:.3g} > tolerance {self.tolerance:g}")
        if self.greedy_agree < self.greedy_needed:
            reasons.append(f"greedy answers agree on {self.greedy_agree}/{self.prompts} prompts "
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
    """Logits that predict each token of `answer`, teacher-forced on it ([len(answer), vocab], fp32, CPU)."""
    device = next(model.parameters()).device
    sequence = torch.tensor([ids + answer[:-1]], device=device)
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
            exported = logits(ids, expected_answer)
            item = {"prompt": label, "answer": text, "same": got == expected_answer,
                    "max_logit_delta": (exported[:POSITIONS] - expected[:POSITIONS]).abs().max().item()}
            if got != expected_answer:
                item["export_answer"] = decode(got)
                item["near_tie"] = near_tie(expected_answer, got, expected, decode)
            items.append(item)
    prompts = len(items)
    agree = sum(bool(i["same"] or i.get("near_tie")) for i in items)
    return Verification(runtime, max(i["max_logit_delta"] for i in items), agree, prompts,
                        quant.max_logit_delta, math.ceil(quant.greedy_share * prompts), checks or {}, items)


def near_tie(expected: list[int], got: list[int], expected_logits: torch.Tensor, decode) -> dict | None:
    """Where the answers part, if the run's own model had the two tokens within NEAR_TIE logits: the flip
    is then a coin the run itself barely tossed, not a broken export; None otherwise."""
    k = next(i for i in range(min(len(expected), len(got)) + 1)
             if i == min(len(expected), len(got)) or expected[i] != got[i])
    if k >= min(len(expected), len(got)):
        return None
    gap = (expected_logits[k, expected[k]] - expected_logits[k, got[k]]).item()
    if gap > NEAR_TIE:
        return None
    return {"token": k, "run": decode([expected[k]]), "export": decode([got[k]]), "gap": round(gap, 4)}


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
        tie = item.get("near_tie")
        same = ("yes" if item["same"] else
                f"[yellow]near-tie[/yellow] at token {tie['token']}: {tie['run']!r} vs {tie['export']!r}, "
                f"{tie['gap']:.2g} apart in the run's model" if tie else
                f"[red]no[/red]: {item['export_answer'][:60]!r}")
        table.add_row(str(n), item["prompt"], item["answer"][:60], same, f"{item['max_logit_delta']:.3g}")
    console.print(table)
    checks = ", ".join(f"{k} {v}" for k, v in verification.checks.items() if not isinstance(v, (dict, list)))
    ties = f" ({verification.near_ties} at a near-tie)" if verification.near_ties else ""
    line = (f"max |Δlogit| {verification.max_logit_delta:.3g} (tolerance {verification.tolerance:g}), greedy "
            f"answers agree on {verification.greedy_agree}/{verification.prompts}{ties}"
            + (f"; {checks}" if checks else ""))
    console.print(f"  [green]passed[/green]: {line}" if verification.passed else
                  f"  [red]failed[/red]: {verification.why()}", highlight=False)
