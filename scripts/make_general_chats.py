"""Write hone's replay data: src/hone/datasets/general/chats.jsonl (seeded, reproducible).

    python scripts/make_general_chats.py

Short general chats mixed into training with `train.replay` so a fine-tune keeps rehearsing
general skills. Written for hone; no fact, number range or word here is a forgetting-probe item
(scripts/probe_tables.py keeps the two apart, and tests check it).
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from probe_tables import REPLAY_CAPITALS, REPLAY_FACTS  # noqa: E402

OUT = Path(__file__).parents[1] / "src" / "hone" / "datasets" / "general" / "chats.jsonl"
SEED = 20261125

DEFINITIONS = [
    ("generous", "willing to give more of your time, money or help than is expected"),
    ("curious", "eager to learn or know about something"),
    ("fragile", "easily broken or damaged"),
    ("ancient", "very old, from a time long ago"),
    ("brave", "ready to face danger or pain without showing fear"),
    ("humble", "not proud; not thinking of yourself as better than others"),
    ("vivid", "bright and strong, or very clear and detailed"),
    ("patient", "able to wait calmly without getting annoyed"),
    ("rapid", "happening very quickly"),
    ("scarce", "not available in large amounts; hard to find"),
    ("tidy", "neat and in order"),
    ("enormous", "extremely large"),
    ("honest", "telling the truth and not cheating"),
    ("gentle", "kind and calm, not rough or violent"),
    ("clumsy", "moving in an awkward way and often dropping or knocking things"),
    ("loyal", "staying faithful to a person, idea or group"),
    ("nervous", "worried and a little afraid about something"),
    ("shallow", "not deep"),
    ("harvest", "the time when crops are gathered, or the crops themselves"),
    ("journey", "a trip from one place to another, usually a long one"),
    ("echo", "a sound that is heard again because it bounces off a surface"),
    ("puzzle", "a game or problem that needs thought to solve"),
    ("orchard", "a piece of land where fruit trees are grown"),
    ("glacier", "a huge, slow-moving mass of ice"),
    ("recipe", "a set of instructions for cooking a dish"),
    ("migrate", "to move from one region to another, often with the seasons"),
    ("borrow", "to take something with the promise of giving it back"),
    ("whisper", "to speak very quietly"),
    ("delicious", "having a very pleasant taste"),
    ("predict", "to say what will happen in the future"),
]

PLURALS = [("child", "children"), ("mouse", "mice"), ("foot", "feet"), ("tooth", "teeth"), ("goose", "geese"),
           ("woman", "women"), ("knife", "knives"), ("leaf", "leaves"), ("box", "boxes"), ("city", "cities"),
           ("bus", "buses"), ("baby", "babies"), ("wolf", "wolves"), ("person", "people"), ("sheep", "sheep"),
           ("potato", "potatoes"), ("fish", "fish"), ("church", "churches"), ("life", "lives"), ("man", "men")]

ADVICE = [
    ("How can I fall asleep more easily?", "Keep a regular bedtime, avoid screens and caffeine in the evening, keep the room dark and cool, and try slow breathing once you are in bed."),
    ("How do I make a cup of tea?", "Boil water, pour it over a tea bag or loose tea in a cup, let it steep for three to five minutes, remove the tea, and add milk or sugar if you like."),
    ("What should I pack for a day hike?", "Water, snacks, a map or charged phone, sunscreen, a light rain jacket, comfortable shoes and a small first-aid kit."),
    ("How can I remember new words in a foreign language?", "Review them a little every day, use them in your own sentences, and test yourself with flashcards spaced over days rather than all at once."),
    ("How do I keep a houseplant healthy?", "Give it the right amount of light for its kind, water it when the top of the soil is dry, and make sure the pot can drain."),
    ("What is a good way to start exercising?", "Start small, such as a 15-minute walk most days, then slowly add time or intensity. Picking something you enjoy makes it easier to keep going."),
    ("How can I save money on groceries?", "Plan meals for the week, shop with a list, buy staples in larger packs, and compare prices per kilogram rather than per package."),
    ("How do I write a polite email asking for help?", "Greet the person, say briefly who you are, explain what you need and why, thank them for their time, and sign off with your name."),
    ("What should I do if I feel stressed?", "Take a short break, breathe slowly, go for a walk, and talk to someone you trust. If stress lasts for weeks, consider speaking to a professional."),
    ("How do I boil an egg?", "Put the egg in boiling water: about 6 minutes for a soft yolk, 9 to 10 minutes for a hard one. Then cool it in cold water before peeling."),
    ("How can I focus better while studying?", "Put your phone away, work in short blocks of 25 to 50 minutes with breaks, and decide before you start what you want to finish."),
    ("How do I clean a frying pan that has burnt food on it?", "Soak it in warm soapy water, then scrub gently. For stubborn spots, simmer a little water with baking soda in the pan and scrub again."),
    ("What makes a good password?", "A long one that is hard to guess: several random words or a mix of letters, numbers and symbols, different for every account. A password manager helps."),
    ("How do I prepare for a job interview?", "Read about the company, practise answers to common questions, prepare a few questions of your own, and plan your route so you arrive early."),
    ("How often should I water a cactus?", "Rarely: about every two to four weeks in summer and even less in winter, only when the soil is completely dry."),
    ("How can I be a better listener?", "Give the speaker your full attention, do not interrupt, ask questions about what they said, and repeat the main point back to check you understood."),
    ("What is a healthy breakfast?", "Something with fibre and protein, such as oatmeal with fruit and nuts, or eggs with wholegrain toast, plus water or tea."),
    ("How do I fix a squeaky door?", "Put a few drops of oil or lubricant on the hinges, open and close the door a few times, and wipe off the extra."),
    ("How can I make a small room look bigger?", "Use light colours, a mirror on one wall, furniture that leaves floor visible, and keep surfaces clear."),
    ("How should I store fresh herbs?", "Wrap soft herbs like parsley in a damp paper towel in the fridge, or stand them in a glass of water like flowers."),
]

REWRITES = [
    ("Make this sentence more polite: Give me the report.", "Could you please send me the report?"),
    ("Make this sentence more polite: Move your car.", "Would you mind moving your car, please?"),
    ("Make this sentence more polite: I need an answer now.", "I would be grateful for an answer as soon as you can."),
    ("Make this sentence more polite: Be quiet.", "Could you please keep the noise down?"),
    ("Fix the grammar: She don't like apples.", "She doesn't like apples."),
    ("Fix the grammar: They was at the park yesterday.", "They were at the park yesterday."),
    ("Fix the grammar: I has two brothers.", "I have two brothers."),
    ("Fix the grammar: He go to school every day.", "He goes to school every day."),
    ("Fix the spelling: I recieved your leter.", "I received your letter."),
    ("Fix the spelling: The wether is beutiful today.", "The weather is beautiful today."),
    ("Rewrite in the past tense: I walk to work.", "I walked to work."),
    ("Rewrite in the past tense: We eat dinner at seven.", "We ate dinner at seven."),
    ("Rewrite in the future tense: She reads a book.", "She will read a book."),
    ("Summarise in one sentence: The meeting was moved from Monday to Wednesday because the manager is travelling, and it will start at 10 am instead of 9 am.", "The meeting is now on Wednesday at 10 am because the manager is travelling."),
    ("Summarise in one sentence: Our shop will be closed for repairs all next week. We will reopen on Monday the 14th with new opening hours.", "The shop is closed next week for repairs and reopens on Monday the 14th with new hours."),
    ("Turn this into a question: The train leaves at noon.", "Does the train leave at noon?"),
    ("Turn this into a question: You like coffee.", "Do you like coffee?"),
    ("Give a title for a story about a lost dog that finds its way home.", "The Long Way Home"),
    ("Give a title for an article about saving water at home.", "Small Habits That Save Water at Home"),
    ("Write one sentence describing autumn.", "In autumn the leaves turn red and gold, the air grows cool, and the days get shorter."),
]

LOWER_WORDS = ["TABLE", "ORANGE", "HOUSE", "MUSIC", "CHAIR", "SCHOOL", "FLOWER", "DOCTOR", "TRAIN", "SUGAR"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]


def chat(user: str, assistant: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def main() -> None:
    rng = random.Random(SEED)
    chats = []
    for country, capital in REPLAY_CAPITALS:
        chats.append(chat(f"What is the capital of {country}?", f"The capital of {country} is {capital}."))
        chats.append(chat(f"Which country has {capital} as its capital?", f"{capital} is the capital of {country}."))
    chats += [chat(q, a) for q, a in REPLAY_FACTS]
    for _ in range(40):  # three-digit sums and differences: the probe uses one- and two-digit numbers
        a, b = rng.randint(100, 900), rng.randint(100, 900)
        if rng.random() < 0.5:
            chats.append(chat(f"What is {a} + {b}?", f"{a} + {b} = {a + b}."))
        else:
            a, b = max(a, b), min(a, b)
            chats.append(chat(f"What is {a} - {b}?", f"{a} - {b} = {a - b}."))
    for _ in range(20):
        metres = rng.randint(2, 40)
        chats.append(chat(f"How many centimetres are in {metres} metres?", f"There are {metres * 100} centimetres in {metres} metres."))
    for _ in range(10):
        hours = rng.randint(2, 12)
        chats.append(chat(f"How many minutes are in {hours} hours?", f"{hours} hours is {hours * 60} minutes."))
    chats += [chat(f"What does '{word}' mean?", f"'{word.capitalize()}' means {meaning}.") for word, meaning in DEFINITIONS]
    chats += [chat(f"What is the plural of '{one}'?", f"The plural of '{one}' is '{many}'.") for one, many in PLURALS]
    chats += [chat(q, a) for q, a in ADVICE + REWRITES]
    chats += [chat(f"Write '{w}' in lowercase letters.", w.lower()) for w in LOWER_WORDS]
    for i, day in enumerate(DAYS):
        chats.append(chat(f"Which day comes after {day}?", f"{DAYS[(i + 1) % 7]} comes after {day}."))
    for i, month in enumerate(MONTHS):
        chats.append(chat(f"Which month comes after {month}?", f"{MONTHS[(i + 1) % 12]} comes after {month}."))
    rng.shuffle(chats)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with OUT.open("w", encoding="utf-8") as handle:
        for record in chats:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    print(f"{len(chats)} chats -> {OUT}")


if __name__ == "__main__":
    main()
