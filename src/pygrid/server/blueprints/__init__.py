"""Blueprints every PyGrid server has: status, meta (OpenAPI, metrics) and users."""
