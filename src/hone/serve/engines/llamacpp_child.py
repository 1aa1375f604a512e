"""The llama.cpp engine's child process: llama-cpp-python on GGUF files, driven over a pipe.

Kept apart from hone's torch code: this module imports llama_cpp and the standard library only, so the
child holds only llama.cpp's memory. It is started as `python -m` with one end of a socket pair (not by
multiprocessing's spawn, which re-imports the parent's main script: a script without a __main__ guard
would start a second server). Protocol (tuples over a multiprocessing
Connection):
  parent -> child  ("generate", request)  request: id, model, n_ctx, rows [(prompt ids, max_tokens)],
                                          temperature, top_p, seed, eos (token ids)
                   ("cancel", id, row)    stop row `row` of request `id` (-1: every row); a cancel that
                                          arrives after its request ended is ignored
  child -> parent  ("token", row, id) ... ("row_end", row) per row, then ("done",) or ("error", message)
Rows run one after another; llama-cpp-python reuses the KV cache of the longest common prompt prefix
between two calls on the same model, so n choices of one prompt prefill it once.
"""
from __future__ import annotations

import random
import sys
from collections import OrderedDict


def serve(conn, threads: int, max_models: int = 4) -> None:
    """Answer requests from `conn` until the parent closes it."""
    import llama_cpp

    models: OrderedDict[tuple, llama_cpp.Llama] = OrderedDict()
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message[0] != "generate":
            continue   # a cancel for a request that already ended
        request = message[1]
        try:
            key = (request["model"], request["n_ctx"])
            if key not in models:
                while len(models) >= max_models:
                    models.popitem(last=False)
                models[key] = llama_cpp.Llama(model_path=request["model"], n_ctx=request["n_ctx"], n_threads=threads,
                                              n_threads_batch=threads, verbose=False)
            models.move_to_end(key)
            answer(conn, models[key], request)
            conn.send(("done",))
        except (BrokenPipeError, EOFError):
            return
        except Exception as exc:  # noqa: BLE001 - reported to the request; the child goes on
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


def answer(conn, llm, request: dict) -> None:
    eos, cancelled_all = set(request["eos"]), False
    greedy = request["temperature"] <= 0
    for row, (prompt, limit) in enumerate(request["rows"]):
        if cancelled_all:
            conn.send(("row_end", row))
            continue
        seed = request["seed"] + row if request["seed"] is not None else random.randrange(2**31)
        llm.set_seed(seed % 2**32)
        made = 0
        for token in llm.generate(prompt, temp=0.0 if greedy else request["temperature"], top_p=request["top_p"],
                                  top_k=0, min_p=0.0, typical_p=1.0, repeat_penalty=1.0, reset=True):
            conn.send(("token", row, token))
            made += 1
            if token in eos or made >= limit:
                break
            if conn.poll():
                message = conn.recv()
                if message[0] == "cancel" and message[1] == request["id"] and message[2] in (row, -1):
                    cancelled_all = message[2] == -1
                    break
        conn.send(("row_end", row))


def main() -> None:
    """`python -m hone.serve.engines.llamacpp_child FD THREADS`: serve over the socket inherited as FD."""
    from multiprocessing.connection import Connection

    serve(Connection(int(sys.argv[1])), int(sys.argv[2]))


if __name__ == "__main__":
    main()
