"""The IG tests share the family tests' world: one server per backend with the ten demo
families loaded through the HTTP ingest path."""
from tests.family.conftest import world  # noqa: F401
