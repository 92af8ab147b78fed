"""One contract for every registered method (``list_methods()``), as scikit-learn's ``parametrize_with_checks``.

A method registered in ssl_cluster_bench/methods.py is picked up here without editing this file: its labels,
probabilities and score are checked on a small digits problem, what it persists is saved and loaded back, and
every option it takes is given a wrong value that must be refused in one line naming the option. Only the
speed-ups below name methods (fewer heads and epochs than the defaults); a method not listed runs with its own
defaults, so a new method should be quick on 240 samples.
"""
import functools
import inspect
import re

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from ssl_cluster_bench.heads.base import HeadEstimator
from ssl_cluster_bench.heads.constraints import NO_VALIDATION
from ssl_cluster_bench.methods import HeadMethod, MethodInputs, get_method, list_methods
from ssl_cluster_bench.predictions import load_predictions, save_predictions
from ssl_cluster_bench.protocol import Protocol

K = 5
FAST = {
    "scan": {"n_heads": 2, "epochs": 5, "n_neighbors": 5},
    "scan+selflabel": {"n_heads": 2, "epochs": 5, "n_neighbors": 5, "self_label_epochs": 2, "confidence": 0.5},
    "mmdc": {"n_heads": 2, "epochs": 5},
    "twostage": {"n_heads": 2, "epochs": 5},
    "temi": {"n_heads": 2, "epochs": 3, "n_neighbors": 5},
    "turtle": {"n_steps": 20, "score_folds": 3},
}
# Wrong values tried on every option: out of every range that starts at 0 or above, and of the wrong type for
# numbers, booleans and choices.
BAD_VALUES = (-1, "not-an-option")


def _data():
    X, y = load_digits(return_X_y=True)
    X = X.astype(np.float32)
    return X[:240], X[240:300]


def _protocol(name: str) -> Protocol:
    params = get_method(name).option_parameters() or {}
    options = {k: v for k, v in {**FAST.get(name, {}), "device": "cpu"}.items() if k in params}
    return Protocol(methods=(name,), n_clusters=(K,), seeds=(0,), pca_dim=16,
                    method_options={name: options} if options else {})


@functools.lru_cache(maxsize=None)
def _fitted(name: str):
    train, _ = _data()
    return get_method(name).from_protocol(_protocol(name), K, 0).fit(MethodInputs(train, _protocol(name),
                                                                                  progress=False))


@pytest.mark.parametrize("name", list_methods())
def test_labels_probabilities_and_score_follow_the_contract(name):
    method = _fitted(name)
    n = _data()[0].shape[0]
    labels = np.asarray(method.labels_)
    assert labels.shape == (n,) and labels.dtype.kind in "iu"
    # -1 only for methods that leave noise points out (hdbscan); a method that finds its own number of clusters
    # (hdbscan, affinity) may find more than K
    assert labels.min() >= (-1 if type(method).has_noise else 0)
    assert labels.max() < (n if type(method).k_free(_protocol(name).options_for(name)) else K)
    if method.probs_ is not None:
        probs = np.asarray(method.probs_)
        assert probs.shape == (n, K) and np.all(probs >= 0)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert method.score_ is None or np.isfinite(method.score_)
    assert isinstance(method.degenerate_, bool)
    assert {"pca_dim", "whiten", "l2_normalize"} <= set(method.config_)


@pytest.mark.parametrize("name", list_methods())
def test_what_a_method_saves_loads_back_with_the_same_predictions(name, tmp_path):
    method = _fitted(name)
    est = getattr(method, "estimator_", None)
    if not isinstance(est, HeadEstimator):
        # Methods without a model of their own (k-means) persist their assignment, as the runner does.
        results = tmp_path / "lb.csv"
        save_predictions(results, "0123456789abcdef", method.labels_)
        np.testing.assert_array_equal(load_predictions(results, "0123456789abcdef"), method.labels_)
        return
    _, new = _data()
    path = est.save(tmp_path / "model" / f"{name}.pt")
    assert isinstance(torch.load(path, weights_only=True), dict)  # plain tensors: loadable without pickle code
    loaded = type(est).load(path, device="cpu")
    assert loaded.get_params() == {**est.get_params(), "device": "cpu"}
    np.testing.assert_array_equal(loaded.predict(new), est.predict(new))
    np.testing.assert_array_equal(loaded.predict_proba(new), est.predict_proba(new))
    for attr in type(est)._ARRAYS + type(est)._SCALARS:
        np.testing.assert_array_equal(np.asarray(getattr(loaded, attr)), np.asarray(getattr(est, attr)))
    for attr in type(est)._MODULES:
        for key, value in getattr(est, attr).state_dict().items():
            torch.testing.assert_close(getattr(loaded, attr).state_dict()[key], value, rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match=f"no saved {type(est).__name__} model"):
        type(est).load(tmp_path / "missing.pt")
    other = next(c for c in (get_method(m)._estimator(None) for m in list_methods()
                             if issubclass(get_method(m), HeadMethod)) if c is not type(est))
    with pytest.raises(ValueError, match=f"is not a {other.__name__} model saved by ssl_cluster_bench"):
        other.load(path)


def _wrong_values(constraints, annotation) -> list:
    """Values the option must refuse: by its declared constraints, else by its type annotation."""
    if constraints == NO_VALIDATION:
        return []
    if constraints is not None:
        return [v for v in BAD_VALUES if not any(v is None if c is None else c.accepts(v) for c in constraints)]
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    if text == "str":
        return [-1]
    return ["not-an-option"] if text in ("int", "float", "bool") else []


@pytest.mark.parametrize("name", list_methods())
def test_bad_options_are_refused_in_one_line_naming_the_option(name):
    cls, where = get_method(name), re.escape(f"method_options.{name}")
    params = cls.option_parameters()
    assert params is not None, f"{name} takes **options: the protocol cannot check them"
    if not params:
        with pytest.raises(ValueError, match=rf"^{where}: unknown option 'epochs'; "
                                             rf"{name} takes no options"):
            Protocol(method_options={name: {"epochs": 3}})
        return
    first = next(iter(params))
    with pytest.raises(ValueError, match=rf"^{where}: unknown option '{first}x' "
                                         rf"\(did you mean '{first}'\?\)"):
        Protocol(method_options={name: {f"{first}x": 1}})
    constraints = cls.option_constraints()
    estimator = cls._estimator(None) if issubclass(cls, HeadMethod) else None
    for option, p in params.items():
        for bad in _wrong_values(constraints.get(option), p.annotation):
            with pytest.raises(ValueError) as info:
                Protocol(methods=(name,), method_options={name: {option: bad}})
            message = str(info.value)
            assert message.startswith(f"method_options.{name}.{option} must be ") and "\n" not in message
            assert message.endswith(f"got {bad!r}")
            if estimator is not None:
                # fit (from Python) refuses it with the same words, before touching the data
                with pytest.raises(ValueError, match=rf"^{option} must be .*, got {bad!r}$"):
                    estimator(K, **{option: bad}, verbose=False, device="cpu").fit(np.zeros((4, 2), np.float32))


def test_every_head_option_is_checked_by_its_constraints():
    """Heads declare a constraint for every option; nothing falls back to annotations (which check no range)."""
    for name in list_methods():
        cls = get_method(name)
        if issubclass(cls, HeadMethod):
            assert set(cls.option_constraints()) == set(cls.option_parameters()), name
            sig = inspect.signature(cls._estimator(None).__init__).parameters
            for option in cls.option_parameters():
                assert sig[option].default is not inspect.Parameter.empty, f"{name}.{option} has no default"
