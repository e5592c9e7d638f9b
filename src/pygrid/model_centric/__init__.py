"""Model-centric federated learning on the Node: processes, cycles, reports, checkpoints.

Pure service code over a SQLAlchemy session and a blob store; the HTTP views in
``pygrid.apps.node.model_centric`` only translate.
"""
