"""The FHIR R4 REST surface: storage, search, bundles, validation and the HTTP views."""
