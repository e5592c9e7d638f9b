"""Data-centric FL on a Node: datasets, job requests, review, the Worker queue, budgets, audit.

Services here take a SQLAlchemy session, a blob store and the acting user; the HTTP layer
(``pygrid.apps.node.data_centric`` and ``worker_api``) only translates requests to them.
See docs/data-centric.md for the whole story and every route.
"""
