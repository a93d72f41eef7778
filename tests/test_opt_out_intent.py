"""Opt-out by any reasonable means (47 CFR 64.1200(a)(10)): a short message made of an opt-out
keyword and filler opts out; the near misses do not; anything else with a keyword in it is
flagged for a person to review. Cases as labelled data; properties over generated messages."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.governance.consent import DEFAULT_KEYWORDS, OPT_OUT, Keywords, squash
from engine.governance.optout import MAX_WORDS, NONE, REVIEW, STOP_SIGN, WORDS

KW = Keywords()
IN, OUT = True, False  # inside an active conversation, or not

#: (label, text, inside a conversation, expected verdict, expected language or "")
CASES: list[tuple[str, str, bool, str, str]] = [
    # The examples: each opts out, inside a conversation or not.
    ("politeness after", "stop please", OUT, OPT_OUT, "en"),
    ("politeness before", "please stop", IN, OPT_OUT, "en"),
    ("texting me", "Stop texting me", OUT, OPT_OUT, "en"),
    ("me", "Unsubscribe me", IN, OPT_OUT, "en"),
    ("repetition", "STOP STOP", OUT, OPT_OUT, "en"),
    ("the stop sign", STOP_SIGN, OUT, OPT_OUT, "en"),
    ("stop signs with a variation selector", "\U0001f6d1\ufe0f\U0001f6d1", IN, OPT_OUT, "en"),
    ("stop sign and keyword", "stop!!! \U0001f6d1", IN, OPT_OUT, "en"),
    ("punctuation between", "Stop.  Please!", OUT, OPT_OUT, "en"),
    ("stop it please", "stop it please", IN, OPT_OUT, "en"),
    ("two-word keyword", "opt out please", OUT, OPT_OUT, "en"),
    (
        "an English article before Portuguese filler is no object",
        ", parar parar \U0001f6d1 a a",
        IN,
        OPT_OUT,
        "pt",
    ),
    ("the regulation's words", "I want to revoke", OUT, OPT_OUT, "en"),
    ("quit texting me", "quit texting me", IN, OPT_OUT, "en"),
    ("an angry one", "STOP FUCKING TEXTING ME", IN, OPT_OUT, "en"),
    ("sending me messages", "Please stop sending me these messages", IN, OPT_OUT, "en"),
    ("contraction as filler", "I'd like to unsubscribe, thanks", OUT, OPT_OUT, "en"),
    ("cancel and end alone", "End.", IN, OPT_OUT, "en"),
    ("Spanish", "Baja por favor", OUT, OPT_OUT, "es"),
    ("Spanish, a sentence", "Quiero darme de baja", IN, OPT_OUT, "es"),
    ("French", "Arrêter s'il vous plaît", OUT, OPT_OUT, "fr"),
    ("French, a sentence", "je veux me désinscrire svp", IN, OPT_OUT, "fr"),
    ("German", "Bitte abmelden", OUT, OPT_OUT, "de"),
    ("German, a sentence", "Ich möchte mich abmelden, danke", IN, OPT_OUT, "de"),
    ("Spanish or Portuguese: the default order picks", "Parar por favor", OUT, OPT_OUT, "es"),
    ("Portuguese, a sentence", "Quero sair da lista", IN, OPT_OUT, "pt"),
    ("stop sign with Spanish filler", f"{STOP_SIGN} por favor", OUT, OPT_OUT, "es"),
    # Near misses: never an opt-out, and nothing to review.
    ("negated", "don't stop", IN, NONE, ""),
    ("negated without apostrophe", "dont stop", OUT, NONE, ""),
    ("negated, long form", "please do not stop", OUT, NONE, ""),
    ("can't stop", "I can't stop laughing", IN, NONE, ""),
    ("inside a longer word", "stopwatch", OUT, NONE, ""),
    ("hyphenated compound", "non-stop service", OUT, NONE, ""),
    ("spaced compound", "non stop service", IN, NONE, ""),
    ("prefixed", "unstoppable", OUT, NONE, ""),
    ("suffixed", "ending", OUT, NONE, ""),
    ("a cancellation the flow can answer", "I want to cancel my order", IN, NONE, ""),
    ("the flow's topic", "cancel the appointment", IN, NONE, ""),
    ("another sense: stop by", "I'll stop by tomorrow", OUT, NONE, ""),
    ("another sense: end of", "at the end of the month", IN, NONE, ""),
    ("Spanish negated", "no parar", OUT, NONE, ""),
    ("French negated", "ne pas arrêter", IN, NONE, ""),
    ("German negated", "Bitte nicht abmelden", OUT, NONE, ""),
    ("Portuguese negated", "não sair", OUT, NONE, ""),
    ("no keyword", "10", IN, NONE, ""),
    ("no keyword, words", "What time is my appointment?", OUT, NONE, ""),
    ("empty", "", OUT, NONE, ""),
    ("only other emoji", "\U0001f64f\U0001f44d", OUT, NONE, ""),
    # A keyword in something else: a person should look.
    ("a cancellation nobody is asking about", "I want to cancel my order", OUT, REVIEW, ""),
    ("a subscription", "cancel my subscription", IN, REVIEW, ""),
    ("a reason given", "Please stop, this isn't my number", IN, REVIEW, ""),
    ("an insult", "stop sending me this crap", OUT, REVIEW, ""),
    ("a threat", "STOP or I will report you", IN, REVIEW, ""),
    ("negation further away", "I don't want to stop", OUT, REVIEW, ""),
    ("a question", "who is this? stop", OUT, REVIEW, ""),
    ("mixed signals", "no stop", IN, REVIEW, ""),
    ("too long to be a short request", " ".join(["please"] * MAX_WORDS + ["stop"]), OUT, REVIEW, ""),
]


@pytest.mark.parametrize(
    ("label", "text", "inside", "expected", "language"), CASES, ids=[c[0] for c in CASES]
)
def test_opt_out_intent_labelled_cases(
    label: str, text: str, inside: bool, expected: str, language: str
) -> None:
    got = KW.intent(text, in_conversation=inside)
    assert (got.kind, got.language if expected == OPT_OUT else "") == (expected, language), label


def test_the_language_lists_never_let_a_negation_or_another_sense_pass_as_filler() -> None:
    """A word that denies the request, or shows another sense of the keyword, must never be
    filler in any language (else ``don't stop`` could read as an opt-out somewhere)."""
    stoppers = {w for words in WORDS.values() for w in words.negations | words.other_uses}
    for language, words in WORDS.items():
        assert not words.filler & stoppers, language
        assert all(w == squash(w) for w in words.filler | stoppers | words.determiners), language


def test_every_language_with_opt_out_keywords_has_the_rule() -> None:
    assert set(DEFAULT_KEYWORDS[OPT_OUT]) <= set(WORDS)


def test_a_configured_keyword_and_language_get_the_rule_too() -> None:
    kw = Keywords({"opt_out": {"en": ["leave me alone"], "it": ["basta"]}})
    assert kw.intent("leave me alone please").kind == OPT_OUT
    assert kw.intent("basta basta").kind == OPT_OUT  # a language without filler: repetition only
    assert kw.intent("basta, grazie").kind == REVIEW


SEPARATORS = st.sampled_from([" ", "  ", ", ", "! ", ". ", "?", " \U0001f64f ", "\n", "... ", " \u2014 "])


def _cased(word: str, flips: list[bool]) -> str:
    return "".join(c.upper() if f else c for c, f in zip(word, flips + [False] * len(word), strict=False))


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str]:
    """A message of only opt-out keywords and one language's filler, any order, case and
    punctuation (up to the short message's length), and that language."""
    language = draw(st.sampled_from(sorted(DEFAULT_KEYWORDS[OPT_OUT])))
    keywords = [*DEFAULT_KEYWORDS[OPT_OUT][language], STOP_SIGN]
    n_kw = draw(st.integers(1, 3))
    words = draw(st.lists(st.sampled_from(keywords), min_size=n_kw, max_size=n_kw))
    words += draw(st.lists(st.sampled_from(sorted(WORDS[language].filler)), max_size=MAX_WORDS - 4))
    words = draw(st.permutations(words))
    parts = [_cased(w, draw(st.lists(st.booleans(), max_size=len(w)))) for w in words]
    text = draw(SEPARATORS.filter(str.strip) | st.just("")) + parts[0]
    for p in parts[1:]:
        text += draw(SEPARATORS) + p
    return text + draw(st.sampled_from(["", ".", "!!", " \U0001f621"])), language


@settings(max_examples=400, deadline=None)
@given(request=requests(), inside=st.booleans())
def test_any_short_message_of_keywords_and_filler_opts_out(request: tuple[str, str], inside: bool) -> None:
    text, _ = request
    assert KW.intent(text, in_conversation=inside).kind == OPT_OUT, text


ALPHABET = st.characters(codec="utf-8", exclude_categories=("Cs",))
VOCABULARY = sorted(
    {w for words in WORDS.values() for w in words.filler | words.negations | words.determiners}
)


@settings(max_examples=400, deadline=None)
@given(
    words=st.lists(st.sampled_from(VOCABULARY) | st.text(ALPHABET, max_size=12), max_size=16),
    inside=st.booleans(),
)
def test_a_message_with_no_keyword_in_it_never_opts_out_nor_asks_for_review(
    words: list[str], inside: bool
) -> None:
    text = " ".join(words)
    folded = squash(text)
    keywords = {squash(k) for by_language in DEFAULT_KEYWORDS[OPT_OUT].values() for k in by_language}
    if STOP_SIGN in text or any(k in folded for k in keywords):
        return  # may be a request: the other property and the labelled cases cover these
    assert KW.intent(text, in_conversation=inside).kind == NONE, text
