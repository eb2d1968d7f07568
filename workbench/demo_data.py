"""The demo model's text: simple English-like stories, repeated random-token sequences and
indirect-object-identification (IOI) sentences, all generated here from word lists written for
this repo (no external corpus, so provenance is this file; licence: the repo's).

Everything is a pure function of a ``random.Random`` seed, so the training corpus and the
evaluation sets are reproducible. The IOI names and templates are split into a training part and
a held-out part: held-out names appear in the stories (so the model knows them as words) but never
in a training IOI sentence; held-out templates never appear in training at all.

    >>> from workbench.demo_data import ioi_prompts
    >>> p = ioi_prompts(4, split="heldout", seed=0)[0]
    >>> p.text, p.io, p.s          # doctest: +SKIP
    ('Later, Mabel and Sylvia were sitting in the river, and Sylvia sent a box to', ' Mabel', ' Sylvia')
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

# -- word lists ---------------------------------------------------------------------------------
# First names: common English given names, one word each. The last HELDOUT_NAMES_COUNT are
# held out of IOI training.
NAMES = (
    "Mary John Alice Bob Emma James Olivia Henry Sophia Jack Grace Leo Lucy Tom Anna Sam Kate Paul "
    "Sarah David Laura Mark Julia Peter Rose Adam Clara Daniel Ella Ben Amy Luke Chloe Ryan Mia Noah "
    "Lily Max Zoe Ian Ruby Owen Jane Carl Eva Dan Ivy Eric Hannah Fred Jenny Gary Holly Hugo Iris "
    "Jacob Julie Kevin Lisa Liam Molly Neil Nina Oscar Paula Ralph Sally Simon Tina Victor Wendy Will "
    "Alex Beth Chris Diana Ethan Fiona George Helen Isaac Joan Kyle Linda Martin Nancy Oliver Pam "
    "Robert Susan Tim Ursula Vera Walter Amber Bill Carol Derek Edith Frank Gina Harry Irene Joe "
    "Karen Lewis Megan Nick Olga Philip Rachel Steve Tara Vince Yvonne Arthur Betty Colin Daisy "
    "Edward Flora Gavin Heidi Ivan Jill Keith Lena Abby Aaron Bella Blake Caleb Cora Dylan Dora Elise "
    "Evan Finn Gemma Isla Jared Jade Joel Kara Kurt Leah Maya Mason Nate Otis Piper Quinn Reid Rita Sean "
    "Sofia Troy Tess Uma Wade Willa Zack Zara Abel Ada Brent Cole Cindy Eli Erin Floyd Faye Glen Gwen "
    "Hilda Inez Kent Lyle Lola Macy Ned Nadia Percy Rhoda Seth Thea Ted Vivian Wyatt Yara Boris Carla "
    "Elmer Freya Gus Hattie Igor Jonah Leon Lionel Marta Nico Orson Pearl Rex Selma Toby Ulla Viola "
    "Wilbur Alma Bernie Cyril Dolly Enid Fergus Gilda Homer Ida Jasper Kirk Lottie Mitch Nigel Otto "
    "Polly Quentin Rory Sid Trudy Vernon Winnie "
    # held out of IOI training (still in stories):
    "Nora Felix Greta Miles Hazel Rufus Stella Dennis Mabel Gordon Wanda Felicity Norman Agnes "
    "Bruno Celia Dexter Opal Roland Sylvia"
).split()
HELDOUT_NAMES_COUNT = 20
TRAIN_NAMES = NAMES[:-HELDOUT_NAMES_COUNT]
HELDOUT_NAMES = NAMES[-HELDOUT_NAMES_COUNT:]

PLACES = ("store garden park school house kitchen library market station beach forest river "
          "hospital office restaurant farm lake museum church bakery castle village street hill "
          "zoo cinema harbor barn field shop").split()
OBJECTS = ("drink ball book bone kiss necklace ring snack apple basket letter flower gift cake "
           "key hat box coin map pen cup toy shell ticket lamp bag sandwich candle stone").split()
ANIMALS = "cat dog bird fox horse rabbit mouse duck cow sheep frog owl bear goat pig".split()
ADJECTIVES = ("big small red blue old new happy sad quiet loud green warm cold bright dark soft "
              "tall tiny brave kind").split()
VERBS_PAST = ("saw liked found helped called watched visited met followed thanked painted "
              "carried fed chased").split()
FEELINGS = "happy tired hungry excited sleepy proud scared calm".split()


# -- IOI templates ------------------------------------------------------------------------------
# {A} and {B} are the two names of the first clause, {S} (the subject) is repeated in the second
# clause, and the answer is the other one, the indirect object {IO}. Every template is used in
# both orders (ABBA: IO first; BABA: S first).
# A training sentence is an opening, optionally a name-free filler sentence, and an ending: many
# thousands of distinct sentences, so the model learns the structure rather than a few frames.
# The held-out templates use openings ("Later", "As", "Yesterday", "On the way") and verbs ("sent",
# "threw", "offered", "showed") that never occur in a training IOI sentence (the stories do use
# those verbs, as "X sent a cup to Y").
TRAIN_OPENINGS = (
    "When {A} and {B} went to the {place},",
    "When {A} and {B} got a {obj} at the {place},",
    "Then, {A} and {B} went to the {place}.",
    "Then, {A} and {B} had a lot of fun at the {place}.",
    "After {A} and {B} went to the {place},",
    "While {A} and {B} were working at the {place},",
    "Friends {A} and {B} found a {obj} at the {place}.",
    "When {A} and {B} arrived at the {place},",
    "{A} and {B} were at the {place}.",
    "The {place} was busy when {A} and {B} came in.",
    "{A} and {B} walked to the {place} together.",
    "Once, {A} and {B} visited the {place}.",
    "Before {A} and {B} went home from the {place},",
    "At the {place}, {A} and {B} were {feel}.",
    "{A} and {B} met at the {place}.",
    "Because {A} and {B} were at the {place},",
    "Soon {A} and {B} reached the {place},",
    "{A} and {B} spent the day at the {place}.",
    "In the {place}, {A} and {B} found a {adj} {animal}.",
    "One day, {A} and {B} were {feel} at the {place}.",
    "{A} and {B} were playing at the {place}, and",
    "{A} and {B} had a picnic in the {place}, and",
)
TRAIN_FILLERS = (
    "It was a {adj} day.",
    "The {animal} was {adj}.",
    "The {place} was {adj}.",
    "There was a {adj} {animal} nearby.",
    "They were {feel}.",
    "Then they sat down.",
)
TRAIN_ENDINGS = (
    "{S} gave a {obj} to",
    "{S} decided to give a {obj} to",
    "{S} handed a {obj} to",
    "{S} wanted to give a {obj} to",
    "{S} passed the {obj} to",
    "{S} brought a {obj} to",
    "{S} gave the {adj} {obj} to",
    "{S} lent a {obj} to",
    "{S} sold a {obj} to",
    "{S} tossed a {obj} to",
    "{S} handed the {obj} back to",
    "{S} quickly gave a {obj} to",
    "{S} was {feel} and gave a {obj} to",
    "{S} took a {obj} and gave it to",
)
TRAIN_TEMPLATES = tuple(f"{o} {e}" for o in TRAIN_OPENINGS for e in TRAIN_ENDINGS)
HELDOUT_TEMPLATES = (
    "Later, {A} and {B} were sitting in the {place}, and {S} sent a {obj} to",
    "As {A} and {B} left the {place}, {S} threw a {obj} to",
    "Yesterday {A} and {B} cleaned the {place}. {S} offered a {obj} to",
    "On the way to the {place}, {A} and {B} stopped. {S} showed a {obj} to",
)
FILLER_PROB = 0.5  # chance that a training IOI sentence whose opening is a whole sentence gets a filler


@dataclass(frozen=True)
class IOIPrompt:
    """One IOI sentence. ``text`` ends just before the answer; ``io`` and ``s`` are the indirect
    object and the subject with their leading space (as single tokens of the demo tokenizer);
    ``order`` is "ABBA" (IO named first) or "BABA"; ``template`` indexes the split's list."""

    text: str
    io: str
    s: str
    order: str
    template: int

    @property
    def full(self) -> str:
        """The sentence with its answer."""
        return self.text + self.io


def _split(split: str, what: str) -> tuple[str, ...]:
    table = {("train", "templates"): TRAIN_TEMPLATES, ("heldout", "templates"): HELDOUT_TEMPLATES,
             ("train", "names"): TRAIN_NAMES, ("heldout", "names"): HELDOUT_NAMES}
    if (split, what) not in table:
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}.")
    return table[split, what]


# Words that stand in for the two people in some training IOI sentences ("When fox and cake went
# to the park, cake gave a ring to fox"): the model cannot learn "the answer is one of the
# training names" and has to copy whichever word is not repeated, so it carries over to names it
# never saw in an IOI sentence.
ENTITY_WORDS = tuple(OBJECTS + ANIMALS)


def ioi_prompt(rng: random.Random, split: str = "train", names: str | None = None,
               pool: tuple[str, ...] | list[str] | None = None) -> IOIPrompt:
    """One random IOI prompt of ``split`` ("train": training names and templates; "heldout":
    held-out names and held-out templates); ``names`` picks the names' split on its own, ``pool``
    replaces the names by other words (e.g. ``ENTITY_WORDS``). Training prompts whose opening is a
    whole sentence get a name-free filler sentence after it with ``FILLER_PROB``."""
    templates = _split(split, "templates")
    pool = pool or _split(names or split, "names")
    t = rng.randrange(len(templates))
    io, s = rng.sample(pool, 2)
    order = rng.choice(("ABBA", "BABA"))
    a, b = (io, s) if order == "ABBA" else (s, io)
    template = templates[t]
    opening = TRAIN_OPENINGS[t // len(TRAIN_ENDINGS)] if split == "train" else ""
    if opening.endswith(".") and rng.random() < FILLER_PROB:  # after a whole sentence only
        template = template.replace(opening, opening + " " + rng.choice(TRAIN_FILLERS), 1)
    text = template.format(A=a, B=b, S=s, place=rng.choice(PLACES), obj=rng.choice(OBJECTS),
                           adj=rng.choice(ADJECTIVES), animal=rng.choice(ANIMALS),
                           feel=rng.choice(FEELINGS))
    return IOIPrompt(text=text, io=" " + io, s=" " + s, order=order, template=t)


def ioi_prompts(n: int, split: str = "heldout", seed: int = 0,
                names: str | None = None) -> list[IOIPrompt]:
    """``n`` reproducible IOI prompts of ``split`` (see :func:`ioi_prompt`)."""
    rng = random.Random(f"ioi-{split}-{names or split}-{seed}")
    return [ioi_prompt(rng, split, names) for _ in range(n)]


def ioi_tokens(bridge, prompts: list[IOIPrompt]):
    """``(tokens [n, pos], io [n], s [n])``: the prompts left-padded (so position -1 is every
    prompt's last token) with BOS, and the IO and S token ids."""
    tokens = bridge.to_tokens([p.text for p in prompts], padding_side="left")
    io = [bridge.to_single_token(p.io) for p in prompts]
    s = [bridge.to_single_token(p.s) for p in prompts]
    return (tokens, torch.tensor(io, device=tokens.device), torch.tensor(s, device=tokens.device))


# -- stories --------------------------------------------------------------------------------------
def _sentence(rng: random.Random, cast: list[str]) -> str:
    a, b = rng.sample(cast, 2)
    place, obj, animal = rng.choice(PLACES), rng.choice(OBJECTS), rng.choice(ANIMALS)
    adj, verb, feel = rng.choice(ADJECTIVES), rng.choice(VERBS_PAST), rng.choice(FEELINGS)
    forms = (
        f"{a} went to the {place}.",
        f"{a} saw a {adj} {animal} near the {place}.",
        f"The {animal} was {adj}.",
        f"{a} and {b} played with a {obj} in the {place}.",
        f"{a} {verb} {b}.",
        f"{a} felt {feel}.",
        f"{a} had a {adj} {obj}.",
        f"{a} gave the {obj} to the {animal}.",
        f"Then {a} said that the {obj} was {adj}.",
        f"{a} and {b} walked to the {place} together.",
        f"{a} {verb} the {adj} {animal}.",
        f"In the {place}, {a} found a {obj}.",
        f"{a} was {feel} because the {animal} was {adj}.",
        f"{a} sent a {obj} to {b}.",
        f"{a} threw the {obj} to {b}.",
        f"{a} offered a {obj} to {b}.",
        f"{a} showed the {obj} to {b}.",
        f"Later, {a} sat in the {place} and cleaned the {obj}.",
        f"Yesterday {a} left the {place} early.",
        f"As the sun went down, {a} and {b} went home.",
        f"When {a} and {b} went to the {place}, they were {feel}.",
    )
    return rng.choice(forms)


# Stories draw this share of their characters from the held-out names: IOI sentences make every
# training name a frequent recipient ("... gave a cake to Mary"), so without it a held-out name
# would be several times rarer than a training name after "to", and the model would learn that
# rarity rather than to copy the right name.
STORY_HELDOUT_SHARE = 0.15


def story(rng: random.Random) -> str:
    """A short story of 3 to 8 simple sentences about 2 or 3 characters (any names; see
    ``STORY_HELDOUT_SHARE``)."""
    size, cast = rng.randint(2, 3), []
    while len(cast) < size:
        name = rng.choice(HELDOUT_NAMES if rng.random() < STORY_HELDOUT_SHARE else NAMES)
        if name not in cast:
            cast.append(name)
    opening = rng.choice(("Once upon a time, ", "One day, ", "", "", "Every morning, "))
    text = opening + _sentence(rng, cast)
    for _ in range(rng.randint(2, 7)):
        text += " " + _sentence(rng, cast)
    return text


def repeated_tokens(rng: random.Random, vocab: list[int], length: int | None = None,
                    repeats: int | None = None) -> list[int]:
    """A random token sequence (uniform over ``vocab``) of ``length`` (default 8..64) repeated
    ``repeats`` times (default 2..4): ``[length * repeats]`` token ids."""
    length = length or rng.randint(8, 64)
    repeats = repeats or rng.randint(2, 4)
    seq = [rng.choice(vocab) for _ in range(length)]
    return seq * repeats
