"""Event contracts of the domain event catalog: models, subjects, ids, canonical JSON and versioning."""
