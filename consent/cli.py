"""Plain functions behind `familyview policy explain` and `familyview policy check`."""

from __future__ import annotations

from pathlib import Path

import yaml

from .policies import Policy, check_policy_data, load_policy, read_policy_file


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def explain(policy: Policy) -> str:
    """The policy as a table an IG officer can read."""
    consent_words = {
        "not-consulted": "not the basis",
        "refusal-withholds": "withheld if refused",
        "required": "needs consent naming " + "{names}",
        "overridden": "refusal overridden, recorded",
    }
    rows = []
    for rule in policy.rules:
        words = consent_words[rule.consent].format(names=", ".join(sorted(rule.consent_must_name)) or "it")
        rows.append(
            [
                rule.id,
                rule.design_row or "-",
                ", ".join(rule.subjects),
                ", ".join(rule.categories),
                rule.purpose,
                ", ".join(rule.requesters),
                words,
                str(rule.basis),
                ", ".join(k.value for k in rule.obligations) or "-",
            ]
        )
    headers = ["rule", "DESIGN row", "subject", "data", "purpose", "requester", "consent", "basis", "obligations"]
    sg = policy.purposes["safeguarding"]
    lines = [
        f"Policy {policy.id} version {policy.version}" + (f" - {policy.title}" if policy.title else ""),
        f"Source: {policy.source}",
        "",
        _table(headers, rows),
        "",
        "Always:",
        "- Anything no rule above covers is denied (no rule).",
        "- No legitimate relationship with the family: denied, except safeguarding by "
        + (", ".join(sorted(sg.break_glass_roles)) or "nobody")
        + f" (break the glass, audited as {sg.break_glass_purpose_of_use}, queued for IG review).",
        "- Safeguarding requests need a justification.",
    ]
    for role, reason in sorted(policy.never.items()):
        lines.append(f"- {role}: never sees clinical data. {reason}")
    if policy.unclassified_category:
        lines.append(
            f"- A record about a {', '.join(sorted(policy.unclassified_subjects))} held by another organisation than "
            f"the requester's, that no code list or term places, is decided as `{policy.unclassified_category}`."
        )
    lines += [
        "- Restricted (R) records: "
        + ", ".join(policy.restricted_redact_fields)
        + " removed; "
        + ", ".join(sorted(policy.restricted_withhold_categories))
        + " withheld.",
        "- Very restricted (V) records: withheld except for "
        + ", ".join(sorted(policy.very_restricted_purposes))
        + ", and then without "
        + ", ".join(policy.restricted_redact_fields)
        + ".",
        f"- Several Consents of one person: {policy.combine} governs, among the Consents of the organisation "
        "that holds the record (a Consent speaks only for its recorder's records); for identity and contact, "
        "a refusal recorded by any organisation holding the person's record withholds; disagreeing "
        "organisations are queued for IG review.",
        "- Purpose of use in audit: "
        + ", ".join(f"{name} -> {p.purpose_of_use}" for name, p in sorted(policy.purposes.items()))
        + ".",
    ]
    return "\n".join(lines)


def policy_explain(path: str | Path | None = None) -> str:
    """`familyview policy explain [FILE]`: the (baseline or given) policy as a table."""
    return explain(load_policy(path))


def policy_check(path: str | Path) -> list[str]:
    """`familyview policy check FILE`: every problem with the file; empty when it is valid."""
    try:
        data = read_policy_file(path)
    except OSError as exc:
        return [f"cannot read {path}: {exc.strerror or exc}"]
    except yaml.YAMLError as exc:
        return [f"not valid YAML: {exc}"]
    return check_policy_data(data)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m consent", description="Read or check a disclosure policy.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_explain = sub.add_parser("explain", help="print the policy as a table")
    p_explain.add_argument("file", nargs="?", help="policy file (default: the packaged baseline)")
    p_check = sub.add_parser("check", help="validate a policy file")
    p_check.add_argument("file")
    args = parser.parse_args(argv)
    if args.command == "explain":
        errors = policy_check(args.file) if args.file else []
        if errors:
            print("\n".join(errors), file=sys.stderr)
            return 1
        print(policy_explain(args.file))
        return 0
    errors = policy_check(args.file)
    if errors:
        print(f"{args.file}: {len(errors)} problem(s)", file=sys.stderr)
        for error in errors:
            print(f"- {error}", file=sys.stderr)
        return 1
    print(f"{args.file}: valid")
    return 0
