"""Named exceptions of implicit_geom.

Every error the library raises on purpose derives from :class:`ImplicitGeomError`,
so callers can catch the whole family; each also derives from the closest builtin
(``ValueError``, ``RuntimeError``...) so generic handlers keep working.
"""

import contextlib
import re

# A field, or a doubled brace (literal text escaped as str.format escapes it).
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_]\w*)(=[^{}]*)?\}")


class ParameterMessage:
    """A message that names parameters of the call that raised (or warned) it.

    Built from a template whose ``{name}`` fields stand for a parameter's name
    and ``{name=value}`` for a value given to it; only the names listed in
    ``params`` are fields. ``str()`` names the Python parameters
    (``n_samples=10``); :meth:`naming` lets a caller that set those
    parameters from its own options (the command line's ``--n-samples 10``)
    name those instead, without rewriting the text.

    Attributes
    ----------
    template : str
    params : tuple of str
        The parameters the message concerns, in the order they appear.
    """

    def __init__(self, message="", *args, params=()):
        self.template = str(message)
        self.params = tuple(params)
        super().__init__(self.naming(), *args)

    def naming(self, names=None):
        """The message with each parameter named ``names(p)`` (see :func:`name_params`)."""
        return name_params(self.template, self.params, names)


def name_params(template, params, names=None):
    """``template`` with its fields for the parameters ``params`` filled in.

    ``{p}`` becomes the parameter's name, ``{p=value}`` ``p=value``. ``names``
    maps a parameter name to another name for it (a command-line flag), or to
    None to keep its own; under another name a value reads ``name value``
    (``name`` alone for ``True``; quotes around a value without spaces are
    dropped: ``{coords='xyz'}`` reads ``--coords xyz``). In a template with
    parameters, ``{{`` and ``}}`` are literal braces (text such as a path
    escaped by doubling them: ``/tmp/{coords}.csv`` is no field).
    """
    def field(match):
        name, value = match.group(1), match.group(2)
        if name is None:  # a doubled brace
            return match.group(0)[0] if params else match.group(0)
        if name not in params:
            return match.group(0)
        alias = names(name) if names is not None else None
        if alias is None:
            return name + (value or "")
        if value is None or value == "=True":
            return alias
        value = value[1:]
        if len(value) > 1 and value[0] == value[-1] and value[0] in "'\"" and " " not in value:
            value = value[1:-1]
        return f"{alias} {value}"

    return _PLACEHOLDER.sub(field, template)


def template_fields(template):
    """The names of ``template``'s fields (``{p}``, ``{p=value}``), as
    :func:`name_params` reads them: a doubled brace is literal text."""
    return {match.group(1) for match in _PLACEHOLDER.finditer(template)} - {None}


class NamedText(str):
    """A text (a note, not an error) naming parameters like :class:`ParameterMessage`:
    the string itself names the Python parameters, :meth:`naming` others."""

    def __new__(cls, template, params=()):
        text = super().__new__(cls, name_params(template, tuple(params)))
        text.template, text.params = template, tuple(params)
        return text

    naming = ParameterMessage.naming  # over the same template and params


class ImplicitGeomError(ParameterMessage, Exception):
    """Base class of all implicit_geom errors.

    ``params`` (keyword) lists the parameters a message concerns: see
    :class:`ParameterMessage`.
    """


class BackendError(ImplicitGeomError, RuntimeError):
    """geomstats is not running on the pytorch backend."""


class NotFittedError(ImplicitGeomError, RuntimeError):
    """A model was used before :meth:`fit` (or loading) gave it what it needs.

    scikit-learn's ``check_is_fitted`` asks the model's ``is_fitted`` (and raises
    its own ``NotFittedError``); this one is not a subclass of it, so that
    importing implicit_geom does not import scikit-learn, a slow import.
    """


class InvalidPointError(ImplicitGeomError, ValueError):
    """An input array has NaN/inf entries, the wrong shape or the wrong dimension."""


class EmptyDataError(InvalidPointError):
    """An estimator or loader received no data."""


class ProjectionError(ImplicitGeomError, RuntimeError):
    """Newton projection onto the zero set failed for some points.

    Attributes
    ----------
    failed : torch.Tensor of bool
        Mask over the batch of the points that did not converge.
    residual : torch.Tensor
        ``|F|`` of the last iterate, per point.
    points : torch.Tensor
        The last iterates (where Newton stopped), flat ``(B, n)``, where known.
    """

    def __init__(self, message, failed=None, residual=None, points=None):
        super().__init__(message)
        self.failed = failed
        self.residual = residual
        self.points = points


@contextlib.contextmanager
def naming_points(what):
    """Inside, a :class:`ProjectionError` is re-raised with ``what`` (the
    points' name as the user passed them, e.g. ``"training points"``) heading
    its message; ``failed`` and ``residual`` are kept, the original is chained.

    Examples
    --------
    >>> with naming_points("X_val"):
    ...     X_val = manifold.projection(X_val)
    """
    try:
        yield
    except ProjectionError as err:
        raise ProjectionError(f"{what}: {err}", err.failed, err.residual, err.points) from err


class SingularJacobianError(ImplicitGeomError, ArithmeticError):
    """The Jacobian of the submersion is (numerically) rank deficient."""


class GeodesicError(ImplicitGeomError, RuntimeError):
    """A geodesic integration or the log shooting did not reach its tolerance."""


class DifferentiationError(ImplicitGeomError, RuntimeError):
    """A derivative the library does not provide, e.g. a second derivative
    (``create_graph=True``) through the implicit-function gradients."""


class DisconnectedError(GeodesicError):
    """Two points lie on different connected components: no geodesic (and no
    finite distance) joins them, so ``log`` is undefined.

    Attributes
    ----------
    mask : torch.Tensor of bool
        Over the batch, the pairs that lie on different components.
    """

    def __init__(self, message, mask=None):
        super().__init__(message)
        self.mask = mask


class ComponentError(ImplicitGeomError, ValueError):
    """The connected components of a manifold cannot be determined (e.g. no
    box to sample a learned manifold in, or the pieces of a union share a
    part of positive measure, which the union would count twice)."""


class CurvatureError(ImplicitGeomError, ValueError):
    """A curvature quantity is not defined for the arguments (e.g. the
    sectional curvature of a plane spanned by parallel vectors)."""


class ScaleError(ImplicitGeomError, ValueError):
    """A manifold's length scale (its radius of curvature, without bounds) is
    below what the dtype resolves at its coordinates: no result could be
    accurate relative to it."""


class ParameterError(ImplicitGeomError, ValueError):
    """A parameter's value is invalid or does not apply (``params`` names it)."""


class CheckpointError(ImplicitGeomError, ValueError):
    """A saved model is missing, corrupt or incompatible."""


class DataError(ImplicitGeomError, ValueError):
    """A data file or array is malformed (bad rows, columns, values)."""


class NormalizationError(ImplicitGeomError, RuntimeError):
    """A normalising constant (log Z) could not be computed to a checked accuracy.

    Raised when a quadrature cannot be built on a manifold (a curve that does
    not close, a mesh whose vertices cannot be projected, no box to work in)
    or when an estimate misses its requested tolerance.
    """


class QuadratureCoverageError(NormalizationError):
    """Points of the manifold lie where a quadrature has no nodes.

    A lattice too coarse for a piece of M, or points outside the box the rule
    integrates over: a density normalised by that rule says nothing there
    (maximum likelihood could make it as large as it likes without changing
    ``log Z``).

    Attributes
    ----------
    uncovered : torch.Tensor of bool or None
        Mask over the checked points of those farther than the rule's
        ``coverage_radius`` from every node.
    """

    def __init__(self, message, uncovered=None):
        super().__init__(message)
        self.uncovered = uncovered


class TrainingDivergedError(ImplicitGeomError, FloatingPointError):
    """A training loss became NaN or infinite (the parameters stay at the last finite step)."""


class ConditioningWarning(ParameterMessage, UserWarning):
    """A learned zero set is near-singular somewhere in its box (a fold):
    projection and geodesics may fail or crawl there."""


class FitWarning(ParameterMessage, UserWarning):
    """A fit of data whose spread is far from 1 ended with its learned
    manifold away from them (the objective's slopes are in the data's units)."""
