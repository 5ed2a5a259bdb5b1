"""Exact incremental evaluation of a traced convolutional trunk for box-perturbed images.

When an image differs from a base image only inside a box, every node's output differs from the
base activation only inside a box too: per-pixel nodes (eval-mode BatchNorm, activations,
``Linear``/``LayerNorm`` over the channel dimension, residual adds, products with per-channel
constants, channel concatenation, permutations) keep it; windowed nodes (convolution, max and
average pooling) grow it by their kernel, dilation and padding and shrink it by their stride.
Each perturbed copy is carried through the graph as a local tensor over its box plus the cached
base activation everywhere else. A windowed node gathers, per copy, the crop of its (explicitly
padded) base input that its output box needs, pastes the copy's local values into it and runs
the operation on the crop with zero padding: every value computed equals the full forward's up to
floating-point rounding. Any other node materialises its inputs and runs normally, so from there
on the graph is recomputed in full (never wrong numbers).

Several base images can share one batch: each copy names its base (``bid``).
"""
from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from .regions import (
    Region,
    _arg,
    _conv_window,
    _LazyBase,
    _out_size,
    _pool_window,
    _resolve,
    _Window,
    gather,
    paste,
)

__all__ = ["GraphIncremental", "Region"]

_UNARY_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish,
                  nn.Hardsigmoid, nn.Hardtanh, nn.ELU, nn.Mish, nn.Identity, nn.Dropout, nn.Dropout2d, nn.Softplus,
                  nn.PReLU)
_UNARY_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.leaky_relu, F.gelu, F.silu, torch.sigmoid, F.sigmoid, torch.tanh,
                    F.tanh, F.hardswish, F.hardsigmoid, F.hardtanh, F.elu, F.mish, torch.clamp, torch.clip, F.softplus,
                    F.dropout, torch.exp, torch.sqrt, torch.rsqrt, torch.abs, torch.neg, operator.neg}
_UNARY_METHODS = {"relu", "relu_", "sigmoid", "tanh", "clamp", "clamp_", "clip", "contiguous", "abs", "neg", "exp",
                  "sqrt", "rsqrt", "float", "to", "type_as", "clamp_min", "clamp_max"}
_BINARY_FUNCTIONS = {operator.add, operator.mul, operator.sub, operator.truediv, torch.add, torch.mul, torch.sub,
                     torch.div, operator.iadd, operator.imul, torch.maximum, torch.minimum}
_BINARY_METHODS = {"add", "add_", "mul", "mul_", "sub", "sub_", "div", "div_"}


class GraphIncremental:
    """Incremental evaluation of a traced trunk (``fx.GraphModule``) for box-perturbed copies of base images.

    Call :meth:`prepare` with the base images (it runs the full graph once and decides how each node
    is evaluated), then :meth:`run` with the local content of each copy's box.

    Args:
        gm: the traced trunk in eval mode (a private copy; see :func:`~ssl_widgets.attr._occlusion_engine.fold.private_trunk`).

    Examples:
        >>> net = fx.symbolic_trace(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)))
        >>> engine = GraphIncremental(net)
        >>> base = torch.rand(1, 3, 16, 16)
        >>> cache = engine.prepare(base)
        >>> patch = torch.zeros(2, 3, 4, 4)
        >>> y0, x0 = torch.tensor([0, 9]), torch.tensor([3, 12])
        >>> out = engine.run(cache, patch, y0, x0, torch.zeros(2, dtype=torch.long))
        >>> full = base.repeat(2, 1, 1, 1); full[0, :, 0:4, 3:7] = 0; full[1, :, 9:13, 12:16] = 0
        >>> torch.allclose(out, net(full), atol=1e-6)
        True
    """

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.nodes = list(gm.graph.nodes)
        self.modules = dict(gm.named_modules())
        placeholders = [n for n in self.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise ValueError(f"the trunk must take one input, its graph has {len(placeholders)}")
        self.input = placeholders[0]
        self.plan: dict[fx.Node, str] = {}

    @property
    def fallback_nodes(self) -> list[str]:
        """After :meth:`prepare`, the graph nodes recomputed in full (unsupported operations and everything
        after them that cannot return to a local region)."""
        return [n.name for n, kind in self.plan.items() if kind == "fallback"]

    # -- running one node normally -----------------------------------------------------------
    def _call(self, node: fx.Node, env: dict) -> Any:
        args = fx.node.map_arg(node.args, lambda n: env[n])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n])
        if node.op == "call_module":
            return self.modules[node.target](*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        if node.op == "get_attr":
            obj = self.gm
            for part in node.target.split("."):
                obj = getattr(obj, part)
            return obj
        raise ValueError(node.op)

    def _in_place(self, node: fx.Node) -> bool:
        if node.op == "call_module":
            return bool(getattr(self.modules[node.target], "inplace", False))
        if node.op == "call_method":
            return node.target.endswith("_") and not node.target.startswith("__")
        if node.op == "call_function":
            return bool(node.kwargs.get("inplace", False)) or node.target in (operator.iadd, operator.imul,
                                                                              operator.isub, operator.itruediv)
        return False

    # -- planning -------------------------------------------------------------------------------
    def _window(self, node: fx.Node) -> _Window | None:
        if node.op == "call_module":
            m = self.modules[node.target]
            if isinstance(m, nn.Conv2d) and m.padding_mode == "zeros":
                return _conv_window(m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups)
            if isinstance(m, nn.MaxPool2d) and not m.return_indices:
                return _pool_window("max", m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)
            if isinstance(m, nn.AvgPool2d):
                return _pool_window("avg", m.kernel_size, m.stride, m.padding, 1, m.ceil_mode,
                                    m.count_include_pad and m.divisor_override is None)
            return None
        if node.op == "call_function" and node.target is F.conv2d:
            return ("conv", node)  # resolved in prepare (needs the weight's value)
        if node.op == "call_function" and node.target in (F.max_pool2d, torch.max_pool2d):
            if _arg(node, 5, "ceil_mode", False) or _arg(node, 6, "return_indices", False):
                return None
            return _pool_window("max", _arg(node, 1, "kernel_size"), _arg(node, 2, "stride"),
                                _arg(node, 3, "padding", 0), _arg(node, 4, "dilation", 1))
        if node.op == "call_function" and node.target is F.avg_pool2d:
            ok = _arg(node, 5, "count_include_pad", True) and _arg(node, 6, "divisor_override") is None
            return _pool_window("avg", _arg(node, 1, "kernel_size"), _arg(node, 2, "stride"),
                                _arg(node, 3, "padding", 0), 1, _arg(node, 4, "ceil_mode", False), ok)
        return None

    def _per_pixel(self, node: fx.Node, dims: tuple[int, int], ndim: int) -> bool:
        """Whether a one-spatial-input node acts on each pixel independently."""
        last_free = ndim - 1 not in dims
        if node.op == "call_module":
            m = self.modules[node.target]
            if isinstance(m, nn.BatchNorm2d):
                return not m.training and m.track_running_stats and dims == (2, 3)
            if isinstance(m, nn.PReLU):
                return dims == (2, 3) or m.num_parameters == 1
            if isinstance(m, nn.Linear):
                return last_free
            if isinstance(m, nn.LayerNorm):
                return last_free and len(m.normalized_shape) == 1
            if isinstance(m, (nn.Dropout, nn.Dropout2d)):
                return not m.training
            return isinstance(m, _UNARY_MODULES)
        if node.op == "call_function":
            if node.target in (F.dropout, F.dropout2d):
                return not _arg(node, 2, "training", True) or _arg(node, 1, "p", 0.5) == 0
            if node.target is F.layer_norm:
                return last_free and len(_arg(node, 1, "normalized_shape")) == 1
            if node.target is F.linear:
                return last_free
            if node.target is F.batch_norm:
                return dims == (2, 3) and not _arg(node, 5, "training", False)
            if getattr(node.target, "__name__", "") == "stochastic_depth":
                return not _arg(node, 3, "training", True) or _arg(node, 1, "p") == 0
            return node.target in _UNARY_FUNCTIONS
        if node.op == "call_method":
            return node.target in _UNARY_METHODS
        return False

    @torch.no_grad()
    def prepare(self, bases: torch.Tensor) -> dict:
        """Run the base images ``(n, C, H, W)`` through the graph and plan each node.

        Returns:
            The cache for :meth:`run`: base activations where needed and the per-node plan.
        """
        env: dict[fx.Node, Any] = {}
        dep: dict[fx.Node, bool] = {}
        dims: dict[fx.Node, tuple[int, int] | None] = {}
        plan: dict[fx.Node, tuple] = {}
        snapshots: dict[fx.Node, torch.Tensor] = {}
        mutated = {n.args[0] for n in self.nodes if self._in_place(n) and n.args and isinstance(n.args[0], fx.Node)}
        for node in self.nodes:
            if node.op == "placeholder":
                env[node] = bases.clone() if node in mutated else bases
                dep[node], dims[node] = True, (2, 3)
                plan[node] = ("input",)
                continue
            if node.op == "output":
                plan[node] = ("output",)
                output = fx.node.map_arg(node.args[0], lambda n: env[n])
                continue
            env[node] = value = self._call(node, env)
            if node in mutated and isinstance(value, torch.Tensor):
                snapshots[node] = value.clone()  # a later in-place op changes it
            inputs = node.all_input_nodes
            dep[node] = any(dep[n] for n in inputs)
            if not dep[node]:
                dims[node] = None
                plan[node] = ("const",)
                continue
            spatial = [n for n in inputs if dep[n]]
            plan[node], dims[node] = self._plan_node(node, spatial, dims, env, value)
        needed, windowed = set(), set()
        for node, p in plan.items():
            if p[0] in ("binary", "cat", "fallback", "output"):
                needed.update(n for n in node.all_input_nodes if dep[n])
            elif p[0] == "window":
                windowed.add(p[1])
        store = {n: snapshots.get(n, env[n]) for n in needed if isinstance(env[n], torch.Tensor)}
        store.update({n: env[n] for n in self.nodes if plan.get(n, ("",))[0] == "const"})
        for node, p in plan.items():
            if p[0] == "window":
                src, window = p[1], p[2]
                py, px = window.padding
                value = snapshots.get(src, env[src])
                padded = F.pad(value, (px, px, py, py), value=window.pad_value) if py or px else value
                plan[node] = ("window", src, window, padded)
        self.plan = {n: p[0] for n, p in plan.items()}
        return {"plan": plan, "store": store, "dims": dims, "n": bases.shape[0], "output": output}

    def _plan_node(self, node, spatial, dims, env, value):
        fallback = ("fallback",), None
        if any(dims[n] is None for n in spatial) or not isinstance(value, torch.Tensor):
            return fallback
        out_dims = None
        if len(spatial) == 1:
            src = spatial[0]
            d, ndim = dims[src], env[src].dim()
            window = self._window(node)
            if isinstance(window, tuple):  # functional conv2d: weights must be constants
                w, b = _arg(node, 1, "weight"), _arg(node, 2, "bias")
                if node.args[0] is not src or (isinstance(w, fx.Node) and w in spatial) or (
                        isinstance(b, fx.Node) and b in spatial):
                    return fallback
                weight = env[w] if isinstance(w, fx.Node) else w
                bias = env[b] if isinstance(b, fx.Node) else b
                window = _conv_window(weight, bias, _arg(node, 3, "stride", 1), _arg(node, 4, "padding", 0),
                                      _arg(node, 5, "dilation", 1), _arg(node, 6, "groups", 1))
            if window is not None:
                if d != (2, 3) or node.args[0] is not src or value.dim() != 4:
                    return fallback
                return ("window", src, window), (2, 3)
            if node.op == "call_method" and node.target == "permute" or node.target is torch.permute:
                order = node.args[1] if isinstance(node.args[1], (list, tuple)) else node.args[1:]
                order = [o % ndim for o in order]
                if order[0] != 0:
                    return fallback
                return ("local", src), (order.index(d[0]), order.index(d[1]))
            if self._per_pixel(node, d, ndim) or self._broadcast_binary(node, spatial, env, d, value):
                out_dims = d
                if value.shape[0] != env[src].shape[0] or value.dim() != ndim or any(
                        value.shape[i] != env[src].shape[i] for i in d):
                    return fallback
                return ("local", src), out_dims
            return fallback
        # several spatial inputs: elementwise binary ops and channel concatenation
        d0 = dims[spatial[0]]
        if any(dims[n] != d0 or env[n].shape != value.shape for n in spatial) and not (
                node.target is torch.cat and all(dims[n] == d0 for n in spatial)):
            return fallback
        if node.target is torch.cat:
            cat_dim = _arg(node, 1, "dim", 0) % value.dim()
            if cat_dim == 0 or cat_dim in d0 or any(env[n].shape[i] != value.shape[i] for n in spatial for i in d0):
                return fallback
            return ("cat", tuple(spatial)), d0
        if self._broadcast_binary(node, spatial, env, d0, value):
            return ("binary", tuple(spatial)), d0
        return fallback

    @staticmethod
    def _broadcast_binary(node, spatial, env, d, value) -> bool:
        """Elementwise binary op whose constant operands are the same for every pixel and copy."""
        if not ((node.op == "call_function" and node.target in _BINARY_FUNCTIONS)
                or (node.op == "call_method" and node.target in _BINARY_METHODS)):
            return False
        for a in list(node.args) + list(node.kwargs.values()):
            if isinstance(a, fx.Node) and a not in spatial:
                c = env[a]
                if isinstance(c, torch.Tensor) and c.dim() > 0:
                    shape = (1,) * (value.dim() - c.dim()) + tuple(c.shape)
                    if len(shape) != value.dim() or shape[0] != 1 or shape[d[0]] != 1 or shape[d[1]] != 1:
                        return False
        return True

    # -- the incremental forward ----------------------------------------------------------------
    @torch.no_grad()
    def run(self, cache: dict, local: torch.Tensor, y0: torch.Tensor, x0: torch.Tensor,
            bid: torch.Tensor) -> torch.Tensor:
        """The trunk's output for copies of the base images that differ only inside boxes.

        Args:
            cache: :meth:`prepare`'s output.
            local: ``(B, C, h, w)`` each copy's input inside its box.
            y0, x0: ``(B,)`` corners of the boxes; ``bid``: ``(B,)`` index of each copy's base image.

        Returns:
            The trunk's output for the ``B`` copies, as a full forward pass would give it.
        """
        plan, store = cache["plan"], cache["store"]
        env: dict[fx.Node, Any] = {}
        result = None
        for node in self.nodes:
            p = plan[node]
            kind = p[0]
            if kind == "input":
                env[node] = Region(local, y0, x0, bid, store.get(node, _LazyBase(node)), (2, 3))
            elif kind == "const":
                env[node] = store[node]
            elif kind == "local":
                r: Region = env[p[1]]
                out = self._call(node, {**env, p[1]: r.local})
                env[node] = Region(out, r.y0, r.x0, r.bid, store.get(node), cache["dims"][node])
                if env[node].base is None:
                    env[node].base = _LazyBase(node)
            elif kind == "window":
                env[node] = self._run_window(node, env[p[1]], p[2], p[3], store.get(node), cache)
            elif kind in ("binary", "cat"):
                regions = [env[n] for n in p[1]]
                env[node] = self._run_merge(node, regions, p[1], env, store.get(node), cache)
            elif kind == "fallback":
                full = {n: (v.full() if isinstance(v, Region) else v) for n, v in env.items()
                        if n in node.all_input_nodes}
                env[node] = self._call(node, {**env, **full})
            elif kind == "output":
                result = fx.node.map_arg(node.args[0], lambda n: env[n].full() if isinstance(env[n], Region)
                                         else env[n])
        return result

    def _run_window(self, node, r: Region, window: _Window, padded: torch.Tensor, base_out, cache) -> Region:
        pads = window.padding
        sizes_in = (padded.shape[2] - 2 * pads[0], padded.shape[3] - 2 * pads[1])
        sizes_out = _out_size(sizes_in, window)
        starts, lengths, crops, crop_lengths = [], [], [], []
        for axis, a in enumerate((r.y0, r.x0)):
            k, s, p, d = window.kernel[axis], window.stride[axis], pads[axis], window.dilation[axis]
            n_out, span = sizes_out[axis], d * (k - 1)
            length = r.local.shape[2 + axis]
            lo = torch.div(a + p - span + s - 1, s, rounding_mode="floor")
            o0 = torch.minimum(lo, torch.div(a + p, s, rounding_mode="floor")).clamp(min=0)
            hi = (torch.div(a + length - 1 + p, s, rounding_mode="floor") + 1).clamp(max=n_out)
            out_len = max(1, int((hi - o0).max()))
            if out_len >= n_out:
                out_len, o0 = n_out, torch.zeros_like(o0)
            o0 = o0.clamp(max=n_out - out_len)
            c0 = o0 * s  # crop start in padded coordinates (<= a + p: the crop holds the whole box)
            crop_len = max((out_len - 1) * s + span + 1, int((a + p + length - c0).max()))
            starts.append(o0), lengths.append(out_len), crops.append(c0), crop_lengths.append(crop_len)
        extra = [max(0, int((c + n).max()) - padded.shape[2 + i])
                 for i, (c, n) in enumerate(zip(crops, crop_lengths))]
        if any(extra):  # the crop runs past the padded base: only outputs beyond the region read there
            padded = F.pad(padded, (0, extra[1], 0, extra[0]), value=window.pad_value)
        if (crop_lengths[0], crop_lengths[1]) == r.size and bool((crops[0] == r.y0 + pads[0]).all()) and bool(
                (crops[1] == r.x0 + pads[1]).all()):
            crop = r.local
        elif r.size == sizes_in:  # the copies differ everywhere: the crop is their values in the constant padding
            # (the whole padded map, from (0, 0); no per-copy gather of base values and paste over them)
            crop = F.pad(r.local, (pads[1], crop_lengths[1] - pads[1] - sizes_in[1],
                                   pads[0], crop_lengths[0] - pads[0] - sizes_in[0]), value=window.pad_value)
        else:
            crop = gather(padded, r.bid, crops[0], crops[1], crop_lengths[0], crop_lengths[1], (2, 3))
            paste(crop, r.local, r.y0 + pads[0] - crops[0], r.x0 + pads[1] - crops[1], (2, 3))
        out = window.run(crop)
        if tuple(out.shape[2:]) != (lengths[0], lengths[1]):
            fmt = torch.channels_last if crop.is_contiguous(memory_format=torch.channels_last) and not \
                crop.is_contiguous() else torch.contiguous_format
            out = out[:, :, :lengths[0], :lengths[1]].contiguous(memory_format=fmt)
        if base_out is None:
            base_out = _LazyBase(node)
        return Region(out, starts[0], starts[1], r.bid, base_out, (2, 3))

    def _run_merge(self, node, regions: list[Region], sources, env, base_out, cache) -> Region:
        r0 = regions[0]
        dims = r0.dims
        same = all(r.size == r0.size and r.y0 is r0.y0 and r.x0 is r0.x0 for r in regions)
        if not same:
            sizes = (_resolve(r0.base).shape[dims[0]], _resolve(r0.base).shape[dims[1]])
            y0 = torch.stack([r.y0 for r in regions]).amin(0)
            x0 = torch.stack([r.x0 for r in regions]).amin(0)
            h = min(sizes[0], int((torch.stack([r.y0 + r.size[0] for r in regions]).amax(0) - y0).max()))
            w = min(sizes[1], int((torch.stack([r.x0 + r.size[1] for r in regions]).amax(0) - x0).max()))
            y0, x0 = y0.clamp(max=sizes[0] - h), x0.clamp(max=sizes[1] - w)
            for r in regions:
                r.base = _resolve(r.base)
            locals_ = [r.grow(y0, x0, h, w) for r in regions]
        else:
            y0, x0, locals_ = r0.y0, r0.x0, [r.local for r in regions]
        out = self._call(node, {**env, **dict(zip(sources, locals_))})
        if base_out is None:
            base_out = _LazyBase(node)
        return Region(out, y0, x0, r0.bid, base_out, dims)
