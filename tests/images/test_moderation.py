"""Prompt moderation by term lists (images/moderation.py): plain functions, no database."""

from __future__ import annotations

import dataclasses
import time

import pytest

from images.moderation import (
    CATEGORIES,
    DEFAULT_TERMS,
    LEVELS,
    Verdict,
    effective_level,
    load_classifier,
    moderation_check,
    normalize,
)

ALL = ("strict", "standard", "low")


def blocked_levels(text: str, **kwargs) -> tuple[str, ...]:
    return tuple(level for level in LEVELS if moderation_check(text, level=level, **kwargs).blocked)


# --- constants -----------------------------------------------------------------------------


def test_constants():
    assert CATEGORIES == ("sexual", "sexual_minors", "violence", "self_harm", "hate", "illicit")
    assert LEVELS == ("strict", "standard", "low")


def test_default_terms_shape():
    assert set(DEFAULT_TERMS) == set(CATEGORIES)
    for category, tiers in DEFAULT_TERMS.items():
        assert set(tiers) <= {"explicit", "mild"}, category
        assert tiers["explicit"], category
        for tier, terms in tiers.items():
            assert isinstance(terms, list)
            for term in terms:
                assert normalize(term), (category, tier, term)
    for category in ("sexual", "violence", "hate", "illicit", "self_harm"):
        assert len(DEFAULT_TERMS[category]["explicit"]) >= 24, category
    assert DEFAULT_TERMS["sexual"]["mild"] and DEFAULT_TERMS["violence"]["mild"]
    assert any(" " in term for term in DEFAULT_TERMS["illicit"]["explicit"])


# --- normalize ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, words",
    [
        ("Café NÚDE!", ["cafe", "nude"]),
        ("a 15-year-old", ["a", "15", "year", "old"]),
        ("therapist's office", ["therapist", "s", "office"]),
        ("snake_case&more  spaces\ttabs\nnewline", ["snake", "case", "more", "spaces", "tabs", "newline"]),
        ("15yo", ["15yo"]),
        ("Ñandú ÅNGSTRÖM", ["nandu", "angstrom"]),
        ("", []),
        ("!!! ...", []),
    ],
)
def test_normalize(text, words):
    assert normalize(text) == words


# --- invisible and look-alike characters (issue #13 item 15) ----------------------------------

# Each spelling of "porn" below reads as "porn" to a person (and to the model's text
# encoder); each used to pass every level.
DISGUISED_PORN = {
    "zero-width space": "po\u200brn",
    "zero-width non-joiner": "po\u200crn",
    "zero-width joiner": "po\u200drn",
    "word joiner": "po\u2060rn",
    "byte order mark": "po\ufeffrn",
    "soft hyphen": "p\u00ador\u00adn",
    "left-to-right mark": "po\u200ern",
    "right-to-left override": "po\u202ern\u202c",
    "isolate": "\u2066po\u2069rn",
    "arabic letter mark": "po\u061crn",
    "mongolian vowel separator": "po\u180ern",
    "tag character": "po\U000e0041rn",
    "interlinear annotation": "po\ufff9rn",
    "hangul filler": "po\u3164rn",
    "halfwidth hangul filler": "po\uffa0rn",
    "combining grapheme joiner": "po\u034frn",
    "variation selector": "po\ufe0frn",
    "enclosing circle": "p\u20ddo\u20ddr\u20ddn\u20dd",
    "strikethrough": "p\u0336o\u0336r\u0336n\u0336",
    "fullwidth": "\uff50\uff4f\uff52\uff4e",
    "fullwidth capitals": "\uff30\uff2f\uff32\uff2e",
    "mathematical bold": "\U0001d429\U0001d428\U0001d42b\U0001d427",
    "double-struck capital": "\u2119\U0001d560\U0001d563\U0001d55f",
    "circled": "\u24df\u24de\u24e1\u24dd",
    "superscript": "\u1d56\u1d52\u02b3\u207f",
    "mixed": "\uff30\u200bo\u0301\u00adr\u20ddn",
}


@pytest.mark.parametrize("spelling", DISGUISED_PORN.values(), ids=DISGUISED_PORN.keys())
def test_invisible_and_compatibility_characters_do_not_hide_a_term(spelling):
    assert normalize(spelling) == ["porn"]
    assert blocked_levels(f"a {spelling} photo") == blocked_levels("a porn photo") == ("strict", "standard")


def test_invisible_characters_inside_multi_word_and_minor_terms():
    assert blocked_levels("how to make m\u200beth") == ALL
    assert blocked_levels("se\u00adxual inter\u200dcourse") == ("strict", "standard")
    verdict = moderation_check("n\u200bude ch\u2060ild", level="low")
    assert verdict.blocked and verdict.categories == ("sexual_minors",)


def test_an_invisible_character_between_words_still_separates_them():
    # Read both ways: dropping it must not unblock what reading it as a break blocked.
    assert moderation_check("nude\u200bchild", level="low").categories == ("sexual_minors",)


@pytest.mark.parametrize(
    "text",
    [
        "a \u200btherapist\u200b in Scun\u00adthorpe",
        "ther\u00adapist",
        "\uff33\uff43\uff55\uff4e\uff54\uff48\uff4f\uff52\uff50\uff45",
        "\U0001f469\u200d\U0001f4bb a woman coding, \U0001f1eb\U0001f1f7 flag, \u2764\ufe0f",
        # Thai, a zero-width space between words
        "\u0e41\u0e21\u0e27\u200b\u0e19\u0e48\u0e32\u0e23\u0e31\u0e01",
        # Hindi: marks dropped, letters kept
        "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e",
        "\u0645\u0631\u062d\u0628\u0627\u061c \u0628\u0627\u0644\u0639\u0627\u0644\u0645",  # Arabic with a letter mark
        "\u05e9\u05b8\u05c1\u05dc\u05d5\u05b9\u05dd",
        "caf\u0065\u0301 na\u00efve \ufb01ne \u2460 \u00bd",
    ],
)
def test_innocent_text_with_invisible_or_compatibility_characters_passes(text):
    assert blocked_levels(text) == ()


# --- effective_level -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "tenant, requested, expected",
    [
        ("strict", "low", "strict"),
        ("strict", "auto", "strict"),
        ("strict", None, "strict"),
        ("standard", "low", "standard"),
        ("standard", "auto", "standard"),
        ("standard", None, "standard"),
        ("low", "low", "low"),
        ("low", "auto", "standard"),
        ("low", None, "standard"),
    ],
)
def test_effective_level(tenant, requested, expected):
    assert effective_level(tenant, requested) == expected


@pytest.mark.parametrize(
    "tenant, requested",
    [
        ("none", "auto"),
        ("", "auto"),
        ("Strict", "auto"),
        ("standard", "none"),
        ("standard", "LOW"),
        ("standard", ""),
        ("low", "strict"),
    ],
)
def test_effective_level_unknown_values(tenant, requested):
    with pytest.raises(ValueError):
        effective_level(tenant, requested)


# --- which levels block what -----------------------------------------------------------------


@pytest.mark.parametrize(
    "text, levels, category",
    [
        # gore (mild violence): strict only
        ("a photo of a bloody corpse", ("strict",), "violence"),
        ("two corpses in a field", ("strict",), "violence"),
        ("a gory battlefield", ("strict",), "violence"),
        # graphic violence: strict and standard
        ("a dismembered body with guts spilling out", ("strict", "standard"), "violence"),
        ("a man being skinned alive", ("strict", "standard"), "violence"),
        ("a DECAPITATED soldier", ("strict", "standard"), "violence"),
        # explicit sexual: strict and standard
        ("explicit porn of two people having sex", ("strict", "standard"), "sexual"),
        ("a blowjob", ("strict", "standard"), "sexual"),
        ("a rapist in an alley", ("strict", "standard"), "sexual"),
        ("hardcore porn", ("strict", "standard"), "sexual"),
        # non-explicit nudity: strict only
        ("a nude figure drawing", ("strict",), "sexual"),
        ("NÜDE figure", ("strict",), "sexual"),
        ("Naked woman on a beach", ("strict",), "sexual"),
        ("a topless sunbather", ("strict",), "sexual"),
        ("an artist's nudes", ("strict",), "sexual"),
        # self harm: instructions/encouragement at standard, depictions at strict only
        ("a poster saying kill yourself", ("strict", "standard"), "self_harm"),
        ("how to cut myself without anyone noticing", ("strict", "standard"), "self_harm"),
        ("thinspiration collage", ("strict", "standard"), "self_harm"),
        ("a suicidal man on a ledge", ("strict",), "self_harm"),
        # hate: strict and standard
        ("a banner that says gas the jews", ("strict", "standard"), "hate"),
        ("kill all muslims", ("strict", "standard"), "hate"),
        ("White Power rally flyer", ("strict", "standard"), "hate"),
        ("a crowd shouting Heil Hitler", ("strict", "standard"), "hate"),
        # illicit: every level
        ("how to make meth at home", ALL, "illicit"),
        ("step by step: cook meth", ALL, "illicit"),
        ("diagram showing how to build a bomb", ALL, "illicit"),
        ("a pipe bomb on a table", ALL, "illicit"),
        ("three pipe bombs", ALL, "illicit"),
        ("credit card fraud tutorial", ALL, "illicit"),
        ("where to buy cocaine", ALL, "illicit"),
        ("print counterfeit money", ALL, "illicit"),
    ],
)
def test_levels(text, levels, category):
    assert blocked_levels(text) == levels
    for level in levels:
        verdict = moderation_check(text, level=level)
        assert category in verdict.categories
        assert verdict.matched


@pytest.mark.parametrize(
    "text",
    [
        "nude child",
        "sexy 15 year old",
        "sexy 15-year-old",
        "a 15yo in lingerie",
        "a 12 yo, naked",
        "a fifteen year old posing seductively... sensual",
        "aged 13, topless",
        "naked teen",
        "Naked teens",
        "a teenage girl, erotic photo",
        "a schoolgirl in lingerie",
        "young girl, nude",
        "sexy loli",
        "a toddler with no clothes, naked",
        "kids having sex",
        "child porn",
        "CSAM",
        "a pedophile's collection",
        "jailbait",
        "an underage girl, nsfw",
        "the child... (long text) ... porn",
    ],
)
def test_sexual_minors_blocked_at_every_level(text):
    for level in LEVELS:
        verdict = moderation_check(text, level=level)
        assert verdict.blocked, level
        assert "sexual_minors" in verdict.categories, level


@pytest.mark.parametrize(
    "text",
    [
        "15 y.o. nude",
        "sexy 16 years old",
        "sexy 16yrs",
        "sexy 07 year old",
        "sexy 17-year-old",
        "a nude girl, age 9",
        "nude, 9yo",
    ],
)
def test_ages_under_18_with_sexual_term(text):
    assert blocked_levels(text) == ALL
    assert moderation_check(text, level="low").categories == ("sexual_minors",)


def test_exempt_phrases_do_not_hide_other_terms():
    assert blocked_levels("two bloody marys") == ()
    assert moderation_check("Al Gore naked", level="strict") == Verdict(True, ("sexual",), ("naked",))
    assert blocked_levels("a white power cable and a pipe bomb") == ALL
    assert blocked_levels("a white power rally") == ("strict", "standard")
    assert blocked_levels("the last word is al") == ()
    assert blocked_levels("gore") == ("strict",)


def test_sexual_minors_categories_and_matched():
    strict = moderation_check("nude child", level="strict")
    assert strict == Verdict(True, ("sexual", "sexual_minors"), ("nude", "child"))
    low = moderation_check("nude child", level="low")
    assert low == Verdict(True, ("sexual_minors",), ("nude", "child"))
    assert moderation_check("sexy 15 year old", level="low").matched == ("sexy", "15 year old")


@pytest.mark.parametrize(
    "text, levels",
    [
        ("a sexy 18 year old woman", ("strict",)),  # adult age: sexual (mild) only
        ("a sexy 25yo model", ("strict",)),
        ("a nude 30-year-old", ("strict",)),
        ("sexy woman aged 21", ("strict",)),
        ("a 2024 calendar of sexy cars", ("strict",)),
    ],
)
def test_adult_ages_are_not_minors(text, levels):
    assert blocked_levels(text) == levels
    assert "sexual_minors" not in moderation_check(text, level="strict").categories


@pytest.mark.parametrize(
    "text",
    [
        "a therapist's office",
        "a cat in Scunthorpe",
        "a classic cockpit",
        "grape analysis in Sussex",
        "a child flying a kite",
        "a teenager skateboarding",
        "a baby elephant",
        "an assassin in Essex with great skill",
        "shitake mushrooms on a plate",
        "Middlesex cricket ground",
        "a sextant on an old map",
        "cumulus clouds over a pass",
        "a magna cum laude diploma",
        "a blue tit on a branch",
        "a hitchcock film poster",
        "a pussy willow branch",
        "a bass guitar and a cocktail",
        "the 15 year old cat sleeping",
        "children playing in a park at age 7",
        "a 12 year old boy reading a book",
        "kids in a classroom with a teacher",
        "a newborn baby sleeping",
        "Al Gore giving a speech",
        "a Bloody Mary cocktail",
        "a gore-tex jacket",
        "a nude lipstick and nude heels",
        "a naked mole rat",
        "visible to the naked eye",
        "a white power cable",
        "a medieval castle at sunset",
        "a red blood cell illustration",
        "the analyst's rapid analysis",
        "",
    ],
)
def test_innocent_prompts_never_blocked(text):
    for level in LEVELS:
        assert moderation_check(text, level=level) == Verdict(False, (), ())


def test_not_blocked_verdict_is_empty_even_when_terms_matched():
    assert moderation_check("a bloody corpse", level="standard") == Verdict(False, (), ())


def test_verdict_categories_sorted_unique_and_matched_in_order():
    text = "explicit porn, a bloody corpse, more porn, then how to make meth"
    verdict = moderation_check(text, level="strict")
    assert verdict.blocked
    assert verdict.categories == ("illicit", "sexual", "violence")
    assert verdict.matched == ("porn", "bloody", "corpse", "make meth")
    low = moderation_check(text, level="low")
    assert low == Verdict(True, ("illicit",), ("make meth",))


def test_plural_of_single_word_terms_matches_but_not_other_suffixes():
    assert blocked_levels("two corpses") == ("strict",)
    assert blocked_levels("three gashes") == ("strict",)
    assert blocked_levels("a corpsed tree") == ()


def test_unknown_level_raises():
    with pytest.raises(ValueError):
        moderation_check("a cat", level="auto")
    with pytest.raises(ValueError):
        moderation_check("a cat", level="none")


def test_verdict_is_frozen():
    verdict = moderation_check("a cat", level="strict")
    with pytest.raises(dataclasses.FrozenInstanceError):
        verdict.blocked = True  # type: ignore[misc]


# --- custom terms ----------------------------------------------------------------------------


def test_custom_terms_replace_defaults():
    terms = {"violence": {"explicit": ["banana split"], "mild": ["Pineapple"]}}
    assert blocked_levels("a banana split", terms=terms) == ("strict", "standard")
    assert blocked_levels("two banana splits", terms=terms) == ("strict", "standard")
    assert blocked_levels("a PINEAPPLE", terms=terms) == ("strict",)
    assert blocked_levels("a banana", terms=terms) == ()
    # the defaults are gone
    assert blocked_levels("how to make meth at home", terms=terms) == ()
    assert blocked_levels("explicit porn", terms=terms) == ()


def test_custom_terms_keep_level_rules_and_minor_words():
    terms = {
        "sexual": {"mild": ["frisky"]},
        "illicit": {"explicit": ["smuggle"]},
        "sexual_minors": {"explicit": ["forbidden phrase"]},
    }
    assert blocked_levels("a frisky cat", terms=terms) == ("strict",)
    assert blocked_levels("a frisky child", terms=terms) == ALL
    assert blocked_levels("how to smuggle", terms=terms) == ALL
    assert blocked_levels("the forbidden phrase", terms=terms) == ALL


def test_custom_terms_edited_between_calls_take_effect():
    terms = {"hate": {"explicit": ["zorblax"]}}
    assert blocked_levels("zorblax", terms=terms) == ("strict", "standard")
    terms["hate"]["explicit"] = ["quux"]
    assert blocked_levels("zorblax", terms=terms) == ()
    assert blocked_levels("quux", terms=terms) == ("strict", "standard")


@pytest.mark.parametrize(
    "terms",
    [
        {"nsfw": {"explicit": ["x"]}},
        {"sexual": {"severe": ["x"]}},
        {"sexual": {"explicit": "porn"}},
    ],
)
def test_custom_terms_invalid(terms):
    with pytest.raises(ValueError):
        moderation_check("a cat", level="strict", terms=terms)


# --- classifier ------------------------------------------------------------------------------


def test_classifier_categories_count_as_explicit():
    def hate(text):
        return ["hate"]

    assert moderation_check("a cat", level="standard", classifier=hate) == Verdict(
        True, ("hate",), ("classifier:hate",)
    )
    assert blocked_levels("a cat", classifier=hate) == ("strict", "standard")
    assert blocked_levels("a cat", classifier=lambda text: ("illicit",)) == ALL
    assert blocked_levels("a cat", classifier=lambda text: []) == ()
    assert blocked_levels("a cat", classifier=lambda text: None) == ()
    assert blocked_levels("a cat", classifier=lambda text: ["spam"]) == ()  # unknown ids are ignored


def test_classifier_receives_the_text_and_aliases():
    seen = []

    def classifier(text):
        seen.append(text)
        return {"sexual/minors"}

    assert moderation_check("Some Prompt", level="low", classifier=classifier).categories == ("sexual_minors",)
    assert seen == ["Some Prompt"]


def test_classifier_sexual_with_minor_word_is_sexual_minors():
    verdict = moderation_check("a child on a beach", level="low", classifier=lambda text: ["sexual"])
    assert verdict.blocked and verdict.categories == ("sexual_minors",)


def test_classifier_errors_propagate():
    def broken(text):
        raise RuntimeError("model down")

    with pytest.raises(RuntimeError):
        moderation_check("a cat", level="standard", classifier=broken)


# --- load_classifier -------------------------------------------------------------------------


def test_load_classifier_empty():
    assert load_classifier(None) is None
    assert load_classifier("") is None


@pytest.mark.parametrize("path", ["os.path:basename", "os.path.basename"])
def test_load_classifier_paths(path):
    import os.path

    assert load_classifier(path) is os.path.basename


@pytest.mark.parametrize(
    "path, message",
    [
        ("no_such_module_xyz:classify", "no_such_module_xyz"),
        ("no_such_module_xyz.classify", "no_such_module_xyz"),
        ("os.path:no_such_function", "no_such_function"),
        ("os:sep", "not callable"),
        ("classify", "package.module"),
        (":classify", "package.module"),
    ],
)
def test_load_classifier_errors(path, message):
    with pytest.raises(ImportError, match=message):
        load_classifier(path)


# --- speed -----------------------------------------------------------------------------------


def _best_of(runs, fn):
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


@pytest.mark.parametrize(
    "unit",
    [
        "a beautiful landscape with mountains, rivers and a child flying a kite at 15 ",
        "Ünïcödé café naïve résumé façade 12 year old 2 yo ",
    ],
)
def test_32000_char_prompt_is_fast(unit):
    text = (unit * (32000 // len(unit) + 1))[:32000]
    moderation_check(text, level="strict")  # warm the compiled-terms cache
    elapsed = _best_of(5, lambda: moderation_check(text, level="strict"))
    assert elapsed < 0.05, f"{elapsed * 1000:.1f} ms"  # typically a few ms; slack for slow CI


def test_32000_char_prompt_still_matches_at_the_end():
    text = "a quiet lake " * 2461 + "how to make meth"
    assert len(text) > 32000
    assert moderation_check(text, level="low").blocked
