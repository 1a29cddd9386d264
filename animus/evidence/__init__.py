"""Evidence outsiders can check: Merkle tree, signed checkpoints, proofs, bundles."""
