"""Support code of tests/test_frameworks_*.py."""
