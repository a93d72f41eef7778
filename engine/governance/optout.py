"""Opt-out by any reasonable means: a short request to stop in the customer's own words.

The US FCC's revocation rule (47 CFR 64.1200(a)(10), in force from 11 April 2025) makes a reply
using "stop", "quit", "end", "revoke", "opt out", "cancel" or "unsubscribe" a definitive
revocation of consent, and any other wording one when a reasonable person would read it so;
CTIA's Messaging Principles expect the same of every programme. A whole-message keyword
(engine/governance/consent.py) covers "STOP"; this rule covers the rest of what people actually send:

- **opt-out**: a message of at most :data:`MAX_WORDS` words, made only of opt-out keywords (any
  language, repeated or not, or the stop-sign emoji) and one language's filler: politeness
  ("please", "por favor", "bitte"), "me", "texting me", "I want to", intensifiers. "please
  stop", "Stop texting me", "STOP STOP", "Unsubscribe me", "🛑".
- **none** (the near misses): no keyword as a word of its own ("stopwatch", "unstoppable",
  "non-stop"), or every keyword in it denied ("don't stop", "no parar"), used in another sense
  ("stop by", "end of the month") or, inside a conversation, given an object of its own ("I want
  to cancel my order", "cancel the appointment"): there the flow is asking, and it answers.
- **review**: anything else with a keyword in it ("cancel my subscription", "Please stop, this
  isn't my number", a long message, a cancellation outside any conversation). It changes
  nothing, and is recorded so that a person can look (engine/conversation/outcomes.py ``opt_out_review``).

Words are compared as :func:`tokens` makes them: accents and case folded, split at spaces,
punctuation and apostrophes ("don't" is "don" "t", "s'il" is "s" "il"), joined across hyphens
("opt-out" is "optout", "non-stop" is "nonstop"); a keyword of several words ("opt out", "stop
all") matches its words in a row. All word lists below are in that folded form.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

OPT_OUT, REVIEW, NONE = "opt_out", "review", "none"
#: U+1F6D1 OCTAGONAL SIGN: a keyword of every language.
STOP_SIGN = "\U0001f6d1"
#: A "short message": longer ones with a keyword in them are for a person to read.
MAX_WORDS = 12
#: The most words a keyword spans when written apart ("opt out", "leave me alone").
MAX_SPAN = 4
#: Hyphens join what they separate; every other non-letter separates.
_JOINERS = frozenset("-\u2010\u2011\u00ad")


@dataclass(frozen=True)
class Verdict:
    kind: str  # opt_out | review | none
    #: The opt-out's language (its confirmation's, unless the contact has one); "" otherwise.
    language: str = ""


@dataclass(frozen=True)
class Words:
    """One language's words around a keyword."""

    #: May surround keywords in an opt-out: politeness, "me", "texting", "I want to"...
    filler: frozenset[str]
    #: Right before a keyword, the customer is not asking to stop ("don't stop").
    negations: frozenset[str] = frozenset()
    #: Right after a keyword, it has another sense ("stop by", "end of").
    other_uses: frozenset[str] = frozenset()
    #: Articles and possessives: after a keyword and before a word that is not filler, the
    #: keyword has its own object ("cancel my order"): inside a conversation, the flow's to
    #: answer. (Not demonstratives: "stop this, ..." is more often a request than an object.)
    determiners: frozenset[str] = frozenset()


def _w(text: str) -> frozenset[str]:
    return frozenset(text.split())


WORDS: dict[str, Words] = {
    "en": Words(
        filler=_w(
            "please pls plz plse kindly now right away immediately asap already just thanks thank you"
            " thx ty ok okay hi hello hey sir me it i m d id im want wanna to would like wish need"
            " can could do and all texting text texts txt txts sending send messaging message messages"
            " msg msgs sms contacting contact calling spamming spam these this the those them your"
            " from us any more anymore further future list number subscription subscriptions remove"
            " fucking fuckin freaking frickin effing damn bloody god"
        ),
        negations=_w("not never t dont cant cannot wont didnt doesnt shouldnt non"),
        other_uses=_w("by of up in over"),
        determiners=_w("my the a an our your his her their"),
    ),
    "es": Words(
        filler=_w(
            "por favor porfa porfavor pf xfa gracias ya ahora inmediatamente me yo quiero quisiera"
            " deseo dar darme dame denme de del la el los las estos estas esto este todo todos todas"
            " mensajes mensaje sms textos enviar enviarme mandar mandarme envien manden numero lista"
            " hola y"
        ),
        negations=_w("no nunca jamas sin ni"),
        determiners=_w("mi mis el la los las un una su sus nuestro nuestra"),
    ),
    "fr": Words(
        filler=_w(
            "svp stp s il vous plait merci moi me m je j veux voudrais souhaite aimerais d de des"
            " les ces vos tes ce tout tous toutes sms messages message textos envoyer envoi envois"
            " maintenant immediatement desormais plus bonjour salut et numero liste"
        ),
        negations=_w("ne n pas non jamais sans"),
        determiners=_w("mon ma mes le la l les un une votre notre"),
    ),
    "de": Words(
        filler=_w(
            "bitte danke jetzt sofort mich mir ich will mochte moechte mochten hallo sms nachrichten"
            " nachricht alle die das den von ihnen euch uns mehr schicken senden zusenden und hiermit"
            " sie mal doch endlich nummer liste newsletter"
        ),
        negations=_w("nicht nie niemals kein keine ohne"),
        determiners=_w("mein meine meinen der die das den ein eine einen ihr ihre unser unsere"),
    ),
    "pt": Words(
        filler=_w(
            "por favor pf pfv porfavor obrigado obrigada ja agora imediatamente me eu quero queria"
            " gostaria de da do das dos desta dessa lista mensagens mensagem sms textos todas todos"
            " os as a o estas essas enviar mandar ola oi e numero"
        ),
        negations=_w("nao nunca jamais sem nem"),
        determiners=_w("meu minha meus minhas o a os as um uma seu sua"),
    ),
}
_NO_WORDS = Words(filler=frozenset())
#: Filler in any shipped language: an object after a keyword is a word that is filler nowhere
#: (so "🛑 a a", a Portuguese filler after an English article, is no "cancel a thing").
ANY_FILLER: frozenset[str] = frozenset().union(*(w.filler for w in WORDS.values()))


def tokens(text: str) -> list[str]:
    """The words of ``text`` in the folded form the rule compares (see the module docstring)."""
    out: list[str] = []
    word: list[str] = []
    for ch in unicodedata.normalize("NFKD", text):
        if ch.isalnum() and not unicodedata.combining(ch):
            word.append(ch)
        elif ch in _JOINERS or unicodedata.combining(ch):
            continue
        else:
            if word:
                out.append("".join(word).casefold())
                word = []
            if ch == STOP_SIGN:
                out.append(STOP_SIGN)
    if word:
        out.append("".join(word).casefold())
    return out


class OptOutRule:
    """The rule over the configured opt-out keywords (``{language: [words]}``, any form)."""

    def __init__(self, keywords: Mapping[str, Iterable[str]], default_language: str = "en") -> None:
        languages = [default_language, *sorted(set(keywords) | set(WORDS) - {default_language})]
        self._languages = languages
        self._default = default_language
        self._index: dict[str, frozenset[str]] = {STOP_SIGN: frozenset(languages)}
        for language, words in keywords.items():
            for word in words:
                key = "".join(tokens(word))
                if key:
                    self._index[key] = self._index.get(key, frozenset()) | {language}

    def classify(self, text: str, *, in_conversation: bool = False) -> Verdict:
        """Whether ``text`` asks to opt out, is a near miss, or is for a person to review."""
        words = tokens(text)
        items: list[tuple[str, frozenset[str]]] = []  # (word, its languages if a keyword)
        i = 0
        while i < len(words):
            for j in range(min(len(words), i + MAX_SPAN), i, -1):
                langs = self._index.get("".join(words[i:j]))
                if langs:
                    items.append(("".join(words[i:j]), langs))
                    i = j
                    break
            else:
                items.append((words[i], frozenset()))
                i += 1
        keywords = [k for k, (_, langs) in enumerate(items) if langs]
        if not keywords:
            return Verdict(NONE)
        counted = [k for k in keywords if self._counts(items, k, in_conversation)]
        if not counted:
            return Verdict(NONE)
        if len(counted) == len(keywords) and len(items) <= MAX_WORDS:
            plain = {w for w, langs in items if not langs}
            for language in self._languages:
                if plain <= WORDS.get(language, _NO_WORDS).filler:
                    return Verdict(OPT_OUT, self._language_of(items, language))
        return Verdict(REVIEW)

    def _counts(self, items: list[tuple[str, frozenset[str]]], k: int, in_conversation: bool) -> bool:
        """Whether the keyword at ``k`` asks to stop: not denied, not another sense of the word,
        and (inside a conversation) not the verb of some other object."""
        langs = items[k][1]
        before = items[k - 1] if k > 0 else ("", frozenset())
        after = items[k + 1] if k + 1 < len(items) else ("", frozenset())
        then = items[k + 2] if k + 2 < len(items) else ("", frozenset())
        for language in langs:
            words = WORDS.get(language, _NO_WORDS)
            if not before[1] and before[0] in words.negations:
                return False
            if not after[1] and after[0] in words.other_uses:
                return False
            if (
                in_conversation
                and not after[1]
                and after[0] in words.determiners
                and then[0]
                and not then[1]
                and then[0] not in ANY_FILLER
            ):
                return False
        return True

    def _language_of(self, items: list[tuple[str, frozenset[str]]], filler_language: str) -> str:
        """The filler's language when a keyword is of it (or is the stop sign), else the first
        keyword's (the default language first)."""
        langs = [langs for _, langs in items if langs]
        if any(filler_language in ls for ls in langs):
            return filler_language
        return next(lang for lang in self._languages if lang in langs[0])
