"""A real OpenSSH server for the remote tests (tests/test_remote.py)."""
