"""hone against TRL's SFTTrainer on the same SFT LoRA job, in one invocation.

The job: SmolLM2-135M-Instruct (the embedded model), LoRA r16 on every linear layer, the first
STEPS x BATCH examples of the demo's order-extraction training data for one epoch (so every runner
trains on exactly the same examples and the same number of loss-bearing tokens), the same lr,
schedule, warmup, seed and effective batch. Each runner is a fresh subprocess; runners alternate
(hone, TRL default, TRL best, hone with one speed lever off, ...; `--repeats` goes round again).

For each runner it prints trained tokens per second (loss-bearing tokens: the assistant's answer and
its end-of-turn token), peak RSS during training, the validation loss of the trained adapter (hone's
own per-token function on the same validation examples, fp32, for every runner) and the demo metric
(JSON field match on the first test items, greedy). Then the ratios hone/peer, and achieved FLOP/s
as a fraction of this machine's measured matmul peak in bf16 and fp32. The last line is one JSON
object.

    .venv/bin/python benchmarks/train_throughput.py [--steps 8] [--batch 8] [--repeats 1]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LORA = {"r": 16, "alpha": 32}
LR = 1e-3
SEED = 42
VALIDATION_ITEMS = 40
TEST_ITEMS = 24

# name -> (runner, settings). hone's levers are switched off one at a time.
RUNNERS = {
    "hone": ("hone", {}),
    "trl_default": ("trl", {}),
    "trl_best": ("trl", {"gradient_checkpointing": False, "padding_free": True}),
    "hone_no_frozen_bf16": ("hone", {"frozen_bf16": False}),
    "hone_sdpa_attention": ("hone", {"attention": "sdpa"}),
    "hone_no_length_grouping": ("hone", {"group_by_length": False}),
    "hone_full_logits": ("hone", {"head_on_trained_only": False}),
    "hone_no_fused_lora": ("hone", {"fused_lora": False}),
    "hone_no_shared_prefix": ("hone", {"shared_prefix": False}),  # the system prompt computed per example
    "hone_packing": ("hone", {"packing": True}),  # off by default: measured here whether it pays
    "hone_no_token_cap": ("hone", {"micro_batch_tokens": 1_000_000}),  # the whole batch in one pass
    "hone_compile": ("hone", {"compile": True}),  # train_seconds include the first compile (cold or cached)
}
PEERS_DESCRIPTION = {
    "trl_default": "SFTTrainer, SFTConfig defaults + use_cpu=True (bf16 autocast, gradient checkpointing)",
    "trl_best": "SFTTrainer, bf16 autocast, no gradient checkpointing, padding_free=True",
}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_peak(dtype_name: str, threads: int, size: int = 2048, seconds: float = 3.0) -> float:
    """Best-of sustained GFLOP/s of a square matmul on this machine, now."""
    import torch

    torch.set_num_threads(threads)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    torch.set_float32_matmul_precision("highest")
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    best, end = 0.0, time.monotonic() + seconds
    while time.monotonic() < end:
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * size**3 / (time.perf_counter() - start) / 1e9)
    return best


# ---------------------------------------------------------------- data shared by every runner

def prepare(folder: Path, steps: int, batch: int) -> dict:
    """Write the train/validation/test subsets; return the token counts every runner trains on."""
    from hone.data.load import load_chat_records
    from hone.data.render import tokenize_chat
    from hone.objectives.demo import demo_data
    from hone.models.load import load_tokenizer

    source = demo_data()
    subsets = {"train": steps * batch, "validation": VALIDATION_ITEMS, "test": TEST_ITEMS}
    for split, n in subsets.items():
        lines = (source / f"{split}.jsonl").read_text(encoding="utf-8").splitlines(True)[:n]
        (folder / f"{split}.jsonl").write_text("".join(lines), encoding="utf-8")
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    train = [tokenize_chat(tokenizer, e.messages, 256) for e in load_chat_records(folder / "train.jsonl")]
    return {"trained_tokens": sum(max(0, e.trained_tokens - (e.labels[0] != -100)) for e in train),
            "processed_tokens": sum(len(e.input_ids) for e in train)}


def common(folder: Path, threads: int):
    """What every runner shares: hardware settings, tokenizer, tokenized validation set, base."""
    from hone.data.load import load_chat_records
    from hone.data.render import tokenize_chat
    from hone.hardware import pick_hardware
    from hone.models.catalogue import resolve_model
    from hone.models.load import load_tokenizer

    hw = pick_hardware("auto", threads)
    base = resolve_model("smollm2-135m-instruct")
    tokenizer = load_tokenizer(base)
    val = [tokenize_chat(tokenizer, e.messages, 256) for e in load_chat_records(folder / "validation.jsonl")]
    return hw, base, tokenizer, val


def score(adapter_dir: Path, base, tokenizer, folder: Path, val, hw) -> tuple[float, float]:
    """(validation loss, demo metric) of a saved adapter, measured the same way for every runner."""
    from hone.data.load import load_chat_records
    from hone.evaluation.compare import default_max_new_tokens, evaluate_answers
    from hone.hardware import Hardware
    from hone.models.load import load_with_adapter
    from hone.training.step import validation_loss

    model = load_with_adapter(base, adapter_dir, "cpu")
    fp32 = Hardware("cpu", None, hw.threads, "fp32")
    val_loss = validation_loss(model, val, 8, tokenizer.pad_token_id, fp32)
    test = load_chat_records(folder / "test.jsonl")
    evaluation = evaluate_answers(model, tokenizer, test, "json_match", default_max_new_tokens(tokenizer, test),
                                  32, "test")
    return val_loss, evaluation.score


# ---------------------------------------------------------------- runners (each in its own process)

def run_hone(folder: Path, steps: int, batch: int, threads: int, levers: dict) -> dict:
    import torch

    from hone.config import build_config
    from hone.data.load import load_chat_records
    from hone.data.render import tokenize_chat
    from hone.methods import apply_method
    from hone.models.load import load_causal_lm
    from hone.training.loop import train_loop
    from hone.training.precision import bf16_frozen_linears, pick_attention

    hw, base, tokenizer, val = common(folder, threads)
    cfg = build_config({"method": {"name": "lora", "lora_r": LORA["r"], "lora_alpha": LORA["alpha"]},
                        "train": {"lr": LR, "epochs": 1, "batch_size": batch, "micro_batch_size": batch,
                                  "seed": SEED, "warmup_ratio": 0.1, "scheduler": "cosine",
                                  "early_stopping_patience": None, "restore_best": False, **levers}})
    train = [tokenize_chat(tokenizer, e.messages, 256) for e in load_chat_records(folder / "train.jsonl")]
    attention = cfg.train.attention
    if attention == "auto":
        attention = pick_attention(hw.device, max(len(e.input_ids) for e in train))
    model = load_causal_lm(base, hw.device, attention=attention)
    torch.manual_seed(SEED)
    model = apply_method(model, cfg.method)
    if hw.frozen_bf16 and cfg.train.frozen_bf16:
        bf16_frozen_linears(model, cfg.train.fused_lora)
    run_dir = Path(tempfile.mkdtemp(dir=folder))
    from rich.console import Console
    result = train_loop(model, train, [], cfg.train, LR, hw, run_dir, tokenizer.pad_token_id,
                        console=Console(stderr=True, quiet=True))
    rss = peak_rss_mb()
    model.save_pretrained(run_dir / "adapter")
    val_loss, metric = score(run_dir / "adapter", base, tokenizer, folder, val, hw)
    return {"train_seconds": result.seconds, "peak_rss_mb": rss, "val_loss": val_loss, "metric": metric,
            "steps": result.steps}


def run_trl(folder: Path, steps: int, batch: int, threads: int, settings: dict) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from hone.data.load import load_chat_records
    from hone.models.load import load_causal_lm

    hw, base, tokenizer, val = common(folder, threads)
    rows = [{"prompt": e.prompt_messages, "completion": [{"role": "assistant", "content": e.answer}]}
            for e in load_chat_records(folder / "train.jsonl")]
    extra = {"max_length": None} if settings.get("padding_free") else {}
    args = SFTConfig(output_dir=str(folder / "trl-out"), use_cpu=True, per_device_train_batch_size=batch,
                     gradient_accumulation_steps=1, num_train_epochs=1, learning_rate=LR,
                     lr_scheduler_type="cosine", warmup_steps=max(1, round(0.1 * steps)), logging_steps=1,
                     save_strategy="no", report_to=[], seed=SEED, disable_tqdm=True, **settings, **extra)
    torch.manual_seed(SEED)
    trainer = SFTTrainer(model=load_causal_lm(base, "cpu"), args=args, processing_class=tokenizer,
                         train_dataset=Dataset.from_list(rows),
                         peft_config=LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], target_modules="all-linear",
                                                task_type="CAUSAL_LM"))
    torch.set_num_threads(threads)
    output = trainer.train()
    rss = peak_rss_mb()
    adapter = folder / f"trl-adapter-{os.getpid()}"
    trainer.model.save_pretrained(adapter)
    val_loss, metric = score(adapter, base, tokenizer, folder, val, hw)
    return {"train_seconds": output.metrics["train_runtime"], "peak_rss_mb": rss, "val_loss": val_loss,
            "metric": metric, "steps": output.global_step}


# ---------------------------------------------------------------- the comparison

def launch(name: str, folder: Path, steps: int, batch: int, threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, __file__, "--worker", name, "--folder", str(folder),
                           "--steps", str(steps), "--batch", str(batch), "--threads", str(threads)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--runners", default=",".join(RUNNERS), help="comma-separated subset")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        kind, settings = RUNNERS[args.worker]
        runner = run_hone if kind == "hone" else run_trl
        print(json.dumps(runner(Path(args.folder), args.steps, args.batch, args.threads, settings)))
        return

    from hone.hardware import pick_threads
    threads = args.threads or pick_threads()
    names = [n for n in args.runners.split(",") if n]
    folder = Path(tempfile.mkdtemp(prefix="hone-bench-"))
    tokens = prepare(folder, args.steps, args.batch)
    peaks = {"bf16": matmul_peak("bf16", threads), "fp32": matmul_peak("fp32", threads)}
    print(f"job: SmolLM2-135M LoRA r{LORA['r']} all-linear, {args.steps} steps x batch {args.batch}, lr {LR}, "
          f"{tokens['trained_tokens']} trained / {tokens['processed_tokens']} processed tokens, {threads} thread(s)")
    print(f"matmul peak here: bf16 {peaks['bf16']:.0f} GFLOP/s, fp32 {peaks['fp32']:.0f} GFLOP/s")
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for repeat in range(args.repeats):
        for name in names:
            result = launch(name, folder, args.steps, args.batch, threads)
            result["tokens_per_s"] = tokens["trained_tokens"] / result["train_seconds"]
            runs[name].append(result)
            print(f"  [{repeat + 1}/{args.repeats}] {name:24s} {result['tokens_per_s']:7.1f} trained tok/s  "
                  f"{result['peak_rss_mb']:6.0f} MB  val {result['val_loss']:.4f}  metric {result['metric']:.3f}",
                  flush=True)

    summary = {}
    for name, results in runs.items():
        summary[name] = {key: statistics.median(r[key] for r in results)
                         for key in ("tokens_per_s", "train_seconds", "peak_rss_mb", "val_loss", "metric")}
    print(f"\n{'runner':24s} {'trained tok/s':>13s} {'peak RSS MB':>11s} {'val loss':>9s} {'metric':>7s}")
    for name, row in summary.items():
        print(f"{name:24s} {row['tokens_per_s']:13.1f} {row['peak_rss_mb']:11.0f} {row['val_loss']:9.4f} "
              f"{row['metric']:7.3f}")
    out = {"steps": args.steps, "batch": args.batch, "threads": threads, "repeats": args.repeats,
           "matmul_peak_gflops": peaks}
    if "hone" in summary:
        hone = summary["hone"]
        # A frozen-base LoRA step costs ~4 FLOPs per parameter per processed token (forward, and
        # the input gradients of backward); the adapters' own weight gradients are negligible.
        achieved = 4 * 134_515_008 * tokens["processed_tokens"] / hone["train_seconds"] / 1e9
        out |= {"val_loss_hone": hone["val_loss"], "metric_hone": hone["metric"],
                "tokens_per_s_hone": hone["tokens_per_s"], "achieved_gflops_hone": achieved,
                "mfu_bf16": achieved / peaks["bf16"], "mfu_fp32": achieved / peaks["fp32"]}
        print(f"\nhone achieved ~{achieved:.0f} GFLOP/s: {out['mfu_bf16']:.0%} of the bf16 matmul peak, "
              f"{out['mfu_fp32']:.0%} of fp32")
        for peer in ("trl_default", "trl_best"):
            if peer in summary:
                row = summary[peer]
                short = peer.removeprefix("trl_")
                out |= {f"speedup_vs_trl_{short}": hone["tokens_per_s"] / row["tokens_per_s"],
                        f"rss_ratio_vs_trl_{short}": hone["peak_rss_mb"] / row["peak_rss_mb"],
                        f"val_loss_trl_{short}": row["val_loss"], f"metric_trl_{short}": row["metric"]}
                print(f"hone vs {peer} ({PEERS_DESCRIPTION[peer]}): {out[f'speedup_vs_trl_{short}']:.2f}x tokens/s, "
                      f"{out[f'rss_ratio_vs_trl_{short}']:.2f}x peak RSS")
        for name in summary:
            if name.startswith("hone_"):
                out[f"lever_{name}_slowdown"] = hone["tokens_per_s"] / summary[name]["tokens_per_s"]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
