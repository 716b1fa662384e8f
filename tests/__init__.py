"""The project's own tests; a package so helpers import as ``tests.fake_mimic``."""
