"""A compiled flow: plain objects that a turn walks without parsing anything."""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.core.sendopts import SendOptions
from engine.flows.conditions import Condition
from engine.flows.reply_tests import ReplyTest
from engine.flows.templates import Template


@dataclass(frozen=True)
class Case:
    """``when`` the reply passes ``test`` (or the data meets ``condition``), save it under
    ``category`` and go to ``goto``. Exactly one of ``test`` and ``condition`` is set."""

    goto: str
    category: str
    line: int
    test: ReplyTest | None = None
    condition: Condition | None = None
    #: How the case was written (``number_between [9, 10]``), for graphs and logs.
    label: str = ""


@dataclass(frozen=True)
class Reprompt:
    """Said when a reply matches no case; after ``max`` of them the flow goes to ``after``."""

    say: dict[str, Template]
    max: int
    after: str | None  # None: end with outcome "unanswered"


@dataclass
class Call:
    """A CRM webhook: ``url`` (a template), method, headers, optional JSON ``body`` whose text
    values are templates; the answer is saved as ``results.<save>`` and routes the flow."""

    url: Template
    method: str = "GET"
    headers: dict[str, Template] = field(default_factory=dict)
    body: dict[str, Template] | None = None
    timeout: float = 5.0
    save: str | None = None
    success: str = ""
    failure: str = ""
    #: Contact fields refreshed from the answer: field name -> dotted path in the answer.
    fields: dict[str, str] = field(default_factory=dict)
    #: Seconds a GET's successful answer is reused for the same request (0: always ask).
    cache: float = 0.0


@dataclass
class Node:
    name: str
    line: int
    say: dict[str, Template] | None = None  # language -> template
    wait: bool = False
    save: str | None = None
    cases: list[Case] = field(default_factory=list)
    default: str | None = None
    reprompt: Reprompt | None = None
    goto: str | None = None
    end: str | None = None
    #: Seconds to wait for a reply before going to ``timeout_goto`` (reminders).
    timeout: float | None = None
    timeout_goto: str | None = None
    #: Contact fields to set (values are templates) and tags to add, when the node is reached.
    sets: dict[str, Template] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    #: Record the customer's consent (an answer to "reply YES to keep getting texts").
    consent: str | None = None
    #: End this conversation and start this flow (an exit, like ``end``).
    start_flow: str | None = None
    #: Call a CRM webhook and route on its answer (an exit).
    call: Call | None = None
    #: End this conversation and put the contact in the inbox for a person, with this reason
    #: (an exit, like ``end``; engine/conversation/inbox.py).
    handoff: str | None = None

    def successors(self) -> list[str]:
        out = [c.goto for c in self.cases]
        out += [n for n in (self.default, self.goto, self.timeout_goto) if n]
        if self.call is not None:
            out += [self.call.success, self.call.failure]
        if self.reprompt and self.reprompt.after:
            out.append(self.reprompt.after)
        return out


@dataclass(frozen=True)
class FlowSms:
    """A flow's ``sms:`` section: delivery options for the messages it sends (connectors that
    have them: SMPP's validity_period, priority_flag, registered_delivery)."""

    #: Seconds the message is worth delivering after it is sent (None: the connector's default).
    validity: float | None = None
    priority: int | None = None
    receipts: str = ""

    def options(self, now_ms: int) -> SendOptions:
        exp = now_ms + int(self.validity * 1000) if self.validity is not None else 0
        return SendOptions(expires_ms=exp, priority=self.priority, receipts=self.receipts)


@dataclass
class Flow:
    name: str
    version: int
    source: str
    start: str
    nodes: dict[str, Node]
    description: str = ""
    language: str = "en"
    triggers: list[str] = field(default_factory=list)
    expire_after: float = 7 * 86400.0
    #: Replies in a conversational flow are answers the customer asked for (cap-exempt later).
    conversational: bool = True
    #: Contact fields the flow requires; a contact without one of them is not started.
    fields: list[str] = field(default_factory=list)
    #: Frequency caps for this flow's business-started sends, instead of governance.caps
    #: (None: the global ones; [] for none, e.g. a transactional reminder).
    caps: list[str] | None = None
    #: ``service`` (reminders, confirmations, surveys: any contact not opted out) or
    #: ``marketing`` (offers: only contacts with a marketing opt-in; always held to caps).
    purpose: str = "service"
    #: Delivery options of its messages (``sms:``), or None.
    sms: FlowSms | None = None
    #: Digest of the source text: the version a session is pinned to (no manual bump needed).
    digest: str = ""
    #: The YAML it was compiled from (kept in Redis so a session can finish on it).
    text: str = ""
    #: What to say when a template fails at run time: language -> plain text ("" = any).
    fallback: dict[str, str] = field(default_factory=dict)
    #: A message longer than this many segments is a render failure (engine.max_segments).
    max_segments: int = 10

    def fallback_for(self, language: str | None) -> str | None:
        """The fallback message in the contact's language, else the flow's, else any."""
        for lang in (language, self.language, ""):
            if lang is not None and lang in self.fallback:
                return self.fallback[lang]
        return next(iter(self.fallback.values()), None)
