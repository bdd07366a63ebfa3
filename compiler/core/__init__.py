"""What every stage stands on: source positions, the one located error, YAML loading, JSON Schema checks, terminal output."""
