"""Test hosts for procnetmon's end-to-end tests and benchmark (not part of the package)."""
