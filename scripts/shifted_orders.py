"""Orders from a new market: the demo's order-extraction task written in Spanish (docs/production.md).

The served demo model learned orders in English; these messages carry the same four fields in Spanish
templates with Spanish dates ("14 de marzo de 2026"), the kind of shift a model meets after deployment.
Names and items come from scripts/make_demo_data.py's pools; answers are the same JSON.

    python3 scripts/shifted_orders.py --out DIR     # DIR/new-train.jsonl (120), new-test.jsonl (40)
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_demo_data import DAYS, FIRST_DAY, FIRST_NAMES, ITEMS, LAST_NAMES, SYSTEM, sample_quantity  # noqa: E402

MESES = ["enero", "febrero", "marzo", "abril", "mayo", "junio", "julio", "agosto", "septiembre", "octubre",
         "noviembre", "diciembre"]
DIAS = ["lunes", "martes", "miércoles", "jueves", "viernes", "sábado", "domingo"]
TEMPLATES = [
    "Hola, soy {name}. Quisiera pedir {qd} unidades de {item} para el {date}. Gracias.",
    "Pedido: {item} x{qd}. Cliente: {name}. Entrega: {date}.",
    "Buenos días, necesito {qd} {item} el {date}. A nombre de {name}.",
    "{name} llamó para pedir {qd} de {item}, con entrega el {date}.",
    "Nuevo pedido de {name}: {qd} x {item}, entregar el {date}.",
    "¿Me pueden enviar {qd} {item} para el {date}? Soy {name}, muchas gracias.",
]


def fecha(day: dt.date, rng: random.Random) -> str:
    """A Spanish date: '14 de marzo de 2026', 'sábado, 14 de marzo de 2026' or '14 mar 2026'."""
    mes = MESES[day.month - 1]
    return rng.choice([f"{day.day} de {mes} de {day.year}", f"{DIAS[day.weekday()]}, {day.day} de {mes} de {day.year}",
                       f"{day.day} {mes[:3]} {day.year}"])


def order(rng: random.Random) -> dict:
    name = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
    item, day, quantity = rng.choice(ITEMS), FIRST_DAY + dt.timedelta(days=rng.randrange(DAYS)), sample_quantity(rng)
    message = rng.choice(TEMPLATES).format(name=name, item=item, qd=quantity, date=fecha(day, rng))
    answer = {"name": name, "date": day.isoformat(), "item": item, "quantity": quantity}
    return {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": message},
                         {"role": "assistant", "content": json.dumps(answer, ensure_ascii=False)}]}


def shifted_orders(out: Path, n_train: int = 120, n_test: int = 40, seed: int = 7) -> dict[str, Path]:
    """Write new-train.jsonl and new-test.jsonl (no message in both) under `out`; return their paths."""
    rng = random.Random(seed)
    seen: set[str] = set()
    rows = []
    while len(rows) < n_train + n_test:
        row = order(rng)
        if row["messages"][1]["content"] not in seen:
            seen.add(row["messages"][1]["content"])
            rows.append(row)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"train": out / "new-train.jsonl", "test": out / "new-test.jsonl"}
    for key, part in (("train", rows[:n_train]), ("test", rows[n_train:])):
        paths[key].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part), encoding="utf-8")
    return paths


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    print(shifted_orders(parser.parse_args().out))
