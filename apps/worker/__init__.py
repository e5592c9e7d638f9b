"""The PyGrid Worker: pulls jobs from its Node and runs them sandboxed."""
