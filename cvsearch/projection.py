"""A learned projection of global descriptors: triplet loss on labelled images.

For a catalog ("find this item of our shop", "similar flowers"), descriptors of
images of one class should lie closer to each other than to any other class's.
:class:`TripletProjection` learns a map to a small embedding (128 by default),
``e = normalise(c @ W + relu(c @ A + a) @ B)`` with ``c = x - mean`` (a linear map
and a residual hidden layer; ``hidden=0`` keeps only the linear map), with a
triplet loss (Schroff et al., FaceNet,
CVPR 2015; batch-hard mining: Hermans et al., "In Defense of the Triplet Loss",
2017). Batches hold ``classes_per_batch`` classes of ``images_per_class`` images;
for each anchor the loss is ``max(0, d(a, p) - d(a, n) + margin)`` with squared
Euclidean distances of the unit embeddings (``2 - 2 cos``):

- ``mining="batch-hard"``: the farthest positive and the nearest negative of
  each anchor in its batch;
- ``mining="semi-hard"``: every anchor-positive pair, with the nearest negative
  that is still farther than the positive (the hardest negative when none is).

A triplet loss alone pulls the embedding toward the trained classes and forgets
what the descriptor knows of others (on Caltech-101's 20 held-out classes: mAP
0.63 against 0.70 for the raw descriptor, benchmarks/results/learned.md). So a
second term, weighted by ``similarity_weight``, keeps the cosines of each batch's
embeddings near those of the centred descriptors (a similarity-preserving
distillation, as in Tung & Mori, ICCV 2019): the mean squared difference over
pairs.

``W`` starts as the principal components of the training descriptors (the
PCA-128 baseline), ``B`` at zero, so training starts from PCA; all is trained
with Adam, and the weights kept are a moving average of the steps' (Polyak
averaging, ``averaging``). numpy only: 1,280 -> 512 -> 128 trains in a minute
or two on a CPU, and nothing is downloaded.
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

    @staticmethod
    def array_names(params: dict) -> tuple:
        """Names of the arrays :meth:`get_state` gives."""
        return ("mean", "weights")


class TripletProjection:
    """A projection to a small embedding, trained with a triplet loss.

    Parameters
    ----------
    dim : int
        Embedding size (<= the descriptor size).
    hidden : int
        Units of the residual hidden layer (0: a linear map only).
    similarity_weight : float
        Weight of the term that keeps the embedding's cosines near the centred
        descriptors' (0: the triplet loss alone).
    margin : float
        Triplet margin on squared distances of unit vectors (which lie in [0, 4]).
    mining : {"batch-hard", "semi-hard"}
    steps : int
        Optimisation steps (batches).
    classes_per_batch, images_per_class : int
        Batch composition; classes with fewer images repeat theirs.
    learning_rate : float
        Adam's step size.
    averaging : float
        The fitted weights are an exponential moving average of the weights
        over the steps, with this decay (Polyak averaging: steadier than the
        last step's, and better on images not trained on); 0 keeps the last.
    random_state : int or None

    Attributes
    ----------
    mean_ : ndarray of shape (n_features,), float32
    weights_ : ndarray of shape (n_features, dim), float32
        W, the linear map.
    hidden_weights_ : ndarray of shape (n_features, hidden), float32
    hidden_bias_ : ndarray of shape (hidden,), float32
    output_weights_ : ndarray of shape (hidden, dim), float32
        A, a and B (None with ``hidden=0``).
    losses_ : ndarray of shape (steps,), float64
        The mean loss of each batch, as training went.
    """

    def __init__(self, dim: int = 128, *, hidden: int = 512,
                 similarity_weight: float = 0.5, margin: float = 0.3,
                 mining: str = "semi-hard", steps: int = 3000,
                 classes_per_batch: int = 32, images_per_class: int = 4,
                 learning_rate: float = 1e-3, averaging: float = 0.998,
                 random_state: int | None = 0):
        self.dim = check_int(dim, "dim", minimum=1)
        self.hidden = check_int(hidden, "hidden", minimum=0)
        self.similarity_weight = check_float(similarity_weight, "similarity_weight",
                                             minimum=0.0)
        self.margin = check_float(margin, "margin", minimum=0.0)
        self.mining = check_choice(mining, "mining", MININGS)
        self.steps = check_int(steps, "steps", minimum=0)
        self.classes_per_batch = check_int(classes_per_batch, "classes_per_batch",
                                           minimum=2)
        self.images_per_class = check_int(images_per_class, "images_per_class",
                                          minimum=2)
        self.learning_rate = check_float(learning_rate, "learning_rate", minimum=0.0)
        self.averaging = check_float(averaging, "averaging", minimum=0.0)
        if self.averaging >= 1:
            raise ValueError(f"averaging must be below 1, got {averaging}")
        self.random_state = random_state
        self.mean_ = self.weights_ = None
        self.hidden_weights_ = self.hidden_bias_ = self.output_weights_ = None
        self.losses_ = np.zeros(0)

    def get_params(self) -> dict:
        return {"dim": self.dim, "hidden": self.hidden,
                "similarity_weight": self.similarity_weight,
                "margin": self.margin, "mining": self.mining,
                "steps": self.steps, "classes_per_batch": self.classes_per_batch,
                "images_per_class": self.images_per_class,
                "learning_rate": self.learning_rate, "averaging": self.averaging,
                "random_state": self.random_state}

    kind = "triplet"

    def __repr__(self) -> str:
        return (f"TripletProjection(dim={self.dim}, hidden={self.hidden}, "
                f"mining={self.mining!r})")

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
        # the cosines the similarity term keeps: of the centred descriptors
        unit = centred / np.maximum(np.linalg.norm(centred, axis=1, keepdims=True),
                                    1e-12)
        params = {"weights": start.weights_.astype(np.float64)}
        if self.hidden:
            params.update(
                hidden_weights=rng.normal(0, 1 / np.sqrt(x.shape[1]),
                                          (x.shape[1], self.hidden)),
                hidden_bias=np.zeros(self.hidden),
                output_weights=np.zeros((self.hidden, self.dim)))
        members = [np.flatnonzero(classes == c) for c in usable]
        moment = {k: np.zeros_like(v) for k, v in params.items()}
        second = {k: np.zeros_like(v) for k, v in params.items()}
        beta1, beta2 = 0.9, 0.999
        averaged = {}
        losses = np.zeros(self.steps)
        for step in range(self.steps):
            chosen = rng.choice(len(members), min(self.classes_per_batch, len(members)),
                                replace=False)
            batch = np.concatenate([rng.choice(members[c], self.images_per_class,
                                               replace=len(members[c])
                                               < self.images_per_class)
                                    for c in chosen])
            batch_labels = np.repeat(chosen, self.images_per_class)
            losses[step], gradients = _triplet_gradient(
                centred[batch].astype(np.float64), batch_labels, params,
                self.margin, self.mining, unit[batch].astype(np.float64),
                self.similarity_weight)
            for key, gradient in gradients.items():
                moment[key] = beta1 * moment[key] + (1 - beta1) * gradient
                second[key] = beta2 * second[key] + (1 - beta2) * gradient ** 2
                corrected = moment[key] / (1 - beta1 ** (step + 1))
                params[key] -= self.learning_rate * corrected / (
                    np.sqrt(second[key] / (1 - beta2 ** (step + 1))) + 1e-8)
                averaged[key] = params[key].copy() if step == 0 else (
                    self.averaging * averaged[key]
                    + (1 - self.averaging) * params[key])
        for key, value in (averaged if self.steps else params).items():
            setattr(self, key + "_", value.astype(np.float32))
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
        # saved before the hidden layer existed: a linear map, no similarity
        # term, no averaging
        params = {"hidden": 0, "similarity_weight": 0.0, "averaging": 0.0, **params}
        return _with_state(cls(**params), state)

    @staticmethod
    def array_names(params: dict) -> tuple:
        """Names of the arrays :meth:`get_state` gives for these parameters."""
        hidden = isinstance(params, dict) and params.get("hidden")
        return ("mean", "weights") + (HIDDEN_ARRAYS if hidden else ())


#: The arrays of the hidden layer (A, a, B), by their names in a saved state.
HIDDEN_ARRAYS = ("hidden_weights", "hidden_bias", "output_weights")

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
    centred = x - projection.mean_
    z = _forward(centred, {name: getattr(projection, name + "_")
                           for name in ("weights",) + HIDDEN_ARRAYS
                           if getattr(projection, name + "_", None) is not None})[0]
    z /= np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    return z[0] if single else z


def _forward(centred: np.ndarray, params: dict):
    """``z = c @ W (+ relu(c @ A + a) @ B)`` of centred rows (n, n_features), and
    the hidden layer's pre-activations and activations (None without one)."""
    z = centred @ params["weights"]
    if "hidden_weights" not in params:
        return z, None, None
    before = centred @ params["hidden_weights"] + params["hidden_bias"]
    active = np.maximum(before, 0)
    return z + active @ params["output_weights"], before, active


def _state_of(projection) -> dict:
    if not projection.fitted:
        raise ValueError(f"this {type(projection).__name__} is not fitted: call fit "
                         "first")
    names = type(projection).array_names(projection.get_params())
    return {name: getattr(projection, name + "_") for name in names}


def _with_state(projection, state: dict):
    arrays = {name: np.asarray(value, np.float32) for name, value in state.items()}
    mean, weights = arrays["mean"], arrays["weights"]
    hidden = getattr(projection, "hidden", 0)
    shapes = {"mean": (mean.shape[0] if mean.ndim == 1 else -1,),
              "weights": (len(mean), projection.dim)}
    if hidden:
        shapes.update(hidden_weights=(len(mean), hidden), hidden_bias=(hidden,),
                      output_weights=(hidden, projection.dim))
    for name, shape in shapes.items():
        array = arrays.get(name)
        if array is None or array.shape != shape or not np.isfinite(array).all():
            raise ValueError(f"a projection of shape {weights.shape} and mean of "
                             f"shape {mean.shape} do not make a {projection.dim}-d "
                             f"projection ({name} is "
                             f"{'missing' if array is None else array.shape})")
    for name in shapes:
        setattr(projection, name + "_", arrays[name])
    return projection


def _triplet_gradient(x: np.ndarray, labels: np.ndarray, params: dict,
                      margin: float, mining: str, targets: np.ndarray | None = None,
                      similarity_weight: float = 0.0):
    """Loss of one batch and its gradients with respect to ``params`` (float64).

    Parameters
    ----------
    x : ndarray of shape (n, n_features)
        Centred descriptors.
    labels : ndarray of shape (n,)
    params : dict
        ``weights`` (n_features, dim), and optionally ``hidden_weights``,
        ``hidden_bias`` and ``output_weights`` (see :func:`_forward`).
    targets : ndarray of shape (n, n_features), optional
        Unit rows whose cosines the similarity term keeps.
    similarity_weight : float

    Returns
    -------
    loss : float
        The mean triplet loss, plus ``similarity_weight`` times the mean squared
        difference of the off-diagonal cosines.
    gradients : dict of ndarray, the shapes of ``params``
    """
    z, before, hidden_out = _forward(x, params)
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
    total = float(np.maximum(loss, 0).sum() / n)
    if similarity_weight and targets is not None:
        gap = e @ e.T - targets @ targets.T
        np.fill_diagonal(gap, 0.0)
        pairs = len(e) * (len(e) - 1)
        total += similarity_weight * float((gap ** 2).sum() / pairs)
        grad_e += similarity_weight * 4.0 * gap @ e / pairs  # gap is symmetric
    # through the normalisation e = z / |z|, then the layers
    grad_z = (grad_e - e * np.sum(grad_e * e, axis=1, keepdims=True)) / norms
    gradients = {"weights": x.T @ grad_z}
    if before is not None:
        grad_before = (grad_z @ params["output_weights"].T) * (before > 0)
        gradients.update(output_weights=hidden_out.T @ grad_z,
                         hidden_weights=x.T @ grad_before,
                         hidden_bias=grad_before.sum(0))
    return total, gradients


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
