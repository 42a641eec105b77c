"""A cell in its own process: the runner that plans and supervises cells, the worker that
measures one, the pool of worker processes and the cell's result."""
