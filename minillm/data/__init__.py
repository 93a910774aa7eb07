"""Deterministic data generators that ship with minillm (nothing downloads)."""
