"""Scoring reports: log parsing, the paper's tables as data, variant identity, comparison and plots."""
