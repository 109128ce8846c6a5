"""Prompt moderation by term lists, checked before any credit is held.

Pure Python: no Django, no network, no model. The text and every term are normalized
the same way (compatibility forms folded, case-folded, accents and invisible characters
dropped, split into words on anything that is not a letter or digit: see normalize),
and terms match as whole word sequences, so "therapist" never matches "rapist" and
"Scunthorpe" never matches anything.

Each term has a category (CATEGORIES) and a tier: "explicit" or "mild" (non-explicit
nudity for sexual, gore for violence, depictions rather than instructions for
self_harm). What a level blocks:

    strict    every category, every tier
    standard  the explicit tier of every category, and sexual_minors
    low       sexual_minors, and the explicit tier of illicit

sexual_minors is blocked at every level. It matches a term of its own list, or a word
that indicates a minor ("child", "teen", "15 year old", ...) anywhere in the same text
as any sexual term, mild or explicit.

A few innocent phrases that contain a term ("Al Gore", "bloody mary", "nude lipstick",
"white power cable": EXEMPT_PHRASES) are skipped before matching; other terms in the
same text still match.

An operator with a model can plug in a classifier ("package.module:function", see
load_classifier): it returns category ids for the text, and they count as explicit
matches.
"""

from __future__ import annotations

import importlib
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache

CATEGORIES: tuple[str, ...] = ("sexual", "sexual_minors", "violence", "self_harm", "hate", "illicit")
LEVELS: tuple[str, ...] = ("strict", "standard", "low")
TIERS: tuple[str, ...] = ("explicit", "mild")

DEFAULT_TERMS: dict[str, dict[str, list[str]]] = {
    "sexual": {
        "explicit": [
            "porn",
            "porno",
            "pornography",
            "pornographic",
            "porn star",
            "pornstar",
            "xxx",
            "nsfw",
            "hardcore porn",
            "hardcore sex",
            "sexually explicit",
            "explicit sex",
            "having sex",
            "sex scene",
            "sex tape",
            "sex act",
            "sexual act",
            "sexual intercourse",
            "sex toy",
            "blowjob",
            "blow job",
            "handjob",
            "hand job",
            "fellatio",
            "cunnilingus",
            "oral sex",
            "anal sex",
            "anal penetration",
            "vaginal penetration",
            "deepthroat",
            "deep throat",
            "masturbate",
            "masturbating",
            "masturbation",
            "jerking off",
            "jerk off",
            "wank",
            "wanking",
            "orgasm",
            "orgy",
            "orgies",
            "gangbang",
            "gang bang",
            "threesome",
            "cumshot",
            "cum shot",
            "creampie",
            "bukkake",
            "ejaculation",
            "ejaculating",
            "jizz",
            "erection",
            "erect penis",
            "penis",
            "vagina",
            "vulva",
            "clitoris",
            "labia",
            "genitals",
            "genitalia",
            "testicles",
            "cocksucker",
            "doggystyle",
            "doggy style",
            "dildo",
            "hentai",
            "ahegao",
            "futanari",
            "rule34",
            "rule 34",
            "r34",
            "barely legal",
            "rape",
            "raped",
            "raping",
            "rapist",
            "sexual assault",
            "sexually assaulted",
            "molest",
            "molested",
            "molesting",
            "molestation",
            "sodomy",
            "sodomize",
            "incest",
            "bestiality",
            "zoophilia",
            "necrophilia",
            "upskirt",
            "downblouse",
        ],
        "mild": [
            "nude",
            "nudes",
            "nudity",
            "naked",
            "in the nude",
            "topless",
            "bottomless",
            "undressed",
            "unclothed",
            "full frontal",
            "nipple",
            "bare breasts",
            "exposed breasts",
            "bare breasted",
            "bare buttocks",
            "boobs",
            "titties",
            "pubic hair",
            "cameltoe",
            "nip slip",
            "lingerie",
            "sexy",
            "seductive",
            "sensual",
            "erotic",
            "erotica",
            "lewd",
            "horny",
            "kinky",
            "fetish",
            "striptease",
            "strip tease",
            "stripper",
            "skinny dipping",
            "playboy",
        ],
    },
    "sexual_minors": {
        "explicit": [
            "child porn",
            "child pornography",
            "kiddie porn",
            "kiddy porn",
            "child sexual abuse",
            "csam",
            "csem",
            "pedophilia",
            "pedophile",
            "paedophilia",
            "paedophile",
            "pedo",
            "lolicon",
            "shotacon",
            "jailbait",
            "underage sex",
            "underage porn",
            "preteen porn",
            "child molestation",
            "child molester",
            "pthc",
        ],
        "mild": [],
    },
    "violence": {
        "explicit": [
            "dismember",
            "dismembered",
            "dismembering",
            "dismemberment",
            "disembowel",
            "disemboweled",
            "disemboweling",
            "disembowelment",
            "eviscerate",
            "eviscerated",
            "evisceration",
            "mutilated",
            "mutilating",
            "mutilation",
            "decapitated",
            "decapitating",
            "decapitation",
            "beheaded",
            "beheading",
            "severed head",
            "severed limb",
            "severed arm",
            "severed leg",
            "severed hand",
            "guts spilling",
            "spilled guts",
            "intestines spilling out",
            "entrails",
            "exposed organs",
            "exposed intestines",
            "brain matter",
            "brains blown out",
            "head blown off",
            "exploded head",
            "crushed skull",
            "eyes gouged out",
            "gouged out eyes",
            "flayed",
            "skinned alive",
            "burned alive",
            "burning alive",
            "eaten alive",
            "eating human flesh",
            "torture porn",
            "gore porn",
            "extreme gore",
            "graphic gore",
            "explicit gore",
            "tortured to death",
            "stabbed to death",
            "beaten to death",
            "hacked to death",
            "snuff film",
            "snuff video",
            "execution video",
        ],
        "mild": [
            "gore",
            "gory",
            "bloody",
            "bloodied",
            "blood soaked",
            "covered in blood",
            "pool of blood",
            "blood splatter",
            "blood spatter",
            "blood splattered",
            "dripping blood",
            "bleeding",
            "corpse",
            "dead body",
            "dead bodies",
            "cadaver",
            "decomposing body",
            "rotting body",
            "murdered",
            "murder scene",
            "stab wound",
            "gunshot wound",
            "bullet wound",
            "open wound",
            "gaping wound",
            "gash",
            "impaled",
            "torture",
            "tortured",
            "massacre",
            "bloodbath",
            "gruesome",
            "grisly",
            "lynching",
            "cannibal",
            "cannibalism",
            "mass shooting",
        ],
    },
    "self_harm": {
        "explicit": [
            "kill yourself",
            "kill urself",
            "kys",
            "go kill yourself",
            "how to kill yourself",
            "kill myself",
            "how to kill myself",
            "ways to kill myself",
            "ways to die",
            "painless way to die",
            "painless suicide",
            "how to commit suicide",
            "commit suicide",
            "suicide method",
            "suicide instructions",
            "suicide guide",
            "suicide pact",
            "encourage suicide",
            "how to self harm",
            "how to cut myself",
            "how to cut yourself",
            "cut yourself",
            "cut your wrists",
            "slit your wrists",
            "slit my wrists",
            "hang yourself",
            "hang myself",
            "how to hang myself",
            "how to overdose",
            "overdose on pills",
            "end your life",
            "end my life",
            "starve yourself",
            "pro ana",
            "proana",
            "pro mia",
            "thinspiration",
            "thinspo",
            "meanspo",
        ],
        "mild": [
            "self harm",
            "selfharm",
            "self injury",
            "self mutilation",
            "self inflicted wound",
            "suicide",
            "suicidal",
            "slit wrists",
            "slashed wrists",
            "cutting scars",
            "self harm scars",
            "noose",
            "overdose",
            "suicide note",
        ],
    },
    "hate": {
        "explicit": [
            # A few widely known slurs; everything else is hateful phrases.
            "nigger",
            "nigga",
            "sand nigger",
            "faggot",
            "kike",
            "wetback",
            "raghead",
            "towelhead",
            "gook",
            "paki",
            "tranny",
            "gas the jews",
            "kill the jews",
            "kill all jews",
            "death to jews",
            "death to all jews",
            "jews are vermin",
            "jews are rats",
            "six million wasn t enough",
            "holocaust never happened",
            "holocaust was a hoax",
            "hitler was right",
            "kill all muslims",
            "kill the muslims",
            "death to muslims",
            "muslims are terrorists",
            "kill all blacks",
            "kill all black people",
            "blacks are animals",
            "lynch the blacks",
            "hang the blacks",
            "kill all gays",
            "kill the gays",
            "death to gays",
            "kill all immigrants",
            "kill all mexicans",
            "kill all arabs",
            "kill all asians",
            "kill all christians",
            "kill all whites",
            "kill all women",
            "white power",
            "heil hitler",
            "hail hitler",
            "sieg heil",
            "white genocide",
            "race war now",
            "ethnic cleansing now",
        ],
        "mild": [],
    },
    "illicit": {
        "explicit": [
            "make meth",
            "making meth",
            "cook meth",
            "cooking meth",
            "meth recipe",
            "synthesize meth",
            "synthesize methamphetamine",
            "make methamphetamine",
            "make fentanyl",
            "synthesize fentanyl",
            "fentanyl recipe",
            "make heroin",
            "make cocaine",
            "make crack",
            "cook crack",
            "make lsd",
            "make mdma",
            "buy cocaine",
            "buy heroin",
            "buy meth",
            "buy fentanyl",
            "buy crack",
            "buy lsd",
            "buy mdma",
            "buy ecstasy",
            "buy drugs online",
            "sell drugs",
            "build a bomb",
            "building a bomb",
            "make a bomb",
            "making a bomb",
            "bomb making",
            "bomb instructions",
            "pipe bomb",
            "nail bomb",
            "make explosives",
            "making explosives",
            "homemade explosive",
            "make tnt",
            "make c4",
            "make napalm",
            "make thermite",
            "make ricin",
            "make sarin",
            "nerve agent recipe",
            "make a ghost gun",
            "3d printed gun",
            "untraceable gun",
            "untraceable firearm",
            "make a silencer",
            "credit card fraud",
            "stolen credit card",
            "buy stolen credit cards",
            "carding tutorial",
            "counterfeit money",
            "counterfeit bills",
            "counterfeit banknotes",
            "counterfeit currency",
            "fake passport",
            "forged passport",
            "fake drivers license",
            "fake driver s license",
            "launder money",
            "laundering money",
            "steal someone s identity",
            "hire a hitman",
            "hitman for hire",
            "traffic humans",
            "how to steal a car",
            "hotwire a car",
        ],
        "mild": [],
    },
}

# Words that indicate a minor; with any sexual term in the same text they make a
# sexual_minors match. Ages under 18 ("15 year old", "15-year-old", "15yo", "aged 15")
# are recognized separately.
MINOR_TERMS: tuple[str, ...] = (
    "child",
    "children",
    "kid",
    "kiddie",
    "minor",
    "underage",
    "under age",
    "juvenile",
    "teen",
    "teenage",
    "teenaged",
    "teenager",
    "preteen",
    "pre teen",
    "young teen",
    "tween",
    "schoolgirl",
    "schoolboy",
    "schoolchild",
    "schoolchildren",
    "schoolkid",
    "middle schooler",
    "toddler",
    "infant",
    "newborn",
    "baby",
    "babies",
    "young girl",
    "young boy",
    "little girl",
    "little boy",
    "loli",
    "lolita",
    "shota",
)

# Innocent phrases containing a term: their words are skipped before matching.
EXEMPT_PHRASES: tuple[str, ...] = (
    "al gore",
    "gore vidal",
    "gore verbinski",
    "lesley gore",
    "gore tex",
    "goretex",
    "bloody mary",
    "naked eye",
    "naked mole rat",
    "nude color",
    "nude colour",
    "nude colored",
    "nude coloured",
    "nude tone",
    "nude lipstick",
    "nude heels",
    "nude shade",
    "nude nail polish",
    "white power cable",
    "white power cord",
    "white power strip",
    "white power adapter",
    "white power supply",
    "white power outlet",
    "white power bank",
    "white power button",
)

_NUMBER_WORDS = {
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "thirteen": 13,
    "fourteen": 14,
    "fifteen": 15,
    "sixteen": 16,
    "seventeen": 17,
}
# Ages under 18, every spelling of which is a finite set of words:
#   _AGE_WORDS     "15yo", "15yrs", "15yearold": an age by itself
#   _AGE_NUMBERS   "15", "07", "fifteen": an age when followed by "year old", "yo", "y o"
#   _AGE_PREFIXES  "age", "aged": an age when followed by an age number
_AGE_NUMBERS = frozenset([str(n) for n in range(18)] + [f"{n:02d}" for n in range(10)] + list(_NUMBER_WORDS))
_AGE_WORDS = frozenset(
    number + suffix
    for number in _AGE_NUMBERS
    if number[0].isdigit()
    for suffix in ("yo", "yr", "yrs", "yrold", "yearold", "yearsold")
)
_AGE_PREFIXES = frozenset({"age", "aged"})
_YEAR_WORDS = frozenset({"year", "years", "yr", "yrs"})
_MINOR = "_minor"  # internal pseudo-category of MINOR_TERMS matches
_WORD_RE = re.compile(r"[^\W_]+")
# Characters dropped after compatibility decomposition, so that nothing invisible can
# split a word ("po<U+200B>rn") and marks only decorate letters ("p\u0301orn", "p\u20ddorn"):
# every mark (Mn, Mc, Me: accents, enclosing circles, variation selectors), every format
# character (Cf: zero-width spaces and joiners, soft hyphen, bidi controls, word joiner,
# BOM, tags) and the rest of Unicode's Default_Ignorable_Code_Point (Hangul fillers, ...).
# Marks and format characters lie below U+20000 or in plane 14, which is all ignorable.
_DEFAULT_IGNORABLE = (
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x3164, 0x3164),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFF8),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
)
_CATEGORY = {cp: unicodedata.category(chr(cp)) for cp in range(0x20000)}
_FORMAT = [cp for cp, cat in _CATEGORY.items() if cat == "Cf"] + [
    cp for low, high in _DEFAULT_IGNORABLE for cp in range(low, high + 1)
]
_INVISIBLE = dict.fromkeys(_FORMAT + [cp for cp, cat in _CATEGORY.items() if cat in ("Mn", "Mc", "Me")])
del _CATEGORY
# The same invisible characters read as word breaks instead (how they were read before
# they were dropped): a text is checked both ways, so dropping them never unblocks
# "nude<U+200B>child".
_FORMAT_AS_SPACE = dict.fromkeys(_FORMAT, " ")
_CLASSIFIER_ALIASES = {  # OpenAI-style moderation ids a classifier may return
    "sexual/minors": "sexual_minors",
    "sexual-minors": "sexual_minors",
    "self-harm": "self_harm",
    "self-harm/intent": "self_harm",
    "self-harm/instructions": "self_harm",
    "violence/graphic": "violence",
    "hate/threatening": "hate",
    "illicit/violent": "illicit",
}


def normalize(text: str) -> list[str]:
    """Fold compatibility forms (NFKD: fullwidth, mathematical and circled letters,
    ligatures, superscripts), case-fold, drop marks and invisible characters (_INVISIBLE),
    split into words on anything not a letter or digit."""
    if text.isascii():
        return _WORD_RE.findall(text.lower())
    # Case-fold between two decompositions: "ℙ" only becomes "P" in the first, and a
    # case folding may produce a composed letter that the second splits.
    text = unicodedata.normalize("NFKD", unicodedata.normalize("NFKD", text).casefold())
    return _WORD_RE.findall(text.translate(_INVISIBLE))


def _token_lists(text: str) -> list[list[str]]:
    """normalize(text), and when the text holds format characters, its words with those
    characters read as breaks."""
    tokens = normalize(text)
    if text.isascii():
        return [tokens]
    spaced = text.translate(_FORMAT_AS_SPACE)
    return [tokens] if spaced == text else [tokens, normalize(spaced)]


def effective_level(tenant_level: str, requested: str | None) -> str:
    """The level a request is checked at: "auto" (or nothing) is the stricter of
    "standard" and the tenant's level; "low" is the tenant's own level, the most
    permissive it may have."""
    if tenant_level not in LEVELS:
        raise ValueError(f"unknown moderation level {tenant_level!r}; expected one of {LEVELS}")
    if requested is None or requested == "auto":
        return LEVELS[min(LEVELS.index(tenant_level), LEVELS.index("standard"))]
    if requested == "low":
        return tenant_level
    raise ValueError(f"unknown requested moderation {requested!r}; expected 'auto' or 'low'")


@dataclass(frozen=True)
class Verdict:
    blocked: bool
    categories: tuple[str, ...]  # blocked categories that matched, sorted; empty when not blocked
    matched: tuple[str, ...]  # the normalized terms behind the block, in order of appearance


def _blocks(level: str, category: str, tier: str) -> bool:
    if category == "sexual_minors" or level == "strict":
        return True
    if level == "standard":
        return tier == "explicit"
    return category == "illicit" and tier == "explicit"  # low


# A compiled term list: word -> entries matching that one word (plurals included), and
# first two words -> (words after those two, entry) for multi-word terms. Entry: (category, tier, term).
_Entry = tuple[str, str, str]


@dataclass(frozen=True)
class _Compiled:
    single: dict[str, tuple[_Entry, ...]]
    multi: dict[tuple[str, str], tuple[tuple[tuple[str, ...], _Entry], ...]]
    exempt: dict[tuple[str, str], tuple[tuple[str, ...], ...]]  # first two words -> words after them
    exempt_single: frozenset[str]
    pair_starts: frozenset[str]  # first words of multi-word terms and exempt phrases
    starts: frozenset[str]  # every word at which something may match


def _variants(words: list[str]) -> list[tuple[str, ...]]:
    """The term and its simple English plurals (last word + "s" / "es")."""
    last = words[-1]
    out = [tuple(words)]
    if not last.isdigit():
        out += [tuple(words[:-1] + [last + "s"]), tuple(words[:-1] + [last + "es"])]
    return out


def _compile(key: tuple) -> _Compiled:
    single: dict[str, list[_Entry]] = {}
    multi: dict[tuple[str, str], list[tuple[tuple[str, ...], _Entry]]] = {}
    entries = [(cat, tier, term) for cat, tiers in key for tier, terms in tiers for term in terms]
    entries += [(_MINOR, "explicit", term) for term in MINOR_TERMS]
    for category, tier, term in entries:
        words = normalize(term)
        if not words:
            continue
        entry = (category, tier, " ".join(words))
        for seq in _variants(words):
            if len(seq) == 1:
                bucket = single.setdefault(seq[0], [])
                if entry not in bucket:
                    bucket.append(entry)
            else:
                item = (seq[2:], entry)
                bucket = multi.setdefault(seq[:2], [])
                if item not in bucket:
                    bucket.append(item)
    exempt: dict[tuple[str, str], list[tuple[str, ...]]] = {}
    exempt_single: set[str] = set()
    for phrase in EXEMPT_PHRASES:
        for seq in _variants(normalize(phrase)):
            if len(seq) == 1:
                exempt_single.add(seq[0])
            else:
                exempt.setdefault(seq[:2], []).append(seq[2:])
    return _Compiled(
        single={k: tuple(v) for k, v in single.items()},
        multi={k: tuple(v) for k, v in multi.items()},
        exempt={k: tuple(sorted(v, key=len, reverse=True)) for k, v in exempt.items()},
        exempt_single=frozenset(exempt_single),
        pair_starts=frozenset(k[0] for k in multi) | frozenset(k[0] for k in exempt),
        starts=frozenset(single)
        | frozenset(k[0] for k in multi)
        | frozenset(k[0] for k in exempt)
        | exempt_single
        | _AGE_NUMBERS
        | _AGE_WORDS
        | _AGE_PREFIXES,
    )


_compiled_cached = lru_cache(maxsize=32)(_compile)


def _terms_key(terms: dict[str, dict[str, list[str]]]) -> tuple:
    key = []
    for category, tiers in terms.items():
        if category not in CATEGORIES:
            raise ValueError(f"unknown moderation category {category!r}; expected one of {CATEGORIES}")
        for tier in tiers:
            if tier not in TIERS:
                raise ValueError(f"unknown moderation tier {tier!r} in {category!r}; expected one of {TIERS}")
            if isinstance(tiers[tier], str):
                raise ValueError(f"moderation terms {category!r}/{tier!r} must be a list of strings")
        key.append((category, tuple((tier, tuple(words)) for tier, words in tiers.items())))
    return tuple(key)


def _scan(tokens: list[str], compiled: _Compiled) -> dict[_Entry, int]:
    """Every distinct match (category, tier, term) with the position of its first occurrence.
    Minor-indicating words and ages come as category _MINOR."""
    found: dict[_Entry, int] = {}
    single, multi, exempt, exempt_single = compiled.single, compiled.multi, compiled.exempt, compiled.exempt_single
    starts, pair_starts = compiled.starts, compiled.pair_starts
    n_tokens = len(tokens)
    skip_until = 0
    for i in [i for i, tok in enumerate(tokens) if tok in starts]:
        if i < skip_until:
            continue
        tok = tokens[i]
        if tok in exempt_single:
            continue
        pair = (tok, tokens[i + 1]) if tok in pair_starts and i + 1 < n_tokens else None
        rests = exempt.get(pair) if pair else None
        if rests:
            for rest in rests:
                end = i + 2 + len(rest)
                if not rest or (end <= n_tokens and tuple(tokens[i + 2 : end]) == rest):
                    skip_until = end
                    break
            if i < skip_until:
                continue
        entries = single.get(tok)
        if entries:
            for entry in entries:
                if entry not in found:
                    found[entry] = i
        sequences = multi.get(pair) if pair else None
        if sequences:
            for rest, entry in sequences:
                end = i + 2 + len(rest)
                if entry not in found and (not rest or (end <= n_tokens and tuple(tokens[i + 2 : end]) == rest)):
                    found[entry] = i
        age = None
        if tok in _AGE_NUMBERS:
            nxt = tokens[i + 1] if i + 1 < n_tokens else ""
            if nxt == "yo":
                age = f"{tok} yo"
            elif nxt in _YEAR_WORDS or nxt == "y":
                after = tokens[i + 2] if i + 2 < n_tokens else ""
                if (after == "old" and nxt != "y") or (after == "o" and nxt == "y"):
                    age = f"{tok} {nxt} {after}"
        elif tok in _AGE_WORDS:
            age = tok
        elif tok in _AGE_PREFIXES and i + 1 < n_tokens and tokens[i + 1] in _AGE_NUMBERS:
            age = f"{tok} {tokens[i + 1]}"
        if age:
            entry = (_MINOR, "explicit", age)
            if entry not in found:
                found[entry] = i
    return found


def moderation_check(
    text: str,
    *,
    level: str,
    terms: dict[str, dict[str, list[str]]] | None = None,
    classifier: Callable[[str], Iterable[str]] | None = None,
) -> Verdict:
    """Check a prompt at a level. `terms` (category -> tier -> terms) replaces
    DEFAULT_TERMS; `classifier`'s categories count as explicit matches. A classifier
    that raises makes this raise: the caller decides whether that refuses the request."""
    if level not in LEVELS:
        raise ValueError(f"unknown moderation level {level!r}; expected one of {LEVELS}")
    compiled = _compiled_cached(_terms_key(DEFAULT_TERMS if terms is None else terms))
    token_lists = _token_lists(text)
    found = _scan(token_lists[0], compiled)
    for tokens in token_lists[1:]:
        for entry, position in _scan(tokens, compiled).items():
            found.setdefault(entry, position)
    n_tokens = max(len(tokens) for tokens in token_lists)
    if classifier is not None:
        for category in classifier(text) or ():
            category = str(category).strip().lower()
            category = _CLASSIFIER_ALIASES.get(category, category)
            if category in CATEGORIES:
                found.setdefault((category, "explicit", f"classifier:{category}"), n_tokens)

    categories: set[str] = set()
    matched: list[tuple[int, str]] = []
    minors: list[tuple[int, str]] = []
    sexual: list[tuple[int, str]] = []
    for (category, tier, term), position in found.items():
        if category == _MINOR:
            minors.append((position, term))
            continue
        if category == "sexual":
            sexual.append((position, term))
        if _blocks(level, category, tier):
            categories.add(category)
            matched.append((position, term))
    if minors and sexual:
        categories.add("sexual_minors")
        matched += minors + sexual
    if not categories:
        return Verdict(blocked=False, categories=(), matched=())
    terms_in_order = dict.fromkeys(term for _position, term in sorted(matched))
    return Verdict(blocked=True, categories=tuple(sorted(categories)), matched=tuple(terms_in_order))


def load_classifier(path: str | None) -> Callable[[str], Iterable[str]] | None:
    """Import "package.module:function" (or "package.module.function"); None or "" is None."""
    if not path:
        return None
    path = path.strip()
    if ":" in path:
        module_name, _, attr = path.partition(":")
    else:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ImportError(f"moderation classifier {path!r}: expected 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(f"moderation classifier {path!r}: cannot import module {module_name!r}: {exc}") from exc
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ImportError(f"moderation classifier {path!r}: module {module_name!r} has no {attr!r}") from None
    if not callable(obj):
        raise ImportError(f"moderation classifier {path!r}: {attr!r} is not callable")
    return obj
