"""FHIR R4 Consent, read the way the specification says, to any depth.

A Consent is parsed once into a :class:`ConsentRecord` (a tree of compiled
:class:`Provision` rules), then evaluated against each request without touching
the original JSON again. The semantics, in the words an IG officer would use:

* only ``status = active`` Consents count, and only inside their period
  (R4 puts the period on the root provision; an R5-style ``Consent.period`` is read too);
* the base policy (``policyRule``) says what happens when nothing else matches:
  OPTIN / OPTINR mean "deny unless permitted", OPTOUT / OPTOUTE "permit unless denied";
  anything else is read as OPTIN, so an unknown rule never opens access;
* a root provision with a ``type`` is itself a rule; nested provisions are exceptions to
  their parent and may nest to any depth; when several sibling exceptions match,
  deny wins over permit;
* a provision matches only when every element it gives matches: actor (by reference or by
  identifier, with its role), action, purpose, class, code, securityLabel (a confidentiality
  label covers its own level and everything below it: R covers N), dataPeriod and data.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, NamedTuple

from .model import (
    DATA_CATEGORY_SYSTEM,
    ODS_SYSTEM,
    REQUESTER_ROLE_SYSTEM,
    RESOURCE_TYPES_SYSTEM,
    V3_CONFIDENTIALITY,
    DataItem,
    Requester,
)

UTC = _dt.timezone.utc
_MIN = _dt.datetime.min.replace(tzinfo=UTC)
_MAX = _dt.datetime.max.replace(tzinfo=UTC)

_ONE_DAY_LESS = _dt.timedelta(days=1, microseconds=-1)

PERMIT = "permit"
DENY = "deny"

#: v3 Confidentiality, lowest to highest. An item without a label is normal (N).
CONFIDENTIALITY_LEVELS = {"U": 0, "L": 1, "M": 2, "N": 3, "R": 4, "V": 5}

#: v3 ParticipationType roles that make an actor the *recipient* of the data
#: (information recipient, primary recipient, referred-to, tracker).
RECIPIENT_ACTOR_ROLES = frozenset({"IRCP", "PRCP", "REFT", "TRC", "CON"})
#: Roles that make an actor the *holder or author* of the data
#: (custodian, author, informant, data enterer): they constrain the data's source.
SOURCE_ACTOR_ROLES = frozenset({"CST", "AUT", "INF", "ENT"})

#: Base policies (policyRule) that mean "permit unless denied".
OPT_OUT_RULES = frozenset({"OPTOUT", "OPTOUTE"})

#: v3 ActCode sensitivity labels and the broader label they fall under, so that a Consent
#: naming ETH (substance abuse) also covers a record labelled SUD or ETHUD.
SENSITIVITY_PARENTS: Mapping[str, str] = {
    "SUD": "ETH",
    "ETHUD": "ETH",
    "OPIOIDUD": "ETH",
    "PSYTHPN": "PSY",
}


# ---------------------------------------------------------------------------
# FHIR date handling
# ---------------------------------------------------------------------------


def instant_range(value: str) -> tuple[_dt.datetime, _dt.datetime]:
    """The first and last instant a FHIR date/dateTime of any precision stands for."""
    value = value.strip()
    if len(value) == 4:  # YYYY
        year = int(value)
        start = _dt.datetime(year, 1, 1, tzinfo=UTC)
        end = _dt.datetime(year + 1, 1, 1, tzinfo=UTC) if year < 9999 else _MAX
    elif len(value) == 7:  # YYYY-MM
        year, month = int(value[:4]), int(value[5:7])
        start = _dt.datetime(year, month, 1, tzinfo=UTC)
        end = _dt.datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
    elif len(value) == 10:  # YYYY-MM-DD
        start = _dt.datetime.fromisoformat(value).replace(tzinfo=UTC)
        end = start + _dt.timedelta(days=1)
    else:
        moment = _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment, moment
    return start, end - _dt.timedelta(microseconds=1) if end is not _MAX else _MAX


def as_instant(moment: _dt.datetime | _dt.date | None) -> _dt.datetime:
    """A timezone-aware instant for the moment of decision (now when not given)."""
    if moment is None:
        return _dt.datetime.now(UTC)
    if isinstance(moment, _dt.datetime):
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return _dt.datetime(moment.year, moment.month, moment.day, 12, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Period:
    start: _dt.datetime = _MIN
    end: _dt.datetime = _MAX

    @classmethod
    def parse(cls, raw: Mapping[str, Any] | None) -> "Period | None":
        if not raw:
            return None
        start = instant_range(str(raw["start"]))[0] if raw.get("start") else _MIN
        end = instant_range(str(raw["end"]))[1] if raw.get("end") else _MAX
        return cls(start, end)

    def contains(self, moment: _dt.datetime) -> bool:
        return self.start <= moment <= self.end

    def overlaps_day(self, day: _dt.date) -> bool:
        first = _dt.datetime(day.year, day.month, day.day, tzinfo=UTC)
        last = first + _dt.timedelta(days=1, microseconds=-1)
        return first <= self.end and last >= self.start


# ---------------------------------------------------------------------------
# Compiled provisions
# ---------------------------------------------------------------------------


def _codings(raw: Any) -> Iterable[Mapping[str, Any]]:
    """Codings from a Coding, a CodeableConcept, or a list of either."""
    if not raw:
        return ()
    if isinstance(raw, Mapping):
        raw = [raw]
    out: list[Mapping[str, Any]] = []
    for entry in raw:
        if not isinstance(entry, Mapping):
            continue
        if "coding" in entry:
            out.extend(c for c in entry.get("coding") or () if isinstance(c, Mapping))
        elif "code" in entry:
            out.append(entry)
    return out


def _code_pairs(raw: Any) -> frozenset[tuple[str, str]]:
    return frozenset((str(c.get("system") or ""), str(c["code"])) for c in _codings(raw) if c.get("code"))


def _reference_keys(ref: Mapping[str, Any] | None) -> tuple[frozenset[str], frozenset[tuple[str, str]]]:
    """The literal references and the business identifiers a FHIR Reference names."""
    if not isinstance(ref, Mapping):
        return frozenset(), frozenset()
    literal: set[str] = set()
    idents: set[tuple[str, str]] = set()
    text = ref.get("reference")
    if isinstance(text, str) and text:
        if "?identifier=" in text:  # conditional reference, as HAPI accepts
            query = text.split("?identifier=", 1)[1]
            system, _, value = query.rpartition("|")
            idents.add((system, value))
        else:
            literal.add(_tail(text))
    ident = ref.get("identifier")
    if isinstance(ident, Mapping) and ident.get("value"):
        idents.add((str(ident.get("system") or ""), str(ident["value"])))
    return frozenset(literal), frozenset(idents)


def _tail(reference: str) -> str:
    """``https://host/fhir/Organization/1/_history/2`` -> ``Organization/1``."""
    parts = reference.split("/_history/")[0].rstrip("/").split("/")
    return "/".join(parts[-2:]) if len(parts) >= 2 else reference


@dataclass(frozen=True, slots=True)
class Actor:
    """One ``provision.actor``: who it names, and in what role."""

    recipient: bool  # True: the requester must be this actor; False: the data's source must
    requester_role: str | None  # a familyview requester-role code, when the role is one
    references: frozenset[str]
    identifiers: frozenset[tuple[str, str]]

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> "Actor":
        roles = _code_pairs(raw.get("role"))
        requester_role = next((code for system, code in roles if system == REQUESTER_ROLE_SYSTEM), None)
        codes = {code for _, code in roles}
        recipient = (
            requester_role is not None or not (codes & SOURCE_ACTOR_ROLES) or bool(codes & RECIPIENT_ACTOR_ROLES)
        )
        refs, idents = _reference_keys(raw.get("reference"))
        return cls(recipient, requester_role, refs, idents)

    def names_requester(self, ctx: "MatchContext") -> bool:
        if self.requester_role is not None and self.requester_role != ctx.requester_role:
            return False
        if not self.references and not self.identifiers:
            return self.requester_role is not None
        return bool(self.references & ctx.requester_refs or self.identifiers & ctx.requester_idents)

    def names_source(self, ctx: "MatchContext") -> bool:
        return bool(self.identifiers & ctx.source_idents or self.references & ctx.source_refs)


@dataclass(frozen=True, slots=True)
class Provision:
    """One node of the provision tree, with its criteria pre-compiled for speed."""

    path: str
    type: str | None
    period: Period | None
    recipients: tuple[Actor, ...]
    sources: tuple[Actor, ...]
    actions: frozenset[str] | None
    purposes: frozenset[str] | None
    classes: frozenset[tuple[str, str]] | None
    codes: frozenset[tuple[str, str]] | None
    security_labels: frozenset[tuple[str, str]] | None
    data_period: Period | None
    data: tuple[tuple[str, frozenset[str], frozenset[tuple[str, str]]], ...] | None
    children: tuple["Provision", ...]
    names: frozenset[str]  # which kinds of thing this provision names: actor, purpose, category

    @classmethod
    def parse(cls, raw: Mapping[str, Any], path: str = "Consent.provision") -> "Provision":
        actors = [Actor.parse(a) for a in raw.get("actor") or () if isinstance(a, Mapping)]
        actions = frozenset(code for _, code in _code_pairs(raw.get("action"))) or None
        purposes = frozenset(code for _, code in _code_pairs(raw.get("purpose"))) or None
        classes = _code_pairs(raw.get("class")) or None
        codes = _code_pairs(raw.get("code")) or None
        labels = _code_pairs(raw.get("securityLabel")) or None
        data = (
            tuple(
                (str(d.get("meaning") or "instance"), *_reference_keys(d.get("reference")))
                for d in raw.get("data") or ()
                if isinstance(d, Mapping)
            )
            or None
        )
        recipients = tuple(a for a in actors if a.recipient)
        names = set()
        if recipients:
            names.add("actor")
        if purposes:
            names.add("purpose")
        if classes or codes or labels or data:
            names.add("category")
        children = tuple(
            cls.parse(child, f"{path}.provision[{i}]")
            for i, child in enumerate(raw.get("provision") or ())
            if isinstance(child, Mapping)
        )
        kind = raw.get("type")
        return cls(
            path=path,
            type=kind if kind in (PERMIT, DENY) else None,
            period=Period.parse(raw.get("period")),
            recipients=recipients,
            sources=tuple(a for a in actors if not a.recipient),
            actions=actions,
            purposes=purposes,
            classes=classes,
            codes=codes,
            security_labels=labels,
            data_period=Period.parse(raw.get("dataPeriod")),
            data=data,
            children=children,
            names=frozenset(names),
        )

    # -- matching -----------------------------------------------------------

    def matches(self, ctx: "MatchContext", deciding: str) -> bool:
        """Whether this provision covers the request.

        ``deciding`` is the type this provision would apply; where the request's data
        cannot show whether it falls inside (an undated record against a dataPeriod),
        a deny is taken to match and a permit not, so doubt never opens access.
        """
        if self.period is not None and not self.period.contains(ctx.moment):
            return False
        if self.recipients:
            for actor in self.recipients:
                if actor.names_requester(ctx):
                    break
            else:
                return False
        if self.sources:
            for actor in self.sources:
                if actor.names_source(ctx):
                    break
            else:
                return False
        if self.actions is not None and self.actions.isdisjoint(ctx.actions):
            return False
        if self.purposes is not None and self.purposes.isdisjoint(ctx.purposes):
            return False
        if self.classes is not None:
            for coding in self.classes:
                if ctx.has_class(coding):
                    break
            else:
                return False
        if self.codes is not None:
            for coding in self.codes:
                if ctx.has_code(coding):
                    break
            else:
                return False
        if self.security_labels is not None:
            for coding in self.security_labels:
                if ctx.has_label(coding):
                    break
            else:
                return False
        if self.data_period is not None:
            if ctx.item_first is None:
                if deciding != DENY:
                    return False
            elif not (
                ctx.item_first <= self.data_period.end
                and ctx.item_last is not None
                and ctx.item_last >= self.data_period.start
            ):
                return False
        if self.data is not None:
            for data in self.data:
                if ctx.is_data(data):
                    break
            else:
                return False
        return True


_REQUESTER_KEYS: dict[Requester, tuple[frozenset[str], frozenset[tuple[str, str]]]] = {}
_LABEL_FACTS: dict[frozenset[str], tuple[frozenset[str], int]] = {}


def _requester_keys(requester: Requester) -> tuple[frozenset[str], frozenset[tuple[str, str]]]:
    """The references and identifiers that name a requester (memoised: requesters repeat)."""
    keys = _REQUESTER_KEYS.get(requester)
    if keys is None:
        if len(_REQUESTER_KEYS) > 4096:
            _REQUESTER_KEYS.clear()
        keys = (
            frozenset(_tail(r) for r in requester.references),
            frozenset({(ODS_SYSTEM, requester.org), *requester.identifiers}),
        )
        _REQUESTER_KEYS[requester] = keys
    return keys


def _label_facts(security_labels: frozenset[str]) -> tuple[frozenset[str], int]:
    """An item's labels with their broader labels added, and its confidentiality level."""
    facts = _LABEL_FACTS.get(security_labels)
    if facts is None:
        labels = set(security_labels)
        for label in security_labels:
            parent = SENSITIVITY_PARENTS.get(label)
            if parent:
                labels.add(parent)
        levels = [CONFIDENTIALITY_LEVELS[x] for x in security_labels if x in CONFIDENTIALITY_LEVELS]
        facts = (frozenset(labels), max(levels) if levels else CONFIDENTIALITY_LEVELS["N"])
        if len(_LABEL_FACTS) > 4096:
            _LABEL_FACTS.clear()
        _LABEL_FACTS[security_labels] = facts
    return facts


class MatchContext:
    """The request, pre-digested once for matching against every provision."""

    __slots__ = (
        "moment",
        "requester_role",
        "requester_refs",
        "requester_idents",
        "source_idents",
        "source_refs",
        "actions",
        "purposes",
        "item",
        "labels",
        "confidentiality",
        "item_first",
        "item_last",
    )

    def __init__(
        self,
        requester: Requester,
        item: DataItem,
        purposes: frozenset[str],
        actions: frozenset[str],
        moment: _dt.datetime,
    ) -> None:
        self.moment = moment
        self.requester_role = requester.role
        self.requester_refs, self.requester_idents = _requester_keys(requester)
        self.source_idents = frozenset({(ODS_SYSTEM, item.source_org)}) if item.source_org else frozenset()
        self.source_refs: frozenset[str] = frozenset()
        self.actions = actions
        self.purposes = purposes
        self.item = item
        labels = item.security_labels
        self.labels, self.confidentiality = _label_facts(labels if type(labels) is frozenset else frozenset(labels))
        day = item.date
        if day is None:
            self.item_first = self.item_last = None
        else:
            self.item_first = _dt.datetime(day.year, day.month, day.day, tzinfo=UTC)
            self.item_last = self.item_first + _ONE_DAY_LESS

    def has_class(self, coding: tuple[str, str]) -> bool:
        system, code = coding
        if system == RESOURCE_TYPES_SYSTEM:
            return code == self.item.resource_type
        if system == DATA_CATEGORY_SYSTEM:
            return code == self.item.category
        if not system:
            return code in (self.item.resource_type, self.item.category)
        return coding in self.item.codes

    def has_code(self, coding: tuple[str, str]) -> bool:
        if coding[0] == DATA_CATEGORY_SYSTEM:
            return coding[1] == self.item.category
        return coding in self.item.codes

    def has_label(self, coding: tuple[str, str]) -> bool:
        system, code = coding
        if code in CONFIDENTIALITY_LEVELS and system in ("", V3_CONFIDENTIALITY):
            return self.confidentiality <= CONFIDENTIALITY_LEVELS[code]
        return code in self.labels

    def is_data(self, data: tuple[str, frozenset[str], frozenset[tuple[str, str]]]) -> bool:
        meaning, refs, idents = data
        if meaning == "authoredby":
            return bool(idents & self.source_idents)
        return self.item.reference is not None and _tail(self.item.reference) in refs


# ---------------------------------------------------------------------------
# The Consent as a whole
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConsentRecord:
    """A subject's Consent, parsed once from a FHIR R4B model or a plain dict."""

    reference: str
    status: str
    scopes: frozenset[str]
    recorded: _dt.datetime | None  # Consent.dateTime: decides which of several is most recent
    policy_rule: str | None
    period: Period | None
    provision: Provision | None
    # ODS code of the organisation that recorded the Consent (the source that posted it, which
    # ingest holds to Consent.organization). It governs the records that organisation holds;
    # None (a Consent read without its origin) governs every record, as before holders were known.
    holder: str | None = None

    @classmethod
    def from_fhir(cls, resource: Any, holder: str | None = None) -> "ConsentRecord":
        """Adapt a ``fhir.resources.R4B.consent.Consent`` or a JSON dict; ``holder`` is the ODS
        code of the organisation that recorded it."""
        if isinstance(resource, ConsentRecord):
            return (
                resource
                if holder is None or resource.holder == holder
                else dataclasses.replace(resource, holder=holder)
            )
        if hasattr(resource, "model_dump"):
            raw = resource.model_dump(mode="json", by_alias=True, exclude_none=True)
        elif isinstance(resource, Mapping):
            raw = resource
        else:
            raise TypeError(f"not a FHIR Consent: {type(resource).__name__}")
        if raw.get("resourceType", "Consent") != "Consent":
            raise ValueError(f"expected a Consent, got {raw.get('resourceType')}")
        if raw.get("id"):
            reference = f"Consent/{raw['id']}"
        else:  # a stable name for an unsaved Consent, so the audit can still point at it
            digest = hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()
            reference = f"Consent/#sha256-{digest[:16]}"
        rules = [code for _, code in _code_pairs(raw.get("policyRule"))]
        provision = Provision.parse(raw["provision"]) if isinstance(raw.get("provision"), Mapping) else None
        period = Period.parse(raw.get("period"))  # R5 style; R4 uses the root provision's period
        recorded = instant_range(str(raw["dateTime"]))[0] if raw.get("dateTime") else None
        return cls(
            reference=reference,
            status=str(raw.get("status") or ""),
            scopes=frozenset(code for _, code in _code_pairs(raw.get("scope"))),
            recorded=recorded,
            policy_rule=rules[0] if rules else None,
            period=period,
            provision=provision,
            holder=holder,
        )

    @property
    def base_decision(self) -> str:
        return PERMIT if self.policy_rule in OPT_OUT_RULES else DENY

    def in_force(self, moment: _dt.datetime) -> str | None:
        """None when the Consent is in force at ``moment``, otherwise why it is not."""
        if self.status != "active":
            return f"status {self.status or 'missing'}"
        if self.period is not None and not self.period.contains(moment):
            return "outside its period"
        root = self.provision
        if root is not None and root.period is not None and not root.period.contains(moment):
            return "outside its period"
        return None

    def evaluate(self, ctx: MatchContext) -> "ConsentFinding":
        """What this Consent says about the request (assumed in force)."""
        root = self.provision
        base = self.base_decision
        if root is None:
            # No provisions at all: the base policy is the whole statement (e.g. a refusal).
            return ConsentFinding(self, base, True, "Consent.policyRule", frozenset())
        root_decision = root.type or base
        if not root.matches(ctx, root_decision):
            return ConsentFinding(self, base, False, "Consent.policyRule", frozenset())
        return _descend(self, root, root_decision, root.type is not None, root.names, ctx)


def _descend(
    consent: ConsentRecord, node: Provision, decision: str, explicit: bool, names: frozenset[str], ctx: MatchContext
) -> "ConsentFinding":
    """Apply the exceptions under ``node``; deny wins between matching siblings."""
    best: ConsentFinding | None = None
    for child in node.children:
        child_decision = child.type or decision
        if not child.matches(ctx, child_decision):
            continue
        finding = _descend(consent, child, child_decision, explicit or child.type is not None, names | child.names, ctx)
        if best is None or (finding.decision == DENY and best.decision != DENY):
            best = finding
    if best is not None:
        return best
    return ConsentFinding(consent, decision, explicit, node.path, names)


class ConsentFinding(NamedTuple):
    """What one Consent says about one request.

    ``explicit`` is False when no provision with a type decided and the answer is just
    the base policy, i.e. the Consent does not address this request.
    ``names`` holds what the deciding provisions named (actor, purpose, category).
    (A NamedTuple rather than a dataclass: one is made per Consent per decision.)
    """

    consent: "ConsentRecord"
    decision: str
    explicit: bool
    provision: str
    names: frozenset[str]
    conflict: bool = False  # Consents of different holders disagreed (set by the engine)


def _recency(finding: ConsentFinding) -> tuple[_dt.datetime, bool, str]:
    # Newest first; between Consents recorded at the same moment, deny first, then by name,
    # so that the answer never depends on the order the Consents were passed in.
    recorded = finding.consent.recorded or _MIN
    return (recorded, finding.decision == DENY, finding.consent.reference)


def combine(findings: list[ConsentFinding], strategy: str) -> ConsentFinding | None:
    """Pick the finding that governs when a person has several Consents in force.

    ``most-recent``: among the Consents that address the request, the most recent
    governs (if none addresses it, the most recent base policy stands).
    ``deny-overrides``: any Consent that denies the request wins; otherwise the most
    recent permit.
    """
    if not findings:
        return None
    explicit = [f for f in findings if f.explicit]
    if strategy == "deny-overrides":
        denials = [f for f in explicit if f.decision == DENY]
        if denials:
            return max(denials, key=_recency)
    pool = explicit or findings
    return max(pool, key=_recency)
