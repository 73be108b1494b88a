"""Training, evaluation, checkpoints and distributed helpers; usable without the CLI."""
