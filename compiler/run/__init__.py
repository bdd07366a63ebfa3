"""Runs on a cluster: the run folder, submit/status/logs/cancel, the scheduler backends, SSH to a login node."""
