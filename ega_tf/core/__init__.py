"""What every part of ega_tf shares, none of it importing TensorFlow at
module level: the errors a user can fix (``errors``), the registries of
names (``registry``), constants (``constants``), atomic file writes
(``io_utils``) and the process's settings (``runtime``: TensorFlow's quiet
start, the seed, the dtype policy, op determinism)."""
