"""scikit-learn's estimator conventions for our models: ``get_params``,
``set_params`` and ``score``.

Our constructors validate and convert their arguments (``hidden=[64, 64]``
is kept as a tuple of ints, a learning rate as a float), which scikit-learn's
own ``BaseEstimator`` forbids: ``sklearn.base.clone`` checks that every
parameter it passes comes back *as the same object*. So the mixin records
the arguments of the outermost constructor call as they were given, and
``get_params`` returns those: ``clone`` (hence ``GridSearchCV``,
``cross_val_score``) works, and ``type(m)(**m.get_params(deep=False))``
rebuilds an unfitted copy of ``m``.
"""

import functools
import inspect

__all__ = ["EstimatorMixin"]


class EstimatorMixin:
    """``get_params`` / ``set_params`` from the constructor's arguments,
    ``score`` (mean of ``score_samples``) where a model has ``score_samples``,
    and ``is_fitted``, which scikit-learn's ``check_is_fitted`` asks.

    ``set_params`` rebuilds the model with the new arguments, in place: any
    fit is discarded (the next :meth:`fit` starts afresh, as it would
    anyway). A module passed as an argument (an ``energy_net``, a manifold)
    is passed on as it is, with its current weights.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None or getattr(init, "_records_params", False):
            return
        signature = inspect.signature(init)

        @functools.wraps(init)
        def __init__(self, *args, **kw):
            # Only the outermost call records: a subclass's super().__init__
            # gets converted arguments, not the user's.
            if type(self).__init__ is __init__:
                bound = signature.bind(self, *args, **kw)
                bound.apply_defaults()
                object.__setattr__(self, "_init_args", dict(bound.arguments))
            init(self, *args, **kw)

        __init__._records_params = True
        cls.__init__ = __init__

    def _constructor_params(self):
        # The recording constructor is type(self).__init__ (see __init_subclass__).
        signature, arguments = inspect.signature(type(self).__init__), self.__dict__["_init_args"]
        params = {}
        for name, parameter in list(signature.parameters.items())[1:]:  # no self
            value = arguments.get(name, parameter.default)
            if parameter.kind is inspect.Parameter.VAR_KEYWORD:
                params.update(value)  # forwarded keywords are parameters too
            else:
                params[name] = value
        return params

    def get_params(self, deep=True):
        """The constructor's arguments, as given (``deep``: with those of any
        argument that has ``get_params``, as ``name__param``).

        A model built with ``*models`` (``UnionEBM``, ``IntersectionEBM``)
        lists them under ``models``; :meth:`set_params` accepts that, though
        ``sklearn.base.clone`` cannot pass it back.
        """
        params = self._constructor_params()
        if deep:
            for name, value in list(params.items()):
                if hasattr(value, "get_params") and not isinstance(value, type):
                    params.update({f"{name}__{key}": sub
                                   for key, sub in value.get_params(deep=True).items()})
        return params

    def set_params(self, **params):
        """Rebuild the model with these constructor arguments (the others as
        before); ``name__param`` sets ``param`` of argument ``name``.

        Any fit is discarded (see :class:`EstimatorMixin`). Returns ``self``.

        Raises
        ------
        ValueError
            A name that is not a constructor argument (the valid ones are
            listed); nothing is changed then.
        """
        if not params:
            return self
        current = self._constructor_params()
        nested, own = {}, {}
        for key, value in params.items():
            name, sep, sub = key.partition("__")
            if name not in current or (sep and not hasattr(current[name], "set_params")):
                raise ValueError(f"invalid parameter {key!r} for {type(self).__name__}; valid "
                                 f"parameters: {sorted(current)}")
            if sep:
                nested.setdefault(name, {})[sub] = value
            else:
                own[name] = value
        signature = inspect.signature(type(self).__init__)
        kind = inspect.Parameter
        # Arguments before a *args must be passed by position.
        positional = {kind.POSITIONAL_ONLY}
        if any(p.kind is kind.VAR_POSITIONAL for p in signature.parameters.values()):
            positional.add(kind.POSITIONAL_OR_KEYWORD)
        values, args, kwargs = {**current, **own}, [], {}
        for name, parameter in list(signature.parameters.items())[1:]:
            if parameter.kind is kind.VAR_POSITIONAL:
                args.extend(values[name])
            elif parameter.kind is kind.VAR_KEYWORD:
                kwargs.update({k: values[k] for k in set(values) - set(signature.parameters)})
            elif parameter.kind in positional:
                args.append(values[name])
            else:
                kwargs[name] = values[name]
        # Validated on a throwaway object first: a rejected value leaves self
        # as it was. Then self is rebuilt in place (not swapped for the
        # throwaway: objects built with it, such as its metric, point at it).
        type(self).__init__(type(self).__new__(type(self)), *args, **kwargs)
        for name, sub in nested.items():
            own.get(name, current[name]).set_params(**sub)
        self.__dict__.clear()
        type(self).__init__(self, *args, **kwargs)
        return self

    @property
    def is_fitted(self):
        """Whether the model holds a fit (from :meth:`fit`, loading, or fitted parts)."""
        raise NotImplementedError(f"{type(self).__name__} does not say whether it is fitted")

    def __sklearn_is_fitted__(self):
        # sklearn's check_is_fitted otherwise counts attributes ending in "_",
        # and ours exist (as None) from construction: a new model looked fitted.
        return bool(self.is_fitted)

    @property
    def score(self):
        """``score(X)``: mean log-likelihood of ``X`` (nats per point), the mean
        of ``score_samples`` (scikit-learn's convention: higher is better).
        Only models with ``score_samples`` have it."""
        if not hasattr(type(self), "score_samples"):
            raise AttributeError(f"{type(self).__name__} has no score_samples, so no score")
        return self._mean_score

    def _mean_score(self, X, y=None):
        del y
        return float(self.score_samples(X).mean())

    @property
    def nll(self):
        """``nll(X)``: mean negative log-likelihood of ``X`` (nats per point),
        ``-score(X)``. Only models with ``score_samples`` have it."""
        if not hasattr(type(self), "score_samples"):
            raise AttributeError(f"{type(self).__name__} has no score_samples, so no nll")
        return self._mean_nll

    def _mean_nll(self, X):
        return -self._mean_score(X)
