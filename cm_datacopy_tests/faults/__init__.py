"""Fault injection for cm_datacopy: ``python -m cm_datacopy_tests.faults --trials 50``."""
