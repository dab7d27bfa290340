"""Datasets for the offline active-learning benchmarks: pool construction and a simulated oracle.

What lives here (and nothing that trains or scores):

- ``load_images(source)``: real images as float32 ``[N, C, H, W]`` in [0, 1] plus int64 labels.
  ``"digits"`` is scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes, shipped
  inside the scikit-learn wheel: nothing is downloaded). Any other source plugs in the same way:
  an ``.npz`` file with arrays ``x`` (``[N, H, W]``, ``[N, H, W, C]`` or ``[N, C, H, W]``, uint8 or
  float) and ``y`` (integer labels), or an image folder laid out as ``root/<class name>/<image>``
  (decoded with the service's own decoder, ``ncalr_backend.data.images.decode_image``).
- ``split_test``: a stratified, clean held-out test split that is never queried.
- ``long_tail_indices``: the standard long-tailed subsampling ``n_c = floor(n_max * r^(c/(C-1)))``
  with imbalance factor ``1/r`` (``n_max`` = the smallest class count of the pool, so every class
  can supply its quota).
- ``make_ood``: out-of-distribution images that belong to no class (see the function).
- ``reference_probs``: out-of-fold class probabilities of a pixel-level reference classifier,
  which the ``instance`` noise uses to decide which items an annotator gets wrong, and how.
- ``NoisyOracle``: answers label queries; each pool item's answer is drawn once per seed, so every
  strategy that queries the same item gets the same (possibly wrong) label, and a strategy's
  advantage can only come from *which* items it queries.
- ``build_pool``: all of the above in one call, returning a ``Pool``.
- ``overlay_pairs`` / ``build_multilabel_pool``: the multi-label variant made as the PAL paper
  (M-lab neural collapse) does: pairs of images of two *different* classes overlaid with an
  element-wise max (a multi-hot label with two ones) next to single images (one label); pool and
  test sides are built from disjoint source images, and the oracle answers the true label set.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

NOISE_TYPES = ("none", "symmetric", "asymmetric", "instance")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclass
class ImageSet:
    x: np.ndarray  # [N, C, H, W] float32 in [0, 1]
    y: np.ndarray  # [N] int64 in [0, num_classes)
    class_names: list[str]
    source: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def load_images(source: str = "digits", image_size: int = 32, channels: int = 1) -> ImageSet:
    """Load a labelled image set; ``image_size`` and ``channels`` apply to image folders only."""
    if source in ("digits", "digits-multilabel"):  # the multi-label set is built per seed (build_multilabel_pool)
        from sklearn.datasets import load_digits

        d = load_digits()
        x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]  # pixel values are 0..16
        return ImageSet(np.ascontiguousarray(x), d.target.astype(np.int64),
                        [str(c) for c in range(10)], source)
    path = Path(source)
    if path.is_file() and path.suffix == ".npz":
        return _load_npz(path)
    if path.is_dir():
        return _load_folder(path, image_size, channels)
    raise FileNotFoundError(f"dataset {source!r}: expected 'digits', an .npz file with x and y, "
                            "or a folder of class sub-folders")


def _load_npz(path: Path) -> ImageSet:
    with np.load(path, allow_pickle=False) as f:
        if "x" not in f or "y" not in f:
            raise ValueError(f"{path}: needs arrays 'x' and 'y' (has {sorted(f.files)})")
        x, y = np.asarray(f["x"]), np.asarray(f["y"])
        names = [str(n) for n in f["class_names"]] if "class_names" in f else None
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = np.transpose(x, (0, 3, 1, 2))
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"{path}: x must be [N,H,W], [N,H,W,C] or [N,C,H,W] with C in (1, 3); got {x.shape}")
    integer = np.issubdtype(x.dtype, np.integer)
    x = x.astype(np.float32)
    if integer or x.max() > 1.0:  # uint8-style (0..255) or small-integer (e.g. 0..16) pixels
        x = x / (255.0 if x.max() > 16.0 else max(float(x.max()), 1.0))
    if len(x) != len(y):
        raise ValueError(f"{path}: {len(x)} images but {len(y)} labels")
    classes, y_idx = np.unique(y, return_inverse=True)
    if names is None:
        names = [str(c) for c in classes]
    return ImageSet(np.ascontiguousarray(x, dtype=np.float32), y_idx.astype(np.int64), names, str(path))


def _load_folder(root: Path, image_size: int, channels: int) -> ImageSet:
    from ncalr_backend.data.images import decode_image

    class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    if len(class_dirs) < 2:
        raise ValueError(f"{root}: needs at least two class sub-folders")
    xs, ys = [], []
    for c, d in enumerate(class_dirs):
        for f in sorted(d.iterdir()):
            if f.suffix.lower() in IMAGE_EXTENSIONS:
                xs.append(decode_image(f.read_bytes(), size=image_size, channels=channels))
                ys.append(c)
    if not xs:
        raise ValueError(f"{root}: no images found (extensions {IMAGE_EXTENSIONS})")
    return ImageSet(np.stack(xs).astype(np.float32), np.asarray(ys, dtype=np.int64),
                    [d.name for d in class_dirs], str(root))


def split_test(y: np.ndarray, test_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split -> (pool indices, test indices); every class keeps >= 1 item on each side."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1); got {test_fraction}")
    pool, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test = int(round(len(idx) * test_fraction))
        n_test = min(max(n_test, 1), len(idx) - 1) if len(idx) > 1 else 0
        test.append(idx[:n_test])
        pool.append(idx[n_test:])
    return np.sort(np.concatenate(pool)), np.sort(np.concatenate(test))


def long_tail_indices(y: np.ndarray, num_classes: int, imbalance_factor: float,
                      rng: np.random.Generator) -> np.ndarray:
    """Subsample to ``n_c = floor(n_max * r^(c/(C-1)))``, ``r = 1/imbalance_factor``; class 0 is
    the head, class C-1 the tail. ``imbalance_factor`` 1 keeps everything."""
    if imbalance_factor < 1.0:
        raise ValueError(f"imbalance_factor must be >= 1; got {imbalance_factor}")
    if imbalance_factor == 1.0:
        return np.arange(len(y))
    counts = np.bincount(y, minlength=num_classes)
    n_max = int(counts[counts > 0].min())
    r = 1.0 / imbalance_factor
    keep = []
    for c in range(num_classes):
        n_c = max(1, int(np.floor(n_max * r ** (c / max(num_classes - 1, 1)))))
        idx = np.flatnonzero(y == c)
        keep.append(rng.choice(idx, size=min(n_c, len(idx)), replace=False))
    return np.sort(np.concatenate(keep))


def confusable_map(x: np.ndarray, y: np.ndarray, num_classes: int) -> np.ndarray:
    """For asymmetric noise: class c -> the other class whose mean image is nearest (pixel L2).

    Data-driven so that any plugged-in dataset gets a sensible fixed map. On digits it pairs
    visually confusable digits (printed in the benchmark's config, e.g. 1 -> 8, 7 -> 9)."""
    flat = x.reshape(len(x), -1)
    means = np.stack([flat[y == c].mean(0) if np.any(y == c) else np.full(flat.shape[1], np.inf)
                      for c in range(num_classes)])
    d = ((means[:, None, :] - means[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    return d.argmin(1).astype(np.int64)


def make_ood(x_source: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` images that belong to no class, with the in-distribution images' intensity statistics.

    Half are *pixel-shuffled* in-distribution images (each gets its own random permutation of all
    its pixels: the same intensity histogram, no stroke structure); the other half are *smooth
    random blobs* (uniform noise at a quarter of the resolution, upsampled bilinearly, then
    rescaled to the histogram of a randomly chosen real image by rank matching), so they have
    stroke-like spatial correlation but no digit shape. Both kinds are as bright and as
    contrasted as real images, so they cannot be spotted by intensity alone.
    """
    if n <= 0:
        return np.zeros((0,) + x_source.shape[1:], dtype=np.float32)
    import torch
    import torch.nn.functional as F

    N, C, H, W = x_source.shape
    n_shuf = n // 2
    n_blob = n - n_shuf
    out = np.empty((n, C, H, W), dtype=np.float32)
    src = rng.integers(0, N, size=n)
    for i in range(n_shuf):
        img = x_source[src[i]].reshape(C, -1)
        perm = rng.permutation(H * W)
        out[i] = img[:, perm].reshape(C, H, W)
    if n_blob:
        h, w = max(2, H // 4), max(2, W // 4)
        low = torch.from_numpy(rng.random((n_blob, C, h, w)).astype(np.float32))
        up = F.interpolate(low, size=(H, W), mode="bilinear", align_corners=False).numpy()
        for j in range(n_blob):
            ref = np.sort(x_source[src[n_shuf + j]].reshape(C, -1), axis=1)
            blob = up[j].reshape(C, -1)
            ranks = np.argsort(np.argsort(blob, axis=1), axis=1)
            out[n_shuf + j] = np.take_along_axis(ref, ranks, axis=1).reshape(C, H, W)
    return np.clip(out, 0.0, 1.0)


@dataclass
class NoisyOracle:
    """Returns, for each queried pool item, the label an (imperfect) annotator gives.

    ``answers[i]`` is drawn once per seed when the pool is built: with probability ``noise_rate``
    the true label is replaced by a different class (``symmetric``: uniform over the other C-1
    classes; ``asymmetric``: the fixed confusable class of ``confusable_map``), independently per
    item, so the realised corruption rate is ``noise_rate`` in expectation. ``instance``: real
    annotators err on the ambiguous items, not uniformly. Exactly round(noise_rate x the
    in-distribution items) answers are wrong, drawn without replacement with probability
    proportional to a reference classifier's doubt about the true class (``reference_probs``:
    1 - p_ref(true class), plus 0.01 so an easy item can still be slipped on), and the wrong class is
    drawn from the reference's probabilities over the other classes (a 4 that looks like a 9 is
    called a 9). Instance-dependent noise in the sense of Chen et al. (AAAI 2021, "Beyond
    class-conditional assumption"); an uncertainty sampler is drawn to exactly the items it
    corrupts. OOD items (true label -1) get a uniformly random class (the
    annotator was forced to pick one), unless ``ood_label='drop'``, in which case they come back as
    -1 and the benchmark spends the budget on them but does not train on them.
    """

    true_labels: np.ndarray  # [M], -1 for OOD
    answers: np.ndarray  # [M]
    noise_type: str
    noise_rate: float
    flip_map: np.ndarray | None = None
    ref_probs: np.ndarray | None = None  # [M, C] for ``instance`` noise (a second annotator errs alike)
    queried: int = 0

    def query(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        self.queried += len(idx)
        return self.answers[idx].copy()

    def corrupted(self, idx: np.ndarray) -> np.ndarray:
        """Bool per index: the annotator's answer is a wrong class. Every OOD item whose answer is a
        class counts (``ood_label='random'``); one the annotator skipped (``'drop'``: -1) gave no
        wrong label and does not."""
        idx = np.asarray(idx, dtype=np.int64)
        return self.answers[idx] != self.true_labels[idx]


def reference_probs(x: np.ndarray, y: np.ndarray, num_classes: int, rng: np.random.Generator,
                    folds: int = 5) -> np.ndarray:
    """[M, C] out-of-fold class probabilities of a reference classifier for the items with y >= 0
    (rows of OOD items are 0): scikit-learn's multinomial logistic regression on the standardised
    pixels, ``folds``-fold stratified cross-validation, so no item is scored by a model that saw its
    label. It stands in for how a careful but fallible person sees each item: its doubt is where
    annotators err. A class with fewer items than folds is missing from some training folds; an
    item of a class its fold's model never saw is scored by a model fit on every item instead
    (otherwise it would get probability 0 for its own class and count as the most doubtful)."""
    import warnings

    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = np.asarray(y, dtype=np.int64)
    out = np.zeros((len(y), num_classes), dtype=np.float64)
    ind = np.flatnonzero(y >= 0)
    if len(ind) == 0:
        return out
    X = np.asarray(x, dtype=np.float64)[ind].reshape(len(ind), -1)
    yi = y[ind]
    counts = np.bincount(yi, minlength=num_classes)
    k = int(max(2, min(folds, counts.max())))
    if len(np.unique(yi)) < 2 or len(ind) < 2 * k:
        out[ind, yi] = 1.0  # nothing to confuse with
        return out
    seed = int(rng.integers(2**31))

    def fit(rows):
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        return clf.fit(X[rows], yi[rows])

    unseen = np.zeros(len(ind), dtype=bool)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter; a class with fewer items than folds
        for tr, te in StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(X, yi):
            if len(np.unique(yi[tr])) < 2:
                unseen[te] = True
                continue
            clf = fit(tr)
            out[ind[te][:, None], clf.classes_[None, :]] = clf.predict_proba(X[te])
            unseen[te] = ~np.isin(yi[te], clf.classes_)
        if unseen.any():
            clf = fit(np.arange(len(ind)))
            rows = ind[unseen]
            out[rows] = 0.0
            out[rows[:, None], clf.classes_[None, :]] = clf.predict_proba(X[unseen])
    return out


def make_oracle(true_labels: np.ndarray, num_classes: int, noise_type: str, noise_rate: float,
                rng: np.random.Generator, flip_map: np.ndarray | None = None,
                ood_label: str = "random", ref_probs: np.ndarray | None = None) -> NoisyOracle:
    if noise_type not in NOISE_TYPES:
        raise ValueError(f"noise_type {noise_type!r}: choose one of {NOISE_TYPES}")
    if not 0.0 <= noise_rate <= 1.0:
        raise ValueError(f"noise_rate must be in [0, 1]; got {noise_rate}")
    if ood_label not in ("random", "drop"):
        raise ValueError(f"ood_label {ood_label!r}: choose 'random' or 'drop'")
    y = np.asarray(true_labels, dtype=np.int64)
    answers = y.copy()
    ind = y >= 0
    rate = 0.0 if noise_type == "none" else noise_rate
    if noise_type == "instance":
        if ref_probs is None or np.shape(ref_probs) != (len(y), num_classes):
            raise ValueError("instance noise needs ref_probs [M, C] (reference_probs)")
        ref = np.asarray(ref_probs, dtype=np.float64)
        idx = np.flatnonzero(ind)
        n_wrong = int(round(rate * len(idx))) if num_classes > 1 else 0  # one class: no wrong answer exists
        if n_wrong:
            doubt = 1.0 - ref[idx, y[idx]] + 0.01
            wrong = rng.choice(idx, size=n_wrong, replace=False, p=doubt / doubt.sum())
            for i in wrong:  # the wrong class as the reference confuses it
                q = np.where(np.arange(num_classes) == y[i], 0.0, ref[i] + 1e-6)  # every other class possible
                answers[i] = rng.choice(num_classes, p=q / q.sum())
    else:
        flip = ind & (rng.random(len(y)) < rate)
        if noise_type == "symmetric":
            off = rng.integers(1, num_classes, size=len(y))  # 1..C-1: never the true class
            answers[flip] = (y[flip] + off[flip]) % num_classes
        elif noise_type == "asymmetric":
            if flip_map is None:
                raise ValueError("asymmetric noise needs a flip_map")
            answers[flip] = flip_map[y[flip]]
    ood = ~ind
    answers[ood] = rng.integers(0, num_classes, size=int(ood.sum())) if ood_label == "random" else -1
    return NoisyOracle(true_labels=y, answers=answers, noise_type=noise_type, noise_rate=rate,
                       flip_map=flip_map if noise_type == "asymmetric" else None,
                       ref_probs=ref_probs if noise_type == "instance" else None)


@dataclass
class Pool:
    """One seed's benchmark data: the unlabeled pool (with an oracle) and the clean test split."""

    x_pool: np.ndarray
    y_pool_true: np.ndarray  # -1 for OOD items
    x_test: np.ndarray
    y_test: np.ndarray
    oracle: NoisyOracle
    num_classes: int
    class_names: list[str]
    info: dict = field(default_factory=dict)

    @property
    def multilabel(self) -> bool:
        return self.y_pool_true.ndim == 2

    @property
    def is_ood(self) -> np.ndarray:
        if self.multilabel:
            return np.zeros(len(self.y_pool_true), dtype=bool)
        return self.y_pool_true < 0


def build_pool(data: ImageSet, seed: int, test_fraction: float = 0.3, noise_type: str = "none",
               noise_rate: float = 0.0, imbalance_factor: float = 1.0, ood_fraction: float = 0.0,
               ood_label: str = "random") -> Pool:
    """Split, subsample, add OOD items and draw the oracle's answers, all from ``seed``.

    ``ood_fraction`` is the share of the final pool that is OOD (0.1 -> 10% of the pool items
    belong to no class). The test split stays balanced, in-distribution and clean.
    """
    if not 0.0 <= ood_fraction < 1.0:
        raise ValueError(f"ood_fraction must be in [0, 1); got {ood_fraction}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 20260]))
    C = data.num_classes
    pool_idx, test_idx = split_test(data.y, test_fraction, rng)
    xp, yp = data.x[pool_idx], data.y[pool_idx]
    keep = long_tail_indices(yp, C, imbalance_factor, rng)
    xp, yp = xp[keep], yp[keep]
    n_ood = int(round(ood_fraction * len(xp) / (1.0 - ood_fraction))) if ood_fraction > 0 else 0
    if n_ood:
        xo = make_ood(xp, n_ood, rng)
        xp = np.concatenate([xp, xo])
        yp = np.concatenate([yp, np.full(n_ood, -1, dtype=np.int64)])
    order = rng.permutation(len(xp))  # OOD items are not bunched at the end
    xp, yp = xp[order], yp[order]
    flip_map = confusable_map(data.x[pool_idx], data.y[pool_idx], C) if noise_type == "asymmetric" else None
    ref = reference_probs(xp, yp, C, rng) if noise_type == "instance" else None
    oracle = make_oracle(yp, C, noise_type, noise_rate, rng, flip_map=flip_map, ood_label=ood_label, ref_probs=ref)
    counts = np.bincount(yp[yp >= 0], minlength=C)
    info = {"pool_size": int(len(xp)), "test_size": int(len(test_idx)), "ood_items": int(n_ood),
            "class_counts": counts.tolist(),
            "realised_noise_rate": float(oracle.corrupted(np.flatnonzero(yp >= 0)).mean()) if np.any(yp >= 0) else 0.0,
            "flip_map": flip_map.tolist() if flip_map is not None else None}
    return Pool(x_pool=np.ascontiguousarray(xp), y_pool_true=yp,
                x_test=np.ascontiguousarray(data.x[test_idx]), y_test=data.y[test_idx],
                oracle=oracle, num_classes=C, class_names=data.class_names, info=info)


# ----------------------------------------------------------------------------------------------
# multi-label digits (PAL paper construction)
# ----------------------------------------------------------------------------------------------
def overlay_pairs(x: np.ndarray, y: np.ndarray, n_pairs: int, num_classes: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n_pairs`` images made by overlaying two source images of different classes with an
    element-wise max. Returns (images [n, C, H, W], multi-hot label sets [n, K] with exactly two
    ones, source index pairs [n, 2]). The first image of each pair is uniform over ``x``; the second
    is uniform over the images of the other classes, so a class is never paired with itself. No
    two pairs use the same two source images (a repeated pair would be a duplicate image)."""
    x = np.asarray(x)
    y = np.asarray(y, dtype=np.int64)
    if len(np.unique(y)) < 2 and n_pairs > 0:
        raise ValueError("overlay pairs need images of at least two classes")
    counts = np.bincount(y)
    possible = (int(counts.sum()) ** 2 - int((counts.astype(np.int64) ** 2).sum())) // 2
    if n_pairs > possible:
        raise ValueError(f"only {possible} distinct cross-class pairs exist; asked for {n_pairs}")
    i = np.empty(n_pairs, dtype=np.int64)
    j = np.empty(n_pairs, dtype=np.int64)
    seen: set[tuple[int, int]] = set()
    t = 0
    while t < n_pairs:
        a = int(rng.integers(0, len(y)))
        other = np.flatnonzero(y != y[a])
        b = int(other[rng.integers(0, len(other))])
        key = (min(a, b), max(a, b))
        if key in seen:
            continue
        seen.add(key)
        i[t], j[t] = a, b
        t += 1
    imgs = np.maximum(x[i], x[j]).astype(np.float32)
    sets = np.zeros((n_pairs, num_classes), dtype=np.int64)
    sets[np.arange(n_pairs), y[i]] = 1
    sets[np.arange(n_pairs), y[j]] = 1
    return imgs, sets, np.stack([i, j], axis=1) if n_pairs else np.zeros((0, 2), dtype=np.int64)


def multilabel_side(x: np.ndarray, y: np.ndarray, num_classes: int, pairs_fraction: float,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """As many samples as source images: ``pairs_fraction`` of them overlay pairs, the rest single
    images (a random subset of the sources, each used once), shuffled. -> (x, multi-hot sets)."""
    n = len(y)
    n_pairs = int(round(pairs_fraction * n))
    singles = rng.choice(n, size=n - n_pairs, replace=False)
    xp, sp, _ = overlay_pairs(x, y, n_pairs, num_classes, rng)
    ss = np.zeros((len(singles), num_classes), dtype=np.int64)
    ss[np.arange(len(singles)), y[singles]] = 1
    xs = np.concatenate([x[singles].astype(np.float32), xp])
    sets = np.concatenate([ss, sp])
    order = rng.permutation(len(xs))
    return np.ascontiguousarray(xs[order]), sets[order]


@dataclass
class SetOracle:
    """Multi-label oracle: answers the true label set (multi-hot [n, K]) of each queried item."""

    true_sets: np.ndarray  # [M, K] 0/1
    queried: int = 0
    noise_type: str = "none"
    noise_rate: float = 0.0

    @property
    def answers(self) -> np.ndarray:
        return self.true_sets

    def query(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        self.queried += len(idx)
        return self.true_sets[idx].copy()

    def corrupted(self, idx: np.ndarray) -> np.ndarray:
        return np.zeros(len(np.asarray(idx)), dtype=bool)


def build_multilabel_pool(data: ImageSet, seed: int, test_fraction: float = 0.3,
                          pairs_fraction: float = 0.5) -> Pool:
    """Multi-label pool and clean test set from ``seed``: the images are split (stratified) into
    pool sources and test sources first, then each side gets ``pairs_fraction`` overlay pairs and
    single images from its own sources only, so no test sample shares a source image with the pool.
    ``y_pool_true`` and ``y_test`` are multi-hot [n, K]."""
    if not 0.0 <= pairs_fraction <= 1.0:
        raise ValueError(f"pairs_fraction must be in [0, 1]; got {pairs_fraction}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 20261]))
    C = data.num_classes
    pool_idx, test_idx = split_test(data.y, test_fraction, rng)
    xp, sp = multilabel_side(data.x[pool_idx], data.y[pool_idx], C, pairs_fraction, rng)
    xt, st = multilabel_side(data.x[test_idx], data.y[test_idx], C, pairs_fraction, rng)
    size = sp.sum(1)
    info = {"pool_size": int(len(xp)), "test_size": int(len(xt)), "ood_items": 0, "multilabel": True,
            "pairs_fraction": pairs_fraction, "pool_pairs": int((size == 2).sum()),
            "test_pairs": int((st.sum(1) == 2).sum()), "class_counts": sp.sum(0).tolist(),
            "realised_noise_rate": 0.0, "flip_map": None}
    return Pool(x_pool=xp, y_pool_true=sp, x_test=xt, y_test=st, oracle=SetOracle(sp), num_classes=C,
                class_names=data.class_names, info=info)
