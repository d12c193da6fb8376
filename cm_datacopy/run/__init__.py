"""A run's lifecycle: plan, resume, run the chunks, publish, verify, report."""
