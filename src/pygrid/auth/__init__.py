"""Identity: roles and permissions, password hashing, JSON Web Tokens."""
