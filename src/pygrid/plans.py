"""TorchScript training plans: built from an ordinary model, validated as code before they run.

The plan calling contract
-------------------------
This is THE contract that devices, Workers and the Node rely on. A plan is a TorchScript
``ScriptModule`` (saved with ``torch.jit.save``) whose ``forward`` is one of:

* **training plan** — ``forward(x: Tensor, y: Tensor, lr: float, params: List[Tensor])
  -> Tuple[Tensor, Tensor, List[Tensor]]`` returns ``(loss, accuracy, updated_params)`` for one
  batch: the mean loss on ``(x, y)`` before the step, the batch accuracy before the step, and the
  parameters after one optimiser step with learning rate ``lr``;
* **evaluate plan** — ``forward(x: Tensor, y: Tensor, params: List[Tensor])
  -> Tuple[Tensor, Tensor]`` returns ``(loss, accuracy)`` on one batch; nothing is updated.

``params`` holds the model's trainable state as a list, in the model's ``named_parameters()``
order (a shared parameter appears once, under its first name): exactly the order that
`pygrid.serde.dump` keeps, so ``list(serde.load(...).values())`` is a valid ``params``. Every
tensor must have the shape and dtype of the model's parameter; a plan raises otherwise (it never
broadcasts or casts silently). Parameters the model froze (``requires_grad=False``) come back
unchanged. The plans `training_plan` builds also carry ``param_names: List[str]``.

Losses: ``"cross_entropy"`` takes logits ``x -> [N, C]`` and class indices ``y: int64 [N]``;
accuracy is the fraction of rows whose argmax is ``y``. ``"mse"`` takes ``y`` with the shape of
the model's output; its second output is always ``0.0`` (the loss already is the metric).
Optimiser: ``"sgd"`` is plain SGD, ``p - lr * grad``, stateless from batch to batch.

Call a plan with gradients enabled (not under ``torch.no_grad()``), one call at a time per plan
instance (it loads ``params`` into its own copy of the model). Training plans run the model in
training mode (dropout active), evaluate plans in eval mode. BatchNorm running statistics are not
part of the federated state, so the plans built here normalise with batch statistics in both
modes (batches of one sample cannot go through BatchNorm).

How the functional forward works
--------------------------------
TorchScript cannot script ``torch.func.functional_call`` or ``Module.parameters()`` (a
generator). So the plan module holds a copy of the model, plus ``self.params``: a list attribute
whose elements ARE that copy's parameter tensors (the same tensor objects; TorchScript keeps the
aliasing through save and load). A call copies ``params`` into them in place (through
``detach()``, so the copy is not recorded by autograd), runs the model's own scripted
``forward``, and takes ``torch.autograd.grad`` of the loss with respect to those parameter
tensors. Their values equal ``params``, so the gradients are the gradients at ``params``; the plan
returns ``params[i] - lr * grad[i]``. Any module TorchScript can script works; the plan's copy of
the weights is zeroed at build time so a plan carries no model weights.

Validation
----------
A plan is code. `validate_plan` (and `load_plan`, which calls it) refuses, before anything runs:
payloads over the size limit; anything that is not a TorchScript zip archive (a ``torch.save``
checkpoint, a pickle); archives whose code defines ``__setstate__`` (TorchScript runs it while
loading). Then it loads the archive with TorchScript's own loader (not Python's pickle) and walks
every method and hook graph of every submodule, with calls inlined, including the blocks of
``prim::If`` and ``prim::Loop``, and refuses any operator that is not on `ALLOWED_OPS`, naming it.
The allowlist holds maths, tensor creation (random numbers included), shape and indexing ops,
``torch.nn.functional`` layers and losses, ``torch.autograd.grad``, and the control-flow, list,
tuple, dict and string ops TorchScript emits. It leaves out (see `REFUSED_OPS` for reasons):
anything that reads or writes files, the network, processes or threads (``aten::from_file``,
``aten::save``, ``prim::rpc_*``, ``prim::fork``); random-seed setters and readers
(``aten::manual_seed``, ``aten::seed``, ``aten::initial_seed``, generator state), which would let a
plan make other jobs' randomness predictable; ``prim::Print`` (plans do no I/O: a Worker's stdout
is its own channel, and a printed batch would leak data into logs); calls to Python
(``prim::PythonOp``) and calls left unresolved after inlining (``prim::CallFunction``,
``prim::CallMethod``, ``prim::Enter``/``prim::Exit`` of ``with`` blocks), whose bodies cannot be
inspected; private ``aten::_*`` ops except a few TorchScript emits for ordinary code; memory
introspection (``aten::data_ptr``, ``prim::id``); and every operator outside ``aten``/``prim``.
``aten::warn`` is allowed: ``torch.nn.functional`` itself emits it and it only logs a warning.
"""

import copy
import io
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pygrid.errors import InvalidInput

__all__ = [
    "ALLOWED_OPS",
    "REFUSED_OPS",
    "PlanError",
    "PlanInfo",
    "PlanKind",
    "evaluate_plan",
    "load_plan",
    "save_plan",
    "training_plan",
    "validate_plan",
]

Loss = Literal["cross_entropy", "mse"]
Optimizer = Literal["sgd"]
PlanKind = Literal["training", "evaluate"]

# Operators by what they are for; a plan may use these and nothing else.
_PRIM_OPS = {
    # values, control flow, errors
    "Constant", "If", "Loop", "RaiseException", "Uninitialized", "unchecked_cast",
    "unchecked_unwrap_optional", "isinstance", "type",
    # module state (parameters, buffers, attributes)
    "GetAttr", "SetAttr",
    # containers
    "ListConstruct", "ListUnpack", "TupleConstruct", "TupleUnpack", "TupleIndex",
    "DictConstruct", "StringIndex", "tolist", "rangelist", "EnumName", "EnumValue",
    # scalars and tensor properties
    "NumToTensor", "dtype", "device", "layout", "requires_grad", "grad", "data", "shape",
    "is_cuda", "is_cpu", "is_nested", "is_sparse", "is_quantized", "is_meta", "itemsize",
    "nbytes", "min", "max", "abs", "index",
}  # fmt: skip

_ATEN_OPS = {
    # TorchScript's Python semantics: operators, builtins, lists, dicts, strings
    "__getitem__", "__is__", "__isnot__", "__not__", "__and__", "__or__", "__xor__",
    "__contains__", "__range_length", "__derive_index", "__round_to_zero_floordiv",
    "_set_item", "len", "append", "extend", "insert", "pop", "clear", "reverse", "count",
    "list", "slice", "copy", "keys", "values", "items", "dict", "get", "setdefault", "update",
    "format", "str", "join", "split", "strip", "startswith", "endswith", "lower", "upper",
    "replace", "isdigit", "Int", "Float", "Bool", "ScalarImplicit", "IntImplicit",
    "FloatImplicit", "Complex", "warn",
    "add", "sub", "mul", "div", "floordiv", "remainder", "fmod", "neg", "pow", "eq", "ne",
    "lt", "le", "gt", "ge", "floor", "ceil", "round", "trunc", "sqrt", "exp", "log", "log1p",
    "isnan", "isinf", "isfinite", "divmod", "min", "max", "abs", "sum", "any", "all",
    "sorted", "sort", "bin", "chr", "ord", "hash", "hex", "oct",
    # tensor properties
    "dim", "size", "numel", "stride", "item", "is_contiguous", "is_floating_point",
    "is_complex", "element_size", "requires_grad_", "detach", "detach_", "contiguous",
    # creation (random numbers are fine; seeding is not)
    "tensor", "scalar_tensor", "as_tensor", "zeros", "zeros_like", "ones", "ones_like",
    "full", "full_like", "empty", "empty_like", "arange", "linspace", "logspace", "eye",
    "new_zeros", "new_ones", "new_full", "new_empty", "rand", "rand_like",
    "randn", "randn_like", "randint", "randint_like", "randperm", "bernoulli", "bernoulli_",
    "multinomial", "normal", "normal_", "uniform_", "exponential_", "clone", "to", "type_as",
    "fill_", "zero_", "copy_", "one_hot", "tril", "triu", "diag", "diag_embed", "diagonal",
    # element-wise maths
    "add_", "sub_", "mul_", "div_", "pow_", "neg_", "exp_", "log_", "sqrt_", "abs_",
    "rsqrt", "square", "reciprocal", "exp2", "expm1", "log2", "log10", "sin", "cos", "tan",
    "asin", "acos", "atan", "atan2", "sinh", "cosh", "tanh", "tanh_", "asinh", "acosh",
    "atanh", "erf", "erfc", "erfinv", "lgamma", "digamma", "sigmoid", "sigmoid_", "logit",
    "sign", "sgn", "frac", "clamp", "clamp_", "clamp_min", "clamp_min_", "clamp_max",
    "clamp_max_", "clip", "lerp", "addcmul", "addcdiv", "where", "maximum", "minimum",
    "fmax", "fmin", "hypot", "xlogy", "nan_to_num", "logical_and", "logical_or",
    "logical_not", "logical_xor", "bitwise_and", "bitwise_or", "bitwise_not", "bitwise_xor",
    "masked_fill", "masked_fill_", "allclose", "equal", "isclose", "signbit", "heaviside",
    # linear algebra
    "matmul", "mm", "bmm", "mv", "dot", "addmm", "addmv", "addbmm", "baddbmm", "einsum",
    "outer", "ger", "tensordot", "linalg_vector_norm", "linalg_norm", "frobenius_norm",
    "norm", "cdist", "cross", "kron", "trace",
    # reductions and sorting
    "mean", "prod", "amax", "amin", "aminmax", "argmax", "argmin", "std", "var", "std_mean",
    "var_mean", "logsumexp", "cumsum", "cumprod", "cummax", "cummin", "topk", "argsort",
    "kthvalue", "median", "nanmedian", "mode", "nansum", "nanmean", "count_nonzero",
    "bincount", "histc", "searchsorted", "bucketize",
    # shapes and indexing
    "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "squeeze",
    "squeeze_", "unsqueeze", "unsqueeze_", "permute", "transpose", "transpose_", "t",
    "expand", "expand_as", "repeat", "repeat_interleave", "tile", "cat", "concat",
    "concatenate", "stack", "hstack", "vstack", "dstack", "chunk", "tensor_split",
    "split_with_sizes", "unsafe_split", "unsafe_chunk", "unbind", "narrow", "select",
    "index_select", "gather", "scatter", "scatter_", "scatter_add", "scatter_add_",
    "scatter_reduce", "index", "index_put", "index_put_", "index_add", "index_add_",
    "index_copy", "index_fill", "index_fill_", "masked_select", "masked_scatter", "take",
    "take_along_dim", "nonzero", "argwhere", "flip", "fliplr", "flipud", "roll", "rot90",
    "movedim", "moveaxis", "swapaxes", "swapdims", "broadcast_tensors", "broadcast_to",
    "atleast_1d", "atleast_2d", "atleast_3d", "meshgrid", "unique_consecutive",
    "constant_pad_nd", "pad", "reflection_pad1d", "reflection_pad2d", "replication_pad1d",
    "replication_pad2d", "im2col", "col2im", "unfold", "pixel_shuffle", "pixel_unshuffle",
    "channel_shuffle", "upsample_nearest1d", "upsample_nearest2d", "upsample_bilinear2d",
    "upsample_linear1d", "upsample_bicubic2d", "upsample_nearest3d", "upsample_trilinear3d",
    # private kernels that torch.nn layers call on some code paths (Upsample, Transformer)
    "_upsample_bilinear2d_aa", "_upsample_bicubic2d_aa", "_upsample_lanczos2d_aa",
    "_upsample_nearest_exact1d", "_upsample_nearest_exact2d", "_upsample_nearest_exact3d",
    "_native_multi_head_attention", "_transformer_encoder_layer_fwd", "is_grad_enabled",
    "is_autocast_enabled",
    # torch.nn.functional layers
    "linear", "bilinear", "conv1d", "conv2d", "conv3d", "conv_transpose1d",
    "conv_transpose2d", "conv_transpose3d", "convolution", "max_pool1d", "max_pool2d",
    "max_pool3d", "max_pool1d_with_indices", "max_pool2d_with_indices",
    "max_pool3d_with_indices", "avg_pool1d", "avg_pool2d", "avg_pool3d",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
    "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d", "batch_norm",
    "instance_norm", "layer_norm", "group_norm", "rms_norm", "embedding",
    "embedding_renorm_", "embedding_bag", "dropout", "dropout_", "feature_dropout",
    "feature_dropout_", "alpha_dropout", "alpha_dropout_", "feature_alpha_dropout",
    "feature_alpha_dropout_", "relu", "relu_", "relu6", "leaky_relu", "leaky_relu_", "elu",
    "elu_", "selu", "selu_", "celu", "celu_", "gelu", "gelu_", "silu", "silu_", "mish",
    "mish_", "hardtanh", "hardtanh_", "hardsigmoid", "hardsigmoid_", "hardswish",
    "hardswish_", "hardshrink", "softshrink", "softplus", "threshold", "threshold_", "rrelu",
    "rrelu_", "prelu", "glu", "log_sigmoid", "softmax", "log_softmax", "cosine_similarity",
    "pairwise_distance", "pdist", "scaled_dot_product_attention", "lstm", "gru", "rnn_tanh",
    "rnn_relu", "lstm_cell", "gru_cell", "rnn_tanh_cell", "rnn_relu_cell",
    # losses
    "cross_entropy_loss", "nll_loss", "nll_loss2d", "nll_loss_nd", "mse_loss", "l1_loss",
    "smooth_l1_loss", "huber_loss", "binary_cross_entropy",
    "binary_cross_entropy_with_logits", "kl_div", "soft_margin_loss",
    "multilabel_margin_loss", "multi_margin_loss", "margin_ranking_loss",
    "hinge_embedding_loss", "cosine_embedding_loss", "triplet_margin_loss",
    "poisson_nll_loss", "ctc_loss",
    # autograd: gradients of the loss, the core of a training step
    "grad",
}  # fmt: skip

#: Every operator a plan may use (``namespace::name``, overloads included).
ALLOWED_OPS: frozenset[str] = frozenset(
    {f"prim::{name}" for name in _PRIM_OPS} | {f"aten::{name}" for name in _ATEN_OPS}
)

#: Operators refused with a reason in the error message (everything off the allowlist is refused).
REFUSED_OPS: dict[str, str] = {
    "aten::from_file": "reads a file",
    "aten::save": "writes a file",
    "aten::load": "reads a file",
    "aten::manual_seed": "sets the random seed",
    "aten::seed": "reseeds the random generator",
    "aten::initial_seed": "reads the random seed",
    "aten::Generator": "creates a random generator",
    "aten::get_state": "reads random generator state",
    "aten::set_state": "sets random generator state",
    "aten::graphsafe_get_state": "reads random generator state",
    "aten::graphsafe_set_state": "sets random generator state",
    "prim::Print": "prints to the host's stdout",
    "prim::PythonOp": "calls Python",
    "prim::IgnoredPythonOp": "calls Python",
    "prim::CallFunction": "calls a function that cannot be inspected",
    "prim::CallMethod": "calls a method that cannot be inspected",
    "prim::Enter": "runs a context manager that cannot be inspected",
    "prim::Exit": "runs a context manager that cannot be inspected",
    "prim::CreateObject": "creates a TorchScript object",
    "prim::fork": "starts a thread",
    "aten::wait": "waits on a thread",
    "prim::awaitable": "starts deferred work",
    "prim::rpc_async": "talks to the network",
    "prim::rpc_sync": "talks to the network",
    "prim::rpc_remote": "talks to the network",
    "aten::to_here": "talks to the network",
    "prim::id": "reveals memory addresses",
    "aten::data_ptr": "reveals memory addresses",
    "aten::set_": "swaps tensor storage",
    "aten::as_strided": "reads memory through arbitrary strides",
    "aten::as_strided_": "reads memory through arbitrary strides",
    "aten::sleep": "blocks the process",
    "prim::TimePoint": "reads the clock",
}


class PlanError(InvalidInput, ValueError):
    """A plan was refused; the message says why and names any refused operator (HTTP 422)."""

    code = "invalid_plan"

    def __init__(self, message: str, refused_ops: list[str] | None = None) -> None:
        super().__init__(message, {"refused_ops": refused_ops} if refused_ops else None)
        self.refused_ops = refused_ops or []


@dataclass(frozen=True)
class PlanInfo:
    """What validation found in a plan."""

    #: Every operator the plan's graphs use, sorted.
    ops: list[str]
    #: ``"module.path.method"`` for every method and hook, sorted (the root module's path is empty).
    methods: list[str]
    #: ``"training"`` or ``"evaluate"`` if ``forward`` has that contract's signature, else None.
    kind: PlanKind | None
    #: The ``param_names`` attribute of the plan, if it carries one (plans built here do).
    param_names: list[str] | None


@contextmanager
def _jit_quiet() -> Iterator[None]:
    # torch 2.13 deprecates torch.jit.* in favour of torch.export, which cannot export a
    # training step with autograd; TorchScript stays the plan format (DESIGN.md section 3).
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"`torch\.jit\.\w+` is deprecated", category=DeprecationWarning
        )
        yield


class _CrossEntropy(nn.Module):
    def forward(self, out: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        loss = F.cross_entropy(out, y)
        accuracy = (out.argmax(dim=1) == y).to(torch.float32).mean()
        return loss, accuracy


class _MeanSquaredError(nn.Module):
    def forward(self, out: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        # F.mse_loss would broadcast [N, 1] against [N] into an [N, N] loss, with a mere warning
        if out.shape != y.shape:
            raise ValueError(
                "mse plan: y has shape " + str(y.shape) + ", the model output " + str(out.shape)
            )
        return F.mse_loss(out, y), torch.zeros([], dtype=torch.float32)


_OBJECTIVES: dict[str, type[nn.Module]] = {"cross_entropy": _CrossEntropy, "mse": _MeanSquaredError}


class _Plan(nn.Module):
    param_names: list[str]
    param_dtypes: list[str]
    params: list[Tensor]

    def __init__(self, model: nn.Module, objective: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.objective = objective
        named = list(model.named_parameters())
        self.param_names = [name for name, _ in named]
        # TorchScript prints a dtype as its enum number: keep names for error messages
        self.param_dtypes = [str(param.dtype).removeprefix("torch.") for _, param in named]
        # the same tensor objects as the model's parameters: see the module docstring
        self.params = [param for _, param in named]

    def load_params(self, params: list[Tensor]) -> None:
        if len(params) != len(self.params):
            raise ValueError(
                "plan expects "
                + str(len(self.params))
                + " parameter tensors, got "
                + str(len(params))
            )
        for i in range(len(params)):
            mine = self.params[i]
            given = params[i]
            # copy_ would broadcast a wrong shape and cast a wrong dtype without a word
            if given.shape != mine.shape:
                raise ValueError(
                    "parameter "
                    + self.param_names[i]
                    + ": expected shape "
                    + str(mine.shape)
                    + ", got "
                    + str(given.shape)
                )
            if given.dtype != mine.dtype:
                raise ValueError(
                    "parameter "
                    + self.param_names[i]
                    + ": expected dtype "
                    + self.param_dtypes[i]
                    + ", got another dtype (torch ScalarType "
                    + str(given.dtype)
                    + ")"
                )
            # through detach(): loading is not part of the differentiated computation
            mine.detach().copy_(given)


class _TrainingPlan(_Plan):
    def forward(
        self, x: Tensor, y: Tensor, lr: float, params: list[Tensor]
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        self.load_params(params)
        loss, accuracy = self.objective(self.model(x), y)
        trainable: list[Tensor] = []
        for param in self.params:
            if param.requires_grad:
                trainable.append(param)
        grads = torch.autograd.grad([loss], trainable, allow_unused=True)
        updated: list[Tensor] = []
        k = 0
        for i in range(len(params)):
            new = params[i].detach().clone()
            if self.params[i].requires_grad:
                grad = grads[k]
                k += 1
                if grad is not None:
                    new = params[i].detach() - lr * grad
            updated.append(new)
        return loss.detach(), accuracy.detach(), updated


class _EvaluatePlan(_Plan):
    def forward(self, x: Tensor, y: Tensor, params: list[Tensor]) -> tuple[Tensor, Tensor]:
        self.load_params(params)
        loss, accuracy = self.objective(self.model(x), y)
        return loss.detach(), accuracy.detach()


def _plan_copy(model: torch.nn.Module, *, train: bool) -> torch.nn.Module:
    """A copy of ``model`` ready to live inside a plan: zeroed weights, no running statistics."""
    if isinstance(model, torch.jit.ScriptModule):
        raise TypeError("pass the ordinary nn.Module: the plan builder scripts it")
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    if not any(True for _ in model.parameters()):
        raise ValueError("the model has no parameters to train")
    clone = copy.deepcopy(model)
    with torch.no_grad():
        for param in clone.parameters():
            param.zero_()  # the weights arrive as `params` at every call
            if not train:
                param.requires_grad_(False)
    for module in clone.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            # running statistics are not federated: normalise with batch statistics, always
            module.track_running_stats = False
            module.running_mean = None
            module.running_var = None
            module.num_batches_tracked = None
    return clone.train(train)


def _objective(loss: str) -> nn.Module:
    if loss not in _OBJECTIVES:
        raise ValueError(f"unknown loss {loss!r}; choose 'cross_entropy' or 'mse'")
    return _OBJECTIVES[loss]()


def _script(module: torch.nn.Module) -> torch.jit.ScriptModule:
    with _jit_quiet():
        scripted: torch.jit.ScriptModule = torch.jit.script(module)
    return scripted


def training_plan(
    model: torch.nn.Module, loss: Loss = "cross_entropy", optimizer: Optimizer = "sgd"
) -> torch.jit.ScriptModule:
    """Script a one-batch training step of ``model`` that follows the plan calling contract."""
    if optimizer != "sgd":
        raise ValueError(f"unknown optimizer {optimizer!r}; choose 'sgd'")
    objective = _objective(loss)
    return _script(_TrainingPlan(_plan_copy(model, train=True), objective))


def evaluate_plan(model: torch.nn.Module, loss: Loss = "cross_entropy") -> torch.jit.ScriptModule:
    """Script a one-batch evaluation of ``model`` that follows the plan calling contract."""
    objective = _objective(loss)
    return _script(_EvaluatePlan(_plan_copy(model, train=False), objective))


def save_plan(plan: torch.jit.ScriptModule) -> bytes:
    """The TorchScript archive of ``plan``."""
    if not isinstance(plan, torch.jit.ScriptModule):
        raise TypeError(f"a plan is a torch.jit.ScriptModule, got {type(plan).__name__}")
    buffer = io.BytesIO()
    with _jit_quiet():
        torch.jit.save(plan, buffer)
    return buffer.getvalue()


def _check_archive(data: bytes, max_bytes: int) -> None:
    """Refuse what is not a TorchScript archive, before TorchScript parses a byte of it."""
    if not isinstance(data, bytes | bytearray):
        raise TypeError(f"expected bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise PlanError(f"plan is {len(data)} bytes, over the limit of {max_bytes} bytes")
    if not data:
        raise PlanError("not a TorchScript archive (empty)")
    if data[:4] != b"PK\x03\x04":
        looks = ""
        if data[:1] == b"\x80":
            looks = "looks like a pickle"
        elif len(data) >= 9 and data[8:9] == b"{":
            looks = "looks like a safetensors file"
        raise PlanError(f"not a TorchScript archive ({looks or 'not a zip file'})")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        entries = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as exc:
        raise PlanError(f"not a TorchScript archive (corrupt zip: {exc})") from None
    names = [entry.filename for entry in entries]
    if len(set(names)) != len(names):
        # two readers could pick different copies of a duplicated entry
        raise PlanError("not a TorchScript archive (duplicate entry names)")
    roots = {name.split("/", 1)[0] for name in names}
    if len(roots) != 1:
        raise PlanError("not a TorchScript archive (entries must share one top-level folder)")
    root = roots.pop()
    has_code = any(name.startswith(f"{root}/code/") for name in names)
    if f"{root}/data.pkl" in names and not has_code:
        raise PlanError(
            "not a TorchScript archive (looks like a torch.save checkpoint: no code/ folder)"
        )
    missing = [f for f in ("data.pkl", "constants.pkl") if f"{root}/{f}" not in names]
    # newer archives keep the format version under .data/
    if f"{root}/version" not in names and f"{root}/.data/version" not in names:
        missing.append("version")
    if not has_code:
        missing.append("code/")
    if missing:
        raise PlanError("not a TorchScript archive (missing " + ", ".join(missing) + ")")
    expanded = sum(entry.file_size for entry in entries)
    if expanded > 4 * max_bytes:
        raise PlanError(f"plan archive expands to {expanded} bytes, over 4 x {max_bytes} bytes")
    for entry in entries:
        if entry.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise PlanError(f"plan archive entry {entry.filename!r} uses an unknown compression")
        if entry.flag_bits & 0x1:
            raise PlanError(f"plan archive entry {entry.filename!r} is encrypted")
        if entry.filename.startswith(f"{root}/code/") and not entry.filename.endswith(".debug_pkl"):
            try:
                source = archive.read(entry)
            except (zipfile.BadZipFile, ValueError, EOFError, RuntimeError, zlib.error) as exc:
                raise PlanError(f"not a TorchScript archive (corrupt zip: {exc})") from None
            if b"__setstate__" in source:
                raise PlanError(
                    f"plan code {entry.filename.removeprefix(root + '/')!r} defines "
                    "__setstate__, which TorchScript would run while loading the plan"
                )


def _graph_ops(graph: Any) -> set[str]:
    graph = graph.copy()
    torch._C._jit_pass_inline(graph)
    found: set[str] = set()
    pending = [graph.block()]
    while pending:
        block = pending.pop()
        for node in block.nodes():
            found.add(node.kind())
            pending.extend(node.blocks())
    return found


def _plan_kind(plan: torch.jit.ScriptModule) -> PlanKind | None:
    schema = plan._c._get_method("forward").schema
    args = [str(arg.type) for arg in schema.arguments[1:]]
    returns = [str(ret.type) for ret in schema.returns]
    if args == ["Tensor", "Tensor", "float", "List[Tensor]"] and returns == [
        "Tuple[Tensor, Tensor, List[Tensor]]"
    ]:
        return "training"
    if args == ["Tensor", "Tensor", "List[Tensor]"] and returns == ["Tuple[Tensor, Tensor]"]:
        return "evaluate"
    return None


def _inspect(data: bytes, max_bytes: int) -> tuple[torch.jit.ScriptModule, PlanInfo]:
    _check_archive(data, max_bytes)
    try:
        with _jit_quiet():
            plan = torch.jit.load(io.BytesIO(bytes(data)), map_location="cpu")
    except Exception as exc:  # TorchScript reports every failure as a RuntimeError or worse
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PlanError(f"not a loadable TorchScript archive: {first_line}") from None

    ops: dict[str, str] = {}  # op -> first method using it
    methods: list[str] = []
    for path, module in plan.named_modules():
        prefix = f"{path}." if path else ""
        graphs = [(name, module._c._get_method(name).graph) for name in module._c._method_names()]
        hooks = [*module._c._get_forward_pre_hooks(), *module._c._get_forward_hooks()]
        graphs += [(f"<hook {hook.name}>", hook.graph) for hook in hooks]
        for name, graph in graphs:
            methods.append(prefix + name)
            for op in _graph_ops(graph):
                ops.setdefault(op, prefix + name)

    refused = sorted(op for op in ops if op not in ALLOWED_OPS)
    if refused:
        described = [
            f"{op} ({REFUSED_OPS.get(op, 'not on the allowlist')}; in {ops[op]})" for op in refused
        ]
        raise PlanError("plan uses refused operator(s): " + ", ".join(described), refused)

    param_names = None
    if plan._c.hasattr("param_names"):
        value = plan._c.getattr("param_names")
        if isinstance(value, list) and all(isinstance(n, str) for n in value):
            param_names = value
    kind = _plan_kind(plan) if "forward" in plan._c._method_names() else None
    return plan, PlanInfo(sorted(ops), sorted(methods), kind, param_names)


def validate_plan(data: bytes, *, max_bytes: int, kind: PlanKind | None = None) -> PlanInfo:
    """Check a plan archive against the size limit and the operator allowlist; PlanError if not.

    With ``kind``, ``forward`` must also have that contract's signature (see the module docstring).
    """
    _, info = _inspect(data, max_bytes)
    _check_kind(info, kind)
    return info


def _check_kind(info: PlanInfo, kind: PlanKind | None) -> None:
    if kind is not None and info.kind != kind:
        raise PlanError(
            f"plan's forward does not follow the {kind} plan contract "
            f"(found: {info.kind or 'another signature'})"
        )


def load_plan(
    data: bytes, *, max_bytes: int, kind: PlanKind | None = None
) -> torch.jit.ScriptModule:
    """Validate a plan archive (see `validate_plan`), then return the loaded plan."""
    plan, info = _inspect(data, max_bytes)
    _check_kind(info, kind)
    return plan
