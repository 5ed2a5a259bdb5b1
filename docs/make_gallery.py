"""Regenerate the documentation's method gallery: ``python docs/make_gallery.py``.

Runs every pair method of the package on one pair (the cat and a seeded augmented view of it) with
the shipped default model, saves one figure per method under ``docs/gallery/`` and writes
``docs/gallery.md``. Takes about a minute on a 2-core CPU.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

DOCS = Path(__file__).resolve().parent

#: what each method computes, in one sentence (the gallery's captions)
CAPTIONS = {
    "conditional-occlusion": "Base similarity minus the similarity with a window of one image filled with the "
    "neutral colour, the other image intact. Positive where hiding the region lowers the similarity.",
    "context-agnostic-occlusion": "cos(f(patch alone) - f(patch removed), f(other image)): what a region "
    "contributes on its own, without the context of the rest of its image.",
    "pairwise-occlusion": "Random rectangles erased from both images at once; the softmax-weighted similarity "
    "drops are credited to the erased pixels.",
    "grad-cam": "The paper's element-wise Grad-CAM of the similarity: sum over channels of A * ReLU(dS/dA) at "
    "the last convolutional layer.",
    "interaction-cam": "Grad-CAM re-weighted by the product of both images' pooled features (mean pooling): "
    "the channels both images share.",
    "interaction-cam:max": "Interaction-CAM with max pooling of the features.",
    "interaction-cam:attention": "Interaction-CAM with self-attention pooling of the features.",
    "averaged-transforms": "Gradients averaged along the path from the image to a photometric transform of it "
    "(x^l = l x + (1 - l) x_t): the pixels whose importance survives the transform.",
    "input-x-gradient": "max over channels of |x * dS/dx|: a first-order saliency of the similarity.",
    "smoothgrad": "Input x Gradient averaged over noisy copies of the pair.",
    "pixel-invariance": "Weights of a linear surrogate of the similarity under photometric augmentation and "
    "erasing: the pixels whose appearance the model ignores (one map per image).",
}

#: ViT-native views, shown on the shipped tiny-dino-vit
VIT_CAPTIONS = {
    "cls-attention": "The class token's attention over the patches in the last block, averaged over heads "
    "(DINO's well-known maps).",
    "attention-rollout": "Attention rolled out through all blocks (with the residual path): how much each patch "
    "reaches the class token.",
    "feature-pca": "The first three principal components of the patch features, fitted over both images, shown "
    "as RGB: patches of the same colour have similar features in both images.",
}

#: joint (pair-to-pair) methods: the strongest patch pairs joined by lines
JOINT_CAPTIONS = {
    "joint-gradient": "A bilinear (BiLRP-style) decomposition of the similarity on pairs of patches: which part of "
    "image 1 is matched to which part of image 2.",
    "joint-occlusion": "The interaction s - s(-i) - s(-j) + s(-i,-j) of occluding patch i of image 1 and patch j "
    "of image 2.",
}


def build(out_dir: Path, threads: int) -> list[tuple[str, str]]:
    from ssl_widgets import load_model, make_pair
    from ssl_widgets.attr import get_method
    from ssl_widgets.explain import explain_pair
    from ssl_widgets.plotting import pair_figure

    torch.set_num_threads(threads)
    model = load_model("tiny-simclr")
    x1, x2 = make_pair("chelsea", "aug", model.input_size, seed=0)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in CAPTIONS:
        overrides = {"n_samples": 200, "epochs": 200} if name == "pixel-invariance" else {}
        result = explain_pair(model, name, x1, x2, generator=torch.Generator().manual_seed(0), **overrides)
        fig = pair_figure(x1, x2, result[0], result[1], float(result.similarity[0]), title=name,
                          settings=result.meta, labels=("chelsea", "chelsea (augmented)"))
        file = out_dir / f"{name.replace(':', '-')}.png"
        fig.savefig(file, dpi=80)
        rows.append((name, file.name))
        print("wrote", file)
    from ssl_widgets.plotting_joint import top_matches_figure

    for name in JOINT_CAPTIONS:
        method_cls = get_method(name)[0]
        kwargs = {"generator": torch.Generator().manual_seed(0)} if name == "joint-occlusion" else {}
        result = method_cls(model).attribute((x1, x2), grid=7, **kwargs)
        fig = top_matches_figure(x1, x2, result, k=12, title=f"{name} on tiny-simclr",
                                 labels=("chelsea", "chelsea (augmented)"))
        file = out_dir / f"{name}.png"
        fig.savefig(file, dpi=80)
        rows.append((name, file.name))
        print("wrote", file)
    vit = load_model("tiny-dino-vit")
    v1, v2 = make_pair("chelsea", "aug", vit.input_size, seed=0)
    for name in VIT_CAPTIONS:
        result = explain_pair(vit, name, v1, v2)
        fig = pair_figure(v1, v2, result[0], result[1], float(result.similarity[0]), title=f"{name} on tiny-dino-vit",
                          settings=result.meta, labels=("chelsea", "chelsea (augmented)"))
        file = out_dir / f"{name}.png"
        fig.savefig(file, dpi=80)
        rows.append((name, file.name))
        print("wrote", file)
    return rows


def write_page(rows: list[tuple[str, str]], page: Path) -> None:
    lines = [
        "# Method gallery",
        "",
        "Every pair method of the package on the same pair: the cat (`chelsea`) and a seeded augmented view of",
        "it, explained with the shipped `tiny-simclr` model at its default settings (112 px). Regenerate with",
        "`python docs/make_gallery.py`. The maps are the methods' raw values; the colour bar gives their scale.",
        "",
    ]
    captions = {**CAPTIONS, **JOINT_CAPTIONS, **VIT_CAPTIONS}
    for name, file in rows:
        if name == next(iter(JOINT_CAPTIONS)):
            lines += ["## Joint explanations (pair to pair)", ""]
        if name == next(iter(VIT_CAPTIONS)):
            lines += ["## Vision Transformer views (`tiny-dino-vit`)", "",
                      "The shipped ViT is a small model trained here (see the model card); the views work on any "
                      "timm ViT, DINO and DINOv2 included.", ""]
        level = "##" if name in CAPTIONS else "###"
        lines += [f"{level} `{name}`", "", captions[name], "", f"![{name}](gallery/{file})", ""]
    page.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    write_page(build(DOCS / "gallery", args.threads), DOCS / "gallery.md")


if __name__ == "__main__":
    main()
