"""Information governance: the review queue of safeguarding overrides and break-glass views,
subject access (disclosure) reports, audit export, and notifications delivered to the
holders of disclosed records. Plain service functions return data; the routes
(``app.ig.routes``) and the IG pages put FHIR, CSV or HTML on top."""
