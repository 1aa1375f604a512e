"""Generation speed of a distilled student against its teacher, on the same prompts, interleaved.

A distill run already times its test evaluations (the `answer tokens per second` row), but those run
minutes apart on a shared machine. This script measures both models back to back: each round generates
greedy answers to the same test prompts with the teacher, then the student (order alternating by
round), at batch size 1 (one user chatting) and at a larger batch (an evaluation or a busy server).
Tokens are counted from the generated ids up to and including the end-of-turn token. It prints the
median tokens per second of each model and the student/teacher ratio; the last line is one JSON object.

    .venv/bin/python benchmarks/distill_speed.py TEACHER STUDENT [--data test.jsonl] [--n 16] [--rounds 3]

TEACHER and STUDENT are what `--teacher` accepts: a run (folder, id, NAME:VERSION, latest) or a model.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
DATA = Path(__file__).resolve().parents[1] / "src" / "hone" / "datasets" / "orders" / "test.jsonl"


def load(spec: str):
    from hone.config import build_config
    from hone.objectives.distill import load_teacher, teacher_source

    return load_teacher(teacher_source(build_config({"distill": {"teacher": spec}})), "cpu")


def generated_tokens(output, prompt_length: int, eos: int) -> int:
    """New tokens per row, each row up to and including its first end-of-turn token."""
    total = 0
    for row in output[:, prompt_length:].tolist():
        total += row.index(eos) + 1 if eos in row else len(row)
    return total


def tokens_per_second(model, tokenizer, conversations: list, batch_size: int, max_new_tokens: int) -> float:
    import torch

    from hone.data.render import prompt_for_generation

    tokenizer.padding_side = "left"
    tokens, seconds = 0, 0.0
    for start in range(0, len(conversations), batch_size):
        prompts = [prompt_for_generation(tokenizer, c) for c in conversations[start:start + batch_size]]
        encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        began = time.perf_counter()
        with torch.no_grad():
            output = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        seconds += time.perf_counter() - began
        tokens += generated_tokens(output, encoded["input_ids"].shape[1], tokenizer.eos_token_id)
    return tokens / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("teacher")
    parser.add_argument("student")
    parser.add_argument("--data", type=Path, default=DATA, help="Chat JSONL whose prompts are answered")
    parser.add_argument("--n", type=int, default=16, help="Prompts per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16, help="The batched setting (batch 1 is always run)")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    args = parser.parse_args()

    import torch

    from hone.data.load import load_chat_records

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    conversations = [e.prompt_messages for e in load_chat_records(args.data)[:args.n]]
    models = {"teacher": load(args.teacher), "student": load(args.student)}
    parameters = {name: sum(p.numel() for p in model.parameters()) for name, (model, _) in models.items()}
    rates: dict[str, list[float]] = {f"{name}_bs{b}": [] for name in models for b in (1, args.batch_size)}
    for round_ in range(args.rounds):
        for name in (("teacher", "student") if round_ % 2 == 0 else ("student", "teacher")):
            model, tokenizer = models[name]
            for batch in (1, args.batch_size):
                rate = tokens_per_second(model, tokenizer, conversations, batch, args.max_new_tokens)
                rates[f"{name}_bs{batch}"].append(rate)
                print(f"round {round_ + 1} {name:8s} batch {batch:3d}: {rate:7.1f} tok/s", flush=True)
    medians = {key: round(statistics.median(values), 1) for key, values in rates.items()}
    ratios = {f"student_over_teacher_bs{b}": round(medians[f"student_bs{b}"] / medians[f"teacher_bs{b}"], 2)
              for b in (1, args.batch_size)}
    print(json.dumps({"parameters": parameters, "median_tokens_per_s": medians, **ratios,
                      "prompts": len(conversations), "rounds": args.rounds,
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
