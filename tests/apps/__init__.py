"""Test-only Faust apps and helpers, run by the tests as worker subprocesses."""
