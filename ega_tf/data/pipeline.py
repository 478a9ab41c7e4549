"""tf.data pipelines yielding the student's and the teacher's uint8 views.

Training examples are ``({"student": s, "teacher": t}, label)`` built by
``augment.make_views``; evaluation examples carry the plain image in both
places and a weight (0 for padding). The training stream of one epoch is

    split (in memory, or decoded in parallel by TFDS) -> cache (decoded
    images, when they fit) -> shuffle (seed, epoch) -> number the examples
    -> global batches -> this input pipeline's rows -> views (parallel,
    seeded by (seed, epoch, position)) -> per-replica batches -> prefetch

so epoch ``e`` is a pure function of the seed and ``e``: a run resumed at
any epoch and step sees exactly the examples and views an uninterrupted run
would, and one device, N devices or M machines see the same global batches
(each replica its slice). ``deterministic=False`` lets the parallel view map
hand out elements as they finish (faster on a busy machine; the same views,
in a less predictable order within a batch).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from ega_tf.core.errors import UserError
from ega_tf.core.registry import check_choice
from ega_tf.data import augment

CACHE_POLICIES = ("auto", "memory", "none")
DEFAULT_SHUFFLE_BUFFER = 16384  # for streamed splits that are not cached
AUTOTUNE = tf.data.AUTOTUNE
GiB = 1 << 30


def check_cache_policy(cache):
    check_choice("input.cache", cache, CACHE_POLICIES)


def _cached(split, ds, cache, cache_limit_gb):
    """Caches the decoded images of a streamed split in memory, if asked to
    or (``auto``) if they take at most ``cache_limit_gb``."""
    check_cache_policy(cache)
    if split.in_memory or cache == "none":
        return ds, split.in_memory
    if cache == "memory" or split.nbytes <= cache_limit_gb * GiB:
        return ds.cache(), True
    return ds, False


def _rows(batch, lo, hi):
    return tf.nest.map_structure(lambda t: t[lo:hi], batch)


def _examples(split, features):
    """(image, label) examples, or (image, label, per-image rows): the
    clean view's teacher features, or a teacher store's view parameters
    and image."""
    ds = split.dataset()
    if features is None:
        return ds
    count = len(tf.nest.flatten(features)[0])
    if count != len(split):
        raise ValueError(f"{count} feature rows for {len(split)} images.")
    return tf.data.Dataset.zip((ds, tf.data.Dataset.from_tensor_slices(
        features))).map(lambda e, f: (*e, f))


def _read_store(store):
    """A batch map: the store rows the examples chose (``store_row``) ->
    their stored teacher features (``teacher_features``), read from the
    memory-mapped array."""
    width = store.width

    def read(x, label):
        x = dict(x)
        rows = x.pop("store_row")
        features = tf.numpy_function(store.rows, [rows], tf.float32,
                                     stateful=False)
        x["teacher_features"] = tf.ensure_shape(features, [None, width])
        return x, label
    return read


class TrainStream:
    """The training batches of every epoch.

    Args:
        split: the training ``Split`` (labels -1 for unlabeled examples).
        global_batch: examples per step, over all replicas.
        seed: fixes the order and the views of every epoch.
        padding: RandomCrop padding; None scales the published 4 px with
            the resolution (``augment.default_padding``).
        teacher_view: ``independent`` | ``same`` | ``clean``.
        shuffle_buffer: None shuffles over the whole split when it is in
            memory or cached, else over ``DEFAULT_SHUFFLE_BUFFER``.
        features: the teacher's features of every image (``clean`` view
            only); the examples then carry them as ``teacher_features``
            instead of the teacher's image.
        index: also carry each example's position in ``split`` as
            ``index`` (CRD's memory banks have one row per example).
        store: a teacher store (``training.teacher_store.Store``): each
            example reads one of its image's M stored teacher views, drawn
            from (seed, epoch, position), as ``teacher_features``; with
            ``teacher_view=same`` the student is shown that very view.
        store_images: the store's image of each example of ``split``
            (default: the same position; a split held out of the one the
            store was computed on passes the positions it kept).
    """

    def __init__(self, split, global_batch, *, seed=0, padding=None,
                 teacher_view="independent", deterministic=True,
                 cache="auto", cache_limit_gb=8.0, shuffle_buffer=None,
                 features=None, index=False, store=None,
                 store_images=None):
        augment.check_teacher_view(teacher_view)
        if len(split) < global_batch:
            raise UserError(f"batch_size {global_batch} exceeds the "
                            f"{len(split)} training images; lower "
                            "--batch_size.")
        self.global_batch = int(global_batch)
        self.seed = int(seed)
        self.padding = augment.padding_for(split.image_size, padding)
        self.teacher_view = teacher_view
        self.deterministic = deterministic
        if features is not None and teacher_view != "clean":
            raise ValueError("Cached teacher features need teacher_view="
                             "clean: an augmented view has no fixed "
                             "features.")
        if store is not None:
            if features is not None or teacher_view == "clean":
                raise ValueError("A teacher store holds augmented views; "
                                 "teacher_view=clean has its own cache.")
            if store_images is None:
                store_images = np.arange(len(split))
            store_images = np.asarray(store_images, np.int64)
            if len(store_images) != len(split) or (
                    len(store_images) and store_images.max() >= len(store)):
                raise ValueError(f"A teacher store of {len(store)} images "
                                 f"for {len(split)}.")
            features = (store.views[store_images], store_images)
        self.store = store
        self.base, whole = _cached(split, _examples(split, features), cache,
                                   cache_limit_gb)
        self.index = bool(index)
        self.buffer = shuffle_buffer or (
            len(split) if whole else min(len(split), DEFAULT_SHUFFLE_BUFFER))
        self.steps_per_epoch = len(split) // self.global_batch

    def epoch(self, epoch, *, skip=0, shard=0, num_shards=1,
              replicas_per_shard=1):
        """Epoch ``epoch``'s per-replica batches for input pipeline
        ``shard`` of ``num_shards``, from global step ``skip`` on."""
        rows = self.global_batch // num_shards
        per_replica = rows // replicas_per_shard
        seed, padding, view = self.seed, self.padding, self.teacher_view
        with_index, store = self.index, self.store

        def views(position, example):
            if with_index:
                index, (image, label, *features) = example
            else:
                image, label, *features = example
            pair = tf.stack([tf.constant(seed, tf.int64),
                             epoch * (1 << 32) + position])
            if store is not None:
                # One of the image's stored views, drawn from a seed of its
                # own (the student's view draws from ``pair`` as without a
                # store).
                params, stored_image = features[0]
                chosen = tf.random.stateless_uniform(
                    [], tf.random.experimental.stateless_fold_in(pair, 1),
                    0, store.num_views, tf.int64)
                student = (augment.apply_view(image, params[chosen], padding)
                           if view == "same" else augment.make_views(
                               image, pair, padding)["student"])
                x = {"student": student,
                     "store_row": stored_image * store.num_views + chosen}
            else:
                x = augment.make_views(image, pair, padding, view)
                if features:  # the clean view's features, read
                    x = {"student": x["student"],
                         "teacher_features": features[0]}
            if with_index:
                x["index"] = index
            return x, label

        # Fixed per epoch (reshuffle_each_iteration=False): the order does
        # not depend on how many iterators came before.
        base = self.base.enumerate() if with_index else self.base
        ds = base.shuffle(self.buffer, seed=seed * 100_003 + epoch,
                          reshuffle_each_iteration=False)
        ds = ds.enumerate().batch(self.global_batch, drop_remainder=True)
        ds = ds.skip(skip)
        if num_shards > 1:
            ds = ds.map(lambda p, e: _rows((p, e), shard * rows,
                                           (shard + 1) * rows))
        ds = ds.unbatch().map(views, num_parallel_calls=AUTOTUNE,
                              deterministic=self.deterministic)
        ds = ds.batch(per_replica, drop_remainder=True)
        if store is not None:
            ds = ds.map(_read_store(store))
        return ds.prefetch(AUTOTUNE)

    def distributed(self, strategy, epoch, skip=0):
        """Epoch ``epoch`` from global step ``skip``, as a distributed
        dataset: each replica gets its slice of every global batch."""
        replicas = strategy.num_replicas_in_sync

        def per_pipeline(ctx):
            return self.epoch(epoch, skip=skip, shard=ctx.input_pipeline_id,
                              num_shards=ctx.num_input_pipelines,
                              replicas_per_shard=(replicas
                                                  // ctx.num_input_pipelines))
        return strategy.distribute_datasets_from_function(per_pipeline)


class EvalStream:
    """The plain images for both models, in order, in global batches of
    ``global_batch``; the last one is padded with weight-0 examples to the
    same size (rounded up to a multiple of the replicas), so that every
    replica gets an equal, non-empty slice, every example counts once and
    every batch has one shape (the evaluation step is traced once)."""

    def __init__(self, split, global_batch, *, cache="auto",
                 cache_limit_gb=8.0, features=None, **_):
        self.global_batch = int(global_batch)
        self.base, _ = _cached(split, _examples(split, features), cache,
                               cache_limit_gb)
        self.steps = -(-len(split) // self.global_batch)

    def epoch(self, *, shard=0, num_shards=1, replicas_per_shard=1):
        replicas = num_shards * replicas_per_shard

        def pad(t, extra, value=0):
            shape = tf.concat([[extra], tf.shape(t)[1:]], 0)
            return tf.concat([t, tf.fill(shape, tf.cast(value, t.dtype))], 0)

        total = -(-self.global_batch // replicas) * replicas

        def pad_and_split(images, labels, *features):
            n = tf.shape(labels)[0]
            extra = total - n
            weight = tf.concat([tf.ones([n]), tf.zeros([extra])], 0)
            padded = (pad(images, extra), pad(labels, extra, -1), weight,
                      *[pad(f, extra) for f in features])
            per = total // replicas
            lo = shard * replicas_per_shard * per
            mine = _rows(padded, lo, lo + replicas_per_shard * per)
            return tf.data.Dataset.from_tensor_slices(tf.nest.map_structure(
                lambda t: tf.reshape(t, tf.concat(
                    [[replicas_per_shard, per], tf.shape(t)[1:]], 0)), mine))

        def example(x, y, w, *features):
            if features:
                return {"student": x, "teacher_features": features[0]}, y, w
            return {"student": x, "teacher": x}, y, w

        ds = self.base.batch(self.global_batch).flat_map(pad_and_split)
        return ds.map(example).prefetch(AUTOTUNE)

    def distributed(self, strategy):
        replicas = strategy.num_replicas_in_sync

        def per_pipeline(ctx):
            return self.epoch(shard=ctx.input_pipeline_id,
                              num_shards=ctx.num_input_pipelines,
                              replicas_per_shard=(replicas
                                                  // ctx.num_input_pipelines))
        return strategy.distribute_datasets_from_function(per_pipeline)


def train_dataset(split, batch_size, *, epoch=0, **kwargs):
    """One epoch of training batches on one device (``TrainStream``)."""
    return TrainStream(split, batch_size, **kwargs).epoch(epoch)


def eval_dataset(split, batch_size, **kwargs):
    """The evaluation batches on one device (``EvalStream``)."""
    return EvalStream(split, batch_size, **kwargs).epoch()
