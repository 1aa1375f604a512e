"""Text generation from chat messages: batched for evaluation, streamed for chat."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterator

import torch

from hone.data.render import prompt_for_generation

if TYPE_CHECKING:
    from hone.evaluation.engine import Generation


@torch.no_grad()
def generate_batch(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int,
                   batch_size: int = 16, on_batch: Callable[[int], None] | None = None,
                   tools: list[list[dict] | None] | None = None, prefill: str = "",
                   generation: Generation | None = None) -> list[str]:
    """Greedy answers for many conversations (each with the tools it may call), batched by length; returns
    texts in input order. `prefill` is written after the assistant header (an empty reasoning block).
    `generation` with a GGUF: llama.cpp answers (evaluation/engine.py), `model` is not used."""
    tools = tools or [None] * len(conversations)
    prompts = [prompt_for_generation(tokenizer, c, t) + prefill for c, t in zip(conversations, tools)]
    if generation is not None and generation.gguf is not None:
        from hone.llamacpp.generate import generate_ids

        ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        out = generate_ids(generation.gguf, ids, max_new_tokens, {tokenizer.eos_token_id}, generation.threads,
                           on_batch)
        return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in out]
    lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: lengths[i])
    answers: list[str] = [""] * len(prompts)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            encoded = tokenizer([prompts[i] for i in chunk], return_tensors="pt", padding=True,
                                add_special_tokens=False).to(device)
            output = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            new = output[:, encoded["input_ids"].shape[1]:]
            for i, row in zip(chunk, new):
                answers[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
            if on_batch:
                on_batch(len(chunk))
    finally:
        tokenizer.padding_side = side
    return answers


def stream_answer(model, tokenizer, messages: list[dict], max_new_tokens: int = 512,
                  temperature: float = 0.0) -> Iterator[str]:
    """Yield the answer to `messages` piece by piece as it is generated."""
    from threading import Thread

    from transformers import TextIteratorStreamer

    prompt = prompt_for_generation(tokenizer, messages)
    encoded = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(next(model.parameters()).device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    kwargs = dict(**encoded, max_new_tokens=max_new_tokens, streamer=streamer,
                  pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, **sampling)
    thread = Thread(target=lambda: torch.no_grad()(model.generate)(**kwargs), daemon=True)
    thread.start()
    yield from streamer
    thread.join()
