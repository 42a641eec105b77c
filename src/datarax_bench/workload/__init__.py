"""What is measured: the scenario catalog, the reference semantics of every op and its
counter-based randomness, the synthetic data and its on-disk formats, the JSON Schemas."""
