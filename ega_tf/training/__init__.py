"""One run, and several in lockstep: what ``python -m ega_tf.train`` runs.

- ``loop``: ``run(config, workdir)`` and ``run_lockstep``, the epochs and
  steps of a group of runs;
- ``cell``: one run of a group (its model, step functions, checkpoints,
  history, progress);
- ``build``: the dataset, the frozen teacher and the compiled
  ``Distiller`` of a config;
- ``distiller``: the ``Distiller`` (a ``keras.Model``: the train and test
  steps), ``balance`` its gradient measurements and balanced weights;
- ``checkpointing``, ``divergence``, ``report``: checkpoints, a run whose
  loss stops being finite, and what a run reports (``results.json``);
- ``distribute`` (strategies), ``workdir`` (what a run's directory holds),
  ``probe`` (the test embeddings a run keeps for ``compare``).
"""
