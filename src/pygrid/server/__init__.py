"""HTTP machinery shared by the Node and Network apps: factory, errors, validation, auth, OpenAPI."""
