"""What ``python -m ega_tf.compare`` runs: the grid of cells (``grid``),
the search of each setting's weights on the validation split
(``tuning``), the tables with paired intervals (``tables``) and the
pictures (``pictures``)."""
