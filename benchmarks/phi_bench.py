"""De-identification recall per HIPAA Safe Harbor category, and clinical content kept:
`report.deid.deidentify` (Presidio + our rules) against the old hand-written rules.

    .venv/bin/python benchmarks/phi_bench.py [--notes 1900] [--seed 2027 13]

Notes: two to four real report sentences of the IU X-ray pack (findings + impression, with
no `XXXX` token), and one inserted sentence that carries an identifier, made from a seeded
random template of its category. Names come from lists here (not the detector's), in Title,
lower or UPPER case: the whole inserted sentence is re-cased, as a sloppy note would be. The
detector knows the US Census 1990 name lists; most names of `FIRST` / `LAST` are on them, none
of `OTHER_FIRST` / `OTHER_LAST` (checked against the lists once, when they were written), which
measure the names the gazetteer cannot know: category "name (untitled, outside census)".
Tuning: the rules were refined on the notes of seed 13 (`TUNED_SEED`); each `--seed` is run in
turn, the first (2027 by default, not looked at while tuning) is the headline.

An identifier counts as caught when none of its alphanumeric characters survives: each of
its word pieces (letters and digits) is absent from the de-identified note, unless that
piece also occurs in the note's clinical sentences. Clinical content: the CheXpert labels
the report labeler gives the clinical sentences before and after de-identification (the
share of notes unchanged) and the share of clinical characters removed (false positives).
Writes results/phi_bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import time
from datetime import UTC, datetime

import numpy as np

from medxpert.atomic import atomic_write_json
from medxpert.config import Settings
from medxpert.data.locate import find_pack
from medxpert.labels import default_labeler
from medxpert.report.deid import deidentify

# --- the old function (medxpert/report/deid.py before issue 13), kept for comparison -------
_OLD_MONTHS = (
    r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|Jun(?:e)?|Jul(?:y)?|Aug(?:ust)?|"
    r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)"
)
_OLD_RULES: list[tuple[str, re.Pattern[str]]] = [
    ("[EMAIL]", re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")),
    ("[URL]", re.compile(r"\b(?:https?://|www\.)\S+", re.IGNORECASE)),
    (
        "[DATE]",
        re.compile(
            r"\b(?:\d{1,4}[/.-]\d{1,2}[/.-]\d{1,4}|"
            rf"\d{{1,2}}(?:st|nd|rd|th)?\s+{_OLD_MONTHS}\.?,?\s+\d{{2,4}}|"
            rf"{_OLD_MONTHS}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{2,4}}|"
            rf"{_OLD_MONTHS}\.?\s+\d{{4}})\b",
            re.IGNORECASE,
        ),
    ),
    (
        "[PHONE]",
        re.compile(
            r"(?<!\w)(?:\+?\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)|\d{2,4})[\s.-]\d{3}[\s.-]?\d{3,4}\b"
        ),
    ),
    (
        "[ID]",
        re.compile(
            r"\b(?:MRN|MR#|medical record(?: number)?|record|accession|patient id|id|ssn)\b"
            r"\s*(?:no\.?|number|#)?\s*[:#]?\s*(?=[A-Z-]*\d)[A-Z0-9-]{4,}\b",
            re.IGNORECASE,
        ),
    ),
    ("[ID]", re.compile(r"\b\d{6,}\b")),
    ("[NAME]", re.compile(r"\b(?:Mr|Mrs|Ms|Miss|Dr|Prof)\.?\s+[A-Z][a-z'-]+(?:\s+[A-Z][a-z'-]+)?")),
    (
        "[NAME]",
        re.compile(
            r"\b(?:patient|name|pt|physician|doctor|referring|signed by)\s*(?:name)?\s*:\s*"
            r"[A-Z][a-z'-]+(?:\s+[A-Z][a-z'-]+)?",
            re.IGNORECASE,
        ),
    ),
]


def old_deidentify(text: str) -> str:
    for placeholder, pattern in _OLD_RULES:
        text = pattern.sub(placeholder, text)
    return text


# --- the identifiers ------------------------------------------------------------------------
FIRST_TEXT = """
Olivia Liam Emma Noah Ava Mateo Sofia Lucas Aaliyah Jamal Priya Arjun Mei Hiroshi Fatima Omar
Chloe Ethan Zoe Diego Ingrid Sven Nadia Tariq Keisha Dmitri Anika Rafael Yuki Kwame
"""
LAST_TEXT = """
Okafor Nguyen Patel Kowalski Hernandez Lindqvist Abernathy Castellano Moreau Tanaka Osei
Fitzgerald Ramirez Novak Haddad Schneider Kaur Delacroix Oyelaran Brennan Yamamoto Petrov Achebe
Vasquez Thornbury Gallagher Mbeki Sorensen Quintero Ilunga
"""
STREETS_TEXT = """
Oak Maple Cedar Elm Willow Birch Magnolia Sycamore Juniper Hawthorne
"""
SUFFIXES_TEXT = """
St Street Ave Avenue Rd Road Blvd Lane Drive Court Way
"""
CITIES_TEXT = """
Springfield Riverton Fairview Greenville Madison Clayton Ashford Brookhaven
"""
STATES_TEXT = """
IL OH TX CA NY MA GA WA CO MN
"""
MONTHS_TEXT = (
    "January February March April May June July August September October November December"
)


# Names of other origins, none on the census lists (written before the gazetteer was tried).
OTHER_FIRST_TEXT = """
Oluwaseun Babatunde Kwabena Akosua Adaeze Ifeoma Chidi Emeka Nnamdi Folake Wanjiru Thandiwe
Zanele Themba Nomvula Siddharth Ananya Ishaan Kavya Aditi Anirudh Haruto Riku Takumi Ayaka
Xiaoming Zhiwei Haoran Wenjing Agnieszka Grzegorz Niamh Aoife Oisin Ruairi Saoirse Aurelien
Maelle Gwenael Eirikur Khadija Zainab Parisa Shirin Kaveh Behnaz
"""
OTHER_LAST_TEXT = """
Oyelaran Adebayo Chukwuma Kamau Otieno Njoroge Achieng Mwangi Venkatesh Raghunathan Nasrallah
Farouk Farhadi Oyelowo Adeyemi Okonkwo Nwosu Uzoma Lindqvist Bjornsson Sigurdardottir
Thorsdottir Oberhauser
"""
FIRST, LAST, STREETS = FIRST_TEXT.split(), LAST_TEXT.split(), STREETS_TEXT.split()
OTHER_FIRST, OTHER_LAST = OTHER_FIRST_TEXT.split(), OTHER_LAST_TEXT.split()
SUFFIXES, CITIES, STATES = SUFFIXES_TEXT.split(), CITIES_TEXT.split(), STATES_TEXT.split()
MONTHS = MONTHS_TEXT.split()


def _person(r: random.Random) -> str:
    return f"{r.choice(FIRST)} {r.choice(LAST)}"


def _date(r: random.Random) -> str:
    y, m, d = r.randint(1935, 2025), r.randint(1, 12), r.randint(1, 28)
    month = MONTHS[m - 1]
    return r.choice(
        [
            f"{m:02d}/{d:02d}/{y}",
            f"{m}/{d}/{y % 100:02d}",
            f"{y}-{m:02d}-{d:02d}",
            f"{d:02d}.{m:02d}.{y}",
            f"{m:02d}/{y}",
            f"{month[:3]} {d}",
            f"{month} {d}, {y}",
            f"{d} {month[:3]} {y}",
            f"{d}{'th' if d > 3 else ['st', 'nd', 'rd'][d - 1]} of {month}",
            f"{month} {y}",
            f"{d:02d}-{month[:3]}-{y}",
        ]
    )


def _digits(r: random.Random, n: int) -> str:
    return "".join(r.choice("0123456789") for _ in range(n))


def _phone(r: random.Random) -> str:
    a, b, c = _digits(r, 3), _digits(r, 3), _digits(r, 4)
    return r.choice([f"({a}) {b}-{c}", f"{a}-{b}-{c}", f"{a}.{b}.{c}", f"{b}-{c}", f"{b} {c}"])


CATEGORIES = {
    "name (titled)": lambda r: (
        lambda n: (f"{r.choice(['Dr.', 'Dr', 'Mr.', 'Mrs.', 'Ms.', 'Doctor'])} {n}", n)
    )(r.choice([_person(r), r.choice(LAST)])),
    "name (untitled)": lambda r: (lambda n: (n, n))(_person(r)),
    "name (untitled, outside census)": lambda r: (lambda n: (n, n))(
        f"{r.choice(OTHER_FIRST)} {r.choice(OTHER_LAST)}"
    ),
    "street address": lambda r: (lambda a: (a, a))(
        f"{r.randint(1, 9999)} {r.choice(STREETS)} {r.choice(SUFFIXES)}"
    ),
    "city, state ZIP": lambda r: (lambda a: (a, a))(
        f"{r.choice(CITIES)}, {r.choice(STATES)} {_digits(r, 5)}"
    ),
    "date": lambda r: (lambda d: (d, d))(_date(r)),
    "age over 89": lambda r: (
        lambda a: (r.choice([f"age {a}", f"{a}-year-old", f"{a} yo", f"aged {a}"]), a)
    )(str(r.randint(90, 104))),
    "phone": lambda r: (lambda p: (r.choice(["tel ", "phone ", "call ", ""]) + p, p))(_phone(r)),
    "fax": lambda r: (lambda p: (f"fax {p}", p))(_phone(r)),
    "e-mail": lambda r: (lambda e: (e, e))(
        f"{r.choice(FIRST).lower()}.{r.choice(LAST).lower()}@{r.choice(['mail', 'clinic'])}.org"
    ),
    "SSN": lambda r: (lambda s: (f"SSN {s}", s))(
        f"{_digits(r, 3)}-{_digits(r, 2)}-{_digits(r, 4)}"
    ),
    "MRN": lambda r: (lambda s: (r.choice(["MRN ", "MRN: ", "medical record #"]) + s, s))(
        _digits(r, r.randint(5, 9))
    ),
    "account": lambda r: (lambda s: (r.choice(["acct ", "account no. "]) + s, s))(
        _digits(r, r.randint(4, 8))
    ),
    "licence": lambda r: (lambda s: (r.choice(["licence no. ", "license # "]) + s, s))(
        r.choice("ABCDGKM") + _digits(r, 7)
    ),
    "device": lambda r: (lambda s: (r.choice(["device ID ", "implant id "]) + s, s))(
        r.choice(["PM", "ICD", "DX"]) + _digits(r, 5)
    ),
    "serial": lambda r: (lambda s: (r.choice(["serial ", "S/N "]) + s, s))(
        f"SN-{_digits(r, 4)}-{r.choice('ABCXYZ')}"
    ),
    "URL": lambda r: (lambda u: (u, u))(
        r.choice(["https://pacs.", "http://portal.", "www."])
        + r.choice(["mercy", "stjude", "northside"])
        + f".org/study/{_digits(r, 4)}"
    ),
    "IP": lambda r: (lambda i: (f"host {i}", i))(
        ".".join(str(r.randint(1, 254)) for _ in range(4))
    ),
}
FRAMES = (
    "Seen by {x}.",
    "Discussed with {x} at the bedside.",
    "{x} noted today.",
    "Reference {x} for the chart.",
    "Contact: {x}.",
    "Information given to {x}.",
)


def report_sentences(limit: int = 5000) -> list[str]:
    import pandas as pd

    from medxpert.report.sentences import split_sentences

    frame = pd.read_csv(find_pack("iu_xray") / "reports.csv").drop_duplicates("study_id")
    texts = frame.findings.fillna("") + " " + frame.impression.fillna("")
    sentences = {s for t in texts for s in split_sentences(t) if "XXXX" not in s.upper()}
    return sorted(s for s in sentences if len(s) > 15)[:limit]


def recased(sentence: str, r: random.Random) -> str:
    return r.choice([sentence, sentence, sentence.lower(), sentence.upper()])


def make_notes(count: int, seed: int) -> list[dict]:
    r = random.Random(seed)
    sentences = report_sentences()
    notes = []
    for i in range(count):
        category = list(CATEGORIES)[i % len(CATEGORIES)]
        shown, identifier = CATEGORIES[category](r)
        inserted = r.choice(FRAMES).format(x=shown)
        if category.startswith("name"):
            inserted = recased(inserted, r)
            identifier = next(
                inserted[m.start() : m.end()]
                for m in [re.search(re.escape(identifier), inserted, re.IGNORECASE)]
            )
        clinical = r.sample(sentences, r.randint(2, 4))
        at = r.randint(0, len(clinical))
        note = " ".join([*clinical[:at], inserted, *clinical[at:]])
        notes.append(
            {"category": category, "note": note, "identifier": identifier, "clinical": clinical}
        )
    return notes


def caught(identifier: str, note: dict, clean: str) -> bool:
    clinical = " ".join(note["clinical"]).lower()
    pieces = [p for p in re.findall(r"[a-z0-9]+", identifier.lower()) if p not in clinical]
    return not any(re.search(rf"(?<![a-z0-9]){p}(?![a-z0-9])", clean.lower()) for p in pieces)


def evaluate(name: str, deid, notes: list[dict], labeler) -> dict:
    started = time.perf_counter()
    cleaned = [deid(n["note"]) for n in notes]
    seconds = time.perf_counter() - started
    recall = {}
    for category in CATEGORIES:
        rows = [(n, c) for n, c in zip(notes, cleaned, strict=True) if n["category"] == category]
        recall[category] = {
            "n": len(rows),
            "recall": round(sum(caught(n["identifier"], n, c) for n, c in rows) / len(rows), 4),
            "missed": [c for n, c in rows if not caught(n["identifier"], n, c)][:3],
        }
    # clinical content: the same sentences, de-identified one note at a time
    originals = [" ".join(n["clinical"]) for n in notes]
    kept = [deid(text) for text in originals]
    before, after = labeler.label_many(originals), labeler.label_many(kept)
    same = [np.array_equal(b, a, equal_nan=True) for b, a in zip(before, after, strict=True)]
    removed = sum(_removed_chars(o, k) for o, k in zip(originals, kept, strict=True))
    return {
        "function": name,
        "recall": recall,
        "min_recall": min(v["recall"] for v in recall.values()),
        "labels_unchanged": round(float(np.mean(same)), 4),
        "clinical_char_fp_rate": round(removed / sum(map(len, originals)), 5),
        "clinical_changed_examples": [
            (o, k) for o, k in zip(originals, kept, strict=True) if o != k
        ][:5],
        "ms_per_note": round(seconds / len(notes) * 1000, 2),
    }


def _removed_chars(original: str, kept: str) -> int:
    """Characters of `original` not in `kept` (a diff's deletions)."""
    from difflib import SequenceMatcher

    matcher = SequenceMatcher(None, original, kept, autojunk=False)
    return len(original) - sum(block.size for block in matcher.get_matching_blocks())


TUNED_SEED = 13


def run(seed: int, count: int, labeler) -> dict:
    notes = make_notes(count, seed)
    return {
        "seed": seed,
        "tuned_on": seed == TUNED_SEED,
        "notes": len(notes),
        "functions": [
            evaluate("deidentify (Presidio + rules)", deidentify, notes, labeler),
            evaluate("old rules", old_deidentify, notes, labeler),
        ],
    }


def main() -> None:
    settings = Settings.from_env()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notes", type=int, default=100 * len(CATEGORIES) + 100)
    parser.add_argument("--seed", type=int, nargs="+", default=[2027, TUNED_SEED])
    parser.add_argument("--out", default=settings.results_dir / "phi_bench.json")
    args = parser.parse_args()
    labeler = default_labeler()
    deidentify("warm up the engine")
    results = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        "runs": [run(seed, args.notes, labeler) for seed in args.seed],
    }
    atomic_write_json(args.out, results)
    print(json.dumps(results, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
