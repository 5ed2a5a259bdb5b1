"""Pick the best run per family of ``benchmarks/gpu_train.sh`` and write the summary.

``python benchmarks/gpu_train_select.py WORK OUT DATA DEVICE``: reads ``WORK/<run>/model.pt.json``
(the training summaries), ``WORK/<run>.rc`` and ``WORK/<run>.log``; copies the best weight file of
each family (by the early-stopping held-out top-1, query seed 1) to ``OUT/<shipped name>``; then
measures the final test (held-out retrieval top-1, query seed 0, ``ssl_widgets.train.retrieval``)
of each chosen file and of the same architecture with random weights; writes everything to
``OUT/gpu_train_runs.json`` and prints a table.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

FAMILIES = {"barlow-twins": "tiny-barlow-twins.pt", "simsiam": "tiny-simsiam.pt", "dino": "tiny-dino-vit.pt"}


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])[-4000:]
    except OSError:
        return ""


def collect(work: Path) -> list[dict]:
    runs = []
    for run_dir in sorted(p for p in work.iterdir() if p.is_dir() and (work / f"{p.name}.cmd").exists()):
        name = run_dir.name
        summary_path = run_dir / "model.pt.json"
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        rc_path = work / f"{name}.rc"
        runs.append({
            "run": name, "rc": rc_path.read_text().strip() if rc_path.exists() else "missing",
            "command": (work / f"{name}.cmd").read_text().strip(),
            "weights": str(run_dir / "model.pt") if (run_dir / "model.pt").exists() else None,
            "summary": summary, "log_tail": _tail(work / f"{name}.log"),
        })
    return runs


def final_test(method: str, path: Path, data: str, device: str) -> dict:
    """Held-out top-1 with the final test's query seed 0, trained and random weights."""
    import torch

    from ssl_widgets.data.folder import list_images, split_holdout
    from ssl_widgets.train.retrieval import heldout_views, top1_from_embeddings

    _, held = split_holdout(list_images(data))
    packed = torch.load(path, map_location="cpu", weights_only=True)
    arch = packed["arch"]
    gallery, queries = heldout_views(held, int(arch["input_size"]), 5, 0)
    gallery, queries = gallery.to(device), queries.to(device)
    if method == "dino":
        from ssl_widgets.models.tiny_vit import build_tiny_vit_backbone
        from ssl_widgets.models.wrapper import IMAGENET_MEAN, IMAGENET_STD

        mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

        def build(trained: bool):
            torch.manual_seed(0)
            vit = build_tiny_vit_backbone(arch)
            if trained:
                vit.load_state_dict({k: v.float() for k, v in packed["trunk"].items()})
            vit = vit.to(device).eval()
            return lambda x: vit.forward_features((x - mean) / std)[:, 0]
    else:
        from ssl_widgets.models import build_tiny_model, load_model

        def build(trained: bool):
            torch.manual_seed(0)
            model = (load_model("tiny-" + method, weights=path) if trained else build_tiny_model(arch)).to(device)
            return model.eval()

    result = {}
    for trained in (True, False):
        embed = build(trained)
        with torch.no_grad():
            top1 = top1_from_embeddings(torch.cat([embed(gallery[i:i + 256]) for i in range(0, len(gallery), 256)]),
                                        torch.cat([embed(queries[i:i + 256]) for i in range(0, len(queries), 256)]))
        result["top1_seed0_trained" if trained else "top1_seed0_random_weights"] = round(top1, 4)
    return result


def main(argv: list[str]) -> int:
    work, out, data, device = Path(argv[0]), Path(argv[1]), argv[2], argv[3]
    started = time.time()
    runs = collect(work)
    chosen = {}
    for method, file_name in FAMILIES.items():
        candidates = [r for r in runs if r["summary"].get("method") == method and r["weights"]
                      and r["summary"].get("heldout_top1_seed1") is not None]
        if not candidates:
            print(f"!! no usable {method} run", flush=True)
            continue
        best = max(candidates, key=lambda r: r["summary"]["heldout_top1_seed1"])
        target = out / file_name
        shutil.copyfile(best["weights"], target)
        chosen[method] = {"run": best["run"], "file": file_name, "bytes": target.stat().st_size,
                          "heldout_top1_seed1": best["summary"]["heldout_top1_seed1"],
                          "chosen_epoch": best["summary"].get("chosen_epoch")}
        try:
            chosen[method].update(final_test(method, target, data, device))
        except Exception as error:  # noqa: BLE001 - the files are copied already; report and go on
            chosen[method]["final_test_error"] = f"{type(error).__name__}: {error}"
    report = {"chosen": chosen, "runs": runs, "select_seconds": round(time.time() - started, 1)}
    (out / "gpu_train_runs.json").write_text(json.dumps(report, indent=1, default=str))
    print(f"\n{'run':<14}{'rc':>5}{'epochs':>8}{'chosen':>8}{'top1 s1':>9}{'seconds':>9}  final loss")
    for r in runs:
        s = r["summary"]
        print(f"{r['run']:<14}{r['rc']:>5}{s.get('epochs_done', '-')!s:>8}{s.get('chosen_epoch', '-')!s:>8}"
              f"{s.get('heldout_top1_seed1', '-')!s:>9}{s.get('seconds', '-')!s:>9}  {s.get('final_loss')}")
    print("\nchosen:")
    for method, c in chosen.items():
        print(f"  {method:<13} {c['run']:<12} {c['file']:<22} {c['bytes'] / 1e6:5.1f} MB  seed-1 top-1 "
              f"{c['heldout_top1_seed1']}  epoch {c['chosen_epoch']}  final test (seed 0) "
              f"{c.get('top1_seed0_trained', c.get('final_test_error'))}  random {c.get('top1_seed0_random_weights')}")
    return 0 if len(chosen) == len(FAMILIES) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
