"""Generate hone's worked function-calling task: a shop's support assistant with three tools.

    python scripts/tool_task.py OUT_DIR [--train 600] [--test 120] [--seed 7]
    python scripts/tool_task.py --compare BASE.json TUNED.json   # two `hone eval --no-base --json` outputs

Writes OUT_DIR/train.jsonl and OUT_DIR/test.jsonl in OpenAI's fine-tuning format (`tools`, assistant
`tool_calls` with JSON-string arguments, `tool` replies with `tool_call_id`). Conversations need zero
calls (a policy question answered in words), one call (look up, refund or change an address, then
answer from the tool's reply) or two (two orders looked up at once, or a look-up then a refund). Half of
the test conversations use phrasings no training conversation uses (the `HELD_OUT` templates), so the
score says whether the model learnt the task or the sentences. docs/tools.md gives the measured results.
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SYSTEM = "You are Shopwise's support assistant. Use the functions to look up and change orders."
TOOLS = [
    {"type": "function", "function": {
        "name": "lookup_order", "description": "Status and delivery date of an order",
        "parameters": {"type": "object", "properties": {"order_id": {"type": "string", "pattern": "^A-[0-9]{4}$"}},
                       "required": ["order_id"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "refund_order", "description": "Refund an order",
        "parameters": {"type": "object", "properties": {
            "order_id": {"type": "string", "pattern": "^A-[0-9]{4}$"},
            "reason": {"type": "string", "enum": ["damaged", "late", "wrong_item", "changed_mind"]}},
            "required": ["order_id", "reason"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "change_address", "description": "Change the delivery address of an order not yet shipped",
        "parameters": {"type": "object", "properties": {
            "order_id": {"type": "string", "pattern": "^A-[0-9]{4}$"}, "street": {"type": "string"},
            "city": {"type": "string"}},
            "required": ["order_id", "street", "city"], "additionalProperties": False}}},
]

# (train templates, held-out templates) per intent; {o} {p} order ids, {r} a reason's words, {s} {c} an address.
LOOKUP = (["Where is my order {o}?", "Can you check the status of order {o}?", "When will {o} arrive?",
           "Has order {o} shipped yet?", "status of {o} please", "I'm waiting on {o}, any news?"],
          ["Any update on my parcel {o}?", "Could you tell me where {o} is right now?"])
REFUND = (["I want a refund for {o}, it {r}.", "Please refund order {o}: it {r}.", "Order {o} {r}, refund me.",
           "Refund {o} please, it {r}."],
          ["My order {o} {r}. I'd like my money back.", "Can I get my money back for {o}? It {r}."])
ADDRESS = (["Please send order {o} to {s}, {c} instead.", "Change the address of {o} to {s}, {c}.",
            "Ship {o} to {s} in {c} please.", "New delivery address for {o}: {s}, {c}."],
           ["I moved! Could {o} go to {s}, {c}?", "Deliver {o} to {s} ({c}) rather than the old address."])
TWO_LOOKUPS = (["Where are my orders {o} and {p}?", "Check {o} and {p} for me.", "Status of {o} and {p}?"],
               ["I have two parcels, {o} and {p}: where are they?"])
LOOKUP_REFUND = (["Order {o} is so late. Check it and refund me if it hasn't arrived.",
                  "If {o} is still not delivered, I want a refund. Can you check?"],
                 ["{o} should have come days ago; look it up and refund it if it is still on its way."])
POLICY = (["How long do refunds take?", "Do you ship abroad?", "What are your opening hours?",
           "Can I pay by invoice?", "How do I return an item?"],
          ["Is shipping free?", "Can I change my order after it has shipped?"])
POLICY_ANSWERS = {
    "How long do refunds take?": "Refunds reach your account within 5 working days.",
    "Do you ship abroad?": "We ship to every EU country.",
    "What are your opening hours?": "Our support team is available 8:00-20:00, Monday to Saturday.",
    "Can I pay by invoice?": "Yes, invoice payment is available for orders up to 500 euros.",
    "How do I return an item?": "Send it back within 30 days with the return label from your order e-mail.",
    "Is shipping free?": "Shipping is free for orders over 40 euros.",
    "Can I change my order after it has shipped?": "No, once an order has shipped it can no longer be changed.",
}
OPENINGS = ["", "Hi, ", "Hello! ", "Quick question: ", "Good morning. ", "Hey, ", "I got order {o} last week. ",
            "About my order {o}: ", "Thanks for the help earlier. ", "Hi there! I have order {o}. "]
REASONS = {"damaged": ["arrived damaged", "came broken", "was smashed in the box"],
           "late": ["is late", "never arrived on time", "came two weeks late"],
           "wrong_item": ["is the wrong item", "contained something I didn't order"],
           "changed_mind": ["is not what I want any more", "is no longer needed"]}
STREETS = ["12 Elm Street", "4 Harbour Road", "77 Mill Lane", "9 Rue Verte", "31 Station Square", "5 Oak Avenue"]
CITIES = ["Leeds", "Lyon", "Porto", "Ghent", "Malmo", "Graz", "Turin", "Cork"]
STATUSES = [("shipped", "arrives {d}"), ("processing", "ships {d}"), ("delivered", "was delivered {d}")]
DAYS = ["on Monday", "on Tuesday", "tomorrow", "on Friday", "next week"]


class Conversation:
    """One conversation under construction: messages with numbered call ids."""

    def __init__(self, user: str):
        self.messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
        self.calls = 0

    def call(self, *calls: tuple[str, dict]) -> list[str]:
        ids = []
        for _ in calls:
            self.calls += 1
            ids.append(f"call_{self.calls}")
        self.messages.append({"role": "assistant", "tool_calls": [
            {"id": i, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
            for i, (name, args) in zip(ids, calls)]})
        return ids

    def reply(self, call_id: str, result: dict) -> None:
        self.messages.append({"role": "tool", "tool_call_id": call_id, "content": json.dumps(result)})

    def answer(self, text: str) -> dict:
        self.messages.append({"role": "assistant", "content": text})
        return {"messages": self.messages, "tools": TOOLS}


def order_id(rng: random.Random) -> str:
    return f"A-{rng.randint(1000, 9999)}"


def status(rng: random.Random) -> dict:
    state, when = rng.choice(STATUSES)
    return {"status": state, "when": when.format(d=rng.choice(DAYS))}


def make(kind: str, held_out: bool, rng: random.Random) -> dict:
    pick = lambda templates: rng.choice(templates[1] if held_out else templates[0])  # noqa: E731
    o, p = order_id(rng), order_id(rng)
    if kind == "policy":   # no call needed, even when an order is mentioned
        question = pick(POLICY)
        opening = rng.choice(OPENINGS).format(o=o)
        return Conversation(f"{opening}{question}").answer(POLICY_ANSWERS[question])
    if kind == "lookup":
        chat = Conversation(pick(LOOKUP).format(o=o))
        found = status(rng)
        chat.reply(chat.call(("lookup_order", {"order_id": o}))[0], found)
        return chat.answer(f"Order {o} is {found['status']} and {found['when']}.")
    if kind == "refund":
        reason = rng.choice(list(REASONS))
        chat = Conversation(pick(REFUND).format(o=o, r=rng.choice(REASONS[reason])))
        chat.reply(chat.call(("refund_order", {"order_id": o, "reason": reason}))[0], {"refunded": True})
        return chat.answer(f"Done: order {o} is refunded. The money reaches you within 5 working days.")
    if kind == "address":
        street, city = rng.choice(STREETS), rng.choice(CITIES)
        chat = Conversation(pick(ADDRESS).format(o=o, s=street, c=city))
        chat.reply(chat.call(("change_address", {"order_id": o, "street": street, "city": city}))[0], {"ok": True})
        return chat.answer(f"Order {o} will now be delivered to {street}, {city}.")
    if kind == "two_lookups":
        chat = Conversation(pick(TWO_LOOKUPS).format(o=o, p=p))
        first, second = status(rng), status(rng)
        ids = chat.call(("lookup_order", {"order_id": o}), ("lookup_order", {"order_id": p}))
        chat.reply(ids[0], first)
        chat.reply(ids[1], second)
        return chat.answer(f"Order {o} is {first['status']} and {first['when']}; order {p} is "
                           f"{second['status']} and {second['when']}.")
    chat = Conversation(pick(LOOKUP_REFUND).format(o=o))   # lookup_refund: two calls one after the other
    chat.reply(chat.call(("lookup_order", {"order_id": o}))[0], {"status": "shipped", "when": "arrives next week"})
    chat.reply(chat.call(("refund_order", {"order_id": o, "reason": "late"}))[0], {"refunded": True})
    return chat.answer(f"Order {o} had not arrived, so I refunded it. The money reaches you within 5 working days.")


KINDS = ["policy", "lookup", "refund", "address", "two_lookups", "lookup_refund"]


def generate(train: int, test: int, seed: int) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    train_rows = [make(KINDS[i % len(KINDS)], False, rng) for i in range(train)]
    asked = {row["messages"][1]["content"] for row in train_rows}
    test_rows: list[dict] = []
    while len(test_rows) < test:   # no test question is asked word for word in training
        i = len(test_rows)
        row = make(KINDS[i % len(KINDS)], i % 2 == 1, rng)
        if row["messages"][1]["content"] not in asked:
            test_rows.append(row)
    rng.shuffle(train_rows)
    return train_rows, test_rows


def compare(base_json: Path, tuned_json: Path, test: Path, limit: int | None) -> None:
    """Base against tuned from two `hone eval --no-base --json` runs on the same items (run apart when the
    machine is too loaded for one process to do both): the tool metrics with paired bootstrap intervals,
    by hone's own code, as one `hone eval RUN --data TEST` would print them."""
    from hone.data.load import load_chat_records
    from hone.evaluation.compare import compare_answers
    from hone.evaluation.tools import item_scores, tool_items, tool_metrics

    base, tuned = (json.loads(Path(p).read_text()) for p in (base_json, tuned_json))
    items = tool_items(load_chat_records(test)[:limit] if limit else load_chat_records(test))
    references = [i.answer or "" for i in items]
    n = len(references)   # a run over more conversations is cut to the first `limit` (the same turns)
    assert references == base["references"][:n] == tuned["references"][:n], "the two runs scored different items"
    comparison = compare_answers(tool_metrics(items), "arguments_exact", references, tuned["tuned_answers"][:n],
                                 base["tuned_answers"][:n])
    print(f"{len(items)} assistant turns; {base['model']} (base) against {tuned['model']} (tuned)")
    print("| metric | base | tuned | difference (95% CI) | items |")
    print("|---|---|---|---|---|")
    for m in comparison.metrics:
        low, high = m.interval or (float("nan"), float("nan"))
        print(f"| {m.name} | {m.base:.3f} | {m.tuned:.3f} | {m.difference:+.3f} ({low:+.3f}, {high:+.3f}) | "
              f"{m.improved} up, {m.regressed} down |")
    # test conversation i uses held-out phrasings when i is odd (generate()); its line is i + 1
    for name, held in (("seen phrasings", 0), ("held-out phrasings", 1)):
        rows = [(item_scores(b, r, i.tools), item_scores(t, r, i.tools)) for i, r, b, t in
                zip(items, references, base["tuned_answers"], tuned["tuned_answers"]) if (i.line - 1) % 2 == held]
        shares = []
        for metric in ("tool_decision", "function_choice", "arguments_exact"):
            applies = sum(b[metric][0] for b, _ in rows)
            shares.append(f"{metric} {sum(b[metric][1] * b[metric][0] for b, _ in rows) / applies:.3f} -> "
                          f"{sum(t[metric][1] * t[metric][0] for _, t in rows) / applies:.3f}")
        print(f"{name} ({len(rows)} turns): " + "; ".join(shares))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, nargs="?")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("BASE_JSON", "TUNED_JSON"))
    parser.add_argument("--test-file", type=Path, help="with --compare: the test file both runs scored")
    parser.add_argument("--limit", type=int, help="with --compare: the --limit both runs used")
    parser.add_argument("--train", type=int, default=600)
    parser.add_argument("--test", type=int, default=120)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    if args.compare:
        return compare(*args.compare, args.test_file, args.limit)
    if args.out is None:
        parser.error("give OUT_DIR (or --compare)")
    args.out.mkdir(parents=True, exist_ok=True)
    for name, rows in zip(("train", "test"), generate(args.train, args.test, args.seed)):
        (args.out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        print(f"{args.out / name}.jsonl: {len(rows)} conversations")


if __name__ == "__main__":
    main()
