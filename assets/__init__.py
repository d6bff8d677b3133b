"""Thin Dagster wrappers, one module per stage of the InstructCV pipeline."""
