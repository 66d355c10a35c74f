"""Parameter trees of unrolled and stacked layers side by side, for the tests that compare the two layouts
(``tests/models/test_scan.py``, ``tests/training/test_scan_training.py``)."""

import jax
import numpy as np


def stacked(tree):
    """A pure-dict parameter tree with every numbered list ``{0: ..., 1: ...}`` stacked as the scanned model holds
    it (``[L, ...]``)."""
    if not isinstance(tree, dict):
        return np.asarray(tree)
    if tree and all(isinstance(k, int) for k in tree):
        return jax.tree.map(lambda *xs: np.stack(xs), *[stacked(tree[i]) for i in range(len(tree))])
    return {k: stacked(v) for k, v in tree.items()}


def shared(tree):
    """A pure-dict parameter tree without the prefix projection's encoder, which every layer shares (NNX keeps it
    under the first layer's path, a stack under its own), and that encoder's subtree (None when there is none)."""
    if not isinstance(tree, dict):
        return tree, None
    out, found = {}, None
    for key, sub in tree.items():
        if key == "encoder" and isinstance(sub, dict) and "embedding" in sub:
            found = sub
            continue
        rest, inner = shared(sub)
        if inner is None or rest:  # a module left empty without the encoder goes too
            out[key] = rest
        found = found if inner is None else inner
    return out, found


def stacked_shared(tree):
    """:func:`stacked` of ``tree`` with the shared encoder set aside: (stacked rest, encoder)."""
    rest, encoder = shared(tree)
    return stacked(rest), None if encoder is None else jax.tree.map(np.asarray, encoder)


def assert_trees_close(ours, expected, tol):
    """Every leaf within ``tol`` of the expected one's largest magnitude (float32 sums in another order)."""
    assert jax.tree.structure(ours) == jax.tree.structure(expected)
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(ours)[0], jax.tree.leaves(expected)):
        b = np.asarray(b)
        np.testing.assert_allclose(np.asarray(a), b, atol=tol * max(1.0, float(np.abs(b).max())), rtol=0,
                                   err_msg=jax.tree_util.keystr(path))
