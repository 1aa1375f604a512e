"""The llama.cpp child process: batched decoding (batch.py) on GGUF files, driven over a socket.

Kept apart from hone's torch code: this module imports llama_cpp, numpy and the standard library only, so
the child holds only llama.cpp's memory, and a crash in llama.cpp costs the requests it was answering and
nothing else. It is started as `python -m` with one end of a socket pair (not by multiprocessing's spawn,
which re-imports the parent's main script: a script without a __main__ guard would start a second server).
Protocol (tuples over a multiprocessing Connection):
  parent -> child  ("generate", request)  request: id, model, adapter (a LoRA adapter GGUF applied over
                                          the model, or None), n_ctx, rows [(prompt ids, max_tokens)],
                                          temperature, top_p, seed, eos (token ids)
                   ("cancel", id, row)    stop row `row` of request `id` (-1: every row); a cancel that
                                          arrives after its request ended is ignored
  child -> parent  ("step", [(id, row, token)], [(id, row) that ended])   after every decode step
                   ("done", id)           every row of request `id` has ended
                   ("error", id, message) request `id` failed; its rows are gone
Requests join the running batch of their model between two steps, so many requests decode together. A
request with an adapter joins its base model's decoder (one copy of the base, each adapter loaded once);
the decoder decodes one adapter's rows per step (batch.py).
"""
from __future__ import annotations

import sys
from collections import OrderedDict

from hone.llamacpp.batch import BatchDecoder, Sequence

SLOTS = 16       # sequences decoding together per model
POOL = 8192      # KV cells per model shared by its sequences (at least the model's own context)


class Child:
    """The models loaded in this process and the rows each request still has running."""

    def __init__(self, conn, threads: int, max_models: int = 4):
        self.conn, self.threads, self.max_models = conn, threads, max_models
        self.decoders: OrderedDict[str, BatchDecoder] = OrderedDict()
        self.open: dict[int, set[int]] = {}     # request id -> its rows not yet ended
        self.model_of: dict[int, str] = {}      # request id -> its model path

    def serve(self) -> None:
        """Answer requests until the parent closes the connection."""
        while True:
            try:
                while not self.open or self.conn.poll():   # block while idle; drain what came in while busy
                    self.handle(self.conn.recv())
            except (EOFError, OSError):
                return
            for path, decoder in list(self.decoders.items()):
                if decoder:
                    self.step(path, decoder)

    def handle(self, message: tuple) -> None:
        if message[0] == "cancel":
            _, rid, row = message
            path = self.model_of.get(rid)
            if path is not None:
                gone = self.decoders[path].cancel(lambda key: key[0] == rid and row in (-1, key[1]))
                self.ended([s.key for s in gone])
            return
        request = message[1]
        rid = request["id"]
        try:
            decoder = self.decoder(request["model"], request["n_ctx"])
            rows = []
            for row, (prompt, limit) in enumerate(request["rows"]):
                seed = request["seed"] + row if request["seed"] is not None else None
                rows.append(Sequence((rid, row), prompt, limit, frozenset(request["eos"]), request["temperature"],
                                     request["top_p"], seed, request.get("adapter")))
            for s in rows:
                decoder.add(s)
        except Exception as exc:  # noqa: BLE001 - reported to the request; the child goes on
            self.conn.send(("error", rid, f"{type(exc).__name__}: {exc}"))
            return
        self.open[rid] = set(range(len(rows)))
        self.model_of[rid] = request["model"]

    def decoder(self, path: str, n_ctx: int) -> BatchDecoder:
        if path not in self.decoders:
            idle = [p for p, d in self.decoders.items() if not d]
            while len(self.decoders) >= self.max_models and idle:
                self.decoders.pop(idle.pop(0)).close()
            self.decoders[path] = BatchDecoder(path, self.threads, SLOTS, max(n_ctx, POOL))
        self.decoders.move_to_end(path)
        return self.decoders[path]

    def step(self, path: str, decoder: BatchDecoder) -> None:
        try:
            tokens, ended = decoder.step()
        except Exception as exc:  # noqa: BLE001 - every request on this model fails; the child goes on
            self.decoders.pop(path).close()
            for rid in [r for r, p in self.model_of.items() if p == path]:
                self.conn.send(("error", rid, f"{type(exc).__name__}: {exc}"))
                self.open.pop(rid, None)
                self.model_of.pop(rid, None)
            return
        self.conn.send(("step", [(rid, row, token) for (rid, row), token in tokens], ended))
        self.ended(ended, announced=True)

    def ended(self, keys: list, announced: bool = False) -> None:
        if keys and not announced:
            self.conn.send(("step", [], keys))
        for rid, row in keys:
            rows = self.open.get(rid)
            if rows is None:
                continue
            rows.discard(row)
            if not rows:
                del self.open[rid], self.model_of[rid]
                self.conn.send(("done", rid))


def main() -> None:
    """`python -m hone.llamacpp.child FD THREADS`: serve over the socket inherited as FD."""
    from multiprocessing.connection import Connection

    Child(Connection(int(sys.argv[1])), int(sys.argv[2])).serve()


if __name__ == "__main__":
    main()
