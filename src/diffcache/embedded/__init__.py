"""Embedded tiny models: procedural data and prompt grammar, analytic checker, pipelines, training, weights."""
