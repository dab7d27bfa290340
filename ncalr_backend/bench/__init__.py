"""Benchmarks that print their figures and save them: ``python -m ncalr_backend.bench {scoring,training,quality}``."""
