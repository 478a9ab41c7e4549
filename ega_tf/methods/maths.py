"""The maths several distillation methods share: Pearson correlations
between rows (``standardize_rows``, ``correlation_matrix``), a Frobenius
norm with a finite gradient at 0, rows scaled to unit length, Hinton's KD
of each example (the student's loss has a KD term whatever the method)
and logit standardization. Each method's own loss functions live in its
file beside this one (``ega_tf.methods.ega`` holds ``ega_loss`` and
``ega_terms``, ``ega_tf.methods.rkd`` ``rkd_loss``, ...).

Everything is computed in float32 whatever the input dtype, so the graph
terms are exact under mixed precision. Rows with zero variance (a constant
vector) have no defined correlation; they correlate 0 with everything
instead of producing NaN (the published EGA code divides by the standard
deviation unguarded). Values and gradients are finite for every input,
including B = 1 and D = 1.
"""

from __future__ import annotations

from ega_tf.nn.keras_ops import ops

# A row whose centred energy is below this fraction (squared) of its raw
# energy is treated as constant: float32 cannot resolve a spread of 1e-6 of the
# values, so what is left after centring is rounding noise, not signal.
_REL_TOL = 1e-6
_TINY = 1e-30  # keeps an all-zero row at zero instead of 0 / 0


def f32(x):
    """``x`` cast to float32."""
    return ops.cast(x, "float32")


def standardize_rows(x):
    """Centres each row on its own mean and scales it to unit L2 norm.

    A zero-variance row becomes all zeros. The returned rows z satisfy
    z_i . z_j = Pearson correlation of rows i and j.
    """
    x = f32(x)
    centred = x - ops.mean(x, axis=-1, keepdims=True)
    energy = ops.sum(ops.square(centred), axis=-1, keepdims=True)
    raw_energy = ops.sum(ops.square(x), axis=-1, keepdims=True)
    # max(), not +: the result is exact whenever the row has real variance.
    floor = _REL_TOL**2 * raw_energy + _TINY
    return centred * ops.rsqrt(ops.maximum(energy, floor))


def gram(z_a, z_b):
    """[M, N] inner products of the rows of ``z_a`` and ``z_b``."""
    return ops.matmul(z_a, ops.transpose(z_b))


def correlation_matrix(a, b):
    """Pearson correlations between the rows of ``a`` [M, D] and ``b`` [N, D].

    Returns a float32 [M, N] matrix; ``a`` and ``b`` may be any float dtype.
    """
    return gram(standardize_rows(a), standardize_rows(b))


def sqrt_or_zero(x):
    """sqrt(x) for x >= 0 with a zero (not infinite) gradient at 0."""
    positive = x > 0
    return ops.where(positive, ops.sqrt(ops.where(positive, x, 1.0)), 0.0)


def frobenius_norm(m):
    """sqrt(sum(m**2)) with a finite (zero) gradient at m == 0.

    ``ops.sqrt`` has an infinite derivative at 0, which happens in practice
    (e.g. B = 1 makes E_t == E_s exactly), so the zero case is routed around
    the square root (the "double where" idiom).
    """
    return sqrt_or_zero(ops.sum(ops.square(f32(m))))


def unit_rows(x, eps=1e-12):
    """Each row divided by its L2 norm (at least ``eps``). The floor is
    taken before the square root: a zero row (RKD's angles have one per
    anchor) then has a finite gradient under XLA too, whose square root's
    gradient at 0 is NaN (TensorFlow's own kernel returns 0 there)."""
    x = f32(x)
    return x / ops.sqrt(ops.maximum(
        ops.sum(ops.square(x), axis=-1, keepdims=True), eps * eps))


def kd_per_example(teacher_logits, student_logits, temperature=4.0):
    """Hinton KD of each example: KL(softmax(t/T) || softmax(s/T)) * T^2."""
    t = f32(teacher_logits) / temperature
    s = f32(student_logits) / temperature
    p_t = ops.softmax(t, axis=-1)
    kl = ops.sum(
        p_t * (ops.log_softmax(t, axis=-1) - ops.log_softmax(s, axis=-1)),
        axis=-1)
    return kl * temperature**2


def standardize_logits(logits, eps=1e-7):
    """Logit standardization (Sun et al., CVPR 2024): each row minus its
    mean, divided by eps + its standard deviation over the classes (the
    unbiased one, with n - 1, as ``torch.std``), so that a softmax at T
    compares the logits' relations, not their scale."""
    z = f32(logits)
    n = ops.cast(ops.shape(z)[-1], "float32")
    centred = z - ops.mean(z, axis=-1, keepdims=True)
    var = ops.sum(ops.square(centred), axis=-1, keepdims=True) / ops.maximum(
        n - 1.0, 1.0)
    # Constant logits: sqrt's derivative at 0 is infinite.
    return centred / (eps + sqrt_or_zero(var))


def maybe_standardize(teacher_logits, student_logits, standardize):
    """Both logits standardized when ``standardize`` (a method's
    ``logit_standardization`` field), else as they are."""
    if not standardize:
        return teacher_logits, student_logits
    return standardize_logits(teacher_logits), standardize_logits(
        student_logits)
