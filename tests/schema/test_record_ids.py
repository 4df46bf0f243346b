"""Logical ids the gateway gives new records and linked persons (app.db.new_id)."""
import re
import time
import uuid

from app.db import new_id

FHIR_ID = re.compile(r"^[A-Za-z0-9\-\.]{1,64}$")


def test_ids_are_canonical_uuid7_and_valid_fhir_ids():
    for _ in range(2000):
        value = new_id()
        parsed = uuid.UUID(value)
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
        assert str(parsed) == value  # canonical lower-case text, as str(UUID) writes it
        assert FHIR_ID.match(value)


def test_ids_are_unique_and_sort_by_creation_time():
    first = [new_id() for _ in range(5000)]
    assert len(set(first)) == len(first)
    time.sleep(0.002)
    later = new_id()
    assert all(later > earlier for earlier in first)
    # the first 48 bits are the Unix time in milliseconds
    ms = uuid.UUID(later).int >> 80
    assert abs(ms - time.time() * 1000) < 5_000
