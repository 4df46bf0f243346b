"""The demo users of the embedded default's demo sign-in: one per kind of practitioner in the
DESIGN.md scenarios, at the demo data's organisations (app.demo.scenarios)."""
from __future__ import annotations

from dataclasses import dataclass

from app.demo import scenarios as s


@dataclass(frozen=True)
class DemoUser:
    key: str
    name: str
    role: str
    org: str
    org_name: str
    note: str = ""

    @property
    def role_words(self) -> str:
        return ROLE_PLAIN.get(self.role, self.role)


ROLE_PLAIN = {"health-visitor": "health visitor", "midwife": "midwife", "gp": "GP", "mash": "MASH practitioner",
              "ig-officer": "IG officer", "admin": "administrator", "source-system": "source system"}

DEMO_USERS = (
    DemoUser("hv", "Sam Okafor", "health-visitor", s.HEALTH_VISITING.org, s.HEALTH_VISITING.name,
             "Health visitor for the demo families"),
    DemoUser("midwife", "Maya Patel", "midwife", s.MATERNITY.org, s.MATERNITY.name),
    DemoUser("gp", "Dr Gareth Price", "gp", s.GP_FAMILY.org, s.GP_FAMILY.name),
    DemoUser("mash", "Morgan Ellis", "mash", s.MASH_ORG, "Riverside Multi-Agency Safeguarding Hub",
             "Reaches a family only on a safeguarding basis"),
    DemoUser("unrelated", "Uma Reid", "health-visitor", s.UNRELATED_ORG, "Northgate Community Health Trust",
             "An organisation with no relationship to the demo families"),
    DemoUser("ig", "Ian Grant", "ig-officer", s.IG_ORG, "Information Governance", "Reads the audit, never clinical records"),
)
BY_KEY = {u.key: u for u in DEMO_USERS}
