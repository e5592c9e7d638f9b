"""PyGrid: privacy-preserving, decentralised data science.

Importing ``pygrid`` is cheap on purpose: no Flask, SQLAlchemy, torch or cloud SDK is imported
here, so ``pygrid --help`` stays instant.
"""

__version__ = "0.1.0"
