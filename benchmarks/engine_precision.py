"""The transformers engine's weights in fp32, bf16 or fp16: quality against fp32, speed and memory, per case.

    .venv/bin/python benchmarks/engine_precision.py RUN [--limit 120] [--rounds 3] [--threads 1]

RUN is a tuned LoRA run (e.g. `hone demo --output RUN`): its adapter, base (SmolLM2-135M-Instruct), test
set and system prompt. Cases, each loaded as the engine loads it (serve/engine.py):
  base      the base model, weights cast to DTYPE
  lora      the unmerged adapter on the shared base in DTYPE (peft keeps the adapter weights fp32)
  merged    the adapter merged in fp32 into a plain model, then cast to DTYPE (export refuses bf16 for it)
Quality: every case answers the run's test chats greedily (continuous batching, 16 rows, as the engine
does; max new tokens as `hone eval` picks them), scored with `hone eval`'s metrics (pick_metrics) and
compared with the same case in fp32 by evaluation/compare.py's paired bootstrap; `agree` is the share of
answers identical to fp32's. Speed, alternating the cases inside each round: single-stream tokens/s (one
prompt, `--tokens` new tokens) and 16-row batched tokens/s. Memory: each base dtype loaded in a child
process, its resident set after one batched step (VmRSS) and its peak (VmHWM).
The process sets the matmul precision as the engine does (hone.hardware.pick_hardware). The last line is
one JSON object with every figure.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

DTYPES = ("fp32", "bf16", "fp16")


def torch_dtype(name: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def build(case: str, dtype: str, base: str, adapter: Path):
    """The model the engine would hold for `case` with weights in `dtype`."""
    from peft import PeftModel

    from hone.models.load import load_causal_lm, load_with_adapter

    if case == "base":
        return load_causal_lm(base, dtype=torch_dtype(dtype))
    if case == "lora":   # peft's autocast_adapter_dtype (default) keeps the adapter fp32 over a bf16/fp16 base
        return PeftModel.from_pretrained(load_causal_lm(base, dtype=torch_dtype(dtype)), str(adapter)).eval()
    return load_with_adapter(base, adapter).to(torch_dtype(dtype))


def answer(model, tokenizer, prompts: list[list[int]], max_tokens: int, batch: int) -> tuple[list, int, float]:
    """(answers, generated tokens, seconds): greedy, `batch` rows at a time through RunningBatch."""
    from peft import PeftModel

    from hone.serve.engines.batching import RunningBatch
    from hone.serve.generation import Job, Sampling

    adapter = "default" if isinstance(model, PeftModel) else None   # None: the engine's base rows, adapter off
    jobs = [Job(None, [p], 1, [max_tokens], [], Sampling(0.0), lambda event: None) for p in prompts]
    started = time.perf_counter()
    for i in range(0, len(jobs), batch):
        running = RunningBatch(lambda: model, tokenizer, "cpu")
        running.admit(jobs[i:i + batch], [adapter] * len(jobs[i:i + batch]))
        while len(running):
            running.step()
    seconds = time.perf_counter() - started
    return [j.answers[0].text for j in jobs], sum(j.answers[0].tokens for j in jobs), seconds


def memory_child(base: str, dtype: str, prompts: list[list[int]]) -> dict:
    """In a fresh process: load the base in `dtype`, answer 16 prompts (16 tokens); VmRSS and VmHWM in MB."""
    from hone.hardware import pick_hardware
    from hone.models.load import load_tokenizer

    pick_hardware("auto", 1)
    model = build("base", dtype, base, Path())
    answer(model, load_tokenizer(base), prompts[:16], 16, 16)
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {k: round(int(status[k].split()[0]) / 1024) for k in ("VmRSS", "VmHWM")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", nargs="?")
    parser.add_argument("--limit", type=int, default=None, help="test chats to answer (default: all)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=48, help="new tokens per row in the speed rounds")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cases", default="base,lora,merged")
    parser.add_argument("--memory-child", nargs=2, metavar=("BASE", "DTYPE"), help=argparse.SUPPRESS)
    parser.add_argument("--prompts-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        prompts = json.loads(Path(args.prompts_file).read_text())
        print(json.dumps(memory_child(*args.memory_child, prompts)))
        return

    import tempfile

    from hone.data.records import ChatExample
    from hone.data.render import prompt_for_generation
    from hone.evaluation.compare import compare_answers, default_max_new_tokens
    from hone.evaluation.metrics import pick_metrics
    from hone.evaluation.run_eval import read_test_items, resolve_target
    from hone.hardware import pick_hardware
    from hone.models.catalogue import resolve_model
    from hone.models.load import load_tokenizer

    hw = pick_hardware("auto", args.threads)
    target = resolve_target(args.run)
    assert target.run_dir is not None and target.test is not None, f"{args.run}: not a run with a test set"
    adapter = target.run_dir / "adapter"
    base = str(resolve_model(target.base).path)
    tokenizer = load_tokenizer(base)
    chats = [e for e in read_test_items(target.test, target.system_prompt, args.limit) if isinstance(e, ChatExample)]
    prompts = [tokenizer(prompt_for_generation(tokenizer, e.prompt_messages), add_special_tokens=False)["input_ids"]
               for e in chats]
    references = [e.answer or "" for e in chats]
    metrics, primary = pick_metrics(references)
    max_new = default_max_new_tokens(tokenizer, chats)
    cases = args.cases.split(",")
    print(f"{hw.note}; {len(chats)} test chats, max {max_new} new tokens, primary metric {primary}; "
          f"load {os.getloadavg()[0]:.2f}", flush=True)

    models = {(case, dtype): build(case, dtype, base, adapter) for case in cases for dtype in DTYPES}
    result: dict = {"threads": hw.threads, "chats": len(chats), "primary": primary, "cases": {}}

    # 1. Quality: each case's test answers in every dtype, against the same case in fp32.
    for case in cases:
        reference = None
        for dtype in DTYPES:
            texts, tokens, seconds = answer(models[case, dtype], tokenizer, prompts, max_new, 16)
            if dtype == "fp32":
                reference = texts
            assert reference is not None
            comparison = compare_answers(metrics, primary, references, texts, reference)
            score = next(m for m in comparison.metrics if m.name == primary)
            row = {"score": round(score.tuned, 4), "vs_fp32": round(score.difference or 0.0, 4),
                   "interval": [round(x, 4) for x in score.interval or (0.0, 0.0)],
                   "agree": round(sum(a == b for a, b in zip(texts, reference)) / len(texts), 4),
                   "eval_tok_s": round(tokens / seconds, 1), "load": round(os.getloadavg()[0], 2)}
            result["cases"].setdefault(case, {})[dtype] = row
            print(f"{case:7} {dtype}: {primary} {row['score']:.3f} (vs fp32 {row['vs_fp32']:+.3f}, "
                  f"interval {row['interval']}), identical answers {row['agree']:.1%}, "
                  f"{row['eval_tok_s']} tok/s over the test set; load {row['load']}", flush=True)

    # 2. Speed: single stream and 16 rows, the cases alternating inside each round.
    speed: dict = {}
    for r in range(args.rounds):
        for key, model in models.items():
            _, tokens, seconds = answer(model, tokenizer, prompts[r:r + 1], args.tokens, 1)
            _, btokens, bseconds = answer(model, tokenizer, prompts[:16], args.tokens, 16)
            speed.setdefault(key, {"single": [], "batch16": []})
            speed[key]["single"].append(tokens / seconds)
            speed[key]["batch16"].append(btokens / bseconds)
        print(f"speed round {r + 1}/{args.rounds} done; load {os.getloadavg()[0]:.2f}", flush=True)
    for (case, dtype), runs in speed.items():
        row = result["cases"][case][dtype]
        for kind in ("single", "batch16"):
            row[f"{kind}_tok_s"] = round(sorted(runs[kind])[len(runs[kind]) // 2], 1)   # median (of 2: the faster)
            fp32 = sorted(speed[case, "fp32"][kind])[len(runs[kind]) // 2]
            row[f"{kind}_vs_fp32"] = round(row[f"{kind}_tok_s"] / fp32, 2)
        print(f"{case:7} {dtype}: single {row['single_tok_s']} tok/s ({row['single_vs_fp32']}x fp32), "
              f"16 rows {row['batch16_tok_s']} tok/s ({row['batch16_vs_fp32']}x fp32)", flush=True)
    del models

    # 3. Memory: each base dtype alone in a fresh process.
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(prompts[:16], f)
    result["memory_mb"] = {}
    for dtype in DTYPES:
        out = subprocess.run([sys.executable, __file__, "--memory-child", base, dtype, "--prompts-file", f.name],
                             capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        result["memory_mb"][dtype] = json.loads(out)
        print(f"base {dtype}: resident {result['memory_mb'][dtype]['VmRSS']} MB, "
              f"peak {result['memory_mb'][dtype]['VmHWM']} MB", flush=True)
    os.unlink(f.name)
    result["load"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
