"""Tools for developing LossLens (not imported by the app): the harness shared by tests/e2e and bench/."""
