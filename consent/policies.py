"""The disclosure policy, loaded from a data file an IG team can read and edit.

The file is checked against a schema on load; a policy that does not pass is never used.
Rules are indexed by (subject role, data category, purpose, requester role) so that a
decision is one dictionary look-up; two rules for the same cell are an error, because the
policy must say one thing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from .model import FAMILY_ROLES, REQUESTER_ROLES, LawfulBasis, ObligationKind, Purpose

BASELINE_POLICY_PATH = Path(__file__).parent / "policy" / "baseline.yaml"

CONSENT_MODES = ("not-consulted", "refusal-withholds", "required", "overridden")
COMBINE_STRATEGIES = ("most-recent", "deny-overrides")
CONSENT_NAMES = ("actor", "purpose", "category")
PURPOSE_OF_USE_CODES = frozenset({"TREAT", "ETREAT", "THREAT", "BTG", "COC", "PUBHLTH", "HOPERAT"})


class PolicyError(ValueError):
    """The policy file is not valid; ``errors`` lists every problem found."""

    def __init__(self, errors: list[str]):
        super().__init__("invalid policy:\n- " + "\n- ".join(errors))
        self.errors = errors


@dataclass(frozen=True, slots=True)
class PurposeDefinition:
    name: str
    purpose_of_use: str
    consent_purposes: frozenset[str]
    justification_required: bool
    break_glass_roles: frozenset[str]
    break_glass_purpose_of_use: str | None


@dataclass(frozen=True, slots=True)
class CategoryDefinition:
    name: str
    sensitive: bool
    labels: tuple[str, ...] = ()
    value_set: str | None = None
    fields: tuple[str, ...] = ()
    article9_applies: bool = True
    description: str = ""


@dataclass(frozen=True, slots=True)
class Rule:
    """One row of the policy table."""

    id: str
    design_row: str
    subjects: tuple[str, ...]
    categories: tuple[str, ...]
    purpose: str
    requesters: tuple[str, ...]
    consent: str
    basis_name: str
    basis: LawfulBasis
    obligations: tuple[ObligationKind, ...] = ()
    consent_must_name: frozenset[str] = frozenset()
    note: str = ""


@dataclass(frozen=True)
class Policy:
    """A validated policy, ready for :func:`consent.decide`."""

    id: str
    version: str
    title: str
    source: str
    combine: str
    consent_scopes: frozenset[str]
    consent_actions: frozenset[str]
    purposes: Mapping[str, PurposeDefinition]
    categories: Mapping[str, CategoryDefinition]
    bases: Mapping[str, LawfulBasis]
    never: Mapping[str, str]
    restricted_redact_fields: tuple[str, ...]
    restricted_withhold_categories: frozenset[str]
    very_restricted_purposes: frozenset[str]
    very_restricted_obligations: tuple[ObligationKind, ...]
    rules: tuple[Rule, ...]
    # Fail safe: a record no list or term places, about one of these family members and held by
    # another organisation than the requester's, is decided as this category (see
    # consent.engine.effective_category). None: such records stay ordinary records.
    unclassified_category: str | None = None
    unclassified_subjects: frozenset[str] = frozenset()
    _index: dict[tuple[str, str, str, str], Rule] = field(repr=False, compare=False, default_factory=dict)
    # The engine's working memory for this policy (compiled table cells, Consent evaluations),
    # bounded and filled on first use. Not an input: every entry can be recomputed from the
    # fields above, and each Policy (including one from with_combine) starts with its own.
    _memo: dict[str, Any] = field(init=False, repr=False, compare=False, default_factory=dict)

    def rule_for(self, subject_role: str, category: str, purpose: str, requester_role: str) -> Rule | None:
        return self._index.get((subject_role, category, purpose, requester_role))

    @property
    def label(self) -> str:
        return f"{self.id}@{self.version}"

    def with_combine(self, strategy: str) -> "Policy":
        """The same policy with another rule for combining several Consents."""
        if strategy not in COMBINE_STRATEGIES:
            raise PolicyError([f"consent_evaluation.combine: must be one of {', '.join(COMBINE_STRATEGIES)}"])
        return dataclasses.replace(self, combine=strategy, _index=self._index)


# ---------------------------------------------------------------------------
# Schema check
# ---------------------------------------------------------------------------


_SINGULAR = {"subjects": "family role", "categories": "category", "requesters": "requester role"}


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def check_policy_data(data: Any) -> list[str]:
    """Every way ``data`` (a parsed policy file) breaks the schema; empty when valid."""
    errors: list[str] = []
    if not isinstance(data, Mapping):
        return ["the policy file must be a mapping at the top level"]
    required_top = {
        "policy",
        "consent_evaluation",
        "purposes",
        "categories",
        "bases",
        "never",
        "confidentiality",
        "rules",
    }
    allowed_top = required_top | {"unclassified"}
    for key in data:
        if key not in allowed_top:
            errors.append(f"{key}: unknown section (allowed: {', '.join(sorted(allowed_top))})")
    for key in sorted(required_top):
        if key not in data:
            errors.append(f"{key}: section missing")
    if errors:
        return errors

    meta = data["policy"]
    if not isinstance(meta, Mapping):
        errors.append("policy: must be a mapping")
    else:
        for key in ("id", "version"):
            if not isinstance(meta.get(key), str) or not meta.get(key):
                errors.append(f'policy.{key}: required text (quote version numbers, e.g. "1.0.0")')

    evaluation = data["consent_evaluation"]
    if not isinstance(evaluation, Mapping):
        errors.append("consent_evaluation: must be a mapping")
    else:
        if evaluation.get("combine") not in COMBINE_STRATEGIES:
            errors.append(f"consent_evaluation.combine: must be one of {', '.join(COMBINE_STRATEGIES)}")
        for key in ("scopes", "actions"):
            if not _is_str_list(evaluation.get(key)):
                errors.append(f"consent_evaluation.{key}: must be a list of codes")

    purposes = data["purposes"]
    if not isinstance(purposes, Mapping):
        errors.append("purposes: must be a mapping")
        purposes = {}
    for name in (p.value for p in Purpose):
        if name not in purposes:
            errors.append(f"purposes.{name}: missing")
    for name, spec in purposes.items():
        where = f"purposes.{name}"
        if name not in {p.value for p in Purpose}:
            errors.append(f"{where}: unknown purpose")
            continue
        if not isinstance(spec, Mapping):
            errors.append(f"{where}: must be a mapping")
            continue
        if spec.get("purpose_of_use") not in PURPOSE_OF_USE_CODES:
            errors.append(f"{where}.purpose_of_use: must be a v3 PurposeOfUse code such as TREAT or THREAT")
        if not _is_str_list(spec.get("consent_purposes", [])):
            errors.append(f"{where}.consent_purposes: must be a list of codes")
        if not isinstance(spec.get("justification_required", False), bool):
            errors.append(f"{where}.justification_required: must be true or false")
        roles = spec.get("break_glass_roles", [])
        if not _is_str_list(roles) or set(roles) - REQUESTER_ROLES:
            errors.append(f"{where}.break_glass_roles: must list requester roles")
        elif roles and spec.get("break_glass_purpose_of_use") not in PURPOSE_OF_USE_CODES:
            errors.append(f"{where}.break_glass_purpose_of_use: required (BTG) when break_glass_roles are given")

    categories = data["categories"]
    if not isinstance(categories, Mapping) or not categories:
        errors.append("categories: must be a non-empty mapping")
        categories = {}
    for name, spec in categories.items():
        where = f"categories.{name}"
        if not isinstance(spec, Mapping) or not isinstance(spec.get("sensitive"), bool):
            errors.append(f"{where}.sensitive: must be true or false")
            continue
        for key in ("labels", "fields"):
            if key in spec and not _is_str_list(spec[key]):
                errors.append(f"{where}.{key}: must be a list")
        if "article9_applies" in spec and not isinstance(spec["article9_applies"], bool):
            errors.append(f"{where}.article9_applies: must be true or false")

    bases = data["bases"]
    if not isinstance(bases, Mapping) or not bases:
        errors.append("bases: must be a non-empty mapping")
        bases = {}
    for name, spec in bases.items():
        if (
            not isinstance(spec, Mapping)
            or not isinstance(spec.get("article6"), str)
            or not spec["article6"].startswith("6(1)(")
        ):
            errors.append(f'bases.{name}.article6: required, e.g. "6(1)(e)"')
            continue
        if spec.get("article9") is not None and not str(spec["article9"]).startswith("9(2)("):
            errors.append(f'bases.{name}.article9: must look like "9(2)(h)"')
        if spec.get("dpa2018_schedule1") is not None and not str(spec["dpa2018_schedule1"]).startswith("Sch 1 para "):
            errors.append(f'bases.{name}.dpa2018_schedule1: must look like "Sch 1 para 18"')

    never = data["never"]
    if not isinstance(never, Mapping):
        errors.append("never: must map a requester role to the reason shown")
    else:
        for role, reason in never.items():
            if role not in REQUESTER_ROLES:
                errors.append(f"never.{role}: unknown requester role")
            if not isinstance(reason, str) or not reason.strip():
                errors.append(f"never.{role}: needs a reason")

    conf = data["confidentiality"]
    if (
        not isinstance(conf, Mapping)
        or not isinstance(conf.get("restricted"), Mapping)
        or not isinstance(conf.get("very-restricted"), Mapping)
    ):
        errors.append("confidentiality: needs `restricted` and `very-restricted` sections")
    else:
        if not _is_str_list(conf["restricted"].get("redact_fields")):
            errors.append("confidentiality.restricted.redact_fields: must be a list of field names")
        if not _is_str_list(conf["restricted"].get("withhold_categories", [])):
            errors.append("confidentiality.restricted.withhold_categories: must be a list")
        if not _is_str_list(conf["very-restricted"].get("disclose_only_for", [])):
            errors.append("confidentiality.very-restricted.disclose_only_for: must be a list of purposes")
        for kind in conf["very-restricted"].get("obligations", []) or []:
            if kind not in {k.value for k in ObligationKind}:
                errors.append(f"confidentiality.very-restricted.obligations: unknown obligation {kind!r}")

    unclassified = data.get("unclassified")
    if unclassified is not None:
        if not isinstance(unclassified, Mapping):
            errors.append("unclassified: must be a mapping with `category` and `subjects`")
        else:
            category = unclassified.get("category")
            if category not in categories:
                errors.append(f"unclassified.category: unknown category {category!r}")
            elif not (isinstance(categories[category], Mapping) and categories[category].get("sensitive") is True):
                errors.append("unclassified.category: must be a sensitive category (it is never shown by default)")
            subjects = unclassified.get("subjects")
            if not _is_str_list(subjects) or not subjects or set(subjects) - FAMILY_ROLES:
                errors.append("unclassified.subjects: must list family roles")

    rules = data["rules"]
    if not isinstance(rules, list) or not rules:
        errors.append("rules: must be a non-empty list")
        rules = []
    seen_ids: set[str] = set()
    cells: dict[tuple[str, str, str, str], str] = {}
    required = ("id", "subjects", "categories", "purpose", "requesters", "consent", "basis")
    allowed = set(required) | {"design_row", "note", "obligations", "consent_must_name"}
    for i, rule in enumerate(rules):
        where = f"rules[{i}]"
        if not isinstance(rule, Mapping):
            errors.append(f"{where}: must be a mapping")
            continue
        where = f"rules[{i}] ({rule.get('id', '?')})"
        for key in required:
            if key not in rule:
                errors.append(f"{where}.{key}: missing")
        for key in rule:
            if key not in allowed:
                errors.append(f"{where}.{key}: unknown field")
        if any(key not in rule for key in required):
            continue
        if rule["id"] in seen_ids:
            errors.append(f"{where}.id: duplicate rule id")
        seen_ids.add(rule["id"])
        for key, known in (("subjects", FAMILY_ROLES), ("categories", categories), ("requesters", REQUESTER_ROLES)):
            if not _is_str_list(rule[key]) or not rule[key]:
                errors.append(f"{where}.{key}: must be a non-empty list")
                continue
            for value in rule[key]:
                if value not in known:
                    errors.append(f"{where}.{key}: unknown {_SINGULAR[key]} {value!r}")
        if rule["purpose"] not in purposes:
            errors.append(f"{where}.purpose: unknown purpose {rule['purpose']!r}")
        if rule["consent"] not in CONSENT_MODES:
            errors.append(f"{where}.consent: must be one of {', '.join(CONSENT_MODES)}")
        if rule["basis"] not in bases:
            errors.append(f"{where}.basis: unknown basis {rule['basis']!r}")
        for kind in rule.get("obligations", []) or []:
            if kind not in {k.value for k in ObligationKind} or kind == ObligationKind.REDACT_FIELDS.value:
                errors.append(f"{where}.obligations: unknown obligation {kind!r}")
        names = rule.get("consent_must_name", [])
        if not _is_str_list(names) or set(names) - set(CONSENT_NAMES):
            errors.append(f"{where}.consent_must_name: may list only {', '.join(CONSENT_NAMES)}")
        if names and rule["consent"] != "required":
            errors.append(f"{where}.consent_must_name: only meaningful with consent: required")
        if any(role in never for role in rule["requesters"] if isinstance(never, Mapping)):
            errors.append(f"{where}.requesters: names a role the `never` section excludes")
        if _is_str_list(rule["subjects"]) and _is_str_list(rule["categories"]) and _is_str_list(rule["requesters"]):
            for subject in rule["subjects"]:
                for category in rule["categories"]:
                    for role in rule["requesters"]:
                        cell = (subject, category, str(rule["purpose"]), role)
                        if cell in cells:
                            errors.append(
                                f"{where}: overlaps rule {cells[cell]} for {subject} / {category} / "
                                f"{rule['purpose']} / {role}"
                            )
                        cells.setdefault(cell, str(rule["id"]))
    return errors


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


def _basis(spec: Mapping[str, Any]) -> LawfulBasis:
    return LawfulBasis(
        article6=str(spec["article6"]),
        article9=spec.get("article9"),
        dpa2018_schedule1=spec.get("dpa2018_schedule1"),
        confidentiality=spec.get("confidentiality"),
    )


def policy_from_data(data: Any, source: str = "<data>") -> Policy:
    """Build a :class:`Policy` from parsed YAML/JSON, or raise :class:`PolicyError`."""
    errors = check_policy_data(data)
    if errors:
        raise PolicyError(errors)
    purposes = {
        name: PurposeDefinition(
            name=name,
            purpose_of_use=spec["purpose_of_use"],
            consent_purposes=frozenset(spec.get("consent_purposes", [])),
            justification_required=bool(spec.get("justification_required", False)),
            break_glass_roles=frozenset(spec.get("break_glass_roles", [])),
            break_glass_purpose_of_use=spec.get("break_glass_purpose_of_use"),
        )
        for name, spec in data["purposes"].items()
    }
    categories = {
        name: CategoryDefinition(
            name=name,
            sensitive=spec["sensitive"],
            labels=tuple(spec.get("labels", [])),
            value_set=spec.get("value_set"),
            fields=tuple(spec.get("fields", [])),
            article9_applies=spec.get("article9_applies", True),
            description=spec.get("description", ""),
        )
        for name, spec in data["categories"].items()
    }
    bases = {name: _basis(spec) for name, spec in data["bases"].items()}
    rules = tuple(
        Rule(
            id=r["id"],
            design_row=str(r.get("design_row", "")),
            subjects=tuple(r["subjects"]),
            categories=tuple(r["categories"]),
            purpose=r["purpose"],
            requesters=tuple(r["requesters"]),
            consent=r["consent"],
            basis_name=r["basis"],
            basis=bases[r["basis"]],
            obligations=tuple(ObligationKind(k) for k in r.get("obligations", []) or []),
            consent_must_name=frozenset(r.get("consent_must_name", []) or []),
            note=" ".join(str(r.get("note", "")).split()),
        )
        for r in data["rules"]
    )
    index = {
        (subject, category, rule.purpose, role): rule
        for rule in rules
        for subject in rule.subjects
        for category in rule.categories
        for role in rule.requesters
    }
    conf = data["confidentiality"]
    return Policy(
        id=data["policy"]["id"],
        version=data["policy"]["version"],
        title=str(data["policy"].get("title", "")),
        source=source,
        combine=data["consent_evaluation"]["combine"],
        consent_scopes=frozenset(data["consent_evaluation"]["scopes"]),
        consent_actions=frozenset(data["consent_evaluation"]["actions"]),
        purposes=purposes,
        categories=categories,
        bases=bases,
        never=dict(data["never"]),
        restricted_redact_fields=tuple(conf["restricted"]["redact_fields"]),
        restricted_withhold_categories=frozenset(conf["restricted"].get("withhold_categories", [])),
        very_restricted_purposes=frozenset(conf["very-restricted"].get("disclose_only_for", [])),
        very_restricted_obligations=tuple(ObligationKind(k) for k in conf["very-restricted"].get("obligations", [])),
        rules=rules,
        unclassified_category=(data.get("unclassified") or {}).get("category"),
        unclassified_subjects=frozenset((data.get("unclassified") or {}).get("subjects") or ()),
        _index=index,
    )


def read_policy_file(path: str | Path) -> Any:
    """Parse a policy file (YAML, of which JSON is a subset)."""
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def load_policy(path: str | Path | None = None) -> Policy:
    """Load and validate a policy file; the packaged baseline when no path is given."""
    if path is None:
        return default_policy()
    return policy_from_data(read_policy_file(path), source=str(path))


_DEFAULT: Policy | None = None


def default_policy() -> Policy:
    """The packaged baseline policy, loaded once."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = policy_from_data(read_policy_file(BASELINE_POLICY_PATH), source=str(BASELINE_POLICY_PATH))
    return _DEFAULT
