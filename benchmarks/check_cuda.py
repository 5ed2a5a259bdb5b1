"""Every method, metric and the evaluation driver on a CUDA device, against the same call on the CPU.

A correctness check for machines with a GPU (CI has none): each listed method runs through
``explain_pair`` on the shipped ``tiny-simclr`` (CNN) and ``tiny-dino-vit`` (ViT) models, once on the
CPU and once on ``--device``, with the same seeds; the script reports, per method, whether it ran,
where its maps came back, the largest map difference relative to the CPU map's largest magnitude,
and the similarity difference. It also runs feature visualisation, model-difference inversion,
pixel invariance, the three pair metrics and the fast occlusion mode on the device. It exits
non-zero when anything raises, returns a non-finite map, or a deterministic method's maps differ by
more than ``--tolerance`` (relative; cuDNN's TF32 convolutions are on by default, as for users).

    python benchmarks/check_cuda.py --device cuda --out results/gpu
    python benchmarks/check_cuda.py --device cpu          # the script itself, on a CPU-only machine
"""
from __future__ import annotations

import argparse
import json
import sys
import traceback
from functools import partial
from pathlib import Path

import torch

from ssl_widgets import load_model, make_pair
from ssl_widgets.attr import (JOINT_METHOD_NAMES, METHOD_NAMES, VIT_METHOD_NAMES, ConditionalOcclusion,
                              FeatureVisualization, ModelDifference)
from ssl_widgets.attr.spec import resolve
from ssl_widgets.explain import explain_pair
from ssl_widgets.metrics import average_drop_increase, insertion_deletion, max_sensitivity

# methods whose draws may differ between devices (noise drawn on the device): compared, never failed on
RANDOM = ("pairwise-occlusion", "smoothgrad", "averaged-transforms", "pixel-invariance")


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float().cpu(), b.detach().float().cpu()
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))


def described(tensors) -> dict:
    """Where the tensors are and whether they are all finite."""
    tensors = list(tensors)
    return {"devices": sorted({str(t.device) for t in tensors}),
            "finite": all(bool(torch.isfinite(t).all()) for t in tensors)}


def checked(model: str, label: str, fn) -> dict:
    """One row of the report: ``fn()``'s findings, or the error it raised (the run goes on)."""
    row = {"model": model, "method": label}
    try:
        row.update(fn())
        row["status"] = "ok"
    except Exception as exc:  # noqa: BLE001 - every failure is reported
        row["status"] = f"error: {type(exc).__name__}: {exc}"
        row["traceback"] = traceback.format_exc(limit=-4)
    return row


def compare_method(model_cpu, model_dev, name: str, pair_cpu, device: str) -> dict:
    """``explain_pair`` on the device against the same call on the CPU."""
    ref = explain_pair(model_cpu, name, *pair_cpu, generator=torch.Generator().manual_seed(0))
    out = explain_pair(model_dev, name, *(x.to(device) for x in pair_cpu), generator=torch.Generator().manual_seed(0))
    return {**described([*out, torch.as_tensor(out.similarity)]),
            "map_rel_diff": max(relative_difference(a, b) for a, b in zip(ref, out)),
            "similarity_diff": float((torch.as_tensor(ref.similarity).cpu().float()
                                      - torch.as_tensor(out.similarity).cpu().float()).abs().max())}


def extras(device: str) -> list[dict]:
    cnn = load_model("tiny-simclr", device=device)
    other = load_model("tiny-barlow-twins", device=device)
    x1, x2 = (x.to(device) for x in make_pair("chelsea", "aug", cnn.input_size, seed=0))
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731

    def feature_visualization():
        return described([FeatureVisualization(cnn, "layer4").visualize(x1, octaves=2, iterations=3, generator=gen())])

    def model_difference():
        res = ModelDifference(cnn, other).invert(x1, iterations=3, generator=gen())
        return described(t for pair in res.values() for t in pair)

    def metrics():
        def values(model, a, b):
            m1, m2 = explain_pair(model, "interaction-cam:max", a, b)
            results = [insertion_deletion(model, a, b, m1, m2, mode=mode) for mode in ("insertion", "deletion")]
            drop = average_drop_increase(model, a, b, m1)
            sens = max_sensitivity(resolve("interaction-cam")[0].build(model, None), (a, b), n_samples=2,
                                   generator=gen())
            return torch.cat([results[0].score.cpu(), results[1].score.cpu(), drop.drop.cpu(),
                              drop.increase.float().cpu(), sens.reshape(-1).cpu()])

        on_device = values(cnn, x1, x2)
        on_cpu = values(load_model("tiny-simclr"), x1.cpu(), x2.cpu())
        return {"values": on_device.tolist(), "finite": bool(torch.isfinite(on_device).all()),
                "map_rel_diff": relative_difference(on_cpu, on_device)}

    def fast_occlusion():
        exact = ConditionalOcclusion(cnn).attribute((x1, x2), 32, 4)
        fast = ConditionalOcclusion(cnn).attribute((x1, x2), 32, 4, precision="fast")
        return {**described(fast), "map_rel_diff": max(relative_difference(a, b) for a, b in zip(exact, fast))}

    return [checked("tiny-simclr", label, fn) for label, fn in (("feature-visualization (2 octaves x 3)", feature_visualization),
                                                    ("model-difference (3 iterations)", model_difference),
                                                    ("metrics: insertion, deletion, avg drop, max-sensitivity", metrics),
                                                    ("conditional-occlusion precision='fast' vs exact", fast_occlusion))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tolerance", type=float, default=2e-2, help="largest relative map difference allowed")
    parser.add_argument("--out", default=None, help="write check.json and check.md into this directory")
    args = parser.parse_args()
    device = args.device
    rows = []
    for model_name, names in (("tiny-simclr", METHOD_NAMES),
                              ("tiny-dino-vit", VIT_METHOD_NAMES + ("conditional-occlusion", "interaction-cam")
                               + JOINT_METHOD_NAMES)):
        model_cpu, model_dev = load_model(model_name), load_model(model_name, device=device)
        pair = make_pair("chelsea", "aug", model_cpu.input_size, seed=0)
        for name in dict.fromkeys(names):
            row = checked(model_name, name, partial(compare_method, model_cpu, model_dev, name, pair, device))
            rows.append(row)
            print(row["model"], name, row["status"], {k: row[k] for k in ("devices", "map_rel_diff") if k in row},
                  flush=True)
    for row in extras(device):
        rows.append(row)
        print(row["method"], row["status"], {k: v for k, v in row.items() if k not in ("model", "method", "status")},
              flush=True)

    def failed(row: dict) -> bool:
        if row["status"] != "ok" or not row.get("finite", True):
            return True
        if any(not d.startswith(device.split(":")[0]) for d in row.get("devices", [])):
            return True
        deterministic = not any(row["method"].startswith(r) for r in RANDOM) and "fast" not in row["method"]
        return deterministic and row.get("map_rel_diff", 0.0) > args.tolerance

    failures = [r for r in rows if failed(r)]
    header = (f"device={device} ({torch.cuda.get_device_name() if device.startswith('cuda') else 'cpu'}) "
              f"torch={torch.__version__}: {len(rows) - len(failures)} of {len(rows)} checks passed")
    lines = [header, "", "| model | method | status | devices | max relative map difference vs CPU |", "|---|---|---|---|---|"]
    for r in rows:
        diff = f"{r['map_rel_diff']:.1e}" if "map_rel_diff" in r else ""
        lines.append(f"| {r['model']} | {r['method']} | {'FAIL ' if r in failures else ''}{r['status']} | "
                     f"{', '.join(r.get('devices', []))} | {diff} |")
    print("\n".join(lines))
    for r in failures:
        print(f"\n--- {r['model']} {r['method']}: {r['status']}\n{r.get('traceback', '')}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "check.json").write_text(json.dumps(rows, indent=1))
        (out / "check.md").write_text("\n".join(lines) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
