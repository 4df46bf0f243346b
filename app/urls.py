"""The one place for the gateway's URLs.

- ``CANONICAL_BASE``: the canonical URL of what the gateway defines (StructureDefinitions,
  CodeSystems, the $family-view OperationDefinition, audit extensions). It is an identifier,
  the same on every deployment; the pure consent engine holds it (consent.model), this module
  names it for app/.
- ``fhir_base``: where this deployment's FHIR API answers (fullUrl, Location, paging links):
  the configured public base URL (``FAMILYVIEW_PUBLIC_BASE_URL``) behind a proxy, else the
  URL the request came in on, with ``/fhir``."""
from __future__ import annotations

from consent.model import FAMILYVIEW_BASE

CANONICAL_BASE: str = FAMILYVIEW_BASE
FHIR_PATH = "/fhir"
# when no request and no configured public URL says where the API is (a command run offline)
OFFLINE_BASE = "http://familyview.invalid"


def fhir_base(public_base_url: str | None, request_base_url: str | None = None) -> str:
    """The FHIR base URL a client reaches: the public base URL if configured, else the request's."""
    return (public_base_url or request_base_url or OFFLINE_BASE).rstrip("/") + FHIR_PATH
