"""The explorer's latency on full-size models: first frame and refined map of its slow tabs, at 1 and 2 threads.

    python benchmarks/bench_explorer_models.py                       # the three 224-px models, 1 and 2 threads
    python benchmarks/bench_explorer_models.py --models tiny-simclr --size 64 --repeats 1 --threads 1   # seconds

For each model (random weights in the published layout: the layout example of
:mod:`ssl_widgets.models.layout_examples` written to a file and loaded with ``load_model(name, weights=...)``;
the shipped tiny models load their own), a headless :class:`~ssl_widgets.widgets.Explorer` (``threaded=False``,
the tabs' default settings, i.e. :func:`~ssl_widgets.widgets.progressive.explorer_defaults`) times, per tab,
from the request to the first partial draw (the status line says ``refining``) and to the refined map; the
median of ``--repeats`` new requests (the explorer's result cache and its store of occluded-copy embeddings
cleared before each, as in ``bench_widgets.py``; the first request of each tab, which builds the model's
private inference copy, is not timed). CAM has one frame. Prints a markdown table and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ssl_widgets.attr.applicability import not_applicable  # noqa: E402
from ssl_widgets.models import SSLModel, load_model  # noqa: E402
from ssl_widgets.models.layout_examples import example_checkpoint  # noqa: E402
from ssl_widgets.widgets import Explorer  # noqa: E402

MODELS = ("simclr-v2-r50-1x", "dino-vits16", "dinov2-vits14")
TABS = ("conditional-occlusion", "smoothgrad:guided", "integrated-gradients", "averaged-transforms:guided",
        "interaction-cam:max")


def build(name: str, folder: Path, size: int | None) -> SSLModel:
    """The zoo model ``name`` with random weights in its published layout (a tiny model: its shipped weights)."""
    if name.startswith("tiny-"):
        model = load_model(name)
    else:
        path = folder / f"{name}.pth"
        torch.save(example_checkpoint(name), path)
        model = load_model(name, weights=path)
    if size is not None:
        model.input_size = size
    return model


def timed_request(explorer: Explorer) -> tuple[float, float]:
    """Seconds from a new request of the current tab to its first drawn frame and to its refined map."""
    explorer._cache.clear()
    explorer.context.models.views.clear()
    seen: list[tuple[float, str]] = []
    record = lambda change: seen.append((time.perf_counter(), change["new"]))  # noqa: E731
    explorer.status.observe(record, names="value")
    start = time.perf_counter()
    explorer.refresh()
    explorer.wait()
    explorer.status.unobserve(record, names="value")
    if explorer.last_error:
        raise RuntimeError(explorer.last_error)
    drawn = [t for t, status in seen if not status.startswith("computing")]
    if not drawn:
        raise RuntimeError(f"the tab drew nothing: {explorer.status.value}")
    return drawn[0] - start, drawn[-1] - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated zoo names")
    parser.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    parser.add_argument("--repeats", type=int, default=3, help="new requests per tab (median reported)")
    parser.add_argument("--size", type=int, default=None, help="input size (default: the model's, 224 px)")
    parser.add_argument("--tabs", default=",".join(TABS), help="comma-separated method names (one per tab)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" /
                        "explorer_models.json")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models.split(","):
            model = build(name, Path(folder), args.size)
            for threads in (int(t) for t in args.threads.split(",")):
                explorer = Explorer(model, threaded=False, method="grad-cam", threads=threads)
                for tab in args.tabs.split(","):
                    if not_applicable(tab, model):  # a guided variant on a GELU network (ViT): the plain one
                        tab = tab.partition(":")[0]
                    explorer.select_method(tab)  # untimed: builds what a first use builds
                    times = [timed_request(explorer) for _ in range(args.repeats)]
                    _, settings = explorer._controls().request()
                    rows.append({"model": name, "input_size": model.input_size, "threads": threads, "tab": tab,
                                 "settings": {k: v for k, v in settings.items() if not isinstance(v, bool)},
                                 "first_frame_s": round(statistics.median(t[0] for t in times), 3),
                                 "refined_s": round(statistics.median(t[1] for t in times), 3),
                                 "repeats": args.repeats})
                    print(rows[-1], flush=True)
    print(f"\nmedian of {args.repeats} new requests, {torch.__version__}, CPU\n")
    print("| model | px | threads | tab | settings | first frame (s) | refined (s) |\n|---|---|---|---|---|---|---|")
    for r in rows:
        settings = ", ".join(f"{k}={v}" for k, v in r["settings"].items())
        print(f"| {r['model']} | {r['input_size']} | {r['threads']} | {r['tab']} | {settings} | "
              f"{r['first_frame_s']:.2f} | {r['refined_s']:.2f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=1))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
