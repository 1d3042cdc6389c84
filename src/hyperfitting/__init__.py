"""hyperfitting: hyperfit any causal LM, measure what it does to greedy generation, and test why."""

__version__ = "0.1.0"
