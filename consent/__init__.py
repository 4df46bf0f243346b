"""familyview consent and lawful-basis engine.

A pure decision core: given who is asking, why, about whom, for what, and that person's
FHIR Consents, it says permit / deny / permit-with-redaction, on which UK GDPR and
DPA 2018 basis, relying on (or overriding) which Consent, with what obligations.
No web framework, database or network here: the policy is data, loaded once.
"""

from .engine import consent_finding, decide, effective_category
from .fhir_consent import ConsentRecord
from .classification import explain_classification
from .labels import (
    categories_for_resource,
    classify_coding,
    classify_text,
    data_items_for_resource,
    label_resource,
    record_date,
)
from .model import (
    ConsentRef,
    DataItem,
    DataSubject,
    DisclosureDecision,
    DisclosureRequest,
    LawfulBasis,
    LegitimateRelationship,
    Obligation,
    ObligationKind,
    Outcome,
    Purpose,
    Requester,
)
from .policies import Policy, PolicyError, load_policy

__all__ = [
    "ConsentRecord",
    "ConsentRef",
    "DataItem",
    "DataSubject",
    "DisclosureDecision",
    "DisclosureRequest",
    "LawfulBasis",
    "LegitimateRelationship",
    "Obligation",
    "ObligationKind",
    "Outcome",
    "Policy",
    "PolicyError",
    "Purpose",
    "Requester",
    "categories_for_resource",
    "classify_coding",
    "classify_text",
    "consent_finding",
    "data_items_for_resource",
    "decide",
    "effective_category",
    "record_date",
    "explain_classification",
    "label_resource",
    "load_policy",
]
