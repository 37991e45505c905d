"""Scoring: Rouge-L (rouge-score, stemmed) and exact match, aggregated per task and setting."""
