"""Generate the small bundled datasets that the examples/ configs train on, one per objective family.

    support-topics/     text + label: which team a customer message is for (classify)
    order-entities/     tokens + BIO tags: person, item, quantity, date in order messages (ner)
    order-preferences/  prompt + chosen + rejected, derived from the orders demo data: chosen is
                        the correct JSON, rejected a corrupted copy (dpo, orpo, simpo, reward)
    shop-text/          raw text about a made-up shop's products and policies (pretrain, mixture)

The text is synthetic and reuses the vocabulary of scripts/make_demo_data.py. Everything comes from
one `random.Random(seed)` per dataset, so the same seed gives byte-identical files. Each file stays
within a few hundred lines so the package stays small and every example trains in minutes on a CPU.

    python3 scripts/make_objective_data.py [--seed 7] [--out src/hone/datasets]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_demo_data as demo  # noqa: E402  (names, items and date renderings of the orders data)

DEFAULT_SEED = 7
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "hone" / "datasets"
ORDERS = DEFAULT_OUT / "orders"

# --- support-topics: four teams; several cues per topic and shared filler so it is not one keyword.
TOPICS = {
    "shipping": ["my parcel has not arrived yet", "the tracking page has not moved for {n} days",
                 "the courier left the box at the wrong address", "can you ship to {city} instead",
                 "the delivery was marked as delivered but nothing came", "how long does express delivery take"],
    "billing": ["I was charged twice for the {item}", "the invoice shows the wrong VAT number",
                "my card was declined although it has funds", "please send a receipt for my last order",
                "the discount code was not applied at checkout", "why is there a {n} euro fee on my statement"],
    "returns": ["the {item} arrived broken and I want to send it back", "how do I return the {item}",
                "I would like a refund for the {item}, it is the wrong size", "the return label does not print",
                "can I exchange the {item} for another colour", "I sent the {item} back {n} days ago, where is my refund"],
    "product": ["is the {item} dishwasher safe", "what are the dimensions of the {item}",
                "does the {item} come with a warranty", "is the {item} available in green",
                "what material is the {item} made of", "will the {item} be back in stock soon"],
}
CITIES = ["Lisbon", "Leeds", "Porto", "Lyon", "Gdansk", "Cork", "Turin", "Ghent"]
OPENERS = ["Hi,", "Hello,", "Good morning,", "", "Dear team,", "Hey there,"]
CLOSERS = ["Thanks.", "Regards, {name}", "", "Thank you!", "Cheers, {name}", "Please help."]

# --- shop-text: a made-up shop, its products and its policies.
SHOP = "Alder & Finch"
PRODUCT_LINES = [
    "The {item} from {shop} is made in small batches and checked by hand before it leaves the workshop.",
    "Every {item} ships in recycled paper packaging with no plastic filler.",
    "Customers who buy the {item} often pair it with the {item2}.",
    "The {item} is covered by the {shop} two-year warranty against manufacturing faults.",
    "Care instructions for the {item}: wipe clean with a damp cloth and keep away from direct heat.",
]
POLICY_LINES = [
    "{shop} accepts returns within thirty days of delivery as long as the item is unused.",
    "Refunds are issued to the original payment method within five working days of the return arriving.",
    "Standard delivery takes three to five working days; express delivery arrives the next working day.",
    "Orders placed before two in the afternoon leave the warehouse the same day.",
    "Exchanges for another size or colour are free of charge within the return window.",
    "Invoices are sent by email as soon as an order ships and list the VAT number of {shop}.",
    "The customer service team answers messages from Monday to Saturday, eight in the morning to six at night.",
]

# --- order-entities: short order sentences with the entity spans known while writing them.
WORD = re.compile(r"\w[\w'&-]*|[^\w\s]")  # words, and punctuation as tokens of its own (CoNLL style)
ENTITY_TEMPLATES = [
    "{PER} ordered {QTY} {ITEM} on {DATE} .",
    "Please send {QTY} {ITEM} to {PER} by {DATE} .",
    "On {DATE} , {PER} asked for {QTY} {ITEM} .",
    "New order : {QTY} {ITEM} for {PER} , delivery {DATE} .",
    "{PER} wants {QTY} {ITEM} , shipping {DATE} .",
    "Can {PER} get {QTY} {ITEM} before {DATE} ?",
]


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def person(rng: random.Random) -> str:
    return f"{rng.choice(demo.FIRST_NAMES)} {rng.choice(demo.LAST_NAMES)}"


def support_message(topic: str, rng: random.Random) -> str:
    body = rng.choice(TOPICS[topic]).format(n=rng.randint(2, 14), item=rng.choice(demo.ITEMS), city=rng.choice(CITIES))
    parts = [rng.choice(OPENERS), body[0].upper() + body[1:] + rng.choice([".", "?", "!", " please."]),
             rng.choice(CLOSERS).format(name=rng.choice(demo.FIRST_NAMES))]
    return " ".join(p for p in parts if p)


def support_topics(seed: int) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    topics = sorted(TOPICS)
    make = lambda n: [{"text": support_message(t, rng), "label": t} for t in (topics[i % 4] for i in range(n))]  # noqa: E731
    train, test = make(320), make(80)
    rng.shuffle(train)
    rng.shuffle(test)
    return {"train": train, "test": test}


def entity_sentence(rng: random.Random) -> dict:
    values = {"PER": person(rng), "QTY": str(rng.randint(1, 40)) if rng.random() < 0.7 else rng.choice(demo.SMALL_NUMBERS[2:10]),
              "ITEM": rng.choice(demo.ITEMS), "DATE": demo.render_date(demo.FIRST_DAY + dt.timedelta(days=rng.randrange(demo.DAYS)), rng)}
    tokens, tags = [], []
    for piece in rng.choice(ENTITY_TEMPLATES).split():
        kind = piece.strip("{}") if piece.startswith("{") else None
        words = WORD.findall(values[kind]) if kind else [piece]
        for i, word in enumerate(words):
            tokens.append(word)
            tags.append(f"{'B' if i == 0 else 'I'}-{kind}" if kind else "O")
    return {"tokens": tokens, "tags": tags}


def order_entities(seed: int) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    return {"train": [entity_sentence(rng) for _ in range(240)], "test": [entity_sentence(rng) for _ in range(60)]}


def corrupt(answer: dict, rng: random.Random) -> dict:
    """A plausible wrong answer: one field off in a way a weak model gets it wrong."""
    wrong = dict(answer)
    kind = rng.choice(["quantity", "date_format", "missing", "name", "item"])
    if kind == "quantity":
        wrong["quantity"] = answer["quantity"] + rng.choice([-1, 1, 10]) if answer["quantity"] > 1 else 2
    elif kind == "date_format":
        day = dt.date.fromisoformat(answer["date"])
        wrong["date"] = day.strftime(rng.choice(["%d/%m/%Y", "%B %d, %Y", "%m-%d-%Y"]))
    elif kind == "missing":
        wrong.pop(rng.choice(["date", "item", "quantity"]))
    elif kind == "name":
        wrong["name"] = answer["name"].split()[0]
    else:
        wrong["item"] = rng.choice([i for i in demo.ITEMS if i != answer["item"]])
    return wrong


def order_preferences(seed: int) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    out = {}
    for split, source, n in (("train", "train", 300), ("test", "test", 60)):
        rows = [json.loads(line) for line in (ORDERS / f"{source}.jsonl").read_text(encoding="utf-8").splitlines()][:n]
        out[split] = []
        for row in rows:
            *prompt, answer = row["messages"]
            parsed = json.loads(answer["content"])
            out[split].append({"prompt": prompt, "chosen": answer["content"],
                               "rejected": json.dumps(corrupt(parsed, rng), ensure_ascii=False)})
    return out


def shop_document(rng: random.Random) -> str:
    lines = rng.sample(PRODUCT_LINES, 2) + rng.sample(POLICY_LINES, 2)
    rng.shuffle(lines)
    item, item2 = rng.sample(demo.ITEMS, 2)
    return " ".join(line.format(shop=SHOP, item=item, item2=item2) for line in lines)


def shop_text(seed: int) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    return {"train": [{"text": shop_document(rng)} for _ in range(200)],
            "validation": [{"text": shop_document(rng)} for _ in range(40)]}


DATASETS = {"support-topics": support_topics, "order-entities": order_entities,
            "order-preferences": order_preferences, "shop-text": shop_text}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    for name, make in DATASETS.items():
        for split, records in make(args.seed).items():
            write_jsonl(args.out / name / f"{split}.jsonl", records)
            print(f"{name}/{split}.jsonl: {len(records)} records")
    return 0


if __name__ == "__main__":
    sys.exit(main())
