"""Dagster wiring of the InstructCV reproduction: one `Definitions`, jobs, resources."""
