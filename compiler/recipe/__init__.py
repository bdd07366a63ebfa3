"""A recipe -> its resolved jobs: types, sites, merge rules, sweeps, semantic checks."""
