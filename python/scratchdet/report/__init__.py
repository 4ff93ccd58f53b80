"""Scoring reports: log parsing, the paper\x27s tables as data, comparison and plots."""
