"""NATS JetStream adapters for the mesh and hybrid placements (the ``mesh`` extra)."""
