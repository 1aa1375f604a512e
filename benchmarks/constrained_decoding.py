"""Which constrained-decoding library works with transformers generate on CPU: setup and per-token cost.

    PYTHONPATH=SITE python benchmarks/constrained_decoding.py MODEL_FOLDER {xgrammar|outlines|lmfe}

SITE holds the library (pip install --no-deps --target SITE ...); MODEL_FOLDER an HF folder (the
embedded SmolLM2 converted by hone: HONE_HOME/models/smollm2-135m-instruct-*). Greedy, 48 new tokens,
one thread; prints ms/token unconstrained and constrained to a tool-call JSON schema (docs/decisions.md).
"""
import json
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessorList

torch.set_num_threads(1)
SCHEMA = {"type": "object", "required": ["name", "arguments"], "additionalProperties": False, "properties": {
    "name": {"const": "refund_order"},
    "arguments": {"type": "object", "required": ["order_id", "reason"], "additionalProperties": False, "properties": {
        "order_id": {"type": "string", "pattern": "^A-[0-9]{4}$"},
        "reason": {"type": "string", "enum": ["damaged", "late", "wrong item"]}}}}}


def run(model, tokenizer, ids, processor, label: str, n: int = 48) -> float:
    started = time.perf_counter()
    out = model.generate(**ids, max_new_tokens=n, do_sample=False, logits_processor=processor, pad_token_id=2)
    seconds = time.perf_counter() - started
    new = out[0, ids["input_ids"].shape[1]:]
    print(f"{label}: {len(new)} tokens, {seconds / len(new) * 1000:.1f} ms/token; "
          f"text={tokenizer.decode(new, skip_special_tokens=True)!r}", flush=True)
    return seconds / len(new)


def processor_for(which: str, model, tokenizer):
    """(seconds to prepare the tokenizer, seconds to compile the schema, the logits processors)."""
    started = time.perf_counter()
    if which == "lmfe":
        from lmformatenforcer import JsonSchemaParser
        from lmformatenforcer.integrations.transformers import (
            build_token_enforcer_tokenizer_data,
            build_transformers_prefix_allowed_tokens_fn,
        )
        from transformers import PrefixConstrainedLogitsProcessor

        data = build_token_enforcer_tokenizer_data(tokenizer)
        ready = time.perf_counter()
        fn = build_transformers_prefix_allowed_tokens_fn(data, JsonSchemaParser(SCHEMA))
        processors = LogitsProcessorList([PrefixConstrainedLogitsProcessor(fn, 1)])
    elif which == "xgrammar":
        import xgrammar as xgr

        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=model.config.vocab_size)
        compiler = xgr.GrammarCompiler(info)
        ready = time.perf_counter()
        grammar = compiler.compile_json_schema(json.dumps(SCHEMA))
        processors = LogitsProcessorList([xgr.contrib.hf.LogitsProcessor(grammar)])
    else:
        import outlines
        from outlines.backends.outlines_core import OutlinesCoreBackend

        backend = OutlinesCoreBackend(outlines.from_transformers(model, tokenizer))
        ready = time.perf_counter()
        processors = LogitsProcessorList([backend.get_json_schema_logits_processor(json.dumps(SCHEMA))])
    return ready - started, time.perf_counter() - ready, processors


def main() -> None:
    folder, which = sys.argv[1], sys.argv[2]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Refund order A-1234, it arrived damaged. "
                                             "Answer with JSON."}], tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    run(model, tokenizer, ids, None, "warm-up")
    plain = run(model, tokenizer, ids, None, "unconstrained")
    setup, compile_seconds, processors = processor_for(which, model, tokenizer)
    print(f"{which}: tokenizer setup {setup:.2f} s, schema compile {compile_seconds:.2f} s", flush=True)
    constrained = run(model, tokenizer, ids, processors, which)
    print(f"{which}: overhead {(constrained - plain) * 1000:.1f} ms/token ({constrained / plain:.2f}x)")


if __name__ == "__main__":
    main()
