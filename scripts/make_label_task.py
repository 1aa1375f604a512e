"""Generate the bundled `support-routing` dataset: chat-format label data for the recipe benchmark.

Why this exists: `support-topics` (text/label) has six fixed phrasings per topic and its test items
reuse them, so a bag-of-words model scores ~100% and nothing can be compared on it. Here each of six
teams has fourteen phrasings; ten are used in train, and the test split holds items from those ten
(new fillers) and from the four held-out phrasings per team that never appear in training, so a
model must recognise a request it was not shown word for word. The answers are the team names: a
closed label set in OpenAI chat format, which `hone train` should route to the classifier.

The text is synthetic. Everything comes from one `random.Random(seed)`, so the same seed gives
byte-identical files; names and items come from scripts/make_demo_data.py.

    python3 scripts/make_label_task.py [--seed 11] [--out src/hone/datasets/support-routing]
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_demo_data as demo  # noqa: E402  (names and items of the orders data)

DEFAULT_SEED = 11
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "hone" / "datasets" / "support-routing"
SYSTEM = "Route the customer's message to one team: account, billing, product, returns, shipping or technical."
TRAIN_PER_TEAM, TEST_SEEN_PER_TEAM, TEST_UNSEEN_PER_TEAM = 80, 15, 20
HELD_OUT = 4  # the last phrasings of each team appear only in the test split

TEAMS = {
    "shipping": ["my parcel has not arrived yet", "the tracking page has not moved for {n} days",
                 "the courier left the box at the wrong address", "can you send the {item} to {city} instead",
                 "it says delivered but there is nothing at my door", "how long does express delivery take",
                 "the {item} is still stuck at the depot", "do you deliver on Saturdays",
                 "the driver never rang the bell and took the package away", "can I pick the order up myself",
                 # held out
                 "where exactly is my order right now", "it is {n} days late and the shop said two days",
                 "the box went to my neighbour, number {n}, can you check", "which carrier are you using for {city}"],
    "billing": ["I was charged twice for the {item}", "the invoice shows the wrong VAT number",
                "my card was declined although it has funds", "please send a receipt for my last order",
                "the discount code was not applied at checkout", "why is there a {n} euro fee on my statement",
                "can I pay by bank transfer", "the price went up after I added the {item} to the basket",
                "I need the invoice addressed to my company", "you took the money but I cancelled",
                # held out
                "my bank shows {n} euros more than the order total", "is VAT included in the price shown",
                "the payment failed but my account was still debited", "can I split the payment over two cards"],
    "returns": ["the {item} arrived broken and I want to send it back", "how do I return the {item}",
                "I would like a refund for the {item}, it is the wrong size", "the return label does not print",
                "can I exchange the {item} for another colour", "I sent the {item} back {n} days ago, where is my refund",
                "do I have to pay for return shipping", "the {item} is not what the photos showed, I do not want it",
                "is the return window thirty days", "you sent me two {item}s, how do I send one back",
                # held out
                "I changed my mind about the {item}", "the {item} stopped working after {n} days, I want my money back",
                "what happens to my refund if the box is damaged on the way back", "can I drop the {item} off in a shop"],
    "product": ["is the {item} dishwasher safe", "what are the dimensions of the {item}",
                "does the {item} come with a warranty", "is the {item} available in green",
                "what material is the {item} made of", "will the {item} be back in stock soon",
                "how heavy is the {item}", "is the {item} suitable for children",
                "does the {item} need batteries", "what is the difference between the two {item} models",
                # held out
                "can the {item} go in the oven", "how many years does the {item} usually last",
                "is the {item} made in Europe", "do you sell spare parts for the {item}"],
    "account": ["I cannot log in to my account", "please change the email address on my account",
                "how do I delete my account", "I never received the password reset email",
                "someone else placed an order from my account", "can I merge my two accounts",
                "how do I unsubscribe from the newsletter", "my loyalty points disappeared",
                "please update my phone number to {n}{n}{n}", "I want a copy of the personal data you hold",
                # held out
                "the site says my username is already taken", "I am locked out after too many attempts",
                "how do I turn on two-factor login", "my saved address keeps going back to the old one"],
    "technical": ["the app crashes when I open the basket", "the checkout page keeps loading forever",
                  "I get error {n} when I press pay", "the website does not work in my browser",
                  "the product pictures do not load", "the search returns nothing for the {item}",
                  "the app logs me out every few minutes", "the page is blank on my phone",
                  "the add to basket button does nothing", "the site is very slow since yesterday",
                  # held out
                  "the app shows the wrong language", "I see a security warning when I open your site",
                  "the filter for size is broken", "notifications from the app never arrive"],
}
CITIES = ["Lisbon", "Leeds", "Porto", "Lyon", "Gdansk", "Cork", "Turin", "Ghent"]
OPENERS = ["Hi,", "Hello,", "Good morning,", "", "", "Dear team,", "Hey there,", "Quick question:", "Urgent:"]
CLOSERS = ["Thanks.", "Regards, {name}", "", "", "Thank you!", "Cheers, {name}", "Please help.", "Order {order}."]


def message(phrasing: str, rng: random.Random) -> str:
    body = phrasing.format(n=rng.randint(2, 14), item=rng.choice(demo.ITEMS), city=rng.choice(CITIES))
    parts = [rng.choice(OPENERS), body[0].upper() + body[1:] + rng.choice([".", "?", "!", " please.", ""]),
             rng.choice(CLOSERS).format(name=rng.choice(demo.FIRST_NAMES), order=rng.randint(10000, 99999))]
    return " ".join(p for p in parts if p)


def example(team: str, phrasing: str, rng: random.Random) -> dict:
    return {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": message(phrasing, rng)},
                         {"role": "assistant", "content": team}]}


def build(seed: int) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    train, test_seen, test_unseen = [], [], []
    for team, phrasings in TEAMS.items():
        seen, unseen = phrasings[:-HELD_OUT], phrasings[-HELD_OUT:]
        train += [example(team, rng.choice(seen), rng) for _ in range(TRAIN_PER_TEAM)]
        test_seen += [example(team, rng.choice(seen), rng) for _ in range(TEST_SEEN_PER_TEAM)]
        test_unseen += [example(team, rng.choice(unseen), rng) for _ in range(TEST_UNSEEN_PER_TEAM)]
    rng.shuffle(train)
    rng.shuffle(test_seen)
    rng.shuffle(test_unseen)
    return {"train": train, "test": test_seen + test_unseen}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for split, rows in build(args.seed).items():
        (args.out / f"{split}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                                encoding="utf-8")
        print(f"{split}: {len(rows)} examples")


if __name__ == "__main__":
    main()
