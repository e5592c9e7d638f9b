"""The Network's domain: join tokens, the Node registry, search, routing; and the Node's side of
membership. The HTTP contract is docs/network.md."""
