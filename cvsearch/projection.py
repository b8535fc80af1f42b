"""A learned projection of global descriptors: triplet loss on labelled images.

For a catalog ("find this item of our shop", "similar flowers"), descriptors of
images of one class should lie closer to each other than to any other class's.
:class:`TripletProjection` learns a linear map ``e = normalise((x - mean) @ W)`` to
a small embedding (128 by default) with a triplet loss (Schroff et al., FaceNet,
CVPR 2015; batch-hard mining: Hermans et al., "In Defense of the Triplet Loss",
2017). Batches hold ``classes_per_batch`` classes of ``images_per_class`` images;
for each anchor the loss is ``max(0, d(a, p) - d(a, n) + margin)`` with squared
Euclidean distances of the unit embeddings (``2 - 2 cos``):

- ``mining="batch-hard"``: the farthest positive and the nearest negative of
  each anchor in its batch;
- ``mining="semi-hard"``: every anchor-positive pair, with the nearest negative
  that is still farther than the positive (the hardest negative when none is).

``W`` starts as the principal components of the training descriptors (the
PCA-128 baseline) and is trained with Adam. numpy only: a linear map of 1,280 x
128 trains in seconds on a CPU, and nothing is downloaded.
"""

from __future__ import annotations

import numpy as np

from cvsearch._validation import check_choice, check_float, check_int

MININGS = ("batch-hard", "semi-hard")


class PCAProjection:
    """Principal components of global descriptors, optionally whitened (the
    unsupervised reduction; Jegou & Chum, ECCV 2012, for whitening).

    ``e = normalise((x - mean) @ W)``, W the top ``dim`` components (divided by
    the square roots of their variances with ``whiten``).

    Parameters
    ----------
    dim : int
    whiten : bool

    Attributes
    ----------
    mean_ : ndarray of shape (n_features,), float32
    weights_ : ndarray of shape (n_features, dim), float32
    """

    kind = "pca"

    def __init__(self, dim: int = 128, *, whiten: bool = False):
        self.dim = check_int(dim, "dim", minimum=1)
        self.whiten = bool(whiten)
        self.mean_ = self.weights_ = None

    def get_params(self) -> dict:
        return {"dim": self.dim, "whiten": self.whiten}

    def __repr__(self) -> str:
        return f"PCAProjection(dim={self.dim}, whiten={self.whiten})"

    @property
    def fitted(self) -> bool:
        return self.weights_ is not None

    def fit(self, descriptors, labels=None) -> PCAProjection:
        """Fit on descriptors of shape (n, n_features), n > dim (labels unused).

        Returns
        -------
        self
        """
        x = _descriptor_matrix(descriptors)
        if self.dim > x.shape[1] or self.dim >= len(x):
            raise ValueError(f"dim {self.dim} needs more than {self.dim} descriptors "
                             f"of at least {self.dim} values; got {x.shape}")
        self.mean_ = x.mean(axis=0)
        _, singular, vt = np.linalg.svd((x - self.mean_).astype(np.float64),
                                        full_matrices=False)
        weights = vt[:self.dim].T
        if self.whiten:
            weights = weights / np.maximum(singular[:self.dim] / np.sqrt(len(x)), 1e-12)
        self.weights_ = weights.astype(np.float32)
        return self

    def transform(self, descriptors) -> np.ndarray:
        """The embeddings, shape (n, dim) (or (dim,)), float32, unit rows."""
        return _project(self, descriptors)

    def get_state(self) -> dict:
        return _state_of(self)

    @classmethod
    def from_state(cls, params: dict, state: dict) -> PCAProjection:
        return _with_state(cls(**params), state)


class TripletProjection:
    """A linear projection to a small embedding, trained with a triplet loss.

    Parameters
    ----------
    dim : int
        Embedding size (<= the descriptor size).
    margin : float
        Triplet margin on squared distances of unit vectors (which lie in [0, 4]).
    mining : {"batch-hard", "semi-hard"}
    steps : int
        Optimisation steps (batches).
    classes_per_batch, images_per_class : int
        Batch composition; classes with fewer images repeat theirs.
    learning_rate : float
        Adam's step size.
    random_state : int or None

    Attributes
    ----------
    mean_ : ndarray of shape (n_features,), float32
    weights_ : ndarray of shape (n_features, dim), float32
    losses_ : ndarray of shape (steps,), float64
        The mean loss of each batch, as training went.
    """

    def __init__(self, dim: int = 128, *, margin: float = 0.2,
                 mining: str = "batch-hard", steps: int = 2000,
                 classes_per_batch: int = 32, images_per_class: int = 4,
                 learning_rate: float = 1e-3, random_state: int | None = 0):
        self.dim = check_int(dim, "dim", minimum=1)
        self.margin = check_float(margin, "margin", minimum=0.0)
        self.mining = check_choice(mining, "mining", MININGS)
        self.steps = check_int(steps, "steps", minimum=0)
        self.classes_per_batch = check_int(classes_per_batch, "classes_per_batch",
                                           minimum=2)
        self.images_per_class = check_int(images_per_class, "images_per_class",
                                          minimum=2)
        self.learning_rate = check_float(learning_rate, "learning_rate", minimum=0.0)
        self.random_state = random_state
        self.mean_ = self.weights_ = None
        self.losses_ = np.zeros(0)

    def get_params(self) -> dict:
        return {"dim": self.dim, "margin": self.margin, "mining": self.mining,
                "steps": self.steps, "classes_per_batch": self.classes_per_batch,
                "images_per_class": self.images_per_class,
                "learning_rate": self.learning_rate, "random_state": self.random_state}

    kind = "triplet"

    def __repr__(self) -> str:
        return f"TripletProjection(dim={self.dim}, mining={self.mining!r})"

    @property
    def fitted(self) -> bool:
        return self.weights_ is not None

    def fit(self, descriptors, labels) -> TripletProjection:
        """Learn the projection from labelled descriptors.

        Parameters
        ----------
        descriptors : ndarray of shape (n, n_features), float
        labels : array_like of shape (n,)
            Any hashable labels; at least two classes with two images each.

        Returns
        -------
        self
        """
        x = _descriptor_matrix(descriptors)
        labels = np.asarray(labels)
        if len(x) != len(labels):
            raise ValueError(f"descriptors of shape {x.shape} do not match "
                             f"{len(labels)} labels")
        if self.dim > x.shape[1]:
            raise ValueError(f"dim {self.dim} is larger than the descriptors' "
                             f"{x.shape[1]} values")
        _, classes, counts = np.unique(labels, return_inverse=True, return_counts=True)
        usable = np.flatnonzero(counts >= 2)
        if len(usable) < 2:
            raise ValueError("fit needs at least two classes with two or more images "
                             "each")
        rng = np.random.default_rng(self.random_state)
        # start from the principal components (of at most 20,000 descriptors):
        # the PCA baseline, then improve it
        start = PCAProjection(self.dim).fit(x[np.sort(rng.permutation(len(x))[:20_000])])
        self.mean_ = start.mean_
        centred = x - self.mean_
        weights = start.weights_.astype(np.float64)
        members = [np.flatnonzero(classes == c) for c in usable]
        moment, second = np.zeros_like(weights), np.zeros_like(weights)
        beta1, beta2 = 0.9, 0.999
        losses = np.zeros(self.steps)
        for step in range(self.steps):
            chosen = rng.choice(len(members), min(self.classes_per_batch, len(members)),
                                replace=False)
            batch = np.concatenate([rng.choice(members[c], self.images_per_class,
                                               replace=len(members[c])
                                               < self.images_per_class)
                                    for c in chosen])
            batch_labels = np.repeat(chosen, self.images_per_class)
            losses[step], gradient = _triplet_gradient(
                centred[batch].astype(np.float64), batch_labels, weights,
                self.margin, self.mining)
            moment = beta1 * moment + (1 - beta1) * gradient
            second = beta2 * second + (1 - beta2) * gradient ** 2
            corrected = moment / (1 - beta1 ** (step + 1))
            weights -= self.learning_rate * corrected / (
                np.sqrt(second / (1 - beta2 ** (step + 1))) + 1e-8)
        self.weights_ = weights.astype(np.float32)
        self.losses_ = losses
        return self

    def transform(self, descriptors) -> np.ndarray:
        """The embeddings of descriptors.

        Parameters
        ----------
        descriptors : ndarray of shape (n, n_features) or (n_features,), float

        Returns
        -------
        ndarray of shape (n, dim) (or (dim,)), float32, rows of unit L2 norm
        """
        return _project(self, descriptors)

    def get_state(self) -> dict:
        """The fitted arrays (for saving without pickle)."""
        return _state_of(self)

    @classmethod
    def from_state(cls, params: dict, state: dict) -> TripletProjection:
        """A fitted projection from :meth:`get_params` and :meth:`get_state`.

        Raises
        ------
        ValueError
            If the arrays do not fit each other or the parameters.
        """
        return _with_state(cls(**params), state)


#: The projections a global index can hold, by their ``kind``.
PROJECTIONS = {"pca": PCAProjection, "triplet": TripletProjection}


def _descriptor_matrix(descriptors) -> np.ndarray:
    x = np.asarray(descriptors, np.float32)
    if x.ndim != 2 or not np.isfinite(x).all():
        raise ValueError(f"descriptors must be a finite matrix of shape (n, "
                         f"n_features), got shape {x.shape}")
    return x


def _project(projection, descriptors) -> np.ndarray:
    """normalise((x - mean) @ W) of one descriptor or a matrix of them."""
    if not projection.fitted:
        raise ValueError(f"this {type(projection).__name__} is not fitted: call fit "
                         "first")
    x = np.asarray(descriptors, np.float32)
    single = x.ndim == 1
    x = x.reshape(-1, x.shape[-1])
    if not np.isfinite(x).all():
        raise ValueError("descriptors hold NaN or infinity")
    if x.shape[1] != len(projection.mean_):
        raise ValueError(f"descriptors have {x.shape[1]} values, the projection "
                         f"was fitted on {len(projection.mean_)}")
    z = (x - projection.mean_) @ projection.weights_
    z /= np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    return z[0] if single else z


def _state_of(projection) -> dict:
    if not projection.fitted:
        raise ValueError(f"this {type(projection).__name__} is not fitted: call fit "
                         "first")
    return {"mean": projection.mean_, "weights": projection.weights_}


def _with_state(projection, state: dict):
    mean = np.asarray(state["mean"], np.float32)
    weights = np.asarray(state["weights"], np.float32)
    if mean.ndim != 1 or weights.shape != (len(mean), projection.dim) \
            or not (np.isfinite(mean).all() and np.isfinite(weights).all()):
        raise ValueError(f"a projection of shape {weights.shape} and mean of "
                         f"shape {mean.shape} do not make a {projection.dim}-d "
                         "projection")
    projection.mean_, projection.weights_ = mean, weights
    return projection


def _triplet_gradient(x: np.ndarray, labels: np.ndarray, weights: np.ndarray,
                      margin: float, mining: str):
    """Mean triplet loss of one batch and its gradient with respect to
    ``weights`` (float64 throughout)."""
    z = x @ weights
    norms = np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    e = z / norms
    distance = np.maximum(2.0 - 2.0 * (e @ e.T), 0.0)
    same = labels[:, None] == labels[None, :]
    positive = same & ~np.eye(len(labels), dtype=bool)
    anchors, positives, negatives = _mine(distance, positive, ~same, margin, mining)
    loss = distance[anchors, positives] - distance[anchors, negatives] + margin
    active = loss > 0
    n = max(len(loss), 1)
    grad_e = np.zeros_like(e)
    a, p, q = anchors[active], positives[active], negatives[active]
    # d(i, j) = 2 - 2 e_i . e_j: its gradient is -2 e_j for e_i and -2 e_i for e_j
    np.add.at(grad_e, a, (-2.0 * e[p] + 2.0 * e[q]) / n)
    np.add.at(grad_e, p, -2.0 * e[a] / n)
    np.add.at(grad_e, q, 2.0 * e[a] / n)
    # through the normalisation e = z / |z|
    grad_z = (grad_e - e * np.sum(grad_e * e, axis=1, keepdims=True)) / norms
    return float(np.maximum(loss, 0).sum() / n), x.T @ grad_z


def _mine(distance, positive, negative, margin, mining):
    """(anchor, positive, negative) index arrays of the batch's triplets."""
    rows = np.arange(len(distance))
    far = np.where(negative, distance, np.inf)
    if mining == "batch-hard":
        has = positive.any(1) & negative.any(1)
        hardest_positive = np.where(positive, distance, -np.inf).argmax(1)
        return rows[has], hardest_positive[has], far.argmin(1)[has]
    anchors, positives = np.nonzero(positive & negative.any(1)[:, None])
    d_ap = distance[anchors, positives][:, None]
    candidates = far[anchors]
    semi = np.where(candidates > d_ap, candidates, np.inf)
    chosen = np.where(np.isfinite(semi).any(1), semi.argmin(1), candidates.argmin(1))
    return anchors, positives, chosen
