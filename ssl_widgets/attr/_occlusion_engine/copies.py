"""Evaluation of a pair's perturbed copies: batches shared by both images, worker threads, the view
store and the copies a preview needs first (behind :meth:`.evaluator.Session.evaluate`)."""
from __future__ import annotations

import contextlib
import itertools

import torch

from typing import Any

from .._model_state import state_token
from ..engine import chunks
from .regions import gather
from .winograd import workspace
from .workers import run_in_workers

__all__ = ["evaluate_copies"]


def _crops(src: torch.Tensor, y0: torch.Tensor, x0: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """The window-sized crops of ``src`` ``(1 or n, C, H, W)`` at the corners (one per window)."""
    if src.stride(2) == 0 and src.stride(3) == 0:  # a uniform colour, expanded
        return src[:, :, :1, :1].expand(y0.shape[0], -1, *window)
    return gather(src, torch.zeros_like(y0), y0, x0, window[0], window[1], (2, 3))


def evaluate_copies(session, images, bases_of, items_of, window, per_eval, bar, tag: str, first=None, on_first=None):
    """Embeddings of every view's perturbed copies and of the two images: ``(embs, z)``, per view.

    ``bases_of(v)``: the base images of view ``v`` (the image first); ``items_of(v)``: its
    ``(content, y0, x0, j)`` groups of windows: ``content``'s windows pasted onto the ``j``-th base. Both views
    share batches when the images have the same size. ``tag``: what the copies are (the method), part of
    the store's key. ``first``: per view, positions of windows whose copies are evaluated before the others;
    ``on_first(embs, z)`` is then called once with their embeddings (per view, group after group) as soon
    as they are all known (images of different sizes: after all batches).
    """
    model, store = session.model, session.evaluator.store
    bases = [bases_of(v) for v in (0, 1)]
    items = [items_of(v) for v in (0, 1)]
    token = state_token(model) if store is not None else None  # the one rule of every cache
    keys = [] if store is None else [_view_key(session, bases[v], items[v], window, tag, token) for v in (0, 1)]
    copies = [sum(y0.shape[0] for _, y0, _, _ in items[v]) for v in (0, 1)]
    embs: list[Any] = [None, None]
    z: list[Any] = [None, None]
    todo = []
    for v in (0, 1):
        found = store.find(*keys[v]) if store is not None else None
        if found is None:
            todo.append(v)
        else:
            embs[v], z[v] = found
    if len(todo) < 2:  # the progress bar counts the batches the reused views would have taken

        def batches(n: int) -> int:
            return -(-n // per_eval)

        bar.update(batches(sum(copies)) - batches(sum(copies[v] for v in todo)))

    firsts = []  # per view, the positions of its first copies among its copies (each group's windows)
    for v in (0, 1) if first is not None else ():
        starts = itertools.accumulate([0] + [y0.shape[0] for _, y0, _, _ in items[v]][:-1])
        firsts.append(torch.cat([first[v] + start for start in starts]))

    def report_first(known: dict) -> None:  # on_first with both views' first copies
        on_first([known[v] if v in known else embs[v][firsts[v]] for v in (0, 1)], z)

    views = [tuple(todo)] if len(todo) < 2 or images[0].shape == images[1].shape else [(0,), (1,)]
    for group in views if todo else []:
        first_of = [sum(len(bases[u]) for u in group[:k]) for k in range(len(group))]
        state, zb = session.prepare(torch.cat([b for v in group for b in bases[v]]))
        group_items = []
        for k, v in enumerate(group):
            z[v] = zb[first_of[k]:first_of[k] + 1]
            group_items += [(c, y0, x0, torch.full_like(y0, first_of[k] + j)) for c, y0, x0, j in items[v]]
        lead, on_lead = None, None
        if first is not None and len(views) == 1:  # one group: its first copies lead its batches
            counts = [firsts[v].shape[0] for v in group]
            offsets = itertools.accumulate([0] + [copies[v] for v in group[:-1]])
            lead = torch.cat([firsts[v] + offset for v, offset in zip(group, offsets)])

            def on_lead(emb: torch.Tensor, group=group, counts=counts) -> None:
                report_first(dict(zip(group, emb.split(counts))))
        emb = _embed_items(session, state, group_items, window, per_eval, bar, lead, on_lead)
        for v, part in zip(group, emb.split([copies[v] for v in group])):
            embs[v] = part
    if first is not None and (not todo or len(views) > 1):  # nothing to evaluate, or two groups: now
        report_first({})
    for v in todo if store is not None else []:
        store.keep(*keys[v], embs[v], z[v])
    return embs, z


def _view_key(session, bases: list, items: list, window, tag: str, token: int) -> tuple:
    """What one view's copy embeddings depend on (its base images and window groups), for the store."""
    model = session.model
    trunk = session.trunk if isinstance(session.trunk, torch.nn.Module) else model
    options = (tag, window, session.dtype, session.format, session.incremental, session.evaluator.winograd,
               str(model.device), tuple(j for *_, j in items), token)
    tensors = (*bases, *(t for content, y0, x0, _ in items for t in (content, y0, x0)))
    return (model, trunk), options, tensors


def _embed_items(session, state: dict, items: list, window: tuple[int, int], per_eval: int, bar,
                 lead: torch.Tensor | None = None, on_lead=None) -> torch.Tensor:
    """Embeddings of all perturbed copies, ``per_eval`` at a time (both images' windows share batches).

    ``items``: ``(content, y0, x0, bid)`` per group of windows; ``content`` is the image whose window
    is pasted onto base ``bid`` (the fill for "patch removed", the image for "patch alone"). On CPU the
    copies are evaluated by worker threads (:mod:`.workers`) in parts of ``per_eval // workers``: at most
    ``per_eval`` copies are in flight. ``lead``: positions (ascending) of copies evaluated first, in parts
    of their own shared by the workers; ``on_lead`` is then called with their embeddings, in the calling
    thread, while the others are evaluated.
    """
    y0 = torch.cat([i[1] for i in items])
    x0 = torch.cat([i[2] for i in items])
    bid = torch.cat([i[3] for i in items])
    owner = torch.cat([torch.full_like(i[1], k) for k, i in enumerate(items)])
    total = y0.shape[0]
    workers = session.workers(per_eval)
    size = per_eval // workers  # workers x part size <= per_eval copies in flight
    order, parts, lead_parts = None, list(chunks(total, size)), 0
    if lead is not None:
        rest = torch.ones(total, dtype=torch.bool)
        rest[lead] = False
        order = torch.cat([lead, rest.nonzero().flatten()])  # each segment ascending: owners in order
        lead_size = max(1, min(size, -(-lead.shape[0] // workers)))  # the lead copies in parts for all workers
        lead_chunks = list(chunks(lead.shape[0], lead_size))
        parts = [*lead_chunks,
                 *(slice(p.start + lead.shape[0], p.stop + lead.shape[0]) for p in chunks(total - lead.shape[0], size))]
        lead_parts = len(lead_chunks)
    lead_embs: list[torch.Tensor] = []

    def batches_done(k: int) -> int:  # progress counts batches of per_eval copies; parts end in order
        stop = parts[k].stop if k >= 0 else 0
        return -(-stop // per_eval) if stop == total else stop // per_eval

    def evaluate(k: int, part: slice):
        def task() -> torch.Tensor:
            chosen = order[part] if order is not None else part
            mine = owner[chosen]
            local = torch.cat([_crops(items[j][0], y0[chosen][mine == j], x0[chosen][mine == j], window)
                               for j in range(len(items)) if bool((mine == j).any())])
            return session.embed(state, local, y0[chosen], x0[chosen], bid[chosen])
        return task

    def done(k: int, emb: torch.Tensor) -> None:
        if batches_done(k) > batches_done(k - 1):
            bar.update(batches_done(k) - batches_done(k - 1))
        if k < lead_parts and on_lead is not None:
            lead_embs.append(emb)
            if k == lead_parts - 1:
                on_lead(torch.cat(lead_embs))

    winograd = session.evaluator.winograd

    def per_thread():  # grad mode and the Winograd buffers are per thread
        stack = contextlib.ExitStack()
        stack.enter_context(torch.no_grad())
        stack.enter_context(workspace(winograd))
        return stack

    emb = torch.cat(run_in_workers([evaluate(k, part) for k, part in enumerate(parts)], workers, done, per_thread))
    if order is None:
        return emb
    unordered = torch.empty_like(emb)
    unordered[order] = emb
    return unordered
