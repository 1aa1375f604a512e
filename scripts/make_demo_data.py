"""Generate the bundled `orders` dataset that `hone demo` fine-tunes on.

Why this exists: the demo has about three minutes of CPU time to show that fine-tuning works.
It needs a task where the small base model (SmolLM2-135M-Instruct) is weak, a small LoRA gets
strong quickly, and success is measured objectively: exact match of the parsed JSON fields.
Pulling a customer order (name, date, item, quantity) out of a free-text message and writing it
as JSON in a fixed format is such a task.

The text is synthetic. Everything comes from one `random.Random(seed)`, so the same seed gives
byte-identical files. Ten templates are reserved for the end of the test split and never appear
in train or validation; they show whether the model generalises beyond the phrasings it saw.

    python3 scripts/make_demo_data.py [--seed 42] [--out src/hone/datasets/orders]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import sys
from pathlib import Path

SYSTEM = "Extract the order as JSON with keys name, date (YYYY-MM-DD), item, quantity (integer)."
DEFAULT_SEED = 42
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "hone" / "datasets" / "orders"
TRAIN_SIZE, VALIDATION_SIZE, TEST_SEEN_SIZE, TEST_UNSEEN_SIZE = 800, 80, 80, 40
FIRST_DAY, DAYS = dt.date(2025, 1, 1), (dt.date(2028, 1, 1) - dt.date(2025, 1, 1)).days

FIRST_NAMES = """Maria James Aisha Wei Priya Mohammed Sofia Liam Yuki Olusegun Ana Dmitri Fatima
Hiroshi Chloe Mateo Ingrid Kwame Mei Arjun Elena Tomasz Zanele Lucas Leila Santiago Hannah Raj
Noor Emeka Isabella Kenji Amara Oliver Siobhan Diego Freya Hamid Lucia Nikolai Thandiwe Ethan
Camila Jin Farah Pedro Astrid Tariq Grace Rohan Ayumi Samuel Zara Bogdan Nadia Kofi Emily Javier
Anika Connor Mariam Luca Yasmin Andre Soo-ah Ibrahim Helga Marcus Esi Daniel Chidi Rosa José
Zoë Søren""".split()

LAST_NAMES = """Lopez Smith Khan Zhang Patel Okafor Rossi Murphy Tanaka Adeyemi Silva Ivanov Haddad
Suzuki Dubois Garcia Johansson Mensah Chen Sharma Popescu Kowalski Dlamini Martin Rahimi Fernandez
Schmidt Gupta Hussein Nwosu Romano Watanabe Boateng Brown O'Sullivan Morales Larsen Karimi Moreno
Petrov Ndlovu Wilson Alvarez Park Aziz Costa Lindqvist Al-Farsi Taylor Iyer Kim Mwangi Novak
Yilmaz Nguyen Asante Walker Herrera Das Byrne Ahmed Bianchi Farouk Thompson Kovacs Sato Obi Reyes
Müller Núñez Andersen Le""".split()

# No digits or number words inside item names: the only number in a message should be the date
# and the quantity (plus one deliberate reference-number distractor template).
ITEMS = [s.strip() for s in """blue ceramic mug, stainless steel water bottle, wool hiking socks,
purple yoga mat, LED desk lamp, wireless mouse, mechanical keyboard, USB-C charging cable,
printer paper, spiral notebook, black gel pens, cast iron skillet, bamboo cutting board,
chef's knife, espresso cups, french press, linen tablecloth, cotton bath towel,
memory foam pillow, queen bedsheet set, scented candle, ceramic plant pot, succulent, garden hose,
pruning shears, red umbrella, leather wallet, canvas tote bag, travel backpack, running shoes,
rain jacket, kids' raincoat, winter gloves, knit beanie, silk scarf, sunglasses, phone case,
screen protector, bluetooth speaker, noise-cancelling headphones, HDMI cable, laptop stand,
webcam, external hard drive, rechargeable batteries, smoke detector, extension cord, power drill,
claw hammer, box of screws, measuring tape, paint roller, white wall paint, picture frame,
wall clock, desk organizer, office chair, standing desk, whiteboard markers, sticky notes,
stapler, manila folders, shipping boxes, bubble wrap roll, packing tape, dog leash,
cat scratching post, bird feeder, fish food, small dog bed, tennis balls, basketball,
bicycle helmet, bike lock, camping lantern, sleeping bag, thermos flask, picnic blanket,
jigsaw puzzle, board game, colouring pencils, watercolour paint set, sketchbook, guitar strings,
ukulele, herbal tea sampler, dark chocolate bar, jar of honey, extra virgin olive oil,
ground coffee, green tea, birthday card, gift wrap, small glass vase, large moving box,
medium grey hoodie, large white t-shirt, slim black jeans""".split(",")]

GREETINGS = ["Hi", "Hello", "Hi there", "Good morning", "Good afternoon", "Hey", "Dear team",
             "Hello team", "Greetings"]
SIGNOFFS = ["Thanks", "Many thanks", "Best", "Cheers", "Kind regards", "Thank you",
            "Best wishes", "Regards", "All the best", "Warm regards"]
THANKS = ["Thanks", "Thank you", "Cheers", "Many thanks", "Thanks a lot"]
FILLERS = [
    "Hope you're well.", "Hope your week is going well.", "Thanks for the quick reply last time.",
    "Your shop was recommended by a friend.", "Sorry if this is the wrong address for orders.",
    "Let me know if you need anything else from me.", "Payment by card is fine.",
    "Please leave the parcel with the neighbour if nobody answers.",
    "The back door is easiest for deliveries.", "I'm happy to pay for express shipping.",
    "Please call me if there is any problem.", "It's a present, so no invoice in the box please.",
    "We loved the last batch.", "It's for our office.", "No rush on the invoice.",
    "Could you send a confirmation email?", "Wrapping would be lovely if you offer it.",
    "I've ordered from you before.", "Happy to collect in person if that's easier.",
    "Please use the side entrance.", "Looking forward to hearing from you.",
    "We're a small café, so storage space is tight.", "Let me know the total cost.",
    "If it's out of stock, a similar one is fine.", "The weather has been awful lately.",
]

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
SMALL_NUMBERS = """zero one two three four five six seven eight nine ten eleven twelve thirteen
fourteen fifteen sixteen seventeen eighteen nineteen""".split()
TENS = {2: "twenty", 3: "thirty", 4: "forty"}

# Placeholders: {name} {item} {date}; quantity as {qty} (digits or words), {qd} (digits only),
# {qof} ("3 of the", "a dozen of the", "a pair of the"), {qu} ("3 units", "a dozen units");
# decoration: {hi} greeting, {bye} email sign-off, {thx} inline thanks, {fill} filler, {ref}.
SEEN_TEMPLATES = [
    "{hi},\n\nI'd like to place an order for {qu} of the {item}. Could you have it delivered on "
    "{date}? {fill}\n\n{bye},\n{name}",
    "{hi}, this is {name}. Can I order {qof} {item}? I need them by {date}. {thx}!",
    "Order request\nName: {name}\nItem: {item}\nQuantity: {qd}\nDelivery date: {date}",
    "Phone call notes: {name} rang to order {qty} x {item}, wants delivery on {date}. {fill}",
    "hey, {name} here - could you put me down for {qof} {item}? pick up {date} if possible",
    "{hi},\n{fill} Please send {qof} {item} to me by {date}.\n\n{bye},\n{name}",
    "Dear Sir or Madam,\n\nI am writing to order the {item} (quantity: {qty}). The delivery "
    "should arrive on {date}.\n\nYours faithfully,\n{name}",
    "{date} - {name} - {item} - qty {qd}",
    "Customer {name} wants {qty} {item} delivered {date}.",
    "{hi}! {fill} I'm {name} and I'd love {qof} {item}. Would {date} work for delivery?",
    "Could you reserve {qof} {item} for {name}? They'll collect on {date}. {fill}",
    "{hi},\n\nQuick request: {qty} x {item}, needed {date}. Name on the order is {name}.\n\n{bye}",
    "New order from {name}: {item}, quantity {qd}, ship on {date}.",
    "Voicemail: Hi, it's {name}. I want to order {qu} of {item}, and I need them on {date}. {thx}.",
    "{name} called. Wants the {item}, quantity {qty}. Delivery: {date}. {fill}",
    "{hi}, I need {qof} {item} delivered to my office on {date}. {fill} Please put the order "
    "under {name}.",
    "Subject: Order for {date}\n\n{hi},\n\nPlease could I get {qof} {item}?\n\n{bye},\n{name}",
    "chat> {name}: hi, how do I order?\nchat> agent: just tell me what you need\n"
    "chat> {name}: {qof} {item}, for {date} please",
    "{item} x{qd} for {name}, due {date}",
    "I would like to order the following: {item}, quantity {qty}. My name is {name} and I'd like "
    "it delivered on {date}. {fill}",
    "{hi}, {fill} Can you deliver on {date}? It's {qof} {item}, for {name}.",
    "Reminder: order {qty} x {item} for {name}, delivery on {date}.",
    "{name} stopped by the shop and asked for {qof} {item}. Promised it for {date}.",
    "{hi},\n\nOn behalf of {name}, I'd like to order {qu} of the {item}, to arrive on {date}."
    "\n\n{bye}",
    "{hi}! Is it possible to get {qof} {item} by {date}? {fill} {thx}, {name}",
    "ORDER\ncustomer: {name}\nproduct: {item}\namount: {qd}\nneeded by: {date}\nnotes: {fill}",
    "{hi}, my name is {name}. {fill} I'm after the {item} - {qty}, please. Delivery on {date} "
    "would be ideal.",
    "SMS: hi its {name}, can u send {qty} {item} on {date}? ta",
    "{date}: please deliver {qof} {item}. Customer: {name}.",
    "Good news - {name} confirmed the order! {qty} x {item}, delivery scheduled for {date}.",
    "{hi},\n\nFollowing up on our call, please go ahead with {qu} of the {item}. Delivery date: "
    "{date}. {fill}\n\n{bye},\n{name}",
    "Note from phone call (ref #{ref}): caller {name}; item {item}; qty {qd}; date {date}.",
    "Can I get {qof} {item} sent over for {date}? Name's {name}. {thx}!",
    "{hi}, {name} here again. {fill} This time I need {qof} {item}, delivered {date}.",
    "Wholesale enquiry from {name}: {qu} of the {item}, delivery {date}. Please confirm "
    "availability.",
    "Please add {qty} x {item} to my order and deliver on {date}. - {name}",
    'Message from {name} via the website form: "I want {qof} {item}. Deliver on {date}."',
    "{hi},\n\nWe'd like {qu} of the {item} for our event on {date}. {fill}\n\n{bye},\n{name}",
    "Walk-in customer {name} ordered {qof} {item}; collection on {date}.",
    "{hi}, could you book an order for {name}: {item} ({qd} pcs), required on {date}? {fill}",
]
UNSEEN_TEMPLATES = [
    "{hi},\n\nApologies for the late notice. {fill} Would it be possible to receive {qof} "
    "{item} on {date}? The order is for {name}.\n\n{bye}",
    "Order form\n- Full name: {name}\n- Requested date: {date}\n- Product: {item}\n"
    "- Number of units: {qd}",
    'Voicemail transcript: "Hello, {name} calling. I\'d like {qof} {item}, please, for {date}. '
    '{fill} Bye."',
    "{name} | {item} | {qd} | {date}",
    "Just confirming what we discussed: {item}, {qu}, arriving {date}, billed to {name}.",
    "chat> agent: hi, what can I get you?\nchat> {name}: {qof} {item}\n"
    "chat> agent: when do you need it?\nchat> {name}: {date}",
    "{hi}! Long-time customer here ({name}). {fill} Could you pencil me in for the {item}? "
    "I'll need {qty}, on {date} ideally.",
    "Delivery request for {date}: {qty} x {item}. Contact: {name}. {fill}",
    "My colleague {name} asked me to order {qu} of the {item} for {date}. {thx} in advance!",
    "{hi},\nQuantity: {qd}\nWhen: {date}\nWhat: {item}\nWho: {name}\n{thx}!",
]
TEMPLATES = SEEN_TEMPLATES + UNSEEN_TEMPLATES  # template ids index this list


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def number_words(n: int) -> str:
    if n < 20:
        return SMALL_NUMBERS[n]
    return TENS[n // 10] + (f"-{SMALL_NUMBERS[n % 10]}" if n % 10 else "")


def render_date(d: dt.date, rng: random.Random) -> str:
    """One of several unambiguous spellings; never a numeric form like 03/04/2026."""
    month, mon, day, year = MONTHS[d.month - 1], MONTHS[d.month - 1][:3], d.day, d.year
    weekday = WEEKDAYS[d.weekday()]
    forms = [
        f"{month} {day}, {year}", f"{day} {month} {year}", f"the {ordinal(day)} of {month}, {year}",
        f"{mon} {day} {year}", d.isoformat(), f"{weekday}, {month} {day}, {year}",
        f"{day} {mon} {year}", f"{month} {ordinal(day)}, {year}", f"{weekday[:3]} {day} {month} {year}",
    ]
    return rng.choice(forms)


def sample_quantity(rng: random.Random) -> int:
    """Mostly small counts, some round bulk counts, the rest uniform over 1..48."""
    r = rng.random()
    if r < 0.5:
        return rng.randint(1, 10)
    if r < 0.7:
        return rng.choice([12, 12, 24, 20, 36, 48, 15, 30])
    return rng.randint(1, 48)


def render_quantities(n: int, rng: random.Random) -> dict[str, str]:
    """Every quantity placeholder for count n; idioms ('a dozen', 'a pair of') half the time."""
    qty = number_words(n) if rng.random() < 0.5 else str(n)
    idiom = rng.random() < 0.5
    qof = f"{qty} of the"
    qu = f"{qty} unit" if n == 1 else f"{qty} units"
    if idiom and n == 12:
        qof, qu = "a dozen of the", "a dozen units"
    elif idiom and n == 2:
        qof = "a pair of the"
    return {"qty": qty, "qd": str(n), "qof": qof, "qu": qu}


def make_example(template: str, rng: random.Random) -> tuple[str, dict]:
    """Fill one template; return (user message, answer dict)."""
    name = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
    item = rng.choice(ITEMS)
    day = FIRST_DAY + dt.timedelta(days=rng.randrange(DAYS))
    quantity = sample_quantity(rng)
    fields = render_quantities(quantity, rng)
    fields.update(
        name=name, item=item, date=render_date(day, rng), hi=rng.choice(GREETINGS),
        bye=rng.choice(SIGNOFFS), thx=rng.choice(THANKS), fill=rng.choice(FILLERS),
        ref=str(rng.randint(10000, 99999)),
    )
    message = template.format(**fields)
    answer = {"name": name, "date": day.isoformat(), "item": item, "quantity": quantity}
    assert name in message and item in message, template
    return message, answer


def to_record(message: str, answer: dict) -> dict:
    return {"messages": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": message},
        {"role": "assistant", "content": json.dumps(answer, ensure_ascii=False)},
    ]}


def generate(seed: int = DEFAULT_SEED) -> dict[str, list[tuple[int, dict]]]:
    """Return {split: [(template id, record), ...]}; user messages are unique across all splits."""
    rng = random.Random(seed)
    seen_ids = list(range(len(SEEN_TEMPLATES)))
    unseen_ids = list(range(len(SEEN_TEMPLATES), len(TEMPLATES)))
    plan = [("train", seen_ids, TRAIN_SIZE), ("validation", seen_ids, VALIDATION_SIZE),
            ("test", seen_ids, TEST_SEEN_SIZE), ("test", unseen_ids, TEST_UNSEEN_SIZE)]
    used: set[str] = set()
    splits: dict[str, list[tuple[int, dict]]] = {"train": [], "validation": [], "test": []}
    for split, ids, count in plan:
        order = [ids[i % len(ids)] for i in range(count)]  # every template equally often
        rng.shuffle(order)
        for tid in order:
            message, answer = make_example(TEMPLATES[tid], rng)
            while message in used:  # regenerate on an exact-duplicate message
                message, answer = make_example(TEMPLATES[tid], rng)
            used.add(message)
            splits[split].append((tid, to_record(message, answer)))
    return splits


def write_jsonl(path: Path, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for split, rows in generate(args.seed).items():
        write_jsonl(args.out / f"{split}.jsonl", [record for _, record in rows])
        print(f"{split}: {len(rows)} examples -> {args.out / (split + '.jsonl')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
