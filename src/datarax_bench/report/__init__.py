"""What a run's results become: the aggregated table, plots, comparisons between runs and the
Weights & Biases export."""
