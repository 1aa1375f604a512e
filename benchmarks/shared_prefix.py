"""Shared-prefix training on chats with a long common system prompt: seconds per step, on and off.

The demo's system prompt (32 tokens) is below training/batches.py's SHARED_PREFIX_MIN, so the main
benchmark (train_throughput.py) cannot show this lever. Here the demo's chats get the same extra
instructions appended to their system prompt (`--repeat` copies of a ~70-token rule text), and
hone's own train_step runs the same batches with `train.shared_prefix` on and off, alternating,
in one process. Prints the mean length, the shared prefix, and the median seconds per step of each.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

RULES = ("Rules: names keep their accents and hyphens; dates become YYYY-MM-DD even when written as words; "
         "quantities spoken as words become integers; the item is the product as the customer named it, "
         "without the quantity; ignore greetings, thanks and anything about delivery addresses.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=2, help="copies of the rule text added to the system prompt")
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2, help="on/off alternations")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from hone.config import build_config
    from hone.data.load import load_chat_records
    from hone.data.render import tokenize_chat
    from hone.objectives.demo import demo_data
    from hone.hardware import pick_hardware
    from hone.methods import apply_method
    from hone.models.load import load_causal_lm, load_tokenizer
    from hone.training.batches import common_prefix, epoch_batches
    from hone.training.step import train_step
    from hone.training.precision import bf16_frozen_linears

    torch.set_num_threads(args.threads)
    hw = pick_hardware("auto", args.threads)
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    extra = " ".join([RULES] * args.repeat)
    chats = load_chat_records(Path(demo_data()) / "train.jsonl")[:args.examples]
    train = [tokenize_chat(tokenizer, [{"role": "system", "content": f"{c.messages[0]['content']} {extra}"},
                                       *c.messages[1:]], 1024) for c in chats]
    batches = epoch_batches([len(e.input_ids) for e in train], args.batch, 42, 0)
    print(f"{len(train)} chats, mean {statistics.mean(len(e.input_ids) for e in train):.0f} tokens, "
          f"shared prefix {common_prefix(train)} tokens, {len(batches)} steps of {args.batch}, {args.threads} thread(s)")
    seconds: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.rounds):
        for share in (True, False):
            cfg = build_config({"method": {"name": "lora", "lora_r": 16, "lora_alpha": 32},
                                "train": {"batch_size": args.batch, "micro_batch_size": args.batch, "shared_prefix": share}})
            torch.manual_seed(42)
            model = apply_method(load_causal_lm("smollm2-135m-instruct", hw.device, attention="eager"), cfg.method)
            if hw.frozen_bf16:
                bf16_frozen_linears(model)
            params = [p for p in model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(params, lr=1e-3)
            for batch in batches:
                started = time.perf_counter()
                train_step(model, optimizer, [train[i] for i in batch], cfg.train, 1e-3, tokenizer.pad_token_id, hw, params)
                seconds[share].append(time.perf_counter() - started)
            del model, optimizer
    on, off = statistics.median(seconds[True]), statistics.median(seconds[False])
    print(f"shared prefix on : {on:.2f} s/step (median of {len(seconds[True])})")
    print(f"shared prefix off: {off:.2f} s/step")
    print(f"speedup {off / on:.2f}x")


if __name__ == "__main__":
    main()
