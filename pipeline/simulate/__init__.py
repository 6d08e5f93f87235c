"""Simulated traffic: a pure seeded generator of domain events and a thin JetStream publisher."""
