"""Ingest: every write (REST create/update, transaction and batch Bundles) goes through one pipeline."""
