"""Write hone's forgetting probe: src/hone/datasets/probe/probe.jsonl (seeded, reproducible).

    python scripts/make_probe.py

Four categories, each item a prompt and 3-4 choices with one right answer:
knowledge (capitals and facts), arithmetic (generated), common sense (written), instruction
following (generated from templates). The wording was written for hone; see scripts/probe_tables.py.
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from probe_tables import PROBE_CAPITALS, PROBE_COMMON_SENSE, PROBE_FACTS  # noqa: E402

OUT = Path(__file__).parents[1] / "src" / "hone" / "datasets" / "probe" / "probe.jsonl"
SEED = 20261124


def item(rng, category, prompt, right, wrong):
    choices = [right] + [w for w in wrong if w != right]
    rng.shuffle(choices)
    return {"category": category, "prompt": prompt, "choices": choices, "answer": choices.index(right)}


def knowledge(rng):
    capitals = [c for _, c in PROBE_CAPITALS]
    for country, capital in PROBE_CAPITALS:
        wrong = rng.sample([c for c in capitals if c != capital], 3)
        yield item(rng, "knowledge", f"What is the capital of {country}?", capital, wrong)
    for question, right, wrong in PROBE_FACTS:
        yield item(rng, "knowledge", question, right, wrong)


def near(rng, answer, k=3):
    """Distractors close to the right number, never equal, never negative."""
    pool = {answer + d for d in (-10, -2, -1, 1, 2, 10)} | {answer * 2, answer + 5}
    pool = sorted(n for n in pool if n >= 0 and n != answer)
    return [str(n) for n in rng.sample(pool, k)]


def arithmetic(rng):
    for _ in range(25):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        yield item(rng, "arithmetic", f"What is {a} + {b}? Answer with the number only.", str(a + b), near(rng, a + b))
    for _ in range(15):
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        yield item(rng, "arithmetic", f"What is {a} times {b}? Answer with the number only.", str(a * b), near(rng, a * b))
    for _ in range(15):
        a = rng.randint(5, 19)
        b = rng.randint(1, a - 1)
        yield item(rng, "arithmetic", f"What is {a} minus {b}? Answer with the number only.", str(a - b), near(rng, a - b))
    for _ in range(15):
        a, b = rng.randint(10, 49), rng.randint(10, 49)
        yield item(rng, "arithmetic", f"Add {a} and {b}. Answer with the number only.", str(a + b), near(rng, a + b))
    for _ in range(10):
        a, b = rng.sample(range(2, 99), 2)
        big = max(a, b)
        yield item(rng, "arithmetic", f"Which number is larger, {a} or {b}?", str(big), [str(min(a, b))])
    for _ in range(10):
        n = rng.randint(2, 12)
        yield item(rng, "arithmetic", f"What is half of {2 * n}? Answer with the number only.", str(n), near(rng, n))


WORDS = ["garden", "window", "rocket", "silver", "pencil", "castle", "forest", "bridge", "candle", "planet",
         "basket", "market", "yellow", "winter", "summer", "jacket", "button", "carpet", "mirror", "ladder"]
PHRASES = ["the quick fox", "a cup of tea", "see you soon", "blue paint dries", "open the door",
           "good morning team", "the train is late", "bring two apples", "keep it simple", "rain on the roof"]


def instructions(rng):
    for word in WORDS[:12]:
        yield item(rng, "instructions", f"Write the word '{word}' in capital letters and nothing else.",
                   word.upper(), [word, word.capitalize(), word.upper() + "S"])
    for word in WORDS[8:20]:
        yield item(rng, "instructions", f"What is the first letter of the word '{word}'? Reply with the letter only.",
                   word[0], [c for c in rng.sample(sorted(set(word[1:]) - {word[0]}), 3)])
    for phrase in PHRASES:
        words = phrase.split()
        yield item(rng, "instructions", f"How many words are in the phrase '{phrase}'? Reply with the number only.",
                   str(len(words)), [str(n) for n in (len(words) - 1, len(words) + 1, len(words) + 2)])
    for phrase in PHRASES:
        words = phrase.split()
        yield item(rng, "instructions", f"Repeat this exactly: {phrase}", phrase,
                   [" ".join(reversed(words)), " ".join(words[:-1]), phrase.upper()])
    fruit = [["pear", "apple", "fig"], ["lime", "date", "kiwi"], ["plum", "grape", "cherry"],
             ["melon", "banana", "apricot"], ["orange", "mango", "lemon"]]
    for group in fruit:
        right = ", ".join(sorted(group))
        wrong = {", ".join(group), ", ".join(sorted(group, reverse=True)), ", ".join(group[1:] + group[:1])} - {right}
        yield item(rng, "instructions", f"Put these words in alphabetical order: {', '.join(group)}.",
                   right, sorted(wrong)[:3])
    yes_no = [("Is the Sun hot?", "Yes"), ("Is snow warm?", "No"), ("Can fish swim?", "Yes"),
              ("Do cats bark?", "No"), ("Is seven an odd number?", "Yes"), ("Is ten smaller than two?", "No")]
    for question, answer in yes_no:
        other = "No" if answer == "Yes" else "Yes"
        yield item(rng, "instructions", f"Answer with one word, yes or no. {question}", answer,
                   [other, "Maybe"])


def main() -> None:
    rng = random.Random(SEED)
    rng_cs = random.Random(SEED + 1)
    items = list(knowledge(rng)) + list(arithmetic(rng))
    items += [item(rng_cs, "common_sense", q, r, w) for q, r, w in PROBE_COMMON_SENSE]
    items += list(instructions(rng))
    counts: dict[str, int] = {}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with OUT.open("w", encoding="utf-8") as handle:
        for record in items:
            counts[record["category"]] = counts.get(record["category"], 0) + 1
            record = {"id": f"{record['category']}-{counts[record['category']]:03d}", **record}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    print(f"{len(items)} items -> {OUT}: {counts}")


if __name__ == "__main__":
    main()
