"""Writes tests/data/rag_eval.json: a labelled retrieval set (run once; the output is committed).

75 fictional towns x 3 documents (history, economy, geography) = 225 chunks, all naming
their town and many naming a neighbour, so that a question must match the right aspect of
the right town. 75 questions (one per town, cycling through the aspects), worded differently
from the documents. Fictional, so no model can answer from memory.

    python -m tests.support.make_rag_eval
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SEED = 20261122
OUT = Path(__file__).resolve().parent.parent / "data" / "rag_eval.json"

STARTS = [
    "Var",
    "Esk",
    "Bel",
    "Mor",
    "Tal",
    "Kest",
    "Dun",
    "Hal",
    "Or",
    "Wyn",
    "Cal",
    "Bram",
    "Fen",
    "Gil",
    "Ler",
]
ENDS = [
    "holt",
    "mere",
    "ford",
    "wick",
    "stead",
    "by",
    "ton",
    "crag",
    "haven",
    "dale",
    "moor",
    "reach",
    "gate",
]
FOUNDERS = [
    ("Ottilie Brask", "salt merchant"),
    ("Joren Halvik", "retired ferryman"),
    ("Maud Serrano", "surveyor"),
    ("Ansel Trew", "monk"),
    ("Ilse Vormann", "shipwright"),
    ("Tobiah Quill", "cartographer"),
    ("Renata Olsk", "beekeeper"),
    ("Casimir Dove", "stonemason"),
    ("Hedda Lune", "apothecary"),
    ("Piet Varga", "horse trader"),
    ("Sabine Ekholm", "weaver"),
    ("Lorcan Fay", "miller"),
]
EVENTS = [
    "was besieged for forty days and never surrendered",
    "burned almost entirely and was rebuilt in brick",
    "lost half its people to a fever and recovered slowly",
    "became the seat of a regional court",
    "was flooded when the old dam gave way",
    "signed a famous peace treaty in its town hall",
]
ERAS = ["the Lantern Wars", "the long drought", "the grain embargo", "the age of canals", "the silver rush"]
INDUSTRIES = [
    ("glass blowing", "coloured glass beads"),
    ("cheese making", "smoked ewe cheese"),
    ("shipbuilding", "river barges"),
    ("copper mining", "copper wire"),
    ("paper milling", "rag paper"),
    ("clockmaking", "pocket watches"),
    ("tanning", "saddle leather"),
    ("pottery", "blue-glazed tiles"),
    ("brewing", "dark rye beer"),
    ("rope making", "hemp rope"),
    ("dyeing", "indigo cloth"),
    ("bell founding", "church bells"),
]
MARKETS = ["lantern fair", "harvest market", "wool week", "spring auction", "midwinter bazaar"]
REGIONS = ["the coastal provinces", "the northern hill towns", "the capital", "markets across the sea"]
FEATURES = [
    ("on the eastern bank of the river Loy", "river"),
    ("at the foot of Mount Serk", "mountain"),
    ("on a chalk plateau", "plateau"),
    ("beside a shallow tidal lagoon", "lagoon"),
    ("in a narrow pine valley", "valley"),
    ("on two islands joined by bridges", "islands"),
]
CLIMATES = [
    ("mild and wet, with fog most autumn mornings", "foggy"),
    ("dry and windy, with hot summers", "windy"),
    ("cold, with snow lying from November to March", "snowy"),
    ("humid, with frequent summer thunderstorms", "stormy"),
]


def town_names(rng: random.Random, n: int) -> list[str]:
    names: set[str] = set()
    while len(names) < n:
        names.add(rng.choice(STARTS) + rng.choice(ENDS))
    return sorted(names)


def main() -> None:
    rng = random.Random(SEED)
    towns = town_names(rng, 75)
    documents = []
    questions = []
    for i, town in enumerate(towns):
        neighbour = towns[(i + 7) % len(towns)]
        founder, role = rng.choice(FOUNDERS)
        year = rng.randint(1180, 1790)
        event, era = rng.choice(EVENTS), rng.choice(ERAS)
        industry, product = rng.choice(INDUSTRIES)
        market, region = rng.choice(MARKETS), rng.choice(REGIONS)
        position, _ = rng.choice(FEATURES)
        altitude = rng.randint(3, 1900)
        climate, _ = rng.choice(CLIMATES)
        population = rng.randint(900, 48000)
        docs = {
            "history": (
                f"{town} was founded in {year} by {founder}, a {role} who settled there with a handful of "
                f"families. During {era} the town {event}. Its oldest surviving building is the chapel "
                f"on the market square, and its archives are kept in {neighbour}."
            ),
            "economy": (
                f"The economy of {town} depends on {industry}. Workshops in the lower town make "
                f"{product}, which merchants carry to {region}. Every year the {market} brings buyers "
                f"from {neighbour} and further away, and about {population} people live from the trade."
            ),
            "geography": (
                f"{town} lies {position}, {altitude} metres above sea level. The climate is {climate}. "
                f"A road of eleven kilometres leads to {neighbour}, and the surrounding land is used for "
                f"orchards and sheep."
            ),
        }
        for aspect, text in docs.items():
            documents.append({"name": f"{town} ({aspect})", "text": text})
        aspect = ("history", "economy", "geography")[i % 3]
        question = {
            "history": rng.choice(
                [f"Who established {town}, and in which year?", f"Tell me who the founder of {town} was."]
            ),
            "economy": rng.choice(
                [
                    f"What goods are produced and sold in {town}?",
                    f"How do the people of {town} earn a living?",
                ]
            ),
            "geography": rng.choice(
                [f"What is the weather like in {town}, and how high is it?", f"Where is {town} located?"]
            ),
        }[aspect]
        questions.append({"question": question, "document": f"{town} ({aspect})"})
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(
        json.dumps({"seed": SEED, "documents": documents, "questions": questions}, indent=1) + "\n"
    )
    print(f"wrote {OUT}: {len(documents)} documents, {len(questions)} questions")


if __name__ == "__main__":
    main()
