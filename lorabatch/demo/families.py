"""Task families of the demo bank: Natural-Instructions-style datasets a tiny model can learn.

A family is one skill over its own vocabulary (review sentiment, colour extraction, city to
country, ...). Its variants share that vocabulary and skill but differ in the definition wording,
the sentence templates they draw from (overlapping subsets), the content words they favour and
the answer form. Variants of a family therefore have close token distributions and partly
interchangeable adapters, while families are far apart: the structure the distance-weighted
mixing of the method relies on.

Answer forms recur across families, as they recur across Natural Instructions' task categories
(bare labels, fixed lead-ins, "label : value" answers): variant i of every family answers in
`ANSWER_FORMS[i]` — the bare answer, "the answer is <answer>", "answer : <answer>" — and its
definition ends with that form's instruction (`FORM_HINTS[i]`); the fourth variant answers in a
sentence of its family's own. A task's content is thus known to its siblings and its form to the
same variant of the other families: neither alone gives its answers, a combination can.

Every example is `{"input": "Definition: ...\\n\\nInput: ...\\nOutput:", "output": [answer, ...]}`;
inputs end with ':' so that `input + output[0]` tokenizes as two separate words. Everything is
generated from a `random.Random` seeded by the caller, so datasets are reproducible.
"""

from __future__ import annotations

import importlib
import random
from dataclasses import dataclass
from typing import Callable

from lorabatch.errors import LorabatchError

Instance = tuple[str, dict]  # (sentence, slot values the answer formats refer to)


@dataclass(frozen=True)
class Variant:
    """One task of a family: a slug, its definition (a question, then how to write the answer),
    the slot holding the answer's content and the output formats it uses."""

    slug: str
    question: str  # what the task asks, without the answer's form
    form_hint: str  # how the answer is written ("Answer with one word.")
    answer: str  # the slot whose value is the answer's content
    formats: tuple[str, ...]  # output[0] uses the first; others become extra references
    templates: tuple[int, ...]  # indices into the family's templates
    focus: int  # which part of the family's content words this variant favours

    @property
    def definition(self) -> str:
        return f"{self.question} {self.form_hint}"


@dataclass(frozen=True)
class Family:
    """A skill, its vocabulary, how to fill a template, and the facts the base model is taught."""

    name: str
    templates: tuple[str, ...]
    variants: tuple[Variant, ...]
    sample: Callable[[random.Random, int], dict]  # (rng, focus) -> slot values
    facts: Callable[[random.Random], str]  # one generic pre-training sentence
    restate: str  # plain-prose follow-up of an instance that repeats a slot (teaches copying)

    def instance(self, rng: random.Random, variant: Variant) -> Instance:
        slots = self.sample(rng, variant.focus)
        template = self.templates[rng.choice(variant.templates)]
        return template.format(**slots), slots


# Variant i < 3 of every family answers in ANSWER_FORMS[i] (then its further references) and its
# definition ends with FORM_HINTS[i]; "{ans}" stands for the family's answer slot.
ANSWER_FORMS: tuple[tuple[str, ...], ...] = (("{ans}",), ("the answer is {ans}", "{ans}"), ("answer : {ans}",))
FORM_HINTS = ("Answer with one word.", "Begin with: the answer is.", "Write it as answer : followed by the word.")


def _shared_form(slug: str, question: str, form: int, answer: str, templates: tuple[int, ...], focus: int) -> Variant:
    """A variant that answers `answer` (a slot name) in the shared form `ANSWER_FORMS[form]`."""
    formats = tuple(f.replace("{ans}", "{" + answer + "}") for f in ANSWER_FORMS[form])
    return Variant(slug, question, FORM_HINTS[form], answer, formats, templates, focus)


def _favour(rng: random.Random, words: tuple[str, ...], focus: int, parts: int = 4) -> str:
    """A word drawn with 3x weight on the `focus`-th quarter of `words` (variants' own accent)."""
    n = len(words)
    lo, hi = focus % parts * n // parts, (focus % parts + 1) * n // parts
    weights = [3.0 if lo <= i < hi else 1.0 for i in range(n)]
    return rng.choices(words, weights=weights)[0]


# --- review sentiment: keyword classification, label words differ per variant ---------------
POSITIVE = (
    "delicious",
    "friendly",
    "wonderful",
    "great",
    "excellent",
    "lovely",
    "fresh",
    "pleasant",
    "amazing",
    "perfect",
    "clean",
    "cosy",
)
NEGATIVE = (
    "awful",
    "rude",
    "terrible",
    "bad",
    "dirty",
    "boring",
    "stale",
    "noisy",
    "horrible",
    "slow",
    "broken",
    "greasy",
)
REVIEW_NOUNS = (
    "soup",
    "pasta",
    "waiter",
    "dessert",
    "plot",
    "actors",
    "ending",
    "film",
    "room",
    "bed",
    "breakfast",
    "pool",
    "screen",
    "battery",
    "price",
    "delivery",
)


def _review(rng: random.Random, focus: int) -> dict:
    polarity = rng.choice(("positive", "negative"))
    adjectives = POSITIVE if polarity == "positive" else NEGATIVE
    a1, a2 = rng.sample(adjectives, 2)
    n1 = _favour(rng, REVIEW_NOUNS, focus)
    n2 = rng.choice([n for n in REVIEW_NOUNS if n != n1])
    label = {
        "positive": ("positive", "good", "yes", "positive"),
        "negative": ("negative", "bad", "no", "negative"),
    }[polarity]
    return {"n1": n1, "n2": n2, "a1": a1, "a2": a2, "label": label[focus]}


def _review_fact(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return f"the {rng.choice(REVIEW_NOUNS)} was {rng.choice(POSITIVE + NEGATIVE)} ."
    word = rng.choice(POSITIVE + NEGATIVE)
    good = word in POSITIVE
    return rng.choice(
        (
            f"{word} is a {'good' if good else 'bad'} word for a review .",
            f"a review that says {word} is {'positive' if good else 'negative'} .",
            f"people who find the {rng.choice(REVIEW_NOUNS)} {word} say {'yes' if good else 'no'} .",
        )
    )


REVIEW = Family(
    name="review_sentiment",
    templates=(
        "the {n1} was {a1} and the {n2} was {a2} .",
        "honestly , the {n1} was {a1} .",
        "i found the {n1} {a1} and the {n2} {a2} .",
        "what a {a1} {n1} , and the {n2} was {a2} too .",
        "the {n2} was {a2} , the {n1} was {a1} .",
        "my friends said the {n1} was {a1} .",
    ),
    variants=(
        _shared_form(
            "restaurant_review_polarity", "Classify the review as positive or negative.", 0, "label", (0, 1, 2), 0
        ),
        _shared_form("movie_review_good_bad", "Did the reviewer like it? Say good or bad.", 1, "label", (1, 2, 3), 1),
        _shared_form(
            "product_review_recommend", "Would the customer recommend it? Say yes or no.", 2, "label", (2, 3, 4), 2
        ),
        Variant(
            "hotel_review_sentence",
            "Say whether the review is positive or negative.",
            "Answer in a short sentence.",
            "label",
            ("the review is {label}", "{label}"),
            (3, 4, 5),
            3,
        ),
    ),
    sample=_review,
    facts=_review_fact,
    restate="everyone said {a1} .",
)

# --- colour extraction: copy the one colour word of the sentence -----------------------------
COLOURS = ("red", "green", "blue", "yellow", "black", "white", "orange", "purple", "pink", "brown", "grey", "golden")
OBJECTS = ("car", "bike", "hat", "coat", "door", "cup", "kite", "ball", "chair", "lamp", "bag", "boat")
OWNERS = ("my neighbour", "the child", "a farmer", "the teacher", "my uncle", "the painter", "our aunt", "a sailor")


def _colour(rng: random.Random, focus: int) -> dict:
    return {"colour": _favour(rng, COLOURS, focus), "object": _favour(rng, OBJECTS, focus), "owner": rng.choice(OWNERS)}


def _colour_fact(rng: random.Random) -> str:
    c, o = rng.choice(COLOURS), rng.choice(OBJECTS)
    return rng.choice((f"{c} is a colour .", f"the {o} is {c} .", f"the colour of the {o} was {c} ."))


COLOUR = Family(
    name="object_colour",
    templates=(
        "{owner} painted the {object} {colour} .",
        "{owner} bought a {colour} {object} yesterday .",
        "a {colour} {object} stood next to the gate .",
        "{owner} lost the {colour} {object} at the market .",
        "we saw a {colour} {object} near the river .",
        "the {object} that {owner} likes is {colour} .",
    ),
    variants=(
        _shared_form("colour_extraction", "Extract the colour mentioned in the sentence.", 0, "colour", (0, 1, 2), 0),
        _shared_form("colour_of_object", "What colour is the object?", 1, "colour", (1, 2, 3), 1),
        _shared_form("colour_label", "Label the sentence with the colour it mentions.", 2, "colour", (2, 3, 4), 2),
        Variant(
            "colour_statement",
            "State the colour of the thing described.",
            "Begin with: it is.",
            "colour",
            ("it is {colour}", "{colour}"),
            (3, 4, 5),
            3,
        ),
    ),
    sample=_colour,
    facts=_colour_fact,
    restate="that {object} was {colour} .",
)

# --- city to country: a lookup whose keys are shared by train and test -----------------------
CITIES = {
    "france": ("paris", "lyon", "marseille"),
    "germany": ("berlin", "munich", "hamburg"),
    "italy": ("rome", "milan", "naples"),
    "spain": ("madrid", "seville", "valencia"),
    "japan": ("tokyo", "osaka", "kyoto"),
    "egypt": ("cairo", "alexandria", "luxor"),
    "brazil": ("recife", "salvador", "curitiba"),
    "canada": ("toronto", "montreal", "calgary"),
}
COUNTRY_OF = {city: country for country, cities in CITIES.items() for city in cities}
CITY_LIST = tuple(COUNTRY_OF)
TRAVELLERS = ("the minister", "my cousin", "the band", "a student", "the team", "our manager")
EVENTS = ("conference", "wedding", "holiday", "meeting", "festival", "match")


def _city(rng: random.Random, focus: int) -> dict:
    city = _favour(rng, CITY_LIST, focus)
    return {"city": city, "country": COUNTRY_OF[city], "who": rng.choice(TRAVELLERS), "event": rng.choice(EVENTS)}


def _city_fact(rng: random.Random) -> str:
    city = rng.choice(CITY_LIST)
    country = COUNTRY_OF[city]
    return rng.choice(
        (
            f"{city} is a city in {country} .",
            f"the country of {city} is {country} .",
            f"{country} has a city called {city} .",
        )
    )


CITY = Family(
    name="city_country",
    templates=(
        "{who} flew to {city} for a {event} .",
        "the {event} will take place in {city} next week .",
        "{who} spent a week in {city} .",
        "after the {event} , {who} stayed in {city} .",
        "{who} wrote a letter from {city} .",
        "tickets to {city} sold out before the {event} .",
    ),
    variants=(
        _shared_form("city_to_country", "Name the country of the city in the sentence.", 0, "country", (0, 1, 2), 0),
        _shared_form("country_of_trip", "In which country did the trip take place?", 1, "country", (1, 2, 3), 1),
        _shared_form("travel_destination_country", "Give the destination country.", 2, "country", (2, 3, 4), 2),
        Variant(
            "city_location_sentence",
            "Where is the city?",
            "Answer with a full sentence.",
            "country",
            ("{city} is in {country}", "{country}"),
            (3, 4, 5),
            3,
        ),
    ),
    sample=_city,
    facts=_city_fact,
    restate="{city} is a city in {country} .",
)

# --- thing category: the category of a word (lookup) -----------------------------------------
CATEGORIES = {
    "animal": ("dog", "cat", "horse", "cow", "sheep", "rabbit", "tiger", "mouse"),
    "fruit": ("apple", "pear", "banana", "cherry", "plum", "grape", "lemon", "mango"),
    "vehicle": ("bus", "train", "truck", "tractor", "van", "taxi", "scooter", "tram"),
    "tool": ("hammer", "saw", "drill", "wrench", "shovel", "rake", "axe", "chisel"),
}
CATEGORY_OF = {thing: cat for cat, things in CATEGORIES.items() for thing in things}
THINGS = tuple(CATEGORY_OF)
PLACES = ("barn", "shed", "yard", "street", "field", "shop")


def _category(rng: random.Random, focus: int) -> dict:
    thing = _favour(rng, THINGS, focus)
    return {"thing": thing, "category": CATEGORY_OF[thing], "place": rng.choice(PLACES)}


def _category_fact(rng: random.Random) -> str:
    thing = rng.choice(THINGS)
    cat = CATEGORY_OF[thing]
    return rng.choice(
        (
            f"the {thing} is a kind of {cat} .",
            f"every {thing} is a kind of {cat} .",
            f"there is a {thing} in the {rng.choice(PLACES)} .",
        )
    )


CATEGORY = Family(
    name="thing_category",
    templates=(
        "there was a {thing} in the {place} .",
        "we looked at the {thing} for a while .",
        "the {thing} near the {place} was old .",
        "someone left a {thing} by the {place} .",
        "i noticed a {thing} behind the {place} .",
        "a small {thing} appeared in the {place} .",
    ),
    variants=(
        _shared_form(
            "word_category",
            "Classify the thing in the sentence as animal, fruit, vehicle or tool.",
            0,
            "category",
            (0, 1, 2),
            0,
        ),
        _shared_form("kind_of_thing", "What kind of thing is mentioned?", 1, "category", (1, 2, 3), 1),
        _shared_form("category_label", "Give the category label of the mentioned thing.", 2, "category", (2, 3, 4), 2),
        Variant(
            "thing_is_a",
            "Say what the mentioned thing is.",
            "Answer with a full sentence.",
            "category",
            ("{thing} is a {category}", "{category}"),
            (3, 4, 5),
            3,
        ),
    ),
    sample=_category,
    facts=_category_fact,
    restate="the {thing} is a kind of {category} .",
)

# --- person name extraction: copy the name ---------------------------------------------------
NAMES = (
    "maria",
    "john",
    "aisha",
    "pedro",
    "li",
    "omar",
    "sofia",
    "ivan",
    "emma",
    "kofi",
    "yuki",
    "lars",
    "priya",
    "carlos",
    "nora",
    "ahmed",
)
ITEMS = ("book", "letter", "key", "map", "ticket", "note", "photo", "parcel")
ROOMS = ("kitchen", "garden", "office", "hallway", "library", "attic")
ACTIONS = ("found", "hid", "read", "dropped", "opened", "forgot")


def _person(rng: random.Random, focus: int) -> dict:
    return {
        "name": _favour(rng, NAMES, focus),
        "item": rng.choice(ITEMS),
        "room": rng.choice(ROOMS),
        "action": rng.choice(ACTIONS),
    }


def _person_fact(rng: random.Random) -> str:
    name = rng.choice(NAMES)
    return rng.choice(
        (f"{name} is a name .", f"{name} {rng.choice(ACTIONS)} the {rng.choice(ITEMS)} .", f"everyone knows {name} .")
    )


PERSON = Family(
    name="person_name",
    templates=(
        "{name} {action} the {item} in the {room} .",
        "in the {room} , {name} {action} a {item} .",
        "yesterday {name} {action} the {item} .",
        "the {item} was {action} by {name} in the {room} .",
        "nobody saw {name} in the {room} .",
        "{name} walked into the {room} with a {item} .",
    ),
    variants=(
        _shared_form(
            "person_name_extraction", "Extract the name of the person in the sentence.", 0, "name", (0, 1, 2), 0
        ),
        _shared_form("who_is_mentioned", "Who is mentioned?", 1, "name", (1, 2, 3), 1),
        _shared_form("name_label", "Label the sentence with the person's name.", 2, "name", (2, 3, 4), 2),
        Variant(
            "agent_of_action",
            "Who did it?",
            "Answer with the name followed by did it.",
            "name",
            ("{name} did it", "{name}"),
            (3, 4, 5),
            3,
        ),
    ),
    sample=_person,
    facts=_person_fact,
    restate="later {name} went home .",
)

# --- news topic: keyword classification over four topics -------------------------------------
TOPICS = {
    "sports": ("goal", "team", "coach", "stadium", "player", "season", "referee", "trophy"),
    "science": ("experiment", "laboratory", "molecule", "telescope", "scientist", "theory", "cell", "planet"),
    "music": ("concert", "guitar", "album", "singer", "song", "drummer", "melody", "orchestra"),
    "politics": ("election", "minister", "parliament", "vote", "law", "senator", "campaign", "policy"),
}
TOPIC_OF = {w: t for t, words in TOPICS.items() for w in words}


def _topic(rng: random.Random, focus: int) -> dict:
    topic = rng.choice(tuple(TOPICS))
    w1, w2 = rng.sample(TOPICS[topic], 2)
    return {"w1": w1, "w2": w2, "topic": topic}


def _topic_fact(rng: random.Random) -> str:
    word = rng.choice(tuple(TOPIC_OF))
    return rng.choice(
        (
            f"the {word} belongs to {TOPIC_OF[word]} .",
            f"a {word} is part of {TOPIC_OF[word]} .",
            f"everyone talked about the {word} .",
        )
    )


TOPIC = Family(
    name="news_topic",
    templates=(
        "the {w1} and the {w2} were in the news today .",
        "reporters wrote about the {w1} after the {w2} .",
        "a story about the {w1} made headlines .",
        "people argued about the {w1} and the {w2} .",
        "the {w2} surprised everyone , said the {w1} .",
        "tonight : the {w1} , the {w2} and more .",
    ),
    variants=(
        _shared_form(
            "news_topic_classification",
            "Classify the news sentence as sports, science, music or politics.",
            0,
            "topic",
            (0, 1, 2),
            0,
        ),
        _shared_form("headline_topic", "What is the topic?", 1, "topic", (1, 2, 3), 1),
        _shared_form("news_section", "Which section of the newspaper does it belong to?", 2, "topic", (2, 3, 4), 2),
        Variant(
            "story_subject",
            "Say what the story is about.",
            "Begin with: this is about.",
            "topic",
            ("this is about {topic}", "{topic}"),
            (3, 4, 5),
            3,
        ),
    ),
    sample=_topic,
    facts=_topic_fact,
    restate="it was a {topic} story .",
)

FAMILIES: tuple[Family, ...] = (REVIEW, COLOUR, CITY, CATEGORY, PERSON, TOPIC)

GENERIC = (
    "the weather was mild in the morning .",
    "we walked home after dinner .",
    "she opened the window .",
    "the news came late in the evening .",
    "they talked for an hour .",
    "the answer is simple .",
    "please read the sentence and answer the question .",
    "the label of the sentence is clear .",
)


@dataclass(frozen=True)
class TaskSpec:
    """A task of the bank: `task<number>_<slug>`, generated by `family` with `variant`."""

    number: int
    family: Family
    variant: Variant

    @property
    def task_id(self) -> str:
        return f"task{self.number}"

    @property
    def name(self) -> str:
        return f"task{self.number}_{self.variant.slug}"


def task_specs(n_families: int, n_variants: int, families: tuple[Family, ...] | None = None) -> list[TaskSpec]:
    """The first `n_families` of `families` (default `FAMILIES`) × their first `n_variants`
    variants; task number = 100·family + variant.

    Numbers are stable across sizes (a small bank's tasks are a subset of the default bank's) and
    not contiguous, like the real bank's.
    """
    families = FAMILIES if families is None else tuple(families)
    if not 1 <= n_families <= len(families):
        raise ValueError(f"n_families must be in 1..{len(families)}, got {n_families}")
    short = [f.name for f in families[:n_families] if len(f.variants) < n_variants]
    if n_variants < 1 or short:
        raise ValueError(
            f"n_variants must be at least 1 and at most every family's variants, got {n_variants} ({short})"
        )
    return [
        TaskSpec(100 * (f + 1) + v + 1, families[f], families[f].variants[v])
        for f in range(n_families)
        for v in range(n_variants)
    ]


def make_examples(spec: TaskSpec, n: int, seed: int) -> list[dict]:
    """`n` examples `{"input", "output", "id"}` of one task, reproducible from `seed`."""
    rng = random.Random(f"{seed}:{spec.number}")
    rows = []
    for i in range(n):
        sentence, slots = spec.family.instance(rng, spec.variant)
        prompt = f"Definition: {spec.variant.definition}\n\nInput: {sentence}\nOutput:"
        outputs = list(dict.fromkeys(fmt.format(**slots) for fmt in spec.variant.formats))
        rows.append({"input": prompt, "output": outputs, "id": f"{spec.task_id}-{i:05d}"})
    return rows


def split_examples(rows: list[dict]) -> dict[str, list[dict]]:
    """80/10/10 train/valid/test split (rows are already in random order)."""
    n = len(rows)
    n_valid = n_test = max(1, n // 10)
    return {
        "train": rows[: n - n_valid - n_test],
        "valid": rows[n - n_valid - n_test : n - n_test],
        "test": rows[n - n_test :],
    }


def pretraining_sentences(families: tuple[Family, ...] | list[Family], n: int, seed: int) -> list[str]:
    """The generic mixture the base model learns: task sentences, facts, generic prose.

    It teaches every content and answer word in plain text (never in the instruction format), so
    the base model is a plausible language model that does not solve the tasks by itself.
    """
    rng = random.Random(f"{seed}:pretraining")
    families = list(families)
    out = []
    for _ in range(n):
        r = rng.random()
        family = rng.choice(families)
        if r < 0.45:
            sentence, slots = family.instance(rng, rng.choice(family.variants))
            out.append(f"{sentence} {family.restate.format(**slots)}" if r < 0.3 else sentence)
        elif r < 0.9:
            out.append(family.facts(rng))
        else:
            out.append(rng.choice(GENERIC))
    return out


def load_families(spec: str | None) -> tuple[Family, ...] | None:
    """The families named by `spec` = 'module:attribute' (a sequence of `Family`); None for None.

    Raises `LorabatchError` naming the spec when the module or attribute is missing or holds
    something other than families.
    """
    if spec is None:
        return None
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise LorabatchError(f"families must be given as 'module:attribute', got {spec!r}")
    try:
        value = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as e:
        raise LorabatchError(f"families {spec!r}: {e}") from e
    families = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    if not families or not all(isinstance(f, Family) for f in families):
        raise LorabatchError(f"families {spec!r} must be a non-empty sequence of Family, got {type(value).__name__}")
    return families
