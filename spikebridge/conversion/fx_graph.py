"""Tracing and checking a user CNN for conversion (METHODS 2.1, 2.6; the graph side of
``convert``).

:func:`~spikebridge.conversion.convert` handles a spikebridge ResNet with its own
block structure; every other ANN comes here (this module: trace, check, :func:`site_graph`;
:mod:`~spikebridge.conversion.fx_twin`: the spiking graph built from it). ``torch.fx`` traces the model's ``forward``
(``nn.Sequential`` or custom code) into a graph, which is checked node by node and
rewritten into the same spiking layout as the ResNet path:

- time is folded into the batch: :class:`StepEncoder` repeats the image ``T`` times
  (direct encoding) and every analog layer sees ``[T*B, ...]``; :class:`StepAverage` reads
  the mean over T of the per-step outputs (METHODS 2.1 readout), as ``ResNet.forward``;
- every activation site (``nn.ReLU``, ``F.relu``, ``torch.relu``, ``x.relu()``, and
  spikebridge's ``Clip`` / ``QCFS``) becomes a :class:`~spikebridge.nn.SpikingSite` with an
  IF neuron at the name of the ANN's module; a functional ReLU, or a ReLU module called
  more than once, gets a module of its own first (:func:`site_graph`), so that the ANN and
  the SNN pair their sites by name like the ResNet path does;
- ``BatchNorm2d`` after a ``Conv2d`` whose output feeds nothing else is folded into it;
  any other BatchNorm stays, an affine map per step (eval mode);
- convolution, linear, average pooling, flatten / view / reshape (batch dimension kept),
  ``+`` and dropout (eval) stay analog per step: each is linear, so the mean over T of its
  per-step outputs is its output on the mean input;
- max pooling is not linear (the mean of per-step maxima exceeds the max of the means), so
  it becomes :class:`GatedMaxPool2d`, below.

Any other node (``torch.sigmoid``, ``nn.GELU``, a parameter read by ``get_attr``, a custom
call, ``flatten`` from dim 0, a ``view`` with a fixed batch size) raises :class:`ModelError`
naming the node and its op, before anything is built.

Max pooling (our choice among three, measured): per window and step, :class:`GatedMaxPool2d`
passes the value of the input position whose sum over the EARLIER steps ``1..t-1`` is
largest (the current step only breaks ties, so step 1 is the plain max): the rate-gated
max pooling of Rueckauer et al. (2017) with a causal gate. As T grows the gate settles on
the position with the largest rate, and since the choice at step ``t`` does not depend on
who spikes at ``t``, the output rate tends to the max of the input rates, which is what the
ANN computes. Measured on a Fashion-MNIST CNN with two max poolings (``FashionCNN`` of the
tests, ANN 84.7 % on 1000 test images), robust-norm thresholds, accuracy at T = 8 / 16 /
32 / 64:

- earlier-steps gate (kept): 33.9 / 72.3 / 83.4 / 84.6 %, mean |logit error| 0.60 at T = 32;
- gate including the current step (Σ over ``1..t``): 16.3 / 47.4 / 64.5 / 70.4 %, 1.91: a
  position is picked more often exactly when it spikes, which overestimates the max;
- per-step max of the spike trains (``MaxPool2d`` kept after the neuron, SpikingJelly's
  default): 10.4 / 19.3 / 31.0 / 33.5 %, 5.25: any spike in the window passes, so the
  output rate approaches the union of the inputs' spikes, not the largest rate.

Reloading: the converted model is a :class:`SpikingGraph` (a ``torch.fx.GraphModule``); save
its ``state_dict()`` and rebuild the empty skeleton with :func:`build_spiking_graph` from
a fresh instance of the same ANN class, then ``load_state_dict`` (thresholds, φ and folded
biases are in the state dict).
"""

from __future__ import annotations

import copy
import operator
from collections import Counter
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from spikebridge.conversion.fx_time import TIME_MODULES, SpikingGraph
from spikebridge.errors import ModelError
from spikebridge.nn.activations import QCFS, Clip
from spikebridge.nn.neurons import SpikingNeuron
from spikebridge.nn.temporal import SpikingSite

SITE_MODULES = (nn.ReLU, Clip, QCFS)
SITE_FUNCTIONS = (F.relu, torch.relu, torch.relu_, F.relu_)
SITE_METHODS = ("relu", "relu_")
STEP_MODULES = (
    nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.BatchNorm1d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
    nn.Flatten, nn.Identity, nn.Dropout,
)  # fmt: skip
MAX_POOL_MODULES = (nn.MaxPool2d, nn.AdaptiveMaxPool2d)
ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)
STEP_FUNCTIONS = (F.avg_pool2d, F.adaptive_avg_pool2d)
SHAPE_ARITHMETIC = (operator.add, operator.mul, operator.floordiv, operator.sub)
SUPPORTED = (
    "Conv2d, Linear, BatchNorm, ReLU (module, F.relu, torch.relu, .relu()) / Clip / QCFS, "
    "average and max pooling, flatten / view / reshape keeping the batch dimension, "
    "mean over non-batch dims, + and Dropout"
)

# --------------------------------------------------------------------------- tracing


_LEAVES = (Clip, QCFS, SpikingSite, SpikingNeuron, *TIME_MODULES)


class _Tracer(fx.Tracer):
    """torch.fx's tracer, with spikebridge's activations, sites and time modules as leaves."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, _LEAVES) or super().is_leaf_module(m, module_qualified_name)


def trace_graph(model: nn.Module) -> fx.Graph:
    """The fx graph of ``model.forward``; ModelError when torch.fx cannot trace it."""
    try:
        return _Tracer().trace(model)
    except Exception as exc:  # fx raises TraceError, TypeError, RuntimeError, ...
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ModelError(
            f"cannot trace {type(model).__name__} with torch.fx ({type(exc).__name__}: "
            f"{detail}); conversion needs a forward without data-dependent Python control flow"
        ) from exc


def _call_counts(graph: fx.Graph) -> Counter[str]:
    return Counter(n.target for n in graph.nodes if n.op == "call_module")  # type: ignore[misc]


def _set_submodule(root: nn.Module, target: str, module: nn.Module) -> None:
    parent_name, _, leaf = target.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, leaf, module)


def _fresh_name(root: nn.Module, base: str) -> str:
    name, i = base, 1
    while hasattr(root, name):
        name, i = f"{base}_{i}", i + 1
    return name


# --------------------------------------------------------------------------- node checks


def _function_name(fn: Any) -> str:
    module = getattr(fn, "__module__", None) or "torch"
    return f"{module}.{getattr(fn, '__name__', repr(fn))}"


def describe(node: fx.Node, root: nn.Module) -> str:
    """``call_module 'act': GELU``, ``call_function torch.sigmoid``, ``call_method .exp()``."""
    if node.op == "call_module":
        return f"call_module {node.target!r}: {type(root.get_submodule(str(node.target))).__name__}"
    if node.op == "call_function":
        return f"call_function {_function_name(node.target)}"
    if node.op == "call_method":
        return f"call_method .{node.target}()"
    return f"{node.op} {node.target!r}"


def _arg(node: fx.Node, index: int, name: str, default: Any) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _is_shape(node: Any) -> bool:
    """``x.shape`` or ``x.size()`` (a whole shape)."""
    if not isinstance(node, fx.Node):
        return False
    if node.op == "call_function" and node.target is getattr:
        return node.args[1] == "shape"
    return node.op == "call_method" and node.target == "size" and _arg(node, 1, "dim", None) is None


def _is_shape_value(node: Any) -> bool:
    """An int, one entry of a shape, or arithmetic on such values (per-sample sizes)."""
    if isinstance(node, int):
        return True
    if not isinstance(node, fx.Node):
        return False
    if node.op == "call_method" and node.target == "size":
        return True
    if node.op == "call_function" and node.target is operator.getitem:
        return _is_shape(node.args[0])
    if node.op == "call_function" and node.target in SHAPE_ARITHMETIC:
        return all(_is_shape_value(a) for a in node.args)
    return False


def _is_batch_size(value: Any) -> bool:
    """``x.size(0)`` or ``x.shape[0]``: the (folded) batch size."""
    if not isinstance(value, fx.Node):
        return False
    if value.op == "call_method" and value.target == "size":
        return _arg(value, 1, "dim", None) == 0
    return (
        value.op == "call_function"
        and value.target is operator.getitem
        and (_is_shape(value.args[0]) and value.args[1] == 0)
    )


def _reshape_problem(node: fx.Node) -> str | None:
    shape = list(node.args[1:])
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = list(shape[0])
    first = shape[0] if shape else None
    keeps = _is_batch_size(first) or (isinstance(first, int) and first == -1)
    if not keeps or not all(_is_shape_value(d) for d in shape[1:]):
        return (
            "the new shape must keep the batch dimension (x.size(0) or -1 first, fixed "
            "sizes after it), e.g. torch.flatten(x, 1)"
        )
    return None


def _flatten_problem(start_dim: Any) -> str | None:
    if isinstance(start_dim, int) and start_dim != 0:
        return None
    return "flatten from dim 0 merges the batch (and the time steps); use torch.flatten(x, 1)"


def _mean_problem(node: fx.Node) -> str | None:
    dims = _arg(node, 1, "dim", None)
    dims = (dims,) if isinstance(dims, int) else dims
    if not isinstance(dims, (tuple, list)) or not all(isinstance(d, int) for d in dims):
        return "mean needs explicit dims that leave the batch dimension, e.g. x.mean((2, 3))"
    if 0 in dims:
        return "mean over dim 0 averages over the batch (and the time steps)"
    return None


def _max_pool_problem(node: fx.Node) -> str | None:
    index = 6 if node.target is F.max_pool2d else 2
    if _arg(node, index, "return_indices", False):
        return "max pooling with return_indices has no spiking counterpart"
    if any(isinstance(a, fx.Node) for a in [*node.args[1:], *node.kwargs.values()]):
        return "max pooling needs constant sizes"
    return None


def _module_problem(module: nn.Module) -> str | None:
    kind = type(module).__name__
    if isinstance(module, (SpikingSite, SpikingNeuron)):
        return "the model is already spiking; convert needs an ANN"
    if isinstance(module, nn.Flatten):
        return _flatten_problem(module.start_dim)
    if isinstance(module, MAX_POOL_MODULES):
        return "max pooling with return_indices has no spiking counterpart" if (
            module.return_indices
        ) else None  # fmt: skip
    if isinstance(module, (*SITE_MODULES, *STEP_MODULES)):
        return None
    if type(module).__module__ == "torch.nn.modules.activation":
        return f"replace {kind} with ReLU, Clip or QCFS and retrain"
    return f"conversion supports {SUPPORTED}; remove or replace {kind}"


def _function_problem(node: fx.Node) -> str | None:
    fn = node.target
    if fn in SITE_FUNCTIONS or fn in STEP_FUNCTIONS:
        return None
    if fn in ADD_FUNCTIONS:
        return None
    if fn is torch.flatten:
        return _flatten_problem(_arg(node, 1, "start_dim", 0))
    if fn is torch.mean:
        return _mean_problem(node)
    if fn is F.max_pool2d or fn is F.adaptive_max_pool2d:
        return _max_pool_problem(node)
    if fn is getattr and node.args[1] == "shape":
        return None
    if _is_shape_value(node):
        return None
    return f"conversion supports {SUPPORTED}"


def _method_problem(node: fx.Node) -> str | None:
    method = node.target
    if method in SITE_METHODS or method in ("size", "contiguous"):
        return None
    if method == "flatten":
        return _flatten_problem(_arg(node, 1, "start_dim", 0))
    if method in ("view", "reshape"):
        return _reshape_problem(node)
    if method == "mean":
        return _mean_problem(node)
    return f"conversion supports {SUPPORTED}"


def _node_problem(node: fx.Node, root: nn.Module) -> str | None:
    if node.op in ("placeholder", "output"):
        return None
    if node.op == "call_module":
        return _module_problem(root.get_submodule(str(node.target)))
    if node.op == "call_function":
        return _function_problem(node)
    if node.op == "call_method":
        return _method_problem(node)
    return "parameters and buffers read in forward (get_attr) are not supported; use modules"


def check_graph(graph: fx.Graph, root: nn.Module) -> None:
    """Refuse a graph conversion cannot handle: ModelError naming the first bad node."""
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        raise ModelError(f"convert needs a model with one input tensor, got {len(inputs)} inputs")
    for node in graph.nodes:
        problem = _node_problem(node, root)
        if problem is not None:
            raise ModelError(
                f"cannot convert node {node.name!r} ({describe(node, root)}): {problem}"
            )
        if node.op == "output" and not isinstance(node.args[0], fx.Node):
            raise ModelError("convert needs a model that returns one tensor (the logits)")


# --------------------------------------------------------------------------- site graph


def _is_site(node: fx.Node, root: nn.Module) -> bool:
    if node.op == "call_module":
        return isinstance(root.get_submodule(str(node.target)), SITE_MODULES)
    if node.op == "call_function":
        return node.target in SITE_FUNCTIONS
    return node.op == "call_method" and node.target in SITE_METHODS


def _in_place(node: fx.Node, root: nn.Module) -> bool:
    """Whether a ReLU node overwrites its input (the input's later readers see the result)."""
    if node.op == "call_module":
        return bool(getattr(root.get_submodule(str(node.target)), "inplace", False))
    if node.target in ("relu_",) or node.target is torch.relu_:
        return True
    return node.target is F.relu and bool(_arg(node, 1, "inplace", False))


def _replace_with_module(
    gm: fx.GraphModule, node: fx.Node, module: nn.Module, args: tuple[Any, ...]
) -> fx.Node:
    """Register ``module`` under a fresh name from the node's and call it instead of ``node``."""
    name = _fresh_name(gm, node.name)
    gm.add_submodule(name, module)
    with gm.graph.inserting_before(node):
        new = gm.graph.call_module(name, args)
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)
    new.name = name
    return new


def _rewire_in_place(graph: fx.Graph, site: fx.Node, source: fx.Node) -> None:
    """After an in-place ReLU, readers of its input that come later read the site instead."""
    order = {n: i for i, n in enumerate(graph.nodes)}
    for user in list(source.users):
        if user is not site and order[user] > order[site]:
            user.replace_input_with(source, site)


def _own_site(gm: fx.GraphModule, node: fx.Node, taken: set[str]) -> None:
    """Give a site node a non-in-place module of its own (first module call keeps its name)."""
    source = node.args[0]
    in_place = _in_place(node, gm)
    if node.op == "call_module":
        target, module = str(node.target), gm.get_submodule(str(node.target))
        fresh = nn.ReLU() if isinstance(module, nn.ReLU) else copy.deepcopy(module)
        if target not in taken:
            _set_submodule(gm, target, fresh)
            taken.add(target)
            site = node
        else:
            site = _replace_with_module(gm, node, fresh, (source,))
    else:
        site = _replace_with_module(gm, node, nn.ReLU(), (source,))
    taken.add(str(site.target))
    if in_place and isinstance(source, fx.Node):
        _rewire_in_place(gm.graph, site, source)


def _pool_module(node: fx.Node) -> nn.Module:
    """The ``nn`` module of a functional max pooling call."""
    if node.target is F.adaptive_max_pool2d:
        return nn.AdaptiveMaxPool2d(_arg(node, 1, "output_size", None))
    kernel = _arg(node, 1, "kernel_size", None)
    return nn.MaxPool2d(
        kernel, _arg(node, 2, "stride", None), _arg(node, 3, "padding", 0),
        _arg(node, 4, "dilation", 1), ceil_mode=bool(_arg(node, 5, "ceil_mode", False)),
    )  # fmt: skip


def _refuse_spiking(model: nn.Module) -> None:
    if isinstance(model, SpikingGraph) or any(
        isinstance(m, (SpikingSite, SpikingNeuron)) for m in model.modules()
    ):
        raise ModelError("convert needs an ANN; this model is already spiking")


def site_graph(ann: nn.Module) -> fx.GraphModule:
    """A traced copy of ``ann`` in which every activation site is a module of its own.

    The reference network that conversion measures and tunes against: same function as
    ``ann`` (BN kept), every ReLU a distinct non-in-place ``nn.ReLU`` module (named after the
    ANN's module at its first call, after the fx node otherwise), functional max pooling as
    modules; in eval mode. ``ann`` is not modified. Pair it with a converted model in
    ``decompose_errors`` or ``tune_thresholds``. ModelError for a model that cannot be
    converted.
    """
    _refuse_spiking(ann)
    model = copy.deepcopy(ann)
    graph = trace_graph(model)
    check_graph(graph, model)
    gm = fx.GraphModule(model, graph, class_name=type(ann).__name__)
    taken: set[str] = set()
    for node in list(gm.graph.nodes):
        if _is_site(node, gm):
            _own_site(gm, node, taken)
        elif node.op == "call_function" and node.target in (F.max_pool2d, F.adaptive_max_pool2d):
            _replace_with_module(gm, node, _pool_module(node), (node.args[0],))
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    return gm.eval()


def graph_sites(model: fx.GraphModule, kinds: tuple[type, ...]) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of the ``kinds`` modules called in ``model``'s graph, in call order."""
    names = dict.fromkeys(str(n.target) for n in model.graph.nodes if n.op == "call_module")
    modules = dict(model.named_modules())
    return [(n, modules[n]) for n in names if n in modules and isinstance(modules[n], kinds)]


def feeding_layer(model: fx.GraphModule, site_name: str) -> nn.Module | None:
    """The biased Conv2d / Linear whose output is the input current of site ``site_name`` and
    feeds nothing else (its bias can carry a per-channel shift); None when there is none."""
    calls = _call_counts(model.graph)
    for node in model.graph.nodes:
        if node.op != "call_module" or node.target != site_name:
            continue
        src = node.args[0]
        if not (isinstance(src, fx.Node) and src.op == "call_module"):
            return None
        layer = model.get_submodule(str(src.target))
        single = len(src.users) == 1 and calls[src.target] == 1
        ok = isinstance(layer, (nn.Conv2d, nn.Linear)) and layer.bias is not None and single
        return layer if ok else None
    return None
