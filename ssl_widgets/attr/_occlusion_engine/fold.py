"""A private, inference-ready copy of a trunk: traced, BatchNorm folded into convolutions.

The user's module is never modified: it is deep-copied (under a lock, so that two threads do not
copy a module while it is being converted), put in eval mode, traced with ``torch.fx`` and each
``Conv2d -> BatchNorm2d`` pair whose convolution feeds only that BatchNorm is replaced by one
convolution with folded weights. Copies are cached per trunk (thread-safe; tracing and folding a
ResNet-50 costs about as much as a few forward passes) and rebuilt when the trunk changed by the one
rule of :func:`~ssl_widgets.attr._model_state.state_token` (values compared element by element, so
``.data`` updates are seen; hooks, structure, settings, mode), or for another device/dtype/memory
format. The copy is built under the trunk's lock (:func:`~ssl_widgets.models.locks.module_lock`).
"""
from __future__ import annotations

import copy
import threading
import weakref

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ...models.locks import module_lock
from .._model_state import has_forward_hooks, state_token

__all__ = ["fold_batchnorm", "private_trunk"]

_LOCK = threading.Lock()
_TRACE_LOCK = threading.Lock()
_CACHE: weakref.WeakKeyDictionary[nn.Module, dict] = weakref.WeakKeyDictionary()


def _calls(graph: fx.Graph) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            counts[node.target] = counts.get(node.target, 0) + 1
    return counts


def fold_batchnorm(gm: fx.GraphModule) -> int:
    """Fold eval-mode ``BatchNorm2d`` into the preceding ``Conv2d`` of a traced module, in place.

    A pair is folded only when the convolution's output feeds the BatchNorm alone and each module
    is called once in the graph (a shared module would change its other call sites).

    Args:
        gm: a traced module in eval mode (a private copy: its modules are replaced).

    Returns:
        The number of folded pairs.

    Examples:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
        >>> gm = fx.symbolic_trace(copy.deepcopy(net))
        >>> fold_batchnorm(gm)
        1
        >>> x = torch.rand(1, 3, 8, 8)
        >>> torch.allclose(gm(x), net(x), atol=1e-5)
        True
    """
    modules = dict(gm.named_modules())
    counts = _calls(gm.graph)
    folded = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        conv_node = node.args[0] if node.args else None
        if not isinstance(conv_node, fx.Node) or conv_node.op != "call_module" or len(node.args) != 1:
            continue
        conv, bn = modules.get(conv_node.target), modules[node.target]
        if (not isinstance(conv, nn.Conv2d) or len(conv_node.users) != 1 or counts[conv_node.target] != 1
                or counts[node.target] != 1 or bn.training or conv.training or not bn.track_running_stats
                or bn.running_mean is None):
            continue
        fused = fuse_conv_bn_eval(conv, bn)
        parent, _, name = conv_node.target.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, name, fused)
        modules[conv_node.target] = fused
        node.replace_all_uses_with(conv_node)
        gm.graph.erase_node(node)
        folded += 1
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return folded


class _ThreadTracer(fx.Tracer):
    """``torch.fx``'s tracer, safe while other threads run modules.

    While it traces, ``torch.fx`` replaces ``nn.Module.__call__`` (and ``__getattr__``) for the whole
    process; a module called from another thread at that moment (a widget redrawing, another
    method's forward pass) would be sent to this tracer and fail. Calls from other threads run as usual.
    """

    def __init__(self) -> None:
        super().__init__()
        self._thread = threading.get_ident()

    def call_module(self, m, forward, args, kwargs):
        if threading.get_ident() != self._thread:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        if threading.get_ident() != self._thread:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)


def _trace(module: nn.Module) -> fx.GraphModule:
    """``fx.symbolic_trace``, one trace at a time (each patches process-wide state) and thread-safe."""
    with _TRACE_LOCK:
        tracer = _ThreadTracer()
        graph = tracer.trace(module)
    return fx.GraphModule(tracer.root, graph, module.__class__.__name__)


def private_trunk(trunk: nn.Module, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
                  channels_last: bool = True) -> tuple[nn.Module, bool]:
    """An eval-mode copy of ``trunk`` for inference: traced and BN-folded when ``torch.fx`` can trace it.

    Args:
        trunk: the user's trunk (left untouched; its current parameters are copied). It must have no
            forward hooks (:func:`~ssl_widgets.attr._model_state.has_forward_hooks`): a folded copy cannot
            run them as the trunk does, so callers run such a trunk itself.
        device: where the copy lives (default: the trunk's device).
        dtype: parameter dtype of the copy (``float32``; ``bfloat16``/``float16`` for the fast mode).
        channels_last: convert 4-D weights to channels-last memory format.

    Returns:
        ``(copy, traced)``: ``traced`` is true when the copy is an ``fx.GraphModule``.

    Raises:
        ValueError: the trunk has forward hooks.

    Examples:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
        >>> copy_, traced = private_trunk(net)
        >>> traced, copy_ is net, isinstance(copy_[1] if not traced else None, nn.BatchNorm2d)
        (True, False, False)
    """
    if device is None:
        device = next((p.device for p in trunk.parameters()), torch.device("cpu"))
    options = (str(torch.device(device)), dtype, channels_last)
    # the trunk's lock (shared by every wrapper over it) for the whole build: no method changes its state
    # or registers hooks on it meanwhile; normal tensors even when called under torch.inference_mode
    with module_lock(trunk), torch.inference_mode(False), torch.no_grad():
        if has_forward_hooks(trunk):
            raise ValueError("the trunk has forward hooks, which a private folded copy cannot reproduce: run it "
                             "directly")
        token = state_token(trunk)
        with _LOCK:
            entry = _CACHE.get(trunk)
            if entry is not None and entry["token"] == token and options in entry["copies"]:
                return entry["copies"][options]
        private = copy.deepcopy(trunk).eval()
        for p in private.parameters():
            p.requires_grad_(False)
        try:
            private = _trace(private)
            fold_batchnorm(private)
            traced = True
        except Exception:  # noqa: BLE001  untraceable control flow: a plain copy, full forward passes
            traced = False
        private = private.to(device=device, dtype=dtype)
        if channels_last:
            private = private.to(memory_format=torch.channels_last)
        if state_token(trunk) == token:  # not changed (by code that ignores the lock) while being copied
            with _LOCK:
                entry = _CACHE.get(trunk)
                if entry is None or entry["token"] != token:
                    entry = _CACHE[trunk] = {"token": token, "copies": {}}
                entry["copies"][options] = (private, traced)
    return private, traced
