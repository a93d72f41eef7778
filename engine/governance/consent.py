"""Consent and the keywords that change it: STOP, START, HELP and their equivalents.

A keyword counts as the whole message, compared after folding case and accents and dropping
everything that is not a letter or digit: "Stop.", " stop ", "STOP!!", "Opt-out" match;
"don't stop", "stopwatch", "stop it please" do not. Beyond that, a short request to stop in
other words ("please stop", "Stop texting me", "STOP STOP", the stop sign) opts out too, and a
message with an opt-out keyword in something else is flagged for review: the rule is in
engine/governance/optout.py (:meth:`Keywords.intent`). Keywords of every configured language are
recognised whatever the contact's language (a customer who texts BAJA to an English programme
has opted out); the confirmation is written in the contact's language when there is one, else
in the keyword's language.

Consent per contact lives in ``p:g:TN`` (status, source, when; a suppression reason) and every
change is appended to ``p:cl:TN``, the ledger, with its cause. The turn loads the first with the
session (no extra round trip); the commit script re-checks it before queueing any message (the
gate), so an API change between load and commit is honoured.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine.governance.optout import REVIEW, OptOutRule, Verdict

OPT_OUT, OPT_IN, HELP = "opt_out", "opt_in", "help"
#: A request to stop offers only ("STOP PROMO"): service messages keep coming.
OPT_OUT_MARKETING = "opt_out_marketing"
OPTED_IN, OPTED_OUT, UNKNOWN = "opted_in", "opted_out", "unknown"
#: What a message is for. Service (reminders, confirmations, surveys) may reach any contact who
#: has not opted out; marketing (offers, flash sales) only one with a marketing opt-in newer
#: than any opt-out. A consent change for marketing alone is recorded with the status prefixed
#: ``marketing_`` (``marketing_opted_in``); a plain opt-out stops both purposes.
SERVICE, MARKETING = "service", "marketing"
PURPOSES = (SERVICE, MARKETING)
MARKETING_PREFIX = "marketing_"
STATUSES = (OPTED_IN, OPTED_OUT, UNKNOWN)
#: Where a consent change came from (the API must name one).
SOURCES = ("keyword", "api", "import", "carrier", "web", "paper")

DEFAULT_KEYWORDS: dict[str, dict[str, list[str]]] = {
    OPT_OUT: {
        "en": ["stop", "stopall", "stop all", "unsubscribe", "cancel", "end", "quit", "optout", "revoke"],
        "es": ["baja", "parar", "alto", "cancelar", "detener"],
        "fr": ["arret", "arreter", "desabonner", "desinscrire"],
        "de": ["stopp", "abmelden", "beenden", "abbestellen"],
        "pt": ["parar", "sair", "cancelar", "descadastrar"],
    },
    OPT_IN: {
        "en": ["start", "unstop", "optin", "subscribe"],
        "es": ["alta", "comenzar"],
        "fr": ["commencer", "reprendre"],
        "de": ["anmelden"],
        "pt": ["voltar", "assinar"],
    },
    OPT_OUT_MARKETING: {
        "en": ["stop promo", "stop promos", "stop offers", "no offers", "no promo"],
        "es": ["baja promo", "no ofertas"],
        "fr": ["arret promo", "stop pub", "arret pub"],
        "de": ["stopp werbung", "keine werbung"],
        "pt": ["parar promo", "sem ofertas"],
    },
    HELP: {
        "en": ["help", "info"],
        "es": ["ayuda"],
        "fr": ["aide"],
        "de": ["hilfe"],
        "pt": ["ajuda"],
    },
}

DEFAULT_MESSAGES: dict[str, dict[str, str]] = {
    OPT_OUT: {
        "en": "You are unsubscribed and will get no more messages from us. Reply START to resubscribe.",
        "es": "Has cancelado tu suscripción y no recibirás más mensajes. Responde ALTA para volver.",
        "fr": "Vous êtes désinscrit et ne recevrez plus de messages. Répondez START pour revenir.",
        "de": "Sie sind abgemeldet und erhalten keine Nachrichten mehr. Antworten Sie START zum Anmelden.",
        "pt": "Você cancelou a inscrição e não receberá mais mensagens. Responda VOLTAR para voltar.",
    },
    OPT_IN: {
        "en": "You are subscribed again. Reply STOP to unsubscribe, HELP for help.",
        "es": "Te has suscrito de nuevo. Responde BAJA para darte de baja, AYUDA para ayuda.",
        "fr": "Vous êtes de nouveau inscrit. Répondez STOP pour vous désinscrire, AIDE pour de l'aide.",
        "de": "Sie sind wieder angemeldet. Antworten Sie STOPP zum Abmelden, HILFE für Hilfe.",
        "pt": "Você se inscreveu de novo. Responda PARAR para sair, AJUDA para ajuda.",
    },
    OPT_OUT_MARKETING: {
        "en": "You will get no more offers from us. Service messages continue; reply STOP to stop all.",
        "es": "No recibirás más ofertas. Los avisos de servicio continúan; responde BAJA para todo.",
        "fr": "Vous ne recevrez plus d'offres. Les messages de service continuent; STOP pour tout arrêter.",
        "de": "Sie erhalten keine Angebote mehr. Servicenachrichten kommen weiter; STOPP für alles.",
        "pt": "Você não receberá mais ofertas. Avisos de serviço continuam; PARAR para sair de tudo.",
    },
    HELP: {
        "en": "Reply to this number to reach us. Reply STOP to unsubscribe. Msg&data rates may apply.",
        "es": "Responde a este número para contactarnos. Responde BAJA para darte de baja.",
        "fr": "Répondez à ce numéro pour nous joindre. Répondez STOP pour vous désinscrire.",
        "de": "Antworten Sie an diese Nummer, um uns zu erreichen. STOPP zum Abmelden.",
        "pt": "Responda a este número para falar conosco. Responda PARAR para sair.",
    },
}


def squash(text: str) -> str:
    """The form keywords are compared in: case and accents folded, only letters and digits kept."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if c.isalnum() and not unicodedata.combining(c)).casefold()


@dataclass(frozen=True)
class Keyword:
    kind: str  # opt_out | opt_in | help | opt_out_marketing
    language: str


@dataclass(frozen=True)
class Reading:
    """What an inbound text is to governance: a keyword (the whole message, or a request to stop
    in other words), or a keyword in something else that a person should review."""

    keyword: Keyword | None = None
    review: bool = False


class Keywords:
    """The configured keyword sets (defaults merged with ``governance.keywords``) and messages."""

    def __init__(
        self,
        keywords: Mapping[str, Mapping[str, list[str]]] | None = None,
        messages: Mapping[str, Mapping[str, str]] | None = None,
        default_language: str = "en",
    ) -> None:
        self.default_language = default_language
        self._index: dict[str, Keyword] = {}
        merged: dict[str, dict[str, list[str]]] = {k: dict(v) for k, v in DEFAULT_KEYWORDS.items()}
        for kind, by_language in (keywords or {}).items():
            for language, words in by_language.items():  # added to the defaults, never replacing
                merged[kind][language] = [*merged[kind].get(language, []), *words]
        # Opt-out wins a clash (a word in two sets): silence is the safe reading.
        for kind in (HELP, OPT_IN, OPT_OUT_MARKETING, OPT_OUT):
            for language, words in merged[kind].items():
                for word in words:
                    self._index[squash(word)] = Keyword(kind, language)
        self.messages = {k: {**v, **(messages or {}).get(k, {})} for k, v in DEFAULT_MESSAGES.items()}
        self._opt_out = OptOutRule(merged[OPT_OUT], default_language)

    def match(self, text: str) -> Keyword | None:
        """The keyword ``text`` is, as a whole message, or None."""
        squashed = squash(text)
        return self._index.get(squashed) if squashed else None

    def intent(self, text: str, *, in_conversation: bool = False) -> Verdict:
        """Whether ``text`` asks to opt out in other words than a keyword, is a near miss, or
        has an opt-out keyword in something else (for review): engine/governance/optout.py."""
        return self._opt_out.classify(text, in_conversation=in_conversation)

    def read(self, text: str, *, in_conversation: bool = False) -> Reading:
        """The whole-message keyword ``text`` is, else what the opt-out rule makes of it."""
        kw = self.match(text)
        if kw is not None:
            return Reading(kw)
        verdict = self.intent(text, in_conversation=in_conversation)
        if verdict.kind == OPT_OUT:
            return Reading(Keyword(OPT_OUT, verdict.language))
        return Reading(review=verdict.kind == REVIEW)

    def message(self, kind: str, contact_language: str | None, keyword_language: str) -> str:
        texts = self.messages[kind]
        for lang in (contact_language, (contact_language or "").split("-")[0], keyword_language):
            if lang and lang in texts:
                return texts[lang]
        return texts.get(self.default_language) or next(iter(texts.values()))


@dataclass(frozen=True)
class Consent:
    """A contact's consent and suppression, as loaded with the turn (``p:g:TN``)."""

    status: str = UNKNOWN
    source: str = ""
    at: int = 0
    suppressed: str = ""  # the reason, or "" when the number is not suppressed
    #: Consent to marketing (``mk``, ``mksrc``, ``mkat``): opted_in only by an explicit opt-in
    #: for marketing; any opt-out (STOP, STOP PROMO, the API) sets it opted_out.
    marketing: str = UNKNOWN
    marketing_source: str = ""
    marketing_at: int = 0

    @classmethod
    def from_hash(cls, h: Mapping[bytes, bytes]) -> Consent:
        return cls(
            status=h.get(b"cs", b"unknown").decode(),
            source=h.get(b"src", b"").decode(),
            at=int(h.get(b"at", 0)),
            suppressed=h.get(b"sup", b"").decode(),
            marketing=h.get(b"mk", b"unknown").decode(),
            marketing_source=h.get(b"mksrc", b"").decode(),
            marketing_at=int(h.get(b"mkat", 0)),
        )

    def allows(self, purpose: str) -> bool:
        """Whether a flow's message of this purpose may be sent (the commit script decides
        again, inside the commit: this is the turn's early answer)."""
        if self.silenced:
            return False
        return purpose != MARKETING or self.marketing == OPTED_IN

    @property
    def silenced(self) -> bool:
        """Nothing but the one opt-out confirmation (and HELP answers) may be sent."""
        return self.status == OPTED_OUT or bool(self.suppressed)

    def view(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "source": self.source or None,
            "at": self.at or None,
            "suppressed": self.suppressed or None,
            "marketing": self.marketing,
        }


def gate_kind(purpose: str, *, system: bool = False, counted: bool = True) -> str:
    """The commit script's gate kind of one outbound message (engine/core/scripts/commit.lua):
    ``s`` a confirmation or HELP answer; ``r`` / ``c`` a service reply (cap-exempt) / a service
    message the business starts (counted); ``n`` / ``m`` the same for marketing, which also
    needs the contact's marketing opt-in."""
    if system:
        return "s"
    if purpose == MARKETING:
        return "m" if counted else "n"
    return "c" if counted else "r"


def consent_change(
    status: str, source: str, cause: str, now_ms: int, *, marketing: bool = False
) -> tuple[dict[str, str | int], dict[str, str | int]]:
    """Pure: the ``p:g:TN`` fields and the ledger entry of a consent change made outside a turn
    (the API; a turn's goes through commit.lua, which does the same). ``marketing``: the consent
    to offers alone; an opt-out of every purpose withdraws the marketing consent too."""
    entry: dict[str, str | int] = {"cs": status, "src": source, "cause": cause, "at": now_ms}
    if marketing:
        entry["purpose"] = MARKETING
        return {"mk": status, "mksrc": source, "mkat": now_ms}, entry
    fields: dict[str, str | int] = {"cs": status, "src": source, "at": now_ms}
    if status == OPTED_OUT:
        fields.update(mk=status, mksrc=source, mkat=now_ms)
    return fields, entry
