"""Low-rank factorization of trained weights: each selected kernel W (d_in x d_out) becomes
U (d_in x r) times V (r x d_out) from its truncated SVD, the singular values split evenly
(U = u_r sqrt(s_r), V = sqrt(s_r) vh_r), which is the best rank-r approximation in Frobenius
norm (Eckart-Young).

The rank (``config.lowrank``, exactly one set): ``rank_fraction`` f gives r = max(1, round(f x
min(d_in, d_out))) per matrix; ``energy`` e the smallest r whose singular values keep that
fraction of sum(s^2); ``rank`` one r for every matrix (refused above a matrix's min(d_in,
d_out)).

Which weights: the ``hidden`` matrices of ``models/param_roles.py`` (attention and MLP kernels,
LSTM kernels, MoE experts and router), with ``param_roles.matrix_axes`` saying which axes are
copies (scanned layers, experts: one SVD per copy, one rank for all copies of a stack, the
largest any copy needs), which the contraction (inputs) and which the outputs. Convolution
kernels (axes ``height``/``width``) are left dense: a window's matmul is not a plain d_in x
d_out product, and factoring it would change the op. Embeddings, the readout, norms and biases
stay dense too.

A matrix is factored only where U and V hold fewer weights than W (r (d_in + d_out) < d_in
d_out), else it stays dense and the report says so; ``factor_all`` factors every selected
matrix regardless (a full-rank factorization is how the exactness of the round trip is
checked). The factored tree holds ``{"U": (copies..., inputs..., rank), "V": (copies..., rank,
outputs...)}`` in place of each factored leaf, with logical axis ``rank`` (unsharded by the
rules); ``materialize`` turns it back into dense weights for the unchanged model code, and
``FactoredModel`` (a ``Task.wrap_model`` result) trains U and V through that same model code.
"""

import dataclasses
import numbers
import string
from typing import Any, Mapping

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from isoflop.models import param_roles

RANK_AXIS = "rank"
SPATIAL_AXES = ("height", "width")  # a convolution kernel's window: left dense
CHOICES = ("rank_fraction", "energy", "rank")


@dataclasses.dataclass(frozen=True)
class LowRankSettings:
  rank_fraction: float | None = None  # r = max(1, round(f x min(d_in, d_out)))
  energy: float | None = None  # smallest r keeping this fraction of sum(s^2)
  rank: int | None = None  # one r for every matrix
  factor_all: bool = False  # factor even where U, V are no smaller than W (full-rank checks)

  def __post_init__(self):
    chosen = [k for k in CHOICES if getattr(self, k) is not None]
    if len(chosen) != 1:
      raise ValueError(f"lowrank: set exactly one of {', '.join(f'lowrank.{k}' for k in CHOICES)}"
                       f" (set: {', '.join(f'lowrank.{k}' for k in chosen) or 'none'})")
    for key in ("rank_fraction", "energy"):
      value = getattr(self, key)
      if value is not None and (not _is_number(value) or not 0.0 < value <= 1.0):
        raise ValueError(f"lowrank.{key}={value} must be in (0, 1]")
    if self.rank is not None and (not isinstance(self.rank, numbers.Integral)
                                  or isinstance(self.rank, bool) or self.rank < 1):
      raise ValueError(f"lowrank.rank={self.rank} must be a whole number >= 1")

  def rank_for(self, s_CK: np.ndarray) -> int:
    """The rank of a stack of matrices with these singular values (copies, k), largest
    first: one rank for every copy, so no copy keeps less than asked."""
    k = s_CK.shape[-1]
    if self.rank is not None:
      return int(self.rank)
    if self.rank_fraction is not None:
      return min(k, max(1, int(self.rank_fraction * k + 0.5)))
    kept_CK = _energy_kept(s_CK)
    needed_C = np.sum(kept_CK < self.energy, axis=-1) + 1  # first r reaching the energy
    return int(min(k, np.max(needed_C)))


def _is_number(value) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _energy_kept(s_CK: np.ndarray) -> np.ndarray:
  """The fraction of sum(s^2) the first r singular values keep, for r = 1..k (an all-zero
  matrix keeps everything at any rank)."""
  cumulative_CK = np.cumsum(np.square(s_CK.astype(np.float64)), axis=-1)
  total_C1 = cumulative_CK[..., -1:]
  return np.where(total_C1 > 0, cumulative_CK / np.where(total_C1 > 0, total_C1, 1.0), 1.0)


def settings_from_config(block) -> LowRankSettings | None:
  """The ``lowrank`` config block, checked; None when none of its ranks is set (off)."""
  if block is None:
    return None
  values = {k: block.get(k) for k in CHOICES}
  if all(v is None for v in values.values()):
    return None
  return LowRankSettings(**values)


def _flat(tree) -> dict[tuple, Any]:
  return flax.traverse_util.flatten_dict(tree) if tree else {}


def _nest(flat: dict[tuple, Any]) -> dict:
  return flax.traverse_util.unflatten_dict(flat) if flat else {}


def _name(path: tuple) -> str:
  return "/".join(map(str, path))


def selects(names: tuple[str, ...]) -> bool:
  """Whether a parameter with these logical axes is factored: a hidden matrix, not a conv."""
  return (param_roles.role_of(names).kind == param_roles.HIDDEN
          and not set(names) & set(SPATIAL_AXES))


@dataclasses.dataclass(frozen=True)
class _Matrix:
  names: tuple[str, ...]
  shape: tuple[int, ...]
  copies: tuple[int, ...]
  inputs: tuple[int, ...]
  outputs: tuple[int, ...]

  def size(self, group) -> int:
    return int(np.prod([self.shape[i] for i in group], dtype=np.int64))

  @property
  def n_copies(self) -> int:
    return self.size(self.copies)

  @property
  def d_in(self) -> int:
    return self.size(self.inputs)

  @property
  def d_out(self) -> int:
    return self.size(self.outputs)

  def factor_shapes(self, r: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    copies = tuple(self.shape[i] for i in self.copies)
    return (copies + tuple(self.shape[i] for i in self.inputs) + (r,),
            copies + (r,) + tuple(self.shape[i] for i in self.outputs))

  def factor_names(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
    copies = tuple(self.names[i] for i in self.copies)
    return (copies + tuple(self.names[i] for i in self.inputs) + (RANK_AXIS,),
            copies + (RANK_AXIS,) + tuple(self.names[i] for i in self.outputs))

  def svd(self, weight):
    """(u, s, vh) of every copy, in float32 numpy."""
    w_CIO = np.asarray(weight, np.float32).reshape(self.n_copies, self.d_in, self.d_out)
    return np.linalg.svd(w_CIO, full_matrices=False)

  def factors(self, u_CIK, s_CK, vh_CKO, r: int):
    """(U, V) of rank r, the singular values split evenly, in the factors' layouts."""
    root_CR = s_CK[:, :r] ** 0.5
    u_shape, v_shape = self.factor_shapes(r)
    return ((u_CIK[:, :, :r] * root_CR[:, None, :]).reshape(u_shape),
            (root_CR[:, :, None] * vh_CKO[:, :r, :]).reshape(v_shape))


def _matrices(flat_params, flat_specs, settings) -> dict[tuple, _Matrix]:
  """The selected matrices by path, checked against ``settings.rank``."""
  matrices = {}
  for path, spec in flat_specs.items():
    names = tuple(spec)
    if not selects(names):
      continue
    shape = tuple(np.shape(flat_params[path]))
    matrix = _Matrix(names, shape, *param_roles.matrix_axes(names))
    k = min(matrix.d_in, matrix.d_out)
    if settings.rank is not None and settings.rank > k:
      raise ValueError(f"lowrank.rank={settings.rank} is above min(d_in, d_out)={k} of "
                       f"{_name(path)} (shape {shape}: {matrix.d_in} x {matrix.d_out}); pick "
                       f"lowrank.rank <= {k}")
    matrices[path] = matrix
  if not matrices:
    raise ValueError("lowrank: the model has no hidden matrices to factorize")
  return matrices


def factorize(params: Any, param_specs: Any, settings: LowRankSettings
              ) -> tuple[dict, dict, dict[str, Any]]:
  """(factored params, their logical PartitionSpecs, report) of ``params`` (the ``params``
  collection, plain arrays) whose logical specs are ``param_specs``. The report counts the
  whole tree's parameters before and after and the selected matrices' matmul FLOPs per token
  (forward: 2 d_in d_out dense, 2 r (d_in + d_out) factored, each copy once: exact for stacked
  layers, an upper bound for MoE experts, of which a token visits only k). Each matrix's row
  gives the rank chosen and the energy it keeps (the least over copies); ``factored`` False:
  U and V would not be smaller, so it stayed dense."""
  flat_params, flat_specs = _flat(params), _flat(param_specs)
  matrices = _matrices(flat_params, flat_specs, settings)
  factored, factored_specs, rows = dict(flat_params), dict(flat_specs), []
  flops_before = flops_after = 0
  for path, m in matrices.items():
    weight = flat_params[path]
    u_CIK, s_CK, vh_CKO = m.svd(weight)
    r = settings.rank_for(s_CK)
    dense_size, factored_size = m.d_in * m.d_out, r * (m.d_in + m.d_out)
    kept = settings.factor_all or factored_size < dense_size
    rows.append({"path": _name(path), "shape": list(m.shape), "rank": r,
                 "energy_kept": float(np.min(_energy_kept(s_CK)[:, r - 1])),
                 "factored": bool(kept)})
    flops_before += 2 * m.n_copies * dense_size
    flops_after += 2 * m.n_copies * (factored_size if kept else dense_size)
    if not kept:
      continue
    u, v = m.factors(u_CIK, s_CK, vh_CKO, r)
    dtype = np.asarray(weight).dtype
    del factored[path], factored_specs[path]
    factored[path + ("U",)], factored[path + ("V",)] = u.astype(dtype), v.astype(dtype)
    u_names, v_names = m.factor_names()
    factored_specs[path + ("U",)] = PartitionSpec(*u_names)
    factored_specs[path + ("V",)] = PartitionSpec(*v_names)
  report = {
      "settings": {k: getattr(settings, k) for k in CHOICES if getattr(settings, k) is not None},
      "n_params_before": _count(flat_params), "n_params_after": _count(factored),
      "matrices": rows,
      "matmul_flops_per_token_before": float(flops_before),
      "matmul_flops_per_token_after": float(flops_after),
  }
  return _nest(factored), _nest(factored_specs), report


def _count(flat: dict) -> int:
  return int(sum(np.size(leaf) for leaf in flat.values()))


def _is_factors(node, spec) -> bool:
  return (isinstance(node, Mapping) and set(node) == {"U", "V"} and isinstance(spec, Mapping)
          and isinstance(spec.get("V"), PartitionSpec) and RANK_AXIS in tuple(spec["V"]))


def _product(u, v, n_copies: int) -> jax.Array:
  """U V contracted over the rank axis, copies kept apart: the dense kernel, in U's dtype.
  An einsum over the named axes (no reshapes), so a sharded U and V need no regrouping."""
  letters = iter(string.ascii_letters)
  copies = "".join(next(letters) for _ in range(n_copies))
  inputs = "".join(next(letters) for _ in range(u.ndim - n_copies - 1))
  outputs = "".join(next(letters) for _ in range(v.ndim - n_copies - 1))
  rank = next(letters)
  dense = jnp.einsum(f"{copies}{inputs}{rank},{copies}{rank}{outputs}->{copies}{inputs}{outputs}",
                     jnp.asarray(u, jnp.float32), jnp.asarray(v, jnp.float32),
                     precision=jax.lax.Precision.HIGHEST)
  return dense.astype(u.dtype)


def materialize(factored: Any, factored_specs: Any) -> Any:
  """The dense params of a factored tree (``factorize``'s first two results): each {U, V}
  replaced by U V in the original kernel's shape; other leaves as they are. Pure jnp: usable
  under jit and in ``FactoredModel.apply`` (pass the specs by closure: they are not arrays).
  The specs say where each factor's copies end (its ``rank`` axis), which shapes alone do not."""

  def walk(node, spec):
    if _is_factors(node, spec):
      return _product(node["U"], node["V"], tuple(spec["V"]).index(RANK_AXIS))
    if isinstance(node, Mapping):
      return {key: walk(value, spec[key]) for key, value in node.items()}
    return node

  return walk(factored, factored_specs)


@dataclasses.dataclass(frozen=True, eq=False)
class FactoredModel:
  """A model trained in factored form (recovery fine-tuning): the parameters are U and V, the
  model code sees dense kernels. ``init`` replaces each factored kernel of the model's own
  (boxed) initialization by random U and V at ``ranks`` ((path, r) pairs, e.g. from
  ``ranks_of``), boxed with the factors' logical axes so they shard by the rules (recovery then
  loads factorize's factors over them); ``apply`` materializes them first, so gradients reach U
  and V, never a dense W.
  A ``Task.wrap_model`` result: the task only calls ``init`` and ``apply``."""
  model: Any  # the dense Linen model
  factored_specs: Any  # factorize's second result
  ranks: tuple[tuple[str, int], ...]

  def init(self, rngs, *args, **kwargs):
    variables = dict(self.model.init(rngs, *args, **kwargs))
    flat = _flat(variables["params"])
    key = rngs["params"] if isinstance(rngs, Mapping) else rngs
    for k, (name, r) in enumerate(self.ranks):
      path = tuple(name.split("/"))
      box = flat.pop(path)
      m = _Matrix(tuple(box.names), tuple(box.value.shape), *param_roles.matrix_axes(box.names))
      # Random factors with the variance of a dense init (no SVD inside the jitted init: on
      # sharded CPU devices it can stall); recovery loads factorize's factors over them.
      u_shape, v_shape = m.factor_shapes(r)
      u_key, v_key = jax.random.split(jax.random.fold_in(key, k))
      u = jax.random.normal(u_key, u_shape, jnp.float32) / np.sqrt(m.d_in)
      v = jax.random.normal(v_key, v_shape, jnp.float32) / np.sqrt(r)
      u_names, v_names = m.factor_names()
      flat[path + ("U",)] = box.replace(value=u.astype(box.value.dtype), names=u_names)
      flat[path + ("V",)] = box.replace(value=v.astype(box.value.dtype), names=v_names)
    variables["params"] = _nest(flat)
    return variables

  def apply(self, variables, *args, **kwargs):
    variables = {**variables, "params": materialize(variables["params"], self.factored_specs)}
    return self.model.apply(variables, *args, **kwargs)


def ranks_of(factored: Any) -> tuple[tuple[str, int], ...]:
  """(path, rank) of every factored matrix of a factored tree (arrays or shapes)."""
  return tuple((_name(path[:-1]), int(np.shape(leaf)[-1]))
               for path, leaf in _flat(factored).items() if path[-1] == "U")
