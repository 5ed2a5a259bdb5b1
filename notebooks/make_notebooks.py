"""Writes the tutorial and classroom notebooks, without outputs (run from the repository root)::

    python notebooks/make_notebooks.py          # every notebook
    python notebooks/make_notebooks.py 07 08    # the notebooks whose names start with 07 or 08

then ``python notebooks/run_all.py 07 08`` executes them in place (they are stored executed).
Each notebook has a cell tagged ``parameters`` with small defaults that run top to bottom in under a
minute on a 2-core CPU; papermill (or editing that cell) scales them up.
"""
import re
import sys
from pathlib import Path

import nbformat as nbf

HERE = Path(__file__).resolve().parent


def md(text):
    return nbf.v4.new_markdown_cell(text.strip())


def code(text, parameters=False):
    return nbf.v4.new_code_cell(text.strip(), metadata={"tags": ["parameters"]} if parameters else {})


SETUP = """
import torch
torch.set_num_threads(THREADS)
import matplotlib
matplotlib.rcParams["savefig.dpi"] = 72  # modest figures: the notebooks are stored with their outputs
import ssl_widgets
from ssl_widgets.data import make_pair, make_view
model = ssl_widgets.load_model(MODEL)
"""

# torch's first forward-mode call (torch.func.jvp, in JointGradient) warns from inside torch, with the path of
# its install, that torch.jit.script is deprecated: nothing a reader can act on
JIT_WARNING = """
import warnings
warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
"""

NOTEBOOKS = {
    "01_conditional_occlusion.ipynb": [
        md("""
# Conditional occlusion

**What it computes.** Slide a patch (filled with the model's neutral colour) over image 1 while image 2
stays intact, and record how much the similarity drops: `drop(i, j) = s(x1, x2) - cos(f(x1 with patch ij
filled), f(x2))`. Then the same for image 2. Large drops mark the regions the *pair's* similarity
depends on (it is conditional on the other image).

**How to read it.** The map's colour bar says how it is drawn: where some drops are negative, a
diverging colour map centred on zero (red = occluding here lowers the similarity, blue = occluding
here *raises* it: those patches distract from what the two views share); where none is, a
sequential one from zero (brighter = a larger drop).
"""),
        code('MODEL = "tiny-simclr"\nIMAGE = "chelsea"\nPATCH = 32\nSTRIDE = 8\nTHREADS = 1', parameters=True),
        code(SETUP),
        code("""
from ssl_widgets.attr import ConditionalOcclusion
from ssl_widgets.plotting import pair_figure

x1, x2 = make_pair(IMAGE, "aug", model.input_size, seed=0)
result = ConditionalOcclusion(model).attribute((x1, x2), sliding_window_shapes=PATCH, strides=STRIDE)
fig = pair_figure(x1, x2, result[0], result[1], float(result.similarity), title="conditional occlusion",
                  labels=(IMAGE, f"augmented view of {IMAGE}"))
fig  # a figure as the last expression of a cell shows as an image
"""),
        md("""
**A small experiment.** Bigger patches remove whole parts; small ones find details. How does the
most important location move with the patch size?
"""),
        code("""
grid_small = ConditionalOcclusion(model).attribute((x1, x2), PATCH // 2, STRIDE, grid=True)[0][0]
grid_big = ConditionalOcclusion(model).attribute((x1, x2), PATCH, STRIDE, grid=True)[0][0]
for name, g in (("small", grid_small), ("big", grid_big)):
    i, j = divmod(int(g.argmax()), g.shape[1])
    print(f"{name} patches: largest drop {float(g.max()):.3f} at window ({i * STRIDE}, {j * STRIDE})")
"""),
        md("Explore interactively (patch size and stride sliders):"),
        code("""
from ssl_widgets.widgets import OcclusionPanel
OcclusionPanel(model=model, images=IMAGE, method="conditional-occlusion")
"""),
    ],
    "02_context_agnostic_and_pairwise_occlusion.ipynb": [
        md("""
# Context-agnostic and pairwise occlusion

* **Context-agnostic conditional occlusion** asks what a patch contributes *by itself*:
  `cos(f(patch alone) - f(image without the patch), f(other image))`.
* **Pairwise occlusion** erases random rectangles from *both* images at once, and credits each drop
  in similarity to the erased pixels of the image whose embedding lost more norm.
"""),
        code('MODEL = "tiny-simclr"\nIMAGE = "coffee"\nPATCH = 32\nSTRIDE = 16\nSAMPLES = 60\nTHREADS = 1', parameters=True),
        code(SETUP),
        code("""
from ssl_widgets.attr import ContextAgnosticOcclusion, PairwiseOcclusion, normalize_map
from IPython.display import display
from ssl_widgets.plotting import pair_figure

x1, x2 = make_pair(IMAGE, "aug", model.input_size, seed=1)
caco = ContextAgnosticOcclusion(model).attribute((x1, x2), PATCH, STRIDE)
po = PairwiseOcclusion(model).attribute((x1, x2), n_samples=SAMPLES, generator=torch.Generator().manual_seed(0))
labels = (IMAGE, f"augmented view of {IMAGE}")
display(pair_figure(x1, x2, caco[0], caco[1], float(caco.similarity), title="context-agnostic occlusion", labels=labels))
display(pair_figure(x1, x2, po[0], po[1], float(po.similarity), title="pairwise occlusion", labels=labels))
"""),
        md("""
**Experiment.** Do the two methods agree? Compare the rank correlation of their maps for image 1.
"""),
        code("""
a = normalize_map(caco[0]).flatten()
b = normalize_map(po[0]).flatten()
ranks = lambda v: v.argsort().argsort().float()
print("Spearman correlation:", float(torch.corrcoef(torch.stack([ranks(a), ranks(b)]))[0, 1]))
"""),
    ],
    "03_interaction_cam.ipynb": [
        md("""
# Grad-CAM and Interaction-CAM for a pair

Grad-CAM adapted to similarity (the paper's element-wise form): `CAM = sum_c A[c] * ReLU(dS/dA[c])`
where `A` is the last feature map and `S` the cosine similarity. **Interaction-CAM** re-weights the
channels by `P(A1) * P(A2)` (mean, max or self-attention pooling): channels active in *both* views
count more. All variants come from a single forward and backward pass.
"""),
        code('MODEL = "tiny-simclr"\nIMAGE = "astronaut"\nTHREADS = 1', parameters=True),
        code(SETUP),
        code("""
from ssl_widgets.attr import cam_variants, upsample
from ssl_widgets.plotting import maps_figure

x1, x2 = make_pair(IMAGE, "aug", model.input_size, seed=2)
variants = cam_variants(model, (x1, x2), ["grad-cam", "interaction-cam", "interaction-cam:max", "interaction-cam:attention"])
size = model.input_size
maps_figure([x1] * 4 + [x2] * 4,
            [upsample(r[0], size) for r in variants.values()] + [upsample(r[1], size) for r in variants.values()],
            [f"{name}: {IMAGE}" for name in variants] + [f"{name}: augmented view" for name in variants],
            ncols=4)
"""),
        md("**Experiment.** Which layer gives the sharpest maps? Compare `layer3` (14x14) with the trunk output (7x7)."),
        code("""
from ssl_widgets.attr import InteractionCAM
for layer in (None, "layer3"):
    m1, m2 = InteractionCAM(model, layer).attribute((x1, x2), pooling="max")
    print(layer or "trunk output", tuple(m1.shape[1:]))
"""),
        code("""
from ssl_widgets.widgets import CAMPanel
CAMPanel(model=model, images=IMAGE, method="interaction-cam:max")
"""),
    ],
    "04_averaged_transforms.ipynb": [
        md("""
# Averaged transforms

For a photometric transform `x_t` of `x` (same geometry), walk the path `x^l = l x + (1-l) x_t`
(`l = 1, 0.9, ..., 0.1`) and average the gradients of `cos(f(x), f(x^l))`: the map shows which
pixels the similarity is sensitive to while the colours change. `guided=True` uses guided
back-propagation; `noise=True` adds noise to the interior path points.
"""),
        code('MODEL = "tiny-simclr"\nIMAGE = "rocket"\nTRANSFORM = "combine"\nSTEPS = 10\nTHREADS = 1', parameters=True),
        code(SETUP),
        code("""
from ssl_widgets.attr import AveragedTransforms
from IPython.display import display
from ssl_widgets.plotting import pair_figure

x, x_t = make_pair(IMAGE, TRANSFORM, model.input_size, seed=3)
for guided in (False, True):
    r = AveragedTransforms(model).attribute((x, x_t), steps=STEPS, guided=guided, blur=True)
    display(pair_figure(x, x_t, r[0], r[1], float(r.similarity), title=f"averaged transforms, guided={guided}",
                        labels=(IMAGE, f"{TRANSFORM} view of {IMAGE}")))
"""),
        md("**Experiment.** Which transform does the model tolerate best? Compare the similarities."),
        code("""
for name in ("color-jitter", "blur", "grayscale", "solarize"):
    a, b = make_pair(IMAGE, name, model.input_size, seed=0)
    with torch.no_grad():
        print(f"{name:13s} similarity {float(model.similarity(a, b)):+.3f}")
"""),
    ],
    "05_gradients.ipynb": [
        md("""
# Input x Gradient and SmoothGrad for a pair

`map = max_c |x * dS/dx|` for each image, with gradients of the pair's cosine similarity taken in the
model's input space. SmoothGrad averages the gradients over noisy copies (the same noise on both
images, as in the paper's code); guided back-propagation rectifies gradients at every ReLU.
"""),
        code('MODEL = "tiny-simclr"\nIMAGE = "grace_hopper"\nSAMPLES = 20\nTHREADS = 1', parameters=True),
        code(SETUP),
        code("""
from ssl_widgets.attr import PairInputXGradient, PairSmoothGrad
from IPython.display import display
from ssl_widgets.plotting import pair_figure

x1, x2 = make_pair(IMAGE, "aug", model.input_size, seed=4)
plain = PairInputXGradient(model).attribute((x1, x2), blur=True)
guided = PairInputXGradient(model).attribute((x1, x2), guided=True, blur=True)
smooth = PairSmoothGrad(model).attribute((x1, x2), n_samples=SAMPLES, guided=True, blur=True,
                                         generator=torch.Generator().manual_seed(0))
for title, r in (("input x gradient", plain), ("guided", guided), ("smoothgrad (guided)", smooth)):
    display(pair_figure(x1, x2, r[0], r[1], float(r.similarity), title=title,
                        labels=(IMAGE, f"augmented view of {IMAGE}")))
"""),
        md("**Experiment.** How stable are the maps? Max-sensitivity (lower is more stable):"),
        code("""
from ssl_widgets.metrics import max_sensitivity
for guided in (False, True):
    ms = max_sensitivity(PairInputXGradient(model), (x1, x2), n_samples=3, guided=guided,
                         generator=torch.Generator().manual_seed(0))
    print(f"guided={guided}: max-sensitivity {float(ms):.3f}")
"""),
    ],
    "06_pixel_invariance.ipynb": [
        md("""
# Pixel invariance

Which pixels is the similarity *invariant* to under colour jitter, grayscale and random erasing? A
linear surrogate is fitted to predict `cos(f(x), f(augmented x))` from the down-sampled pixels of
the augmented image; its weights form the map (one per image; values under the threshold zeroed).
"""),
        code('MODEL = "tiny-simclr"\nIMAGE = "motorcycle"\nSAMPLES = 200\nEPOCHS = 100\nTHREADS = 1', parameters=True),
        code(SETUP),
        code("""
from ssl_widgets.attr import PixelInvariance
from ssl_widgets.plotting import maps_figure

x = make_view(IMAGE, "no-shift", model.input_size)
heat = PixelInvariance(model).attribute(x, n_samples=SAMPLES, epochs=EPOCHS, generator=torch.Generator().manual_seed(0))
print("map", tuple(heat.shape), "non-zero fraction", float((heat > 0).float().mean()))
maps_figure([x, x], [None, heat[0]], [IMAGE, f"pixel invariance of {IMAGE}"], ncols=2)
"""),
    ],
    "07_correspondence_and_sweeps.ipynb": [
        md("""
# Where does the other image answer? Correspondence and invariance sweeps

* **Dense correspondence**: the cosine similarity between the feature vector under one point of
  image 1 and every position of image 2's feature map. In the explorer, click a point.
* **Sweeps**: the similarity of an image with a transformed copy as the transform grows.
"""),
        code('MODEL = "tiny-simclr"\nIMAGE = "chelsea"\nPOINT = (40, 56)\nTHREADS = 1', parameters=True),
        code(SETUP),
        code("""
from matplotlib.patches import Rectangle
from ssl_widgets.analysis import dense_correspondence, similarity_sweep, SWEEPS
from ssl_widgets.plotting import DisplayFigure, overlay

x1, x2 = make_pair(IMAGE, "aug", model.input_size, seed=0)
heat = dense_correspondence(model, x1, x2, POINT)  # (7, 7) cosines in [-1, 1]
i, j = divmod(int(heat.argmax()), heat.shape[1])
print(f"the point {POINT} of image 1 answers best at cell ({i}, {j}) of image 2, cosine {float(heat.max()):.2f}")
strengths = [k / 10 for k in range(11)]
curves = {kind: similarity_sweep(model, x1, kind, strengths) for kind in SWEEPS}
for kind, curve in curves.items():
    print(f"{kind:13s}", " ".join(f"{v:.2f}" for v in curve.tolist()))

fig = DisplayFigure(figsize=(12, 3.6))
ax1, ax2, ax3 = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1.25, 1.5]})
overlay(ax1, x1)
ax1.plot(POINT[1], POINT[0], "+", color="cyan", ms=16, mew=3)
ax1.set_title(f"image 1: the point (y, x) = {POINT}", fontsize=9)
overlay(ax2, x2, heat, colorbar=True)
cell = x2.shape[-1] / heat.shape[1]
ax2.add_patch(Rectangle((j * cell, i * cell), cell, cell, fill=False, color="cyan", lw=2))
ax2.set_title(f"image 2: cosine to that point's feature (best: cell {(i, j)})", fontsize=9)
for kind, curve in curves.items():
    ax3.plot(strengths, curve.tolist(), marker=".", label=kind)
ax3.set_xlabel("transform strength s")
ax3.set_ylabel("cos(f(x), f(T_s(x)))")
ax3.set_title(f"invariance sweeps of {IMAGE}", fontsize=9)
ax3.legend(fontsize=8)
fig.tight_layout()
fig
"""),
        code("""
from ssl_widgets.widgets import CorrespondencePanel
CorrespondencePanel(model=model, images=IMAGE, method="correspondence")
"""),
    ],
    "08_metrics.ipynb": [
        md("""
# Scoring explanations: insertion, deletion, average drop, max-sensitivity

The paper adapts single-image metrics to pairs. *Simultaneous* metrics perturb both images (each by
its own map); *conditional* ones perturb one image and keep the other fixed.

* **Deletion** (lower is better): remove the most important pixels first; a good map makes the
  similarity fall fast. **Insertion** (higher is better): add them back into a blurred image.
* **Average drop** (lower) / **increase** (higher): mask each image by its normalised map.
* **Max-sensitivity** (lower): how much the map changes under small input noise.
"""),
        code('''
MODEL = "tiny-simclr"
IMAGE = "coffee"
STEP = 448       # pixels per insertion/deletion step: 28 steps at 112 px (the paper's 224 gives 56, twice the time)
EVAL_PAIRS = 2   # pairs of the evaluation driver's run below
THREADS = 1
''', parameters=True),
        code(SETUP),
        code("""
from ssl_widgets.attr import InteractionCAM, PairInputXGradient
from ssl_widgets.metrics import insertion_deletion, average_drop_increase

x1, x2 = make_pair(IMAGE, "aug", model.input_size, seed=5)
maps = {
    "interaction-cam:max": InteractionCAM(model).attribute((x1, x2), pooling="max"),
    "input-x-gradient:guided": PairInputXGradient(model).attribute((x1, x2), guided=True),
    "random": (torch.rand(1, 7, 7, generator=torch.Generator().manual_seed(0)),) * 2,
}
for name, (m1, m2) in maps.items():
    si = insertion_deletion(model, x1, x2, m1, m2, mode="insertion", step=STEP).score
    sd = insertion_deletion(model, x1, x2, m1, m2, mode="deletion", step=STEP).score
    cad = average_drop_increase(model, x1, x2, m1).drop
    print(f"{name:24s} SI {float(si):.3f}  SD {float(sd):.3f}  CAD {float(cad):.3f}")
"""),
        md("""
The evaluation driver runs many pairs and writes the paper-style table (`ssl-widgets evaluate`,
also under `torchrun`). Here on a folder of the shipped sample images:
"""),
        code("""
import tempfile
from pathlib import Path
from ssl_widgets.data import sample_image
from ssl_widgets.evaluate import EvaluationConfig, evaluate

folder = Path(tempfile.mkdtemp())
for name in ("chelsea", "coffee", "rocket"):
    sample_image(name).save(folder / f"{name}.png")
out = folder / "eval"
evaluate(EvaluationConfig(data=str(folder), model=MODEL, methods=["grad-cam", "interaction-cam:max"],
                          pairs=EVAL_PAIRS, step=STEP, out=str(out), sensitivity_samples=2, show_progress=False))
print((out / "table.md").read_text())
"""),
        md("""
The driver also plots the mean insertion and deletion curves of each method (`curves.png`). They are **simultaneous** curves: both images are revealed (insertion) or deleted (deletion) together, each by its own map. That is why deletion ends at cosine 1.0: with every pixel deleted, both images are the same fill image, identical to itself. Read a deletion curve by how fast it falls at first, not by where it ends. The **conditional** curves (one image perturbed, the other kept, as in the explorer's *curves* section) end wherever the fill image lands:
"""),
        code("""
from IPython.display import Image
Image(filename=str(out / "curves.png"))
"""),
    ],
    "09_published_weights.ipynb": [
        md("""
# Loading published weights

`ssl_widgets.load_model` knows the published SimCLR v2 (1x, 2x), Barlow Twins, SimSiam and the
supervised torchvision ResNet-50. This notebook **never downloads anything unless you ask it to**: by
default it looks for the weight file on your disk, loads it if it is there, and otherwise tells you
where to put it and goes on with the shipped tiny models.

| name | licence of the weights |
|---|---|
| simclr-v2-r50-1x / 2x | Apache-2.0 (convert the TF checkpoint, pass `weights=PATH`) |
| barlow-twins-r50 | CC-BY-NC 4.0 (the full checkpoint with the projector) |
| simsiam-r50 | CC-BY-NC 4.0 |
| resnet50-supervised | BSD-3-Clause |

**Three ways to get a published model** (set them in the parameters cell below):
1. `WEIGHTS = "/path/to/file.pth"`: a file you downloaded yourself. In Python this is
   `ssl_widgets.load_model(MODEL, weights=WEIGHTS)`, on the command line `--weights PATH`. Always offline.
2. Put the file in torch.hub's cache, `$TORCH_HOME/hub/checkpoints/` (the cell below prints the exact
   path): it is then found without `WEIGHTS`, and checked against its published or pinned hash.
3. `DOWNLOAD = True` (or run Jupyter with the environment variable `SSL_WIDGETS_DOWNLOAD=1`): opt in to
   a download into that cache (a ResNet-50 file: 100 MB or more). Without it, nothing is fetched.
"""),
        code("""
import os
MODEL = "barlow-twins-r50"
WEIGHTS = None  # or "/path/to/checkpoint.pth": a weight file you already have
DOWNLOAD = os.environ.get("SSL_WIDGETS_DOWNLOAD") == "1"  # True: allowed to download into torch.hub's cache
THREADS = 1
""", parameters=True),
        code("""
from pathlib import Path
import torch
torch.set_num_threads(THREADS)
import ssl_widgets
from ssl_widgets.models import model_info
for name in ssl_widgets.available_models():
    spec = model_info(name)
    print(f"{name:20s} {spec.license:45s} {spec.url or 'weights=PATH'}")
"""),
        md("""
**Where the file would be.** `load_model(MODEL)` without `weights=` reads torch.hub's cache. We check
that path first, so that loading never starts a download you did not ask for. Any error while loading
(a corrupt file, a wrong checksum, a failed download) is raised, not hidden: read its message.
"""),
        code("""
spec = model_info(MODEL)
cached = Path(torch.hub.get_dir()) / "checkpoints" / str(spec.file_name)
if WEIGHTS is not None:
    published = ssl_widgets.load_model(MODEL, weights=WEIGHTS)
    print(f"loaded {MODEL} from {WEIGHTS}")
elif cached.is_file() or DOWNLOAD:
    published = ssl_widgets.load_model(MODEL)  # downloads only when the file is missing and DOWNLOAD is True
    print(f"loaded {MODEL} from {cached}")
else:
    published = None
    print(f"{MODEL} is not on this machine, and DOWNLOAD is off, so nothing was downloaded. To use it:")
    print(f"  * download {spec.url or '(see the table above)'}")
    print(f"    and set WEIGHTS = '/path/to/{spec.file_name}' (command line: --weights PATH), or")
    print(f"  * place the file at {cached}, or")
    print("  * set DOWNLOAD = True (or SSL_WIDGETS_DOWNLOAD=1) to let this notebook download it there.")
"""),
        md("""
With the file in place, every method and the explorer work as with the default models:
`Explorer(model=ssl_widgets.load_model("barlow-twins-r50", weights=PATH))`.

**What you would see.** The next cell draws the published model's Interaction-CAM when it is loaded;
offline (the stored outputs of this notebook) the shipped `tiny-barlow-twins` stands in for it: the
same code, at 112 px instead of 224 px.
"""),
        code("""
from ssl_widgets.attr import InteractionCAM
from ssl_widgets.data import make_pair
from ssl_widgets.plotting import pair_figure

model = published if published is not None else ssl_widgets.load_model("tiny-barlow-twins")
x1, x2 = make_pair("coffee", "aug", model.input_size, seed=0)
cam = InteractionCAM(model).attribute((x1, x2), pooling="max")
pair_figure(x1, x2, cam[0], cam[1], float(cam.similarity), title=f"interaction-cam:max, {model.name}",
            labels=("coffee", "augmented view of coffee"))
"""),
        md("""
## The three families side by side

The paper compares what SimCLR (contrastive), Barlow Twins (redundancy reduction) and SimSiam
(a predictor and a stop-gradient, no negatives) attend to. The package ships one small model of each,
trained the same way on the same images (held-out retrieval 0.816, 0.771 and 0.808), so that a
difference below reflects the objective more than the training budget. Same pair for all three: the
similarity, a conditional-occlusion map and an Interaction-CAM each, and how invariant each model is to
four transforms.
"""),
        code("""
from ssl_widgets.analysis import similarity_sweep
from ssl_widgets.attr import ConditionalOcclusion
from ssl_widgets.plotting import DisplayFigure, maps_figure

FAMILIES = ["tiny-simclr", "tiny-barlow-twins", "tiny-simsiam"]
models = {name: ssl_widgets.load_model(name) for name in FAMILIES}
x1, x2 = make_pair("chelsea", "aug", 112, seed=0)
images, maps, titles = [], [], []
for name, m in models.items():
    occ = ConditionalOcclusion(m).attribute((x1, x2), sliding_window_shapes=32, strides=8)
    cam = InteractionCAM(m).attribute((x1, x2), pooling="max")
    images += [x1, x1]
    maps += [occ[0], cam[0]]
    titles += [f"{name}: occlusion (cos {float(occ.similarity):.2f})", f"{name}: interaction-cam:max"]
maps_figure(images, maps, titles, ncols=2, suptitle="image 1 of the same pair, three objectives")
"""),
        code("""
KINDS = ["color-jitter", "blur", "grayscale", "crop"]
strengths = [i / 10 for i in range(11)]
fig = DisplayFigure(figsize=(12, 3))
axes = fig.subplots(1, len(KINDS))
for ax, kind in zip(axes, KINDS):
    for name, m in models.items():
        ax.plot(strengths, similarity_sweep(m, x1, kind, strengths).tolist(), label=name)
    ax.set_title(kind, fontsize=9)
    ax.set_xlabel("strength")
axes[0].set_ylabel("cos(f(x), f(T(x)))")
axes[0].legend(fontsize=7)
fig.tight_layout()
fig
"""),
        md("""
**What differs.** View 2 of this pair is a grayscale, blurred crop. SimCLR (cos 0.91) and SimSiam
(0.86) find the pair nearly as similar as two identical images; Barlow Twins finds it much less similar
(0.43), and the invariance curves say why: it is the only one of the three that is far from invariant
to grayscale (its similarity falls to about 0.4 at full strength while the other two stay near 1), and
its recipe is also the least invariant to colour jitter. The maps follow: SimCLR's occlusion map is
positive on the nose and the left eye (hiding them lowers the similarity), SimSiam's is weaker and
spread towards the borders, and Barlow Twins' is mostly negative on the left cheek: hiding colour it
cannot match in the grey view *raises* its similarity. Interaction-CAM sits on the eyes for SimCLR, on
the forehead between the eyes for Barlow Twins and broadly over the upper face for SimSiam. SimCLR loses
its invariance to cropping first (its similarity is near 0 from strength 0.6 on). Read the curves before the
maps: a model that is nearly invariant to a transform cannot let that transform move its explanation
much either. These are small models on 640 images; the published ResNet-50s load with the same code
(`FAMILIES = ["simclr-v2-r50-1x", "barlow-twins-r50", "simsiam-r50"]`, 224 px).
"""),
    ],
    "12_feature_visualization_and_model_difference.ipynb": [
        md("""
# Feature visualisation and model difference

Two of the paper's methods synthesise images instead of scoring pixels.

* **Feature visualisation**: starting from faint noise, multi-octave gradient ascent makes an image
  whose partial embedding (a trunk layer) matches the other view's (`mode="score"`: cosine;
  `"feature"`: projection on its direction). `parametrization="fourier"` uses the Lucid-style
  decorrelated Fourier image with jitter/scale/rotation, smoother for deep layers.
* **Model difference**: reconstruct the same image from three depths (stem, layer1, layer2) of
  two models by feature inversion: what each model keeps.
"""),
        code('MODEL = "tiny-simclr"\nOTHER = "tiny-barlow-twins"\nIMAGE = "chelsea"\nOCTAVES = 6\nITERATIONS = 10\n'
             'INVERSION_STEPS = 60\nTHREADS = 1', parameters=True),
        code(SETUP),
        code("""
import matplotlib.pyplot as plt
from ssl_widgets.attr import FeatureVisualization, ModelDifference
from ssl_widgets.plotting import to_image

x1, x2 = make_pair(IMAGE, "aug", model.input_size, seed=0)
g = lambda: torch.Generator().manual_seed(0)
images = {
    "view 2 (target)": x2,
    "score, layer3": FeatureVisualization(model, "layer3").visualize(x2, octaves=OCTAVES, iterations=ITERATIONS, generator=g()),
    "feature, layer3": FeatureVisualization(model, "layer3").visualize(x2, mode="feature", octaves=OCTAVES, iterations=ITERATIONS, generator=g()),
    "Fourier, layer3": FeatureVisualization(model, "layer3").visualize(x2, octaves=OCTAVES, iterations=ITERATIONS, generator=g(), parametrization="fourier"),
}
fig, axes = plt.subplots(1, 4, figsize=(12, 3))
for ax, (title, image) in zip(axes, images.items()):
    ax.imshow(to_image(image)); ax.set_title(title, fontsize=9); ax.set_axis_off()
"""),
        code("""
other = ssl_widgets.load_model(OTHER)
pairs = ModelDifference(model, other).invert(x1, iterations=INVERSION_STEPS, generator=g())
fig, axes = plt.subplots(2, 3, figsize=(9, 6))
for column, (layer, (a, b)) in enumerate(pairs.items()):
    for row, (name, image) in enumerate(((MODEL, a), (OTHER, b))):
        axes[row, column].imshow(to_image(image)); axes[row, column].set_axis_off()
        axes[row, column].set_title(f"{name}: {layer}", fontsize=9)
"""),
        md("""
**Reading the figure.** Each image is reconstructed from image 1's features at one depth (columns) of
one model (rows), starting from noise. From the stem both models give back nearly the photograph:
colours, eyes, nose and fur (SimCLR's with a faint checkerboard, the trace of strided convolutions).
Deeper, the two models differ. From `tiny-simclr`'s layer1 and layer2 the cat's shape stays (both eyes,
the nose, the stripes of the forehead) in roughly the right yellow-brown colours, increasingly
over-sharpened and saturated. From `tiny-barlow-twins`' layer1 and layer2 the outlines of the eyes and
the nose survive, but the colour does not: the images are magenta and green high-frequency noise. With
these 60 steps, SimCLR's middle layers let the inversion recover more of the colour and texture than
Barlow Twins' do; that is what can be *recovered* with this budget, not proof of what either model uses
(raise `INVERSION_STEPS` and see whether the difference stays).
"""),
        code("""
from ssl_widgets.widgets import FeatureVisualizationPanel
FeatureVisualizationPanel(model=model, images=IMAGE)
"""),
    ],
    "13_joint_explanations.ipynb": [
        md("""
# Joint explanations: which part of image 1 matches which part of image 2

The other methods give one map per image. A **joint** explanation scores every *pair* of a patch
of image 1 and a patch of image 2: a `(B, h1*w1, h2*w2)` tensor (`JointAttribution`).

* `JointGradient` (`joint-gradient`): a bilinear decomposition in the spirit of BiLRP,
  `R_ij = sum_k R_i(u1_k) R_j(u2_k)`, with gradient x input relevance of each dimension of the
  normalised embeddings (norms held constant). For a bias-free linear or ReLU model it sums exactly to the cosine.
* `JointOcclusion` (`joint-occlusion`): the interaction `s - s(-i) - s(-j) + s(-i,-j)` of filling patch i of
  image 1 and patch j of image 2: positive when the two patches make the similarity *together*.
"""),
        code('MODEL = "tiny-simclr"\nIMAGE = "chelsea"\nGRID = 7\nTOP = 12\nPAIRS = 3\nTHREADS = 1', parameters=True),
        code(SETUP + JIT_WARNING),
        code("""
from ssl_widgets.attr import JointGradient, JointOcclusion
from ssl_widgets.plotting_joint import top_matches_figure

x1, x2 = make_pair(IMAGE, "aug", model.input_size, seed=0)
bilinear = JointGradient(model).attribute((x1, x2), grid=GRID)
occlusion = JointOcclusion(model).attribute((x1, x2), grid=GRID)
print(bilinear.shape, bilinear.meta["grid1"], "sum of pair relevances", float(bilinear.relevance.sum()),
      "cosine", float(bilinear.similarity))
top_matches_figure(x1, x2, occlusion, k=TOP, title="joint occlusion")
"""),
        md("""
**Reading the top-match figure.** Each line joins the centres of a patch of view 1 and a patch of view 2;
the wider and yellower the line, the larger the pair's relevance (all drawn pairs are among the `TOP`
strongest). Many lines fanning out of one patch mean that patch interacts with several regions of the other
view (often a texture or a colour shared by both). The two maps on the right are the marginals (row and column
sums), ordinary maps that every metric of the package accepts (`result.marginals()`).

Here most of the 12 strongest joint-occlusion pairs fan out from the lower part of view 1 (the nose, the
muzzle and the cheeks) to one patch of view 2, the eye at the right of the zoomed grey view (the thickest,
yellowest lines); two weaker pairs join the foreheads. The marginals agree: view 2's is red on that eye
(up to about 0.5), view 1's is red over the nose and the lower face. So the model's similarity rests on
view 2's right eye *together with* view 1's lower face: a pair relevance is an interaction, not a
correspondence (the eye of view 2 is not matched with an eye of view 1; see the benchmark below). The
relevances sum to 7.68, not to the cosine 0.908: occlusion interactions are not a decomposition.
The bilinear version below draws another picture: its lines join view 1's left eye and nose with the eyes
and the lower face of view 2, and its values are tiny.

The sum of the bilinear relevances equals the cosine only for bias-free models; the trained models have
BatchNorm shifts, so part of the similarity is not assigned to any pair.
"""),
        code("""
top_matches_figure(x1, x2, bilinear, k=TOP, title="joint gradient (bilinear)")
"""),
        md("""
**One patch at a time.** `over_other(cell)` gives the relevance of one patch of view 1 paired with every patch of
view 2 (the explorer's correspondence tab shows this on a click).
"""),
        code("""
import matplotlib.pyplot as plt
from ssl_widgets.plotting import overlay
cell = (GRID // 2, GRID // 2)
fig, axes = plt.subplots(1, 3, figsize=(9, 3))
overlay(axes[0], x1); axes[0].set_title(f"view 1, cell {cell}")
size = x1.shape[-1] / GRID
axes[0].add_patch(plt.Rectangle((cell[1] * size, cell[0] * size), size, size, fill=False, color="yellow", lw=2))
for ax, (name, r) in zip(axes[1:], (("joint gradient", bilinear), ("joint occlusion", occlusion))):
    overlay(ax, x2, r.over_other(cell)); ax.set_title(name)
"""),
        md("""
## The correspondence benchmark

View 2 is a zoomed crop of view 1, flipped with probability 1/2, so the true position of every patch is known.
A method's strongest match for a patch is a hit when it lands within one patch of the true position.
`ssl-widgets evaluate --task correspondence --data FOLDER` runs this over an image folder; here a few sample images.
"""),
        code("""
from ssl_widgets.evaluate.correspondence import (DEFAULT_CORRESPONDENCE_METHODS, correspondence_hits,
                                                 correspondence_matrix, geometric_view)
totals = {m: [0.0, 0.0, 0.0] for m in DEFAULT_CORRESPONDENCE_METHODS}  # bilrp: see notebook 17
for k, name in enumerate(["chelsea", "coffee", "astronaut", "rocket", "motorcycle"][:PAIRS]):
    a = make_view(name, "pure", model.input_size, seed=None)
    b, params = geometric_view(a, torch.Generator().manual_seed(k))
    for method in DEFAULT_CORRESPONDENCE_METHODS:
        hits = correspondence_hits(correspondence_matrix(model, method, a, b, (GRID, GRID)), params, (GRID, GRID))
        for i, key in enumerate(("hits", "valid", "chance")):
            totals[method][i] += hits[key]
for method, (hits, valid, chance) in totals.items():
    print(f"{method:16s} hit rate {hits / valid:.2f}   (random guess {chance / valid:.2f})")
"""),
        md("""
On the shipped CNNs the plain feature cosine finds the geometric correspondence most often; the joint methods
explain what makes the *global* similarity, which beats chance but is a different question (see the README
table over `imagenet-sample`).
"""),
    ],
}

# ---------------------------------------------------------------- classroom helpers
GRADER = '''
import hashlib


def _digest(answer) -> str:
    """sha256 of the normalised answer (lower case, no spaces): the expected answer is stored only as a hash."""
    return hashlib.sha256(str(answer).strip().lower().replace(" ", "").encode()).hexdigest()
'''

NOTEBOOKS_NEW = {
    "10_classroom_invariance.ipynb": [
        md("""
# Classroom exercise 1: which augmentation is the model most invariant to?

**What you will learn**
* to measure invariance as the similarity between an image and a transformed copy of it;
* that a self-supervised model is invariant to what it was trained to ignore, and not to the rest.

Self-supervised models are trained to give the same embedding to two augmentations of one image.
For a transform $T_s$ of strength $s \\in [0, 1]$ the invariance curve is
$$\\mathrm{inv}(s) = \\cos\\big(f(x), f(T_s(x))\\big),$$
and its mean over $s = 0, 0.1, \\dots, 1$ summarises how much the transform changes the embedding.

**Task.** Use `similarity_sweep` on the three images of `IMAGES`. For each transform compute the mean
similarity over the strengths and over the images, then put the name of the transform with the
**highest** mean similarity in `MY_ANSWER` (a string, e.g. `"crop"`). Run the check cell: it tells you
whether you are right without showing the answer.
"""),
        code('MODEL = "tiny-simclr"\nIMAGES = ["chelsea", "coffee", "rocket"]\nTHREADS = 1', parameters=True),
        code(SETUP + GRADER),
        code("""
from ssl_widgets.analysis import similarity_sweep, SWEEPS
print("transforms:", list(SWEEPS))
# your exploration here; one curve to start with (11 strengths, s = 0 first):
import matplotlib.pyplot as plt
curve = similarity_sweep(model, make_view(IMAGES[0], "pure", model.input_size), "blur")
fig, ax = plt.subplots(figsize=(4, 2.5))
ax.plot([i / 10 for i in range(11)], curve.numpy(), marker="o")
ax.set_xlabel("blur strength s"); ax.set_ylabel("similarity"); ax.set_title(f"blur, {IMAGES[0]}");
"""),
        md("""
*Think before you compute:* SimCLR's training augmentations were random crops, colour jitter,
grayscale and blur. Which two transforms do you expect to matter least? Which one was never seen?
"""),
        code("""
MY_ANSWER = None  # <- change me: the name of one transform, e.g. "crop"
"""),
        code("""
# check (self-grading: the expected answer is stored as a hash; nothing here prints it)
if MY_ANSWER is None:
    print("no answer yet: set MY_ANSWER to the name of a transform and run this cell again")
elif _digest(MY_ANSWER) == "f918a31fdaa81485f9f78286bd436ce25abf7fe30394ea4233c41f19bbef023a":
    print("correct! now look at how close the runner-up is: is the difference meaningful over 3 images?")
elif MY_ANSWER not in SWEEPS:
    print(f"{MY_ANSWER!r} is not one of {list(SWEEPS)}")
else:
    print("not quite. Hint: average similarity_sweep(model, view, kind).mean() over ALL images in IMAGES "
          "for every kind in SWEEPS, and take the largest; two transforms are close, so do not stop at one image.")
"""),
        md("""
**Discuss.** The training augmentations included colour jitter, grayscale and blur but not
solarisation. Does the ranking match what the model was trained to ignore? Why is `crop` so low even
though random crops *were* a training augmentation (hint: `crop` here zooms into the centre, up to 5x)?
"""),
    ],
    "11_classroom_patch.ipynb": [
        md("""
# Classroom exercise 2: find the patch the similarity depends on most

**What you will learn**
* to predict, then measure, where a pair's similarity lives with conditional occlusion:
  $\\mathrm{drop}(i, j) = s(x_1, x_2) - \\cos\\big(f(x_1 \\text{ with window } (i, j) \\text{ filled}), f(x_2)\\big)$;
* that your intuition ("the face!") and the model's evidence can differ.

**Task.** Look at the two views below. Guess the top-left corner `(row, col)` of the 32x32 window of
image 1 whose occlusion lowers the similarity the most, and put it in `MY_GUESS` (multiples of 8,
from 0 to 80). The check cell computes the occlusion map *without showing it* and tells you whether
you are within one stride (8 px), or in which direction to move. Then open the occlusion panel to see
the whole map.
"""),
        code('MODEL = "tiny-simclr"\nIMAGE = "astronaut"\nPATCH = 32\nSTRIDE = 8\nTHREADS = 1', parameters=True),
        code(SETUP),
        code("""
from ssl_widgets.plotting import pair_figure
x1, x2 = make_pair(IMAGE, "aug", model.input_size, seed=6)
with torch.no_grad():
    similarity = float(model.similarity(x1, x2))
pair_figure(x1, x2, None, None, similarity, title="which window matters?",
            labels=(IMAGE, f"augmented view of {IMAGE}"))
"""),
        md("*Think:* which object appears in both views? A window that covers it should hurt most."),
        code("""
MY_GUESS = None  # <- change me: (row, col) of the window's top-left corner, e.g. (0, 0)
"""),
        code("""
# check (self-grading: the answer stays inside the function; only a direction hint is printed)
def check(guess):
    from ssl_widgets.attr import ConditionalOcclusion
    if guess is None:
        return "no guess yet: set MY_GUESS = (row, col) and run this cell again"
    grid = ConditionalOcclusion(model).attribute((x1, x2), PATCH, STRIDE, grid=True)[0][0]
    i, j = divmod(int(grid.argmax()), grid.shape[1])
    dr, dc = i * STRIDE - guess[0], j * STRIDE - guess[1]
    if max(abs(dr), abs(dc)) <= STRIDE:
        return "correct (within one stride)! open the panel below to see the whole map"
    moves = [w for d, w in ((dr, "down"), (-dr, "up"), (dc, "right"), (-dc, "left")) if d > STRIDE]
    return "not yet: move your window " + " and ".join(moves)
print(check(MY_GUESS))
"""),
        md("""
**Try it.** The panel below computes the same map for the whole image (patch size and stride
sliders). Does the answer move when you change the patch size to 16 or 48? What does that say about
how sure we can be of "the" most important patch?
"""),
        code("""
from ssl_widgets.widgets import OcclusionPanel
OcclusionPanel(model=model, images=IMAGE, method="conditional-occlusion")
"""),
    ],
    "15_classroom_cam.ipynb": [
        md("""
# Classroom exercise 3: how coarse is a CAM, and where does it point?

**What you will learn**
* that a CAM lives on the grid of the layer it reads ($\\mathrm{CAM} = \\sum_c A_c \\odot \\mathrm{ReLU}(\\partial S/\\partial A_c)$),
  so its resolution is the feature map's, not the image's;
* to read a coarse map by its cells.

**Tasks.**
1. `MY_GRID`: how many cells per side does the Interaction-CAM map of `tiny-simclr` have (print a
   map's shape)?
2. `MY_CELL_PX`: how many input pixels (per side) does one cell cover for this model's input size?
3. `MY_HOT_CELL`: `(row, col)` of the hottest cell of image 1's `interaction-cam:max` map, counting from 0.
   Find it by looking at the figure below, then confirm with code.
"""),
        code('MODEL = "tiny-simclr"\nIMAGE = "coffee"\nTHREADS = 1', parameters=True),
        code(SETUP + GRADER),
        code("""
from ssl_widgets.attr import InteractionCAM, upsample
from ssl_widgets.plotting import pair_figure

x1, x2 = make_pair(IMAGE, "aug", model.input_size, seed=2)
cam = InteractionCAM(model).attribute((x1, x2), pooling="max")
print("input size", model.input_size)
pair_figure(x1, x2, cam[0], cam[1], float(cam.similarity), title="interaction-cam:max",
            labels=(IMAGE, f"augmented view of {IMAGE}"))
"""),
        md("*Think:* the map looks smooth in the figure. Is that smoothness information the model has?"),
        code("""
MY_GRID = None       # <- change me: an integer
MY_CELL_PX = None    # <- change me: an integer (pixels per cell side)
MY_HOT_CELL = None   # <- change me: (row, col)
"""),
        code("""
# check (self-grading: expected values are stored as hashes; nothing here prints them)
def check(name, answer, digest, hint):
    if answer is None:
        print(f"{name}: no answer yet")
    elif _digest(answer) == digest:
        print(f"{name}: correct!")
    else:
        print(f"{name}: not quite. Hint: {hint}")

check("MY_GRID", MY_GRID, "7902699be42c8a8e46fbbb4501726517e86b22c56a189f7625a6da49081b2451",
      "print(cam[0].shape): the last two numbers")
check("MY_CELL_PX", MY_CELL_PX, "b17ef6d19c7a5b1ee83b907c595526dcb1eb06db8227d650d5dda0a9f4ce8cd9",
      "divide model.input_size by the number of cells per side")
check("MY_HOT_CELL", None if MY_HOT_CELL is None else tuple(int(v) for v in MY_HOT_CELL),
      "182263cc640500849cd74145a198285fe49aa9b958162bccf7a775cb64c084cd",
      "divmod(int(cam[0][0].argmax()), cam[0].shape[-1]) gives (row, col)")
"""),
        md("""
**Discuss.** Grad-CAM and Interaction-CAM both come from one backward pass to this layer. Compare
`pooling="mean"` and `pooling="max"` in the panel: does the hottest cell move? Why can a CAM not tell
you which *part* of a 16x16 cell (an eye, or the fur around it) matters?
"""),
        code("""
from ssl_widgets.widgets import CAMPanel
CAMPanel(model=model, images=IMAGE, method="interaction-cam:max")
"""),
    ],
    "16_classroom_metrics.ipynb": [
        md("""
# Classroom exercise 4: which explanation wins the deletion game?

**What you will learn**
* how deletion scores a map: delete the pixels a map ranks highest first (in steps) and record the
  similarity; the score is the area under that curve,
  $\\mathrm{SD} = \\frac{1}{K}\\sum_{k} \\cos\\big(f(x_1^{(k)}), f(x_2^{(k)})\\big)$, **lower is better**;
* that a random map is the baseline every method must beat, and that metrics have blind spots.

**Tasks.** Four maps of the same pair are computed below: Interaction-CAM (max), guided Input x
Gradient, conditional occlusion and a random map.
1. `MY_WINNER`: the name (a key of `maps`) with the **lowest** deletion score.
2. `MY_MARGIN`: by how much it beats the random map, `SD(random) - SD(winner)`, to 2 decimals.
"""),
        code('MODEL = "tiny-simclr"\nIMAGE = "coffee"\nPATCH = 32\nSTRIDE = 16\nTHREADS = 1', parameters=True),
        code(SETUP + GRADER),
        code("""
from ssl_widgets.attr import ConditionalOcclusion, InteractionCAM, PairInputXGradient, upsample
from ssl_widgets.metrics import insertion_deletion
from ssl_widgets.plotting import maps_figure

x1, x2 = make_pair(IMAGE, "aug", model.input_size, seed=5)
maps = {
    "interaction-cam:max": InteractionCAM(model).attribute((x1, x2), pooling="max"),
    "input-x-gradient:guided": PairInputXGradient(model).attribute((x1, x2), guided=True),
    "conditional-occlusion": ConditionalOcclusion(model).attribute((x1, x2), PATCH, STRIDE),
    "random": (torch.rand(1, 7, 7, generator=torch.Generator().manual_seed(0)),) * 2,
}
size = model.input_size
maps_figure([x1] * 4, [upsample(m[0], size) for m in maps.values()], list(maps), ncols=4,
            suptitle="image 1 under the four maps")
"""),
        md("""
*Think:* which map would *you* delete pixels by to destroy the similarity fastest? Now measure:
`insertion_deletion(model, x1, x2, m1, m2, mode="deletion").score` for each `(m1, m2)` in `maps`.
"""),
        code("""
# your measurements here
m1, m2 = maps["random"]
print("random:", float(insertion_deletion(model, x1, x2, m1, m2, mode="deletion").score))
"""),
        code("""
MY_WINNER = None   # <- change me: a key of maps
MY_MARGIN = None   # <- change me: a number
"""),
        code("""
# check (self-grading: the winner is stored as a hash; the margin is recomputed inside a function and
# compared within 0.02, so neither is printed)
def check_winner(answer):
    if answer is None:
        return "MY_WINNER: no answer yet"
    if _digest(answer) == "bd065fe61233ae7d72682996dac0ec66839cc2a09ac100f6ba861da980cf1cab":
        return "MY_WINNER: correct!"
    return "MY_WINNER: not quite. Hint: deletion is better when LOWER; measure all four maps"

def check_margin(answer):
    if answer is None:
        return "MY_MARGIN: no answer yet"
    score = {k: float(insertion_deletion(model, x1, x2, *maps[k], mode="deletion").score) for k in maps}
    ok = abs(float(answer) - (score["random"] - min(score.values()))) <= 0.02
    return "MY_MARGIN: correct!" if ok else "MY_MARGIN: not quite. Hint: SD(random) minus the smallest SD"

print(check_winner(MY_WINNER))
print(check_margin(MY_MARGIN))
"""),
        md("""
**Discuss.** Deleting pixels replaces them with a fill the model never saw in training: a map can win
by pointing at the pixels whose removal creates the strangest image, not at the evidence the model
used. Does the winner of deletion also win insertion (`mode="insertion"`, higher is better)? Would you
trust a method that wins one game and loses the other?
"""),
    ],
    "14_cnn_vs_vit.ipynb": [
        md("""
# CNN versus ViT: where do they look, and how invariant are they?

**What you will learn**
* to run the same pair through a convolutional network (`tiny-simclr`, a small ResNet) and a vision
  transformer (`tiny-dino-vit`, 112 px, 8x8 patches, a 14x14 token grid);
* how the same method (occlusion, Grad-CAM) looks on each, and the ViT-only views (class-token
  attention, patch-feature PCA);
* to compare invariance curves $\\cos(f(x), f(T_s(x)))$ of two models.

**Two warnings.** `tiny-dino-vit` is a small model trained on 640 images: its held-out retrieval
accuracy is 0.615, against 0.816 for `tiny-simclr` (see the model card). And part of its training
distils `tiny-simclr`'s embedding into it (a contrastive term beside DINO's loss), so the two models are
not independent: where they agree, the ViT may have inherited the CNN's notion of similarity. What
follows compares the two *architectures' ways of looking*, not their quality.
"""),
        code('CNN = "tiny-simclr"\nVIT = "tiny-dino-vit"\nIMAGE = "chelsea"\nPATCH = 24\nSTRIDE = 12\nTHREADS = 1',
             parameters=True),
        code("""
import torch
torch.set_num_threads(THREADS)
import ssl_widgets
from ssl_widgets.data import make_pair, make_view
import matplotlib
matplotlib.rcParams["savefig.dpi"] = 72  # modest figures: the notebooks are stored with their outputs
cnn, vit = ssl_widgets.load_model(CNN), ssl_widgets.load_model(VIT)
print("input sizes:", cnn.input_size, vit.input_size)
x1, x2 = make_pair(IMAGE, "aug", vit.input_size, seed=0)
with torch.no_grad():
    for name, m in ((CNN, cnn), (VIT, vit)):
        print(f"{name:14s} similarity of the pair {float(m.similarity(x1, x2)):+.3f}")
"""),
        md("""
## 1. Occlusion: the same question to both models

Conditional occlusion fills one window of image 1 (image 2 intact) and records the drop
$s(x_1, x_2) - \\cos(f(x_1^{\\text{filled}}), f(x_2))$; it only needs forward passes, so it treats
both models as black boxes and is the fairest comparison.
"""),
        code("""
from ssl_widgets.attr import ConditionalOcclusion, PairGradCAM, ClassTokenAttention, PatchFeaturePCA, upsample
from ssl_widgets.plotting import maps_figure

occ = {name: ConditionalOcclusion(m).attribute((x1, x2), PATCH, STRIDE) for name, m in ((CNN, cnn), (VIT, vit))}
maps_figure([x1, x2, x1, x2], [occ[CNN][0], occ[CNN][1], occ[VIT][0], occ[VIT][1]],
            [f"{CNN}: view 1", f"{CNN}: view 2", f"{VIT}: view 1", f"{VIT}: view 2"], ncols=4,
            suptitle="conditional occlusion (drop in similarity)")
"""),
        md("""
**Reading the figure.** For `tiny-simclr` the drops are large (up to about 0.2 in view 2) and
localised: covering the eyes and the nose of the cat costs the most similarity, and a few windows of
view 1 are blue (covering them *raises* the similarity). For `tiny-dino-vit` the values are an order
of magnitude smaller (below 0.04 in size) and mostly blue: covering almost any window slightly *raises*
its similarity, and only one window of view 2, on the right eye, stands out as a drop. No single window
matters much: the ViT's similarity is carried by the whole image (every token attends to every other,
so information is mixed globally), and a filled window is a change it partly ignores.

*Question:* the ViT's pair similarity (printed above) is lower than the CNN's. Does a lower similarity
mean the ViT is worse at recognising that both views show the same cat?
"""),
        md("""
## 2. Grad-CAM: the CNN's 7x7 grid against the ViT's 14x14 token grid

For the ViT the "feature map" is the grid of patch tokens of the last block, so its CAM is twice as
fine as the CNN's (14x14 against 7x7) for the same 112 px input.
"""),
        code("""
cams = {name: PairGradCAM(m).attribute((x1, x2)) for name, m in ((CNN, cnn), (VIT, vit))}
for name, r in cams.items():
    print(f"{name:14s} Grad-CAM grid {tuple(r[0].shape[1:])}")
size = vit.input_size
maps_figure([x1, x2, x1, x2], [upsample(cams[CNN][0], size), upsample(cams[CNN][1], size),
                               upsample(cams[VIT][0], size), upsample(cams[VIT][1], size)],
            [f"{CNN}: view 1", f"{CNN}: view 2", f"{VIT}: view 1", f"{VIT}: view 2"], ncols=4,
            suptitle="Grad-CAM of the similarity")
"""),
        md("""
**Reading the figure.** The CNN's Grad-CAM is a smooth blob over the eyes and nose (7x7 cells, each
16 px, upsampled). The ViT's map is signed and much sparser: a few tokens on the pupils carry almost
all of the gradient-weighted activation (red in view 2, one blue token in view 1), with values of a few
thousandths. Isolated hot tokens are
typical of ViT gradients; a finer grid is not by itself a better explanation.
"""),
        md("""
## 3. What only the ViT offers: class-token attention and patch-feature PCA

* **cls-attention**: the attention weights of the class token to each patch in the last block
  (mean over heads), $a_j = \\mathrm{softmax}_j(q_{cls} \\cdot k_j / \\sqrt{d})$. In large DINO ViTs
  these maps segment objects; they are attention, not attribution.
* **feature-pca**: the first three principal components of the patch features of *both* images,
  shown as RGB, so that patches with the same colour have similar features across the two views.
"""),
        code("""
att = ClassTokenAttention(vit).attribute((x1, x2))
pca = PatchFeaturePCA(vit).attribute((x1, x2))
maps_figure([x1, x2, x1, x2], [upsample(att[0], size), upsample(att[1], size), pca[0], pca[1]],
            ["cls-attention: view 1", "cls-attention: view 2", "feature PCA: view 1", "feature PCA: view 2"],
            ncols=4, suptitle=f"{VIT}: attention and patch features")
"""),
        md("""
**Reading the figure.** The class token attends to a handful of tokens: the corner of the right eye (and
the rim of the left one) in view 1, the two eyes and a few scattered tokens in view 2, not to the whole
cat. Large DINO ViTs produce object masks here;
this small one does not. In the PCA panels, colours are comparable across the two views (the PCA is
fitted on both): view 1 is mostly pink and view 2 mostly green-blue, so the first components separate
*the two views* (their zoom and colour) more than cat parts. A ViT that had learned parts would paint
the eyes of both views in the same colour.
"""),
        md("""
## 4. Invariance: similarity as a transform grows

`similarity_sweep` applies a deterministic transform of strength $s = 0, 0.1, \\dots, 1$ and returns
$\\cos(f(x), f(T_s(x)))$. A flat curve near 1 means the model ignores that transform.
"""),
        code("""
import matplotlib.pyplot as plt
from ssl_widgets.analysis import SWEEPS, similarity_sweep

x = make_view(IMAGE, "pure", vit.input_size)
strengths = [i / 10 for i in range(11)]
fig, axes = plt.subplots(1, len(SWEEPS), figsize=(3 * len(SWEEPS), 2.8), sharey=True)
for ax, kind in zip(axes, SWEEPS):
    for name, m in ((CNN, cnn), (VIT, vit)):
        ax.plot(strengths, similarity_sweep(m, x, kind).numpy(), marker="o", ms=3, label=name)
    ax.set_title(kind, fontsize=9); ax.set_xlabel("strength s")
axes[0].set_ylabel("cos(f(x), f(T_s x))"); axes[0].legend(fontsize=8)
fig.tight_layout()
"""),
        md("""
**Reading the figure.** Both models ignore blur. The CNN is almost perfectly invariant to grayscale,
the ViT much less (0.44 at full strength); the ViT tolerates a centre crop (zoom) far better (still 0.65
at full strength: DINO trains with small local crops matched to global ones), where the CNN's similarity
falls to about 0 from a 2x zoom on (strength 0.6: a crop keeping half of the side). Colour jitter and
solarisation break both, the ViT sooner: it declines from the weakest jitter on, the CNN only past 0.5.
Invariance mirrors each training
recipe's augmentations, but beware: a model whose embeddings barely change under *anything* is not
invariant, it is uninformative; check retrieval (the model card) before praising a flat curve.

**What this comparison cannot tell you**
* which *architecture* is better: the two models differ in training method (SimCLR vs DINO), data
  budget and quality, so every difference above mixes architecture and training;
* that the ViT's sparse maps are "sharper": gradients and attention of ViTs are known to concentrate
  on a few high-norm tokens (the "registers" effect of Darcet et al., 2024) that carry global information;
* anything about large models: one pair, tiny models, 112 px.

**Try it.** `Explorer(model="tiny-dino-vit", images=IMAGE, method="cls-attention")` and switch the
method to `attention-rollout` or `feature-pca`; then change view 2's crop and watch the PCA colours.
"""),
    ],
    "17_relevance_methods.ipynb": [
        md("""
# Attention, rollout and gradient-weighted relevance: the ViT explanations the field compares against

**What you will learn**
* DINO's attention masks (`cls-attention` with `threshold=`): the smallest set of patches holding a
  fraction of the class token's attention;
* attention rollout as the paper defines it (`head_fusion="mean"`) and as it is usually published
  (vit-explain's `head_fusion="max", discard_ratio=0.9`);
* Chefer et al. (2021)'s gradient-weighted attention relevance (`attention-relevance`), driven here by
  the pair's cosine similarity;
* when each of them is trustworthy, and a test for the difference that matters: does the map depend
  on the *other* image?
"""),
        code('MODEL = "tiny-dino-vit"\nIMAGE = "chelsea"\nOTHER = "coffee"\nTHRESHOLD = 0.6\nTHREADS = 1',
             parameters=True),
        code(SETUP + """
from ssl_widgets.attr import AttentionGradientRelevance, AttentionRollout, ClassTokenAttention, upsample
from ssl_widgets.plotting import maps_figure

x1, x2 = make_pair(IMAGE, "aug", model.input_size, seed=0)
size = model.input_size
with torch.no_grad():
    print(f"similarity of the pair {float(model.similarity(x1, x2)):+.3f}")
"""),
        md("""
## 1. DINO's attention masks

`ClassTokenAttention(model).attribute((x1, x2), threshold=t)` returns, instead of the attention, a 0/1
mask per image: DINO's `visualize_attention.py` rule, which sorts the class token's attention over the
patches, and keeps the patches holding the top fraction `t` of its mass (DINO's figures use 0.6). With
`head=None` the mask is cut from the mean of the heads, with `head=k` from head `k`.
"""),
        code("""
attention = ClassTokenAttention(model)
att = attention.attribute((x1, x2))
mask = attention.attribute((x1, x2), threshold=THRESHOLD)
heads = [attention.attribute((x1, x2), head=h, threshold=THRESHOLD)[0] for h in range(model.trunk.blocks[-1].attn.num_heads)]
for h, m in enumerate(heads):
    print(f"head {h}: the mask keeps {int(m.sum())} of {m.numel()} patches")
print(f"mean of heads: the mask keeps {int(mask[0].sum())} of {mask[0].numel()} patches")
crisp = [torch.nn.functional.interpolate(m[None], size=(size, size), mode="nearest")[0] for m in mask]  # whole patches
maps_figure([x1, x2, x1, x2], [upsample(att[0], size), upsample(att[1], size), crisp[0], crisp[1]],
            ["attention: view 1", "attention: view 2", f"mask ({THRESHOLD:.0%} of the mass): view 1",
             "mask: view 2"], ncols=4, suptitle="cls-attention, last block, mean of heads")
"""),
        md("""
**Reading the figure.** The mean attention of the last block peaks on one token by the right eye in
view 1 and on a few tokens around the eyes in view 2. Yet 60 % of its mass needs 60 of the 196
patches, scattered over the whole image: the class token of this small model (6 blocks, trained on
640 images) spreads most of its attention thinly. The heads differ a lot (from 4 to 97 patches for
60 % of their mass). The object-shaped masks of DINO's figures come from large ViTs; a mask is only
as meaningful as the attention is peaked.
"""),
        md("""
## 2. Attention rollout: as in the paper, and as usually published

Rollout multiplies the blocks' attention matrices (each with the identity added for the residual path
and rows renormalised) and reads the class token's row. vit-explain's default fuses the heads by their
*maximum* and sets the lowest 90 % of each fused matrix to zero first (the class token's attention to
itself is spared). vit-explain then divides by column sums for max fusion (its issue #16); we keep the
paper's row normalisation.
"""),
        code("""
rollout = AttentionRollout(model)
mean_rollout = rollout.attribute((x1, x2), head_fusion="mean")
published = rollout.attribute((x1, x2), head_fusion="max", discard_ratio=0.9)
maps_figure([x1, x2, x1, x2], [upsample(m, size) for m in (*mean_rollout, *published)],
            ["rollout, mean: view 1", "rollout, mean: view 2", "max + discard 0.9: view 1",
             "max + discard 0.9: view 2"], ncols=4, suptitle="attention rollout")
"""),
        md("""
**Reading the figure.** The mean rollout is broad (the identity of the residual path dominates the
product) with mild peaks on the eyes. Max fusion with 90 % discarded is much more peaked: the right eye
in view 1, the left eye and the middle of the face in view 2, close to the last block's attention.
The two settings answer the same question with different assumptions; the sharper map is not the
truer one.
"""),
        md("""
## 3. Gradient-weighted attention relevance (Chefer, Gur & Wolf, 2021)

Per block, the attention is weighted by the gradient of the *similarity* with respect to it, its
positive part averaged over the heads, $\\bar A = \\mathrm{mean}_h\\,(\\nabla_A s \\odot A)^+$, and
accumulated as $R \\leftarrow R + \\bar A R$ from $R = I$; the map is the class token's row of $R$.
Each image's map uses the gradient with respect to its own attention, so it is an explanation of *this
pair's* similarity.
"""),
        code("""
relevance = AttentionGradientRelevance(model).attribute((x1, x2))
maps_figure([x1, x2], [upsample(m, size) for m in relevance],
            ["attention-relevance: view 1", "attention-relevance: view 2"], ncols=2,
            suptitle="gradient-weighted attention relevance of the similarity")
"""),
        md("""
**Reading the figure.** The relevance is concentrated: the forehead between the eyes in view 1 and
the right eye in view 2 carry most of it. These are not the tokens the class token attends to most
(section 1): the gradient of the similarity re-weights the heads and the blocks.
"""),
        md("""
## 4. Which of them explains the *similarity*?

A map that explains $\\cos(f(x_1), f(x_2))$ should change when $x_2$ changes. Attention and rollout
are computed from one image alone; the relevance is not. Below, view 1 is paired with another image
(`OTHER`) and each map of view 1 is compared with its map in the original pair.
"""),
        code("""
x_other, _ = make_pair(OTHER, "pure", size, seed=0)
pairs = {"original pair": (x1, x2), "other partner": (x1, x_other)}
methods = {
    "cls-attention": lambda a, b: attention.attribute((a, b))[0],
    "rollout, mean": lambda a, b: rollout.attribute((a, b), head_fusion="mean")[0],
    "rollout, max + discard 0.9": lambda a, b: rollout.attribute((a, b), head_fusion="max", discard_ratio=0.9)[0],
    "attention-relevance": lambda a, b: AttentionGradientRelevance(model).attribute((a, b))[0],
}
for name, explain in methods.items():
    first, second = (explain(*p) for p in pairs.values())
    change = float((first - second).abs().max() / first.abs().max())
    print(f"{name:28s} map of view 1 changes by {change:6.1%} of its maximum when the partner changes")
"""),
        md("""
## When is each of them trustworthy?

* **cls-attention (and its mask)** shows where the class token of *one* image reads in *one* block. It
  is exact (no approximation) and cheap, and in large DINO ViTs the last block's heads segment objects.
  It says nothing about the pair: the same map for every partner. Trust it as a view of the model, not
  as an explanation of a similarity; the mask's area depends on `threshold` and on how peaked the
  attention is, not on importance.
* **Rollout (mean)** follows the attention through every block with the residual path, under the
  assumption that tokens mix linearly along the attention weights (values and MLPs ignored). Like
  attention, it does not depend on the partner. **Max + discard 0.9** is what most published rollout
  maps show: sharper, but the sharpness comes from the discard rule (90 % of the entries set to zero)
  and the max over heads, not from the model; compare it with the mean version before reading details
  into it.
* **attention-relevance** is the only one of the three driven by the similarity: its maps change with
  the partner, and the gradient picks which heads and tokens matter for *this* cosine. It keeps only
  positive contributions (the $(\\cdot)^+$ of each block), so it cannot show what lowers the similarity,
  and gradients of a small model are noisy. Trust it for "which tokens carry this pair's similarity",
  checked against a perturbation method (occlusion) where the answer matters.
"""),
        md("""
## 5. BiLRP: which pairs of regions carry the similarity (a CNN)

BiLRP (Eberle et al., TPAMI 2022) explains each embedding dimension of both images with layer-wise
relevance propagation and multiplies the two explanations: $R[p, q] = \\sum_m \\mathrm{LRP}_m(x_1)[p]\\,
\\mathrm{LRP}_m(x_2)[q] / (\\lVert z_1\\rVert \\lVert z_2\\rVert)$, a relevance for every pair of patches, one in
each image. Its LRP rules (zennit's) are written for convolutional networks, so the package refuses it on a
ViT; below it runs on the shipped CNN `tiny-simclr`, next to `joint-gradient` (its gradient x input special
case). `projection=32` explains 32 random directions of the 128-dimensional embedding instead of all of
them (an unbiased estimate, 4x cheaper).
"""),
        code("""
from ssl_widgets import load_model
from ssl_widgets.attr import BiLRP, JointGradient
from ssl_widgets.plotting_joint import remainder_note, top_matches_figure

cnn = load_model("tiny-simclr")
c1, c2 = make_pair(IMAGE, "aug", cnn.input_size, seed=0)
bilrp = BiLRP(cnn).attribute((c1, c2), grid=7, projection=32, generator=torch.Generator().manual_seed(0))
bilinear = JointGradient(cnn).attribute((c1, c2), grid=7)
print(f"similarity {float(bilrp.similarity[0]):+.3f}; BiLRP relevances sum to {float(bilrp[0].sum()):+.3f}, "
      f"the remainder (biases, BatchNorm shifts) {float(bilrp.meta['remainder'][0]):+.3f}")
print(remainder_note(bilinear))
top_matches_figure(c1, c2, bilrp, k=8, title="BiLRP (epsilon-plus-flat), tiny-simclr")
"""),
        md("""
**Reading the figure.** All eight strongest pairs end on view 2's right eye; in view 1 they start on both
eyes, the forehead and the nose. BiLRP does not match parts one to one here: it says that view 2's eye
is what most of view 1's face is similar to, for this model. The marginals on the right are ordinary
maps (eyes in both views). Most of the similarity is *not* in the relevances (0.08 of 0.91 with BiLRP,
0.006 with joint-gradient): LRP leaves the shares of the biases (here the BatchNorm shifts merged into the convolutions)
in a remainder, which the printout states. **When to trust it:** BiLRP conserves what it explains (the
relevances plus the remainder equal the similarity, tested), and its rules are better behaved than raw
gradients in deep ReLU networks; it depends on the rule chosen (`composite=`), explains the dot product of
the normalised embeddings with the norms held fixed, and on a model whose biases carry most of the
similarity it shows only the part the pixels carry. Compare it with `joint-occlusion` where the answer
matters.
"""),
    ],
}

# ---------------------------------------------------------------- tutorial sections of the method notebooks
#: per notebook: "learn" (objectives, a cell after the title), "idea" (the method in plain words with its
#: formula, after that), "reading" (a paragraph reading the first figure, after the first cell that draws),
#: "try" (explorer suggestions, before the first panel cell or at the end with "try_code"), "limits" (what the
#: method cannot tell you, at the end).
TUTORIAL = {
    "00_quickstart.ipynb": {
        "learn": """
**What you will learn**
* what "similarity" means for a self-supervised model: the cosine $s = \\cos(f(x_1), f(x_2))$ of two embeddings;
* to open the explorer and switch between methods;
* the order in which to read the other notebooks (see `notebooks/README.md`).
""",
        "limits": """
**Where to go next.** Start here, then: occlusion (01, 02) → CAM (03) → gradients (05) → averaged
transforms (04) → pixel invariance (06) → metrics (08) → joint explanations (13) → CNN vs ViT (14) →
the classroom exercises (10, 11, 15, 16).

**What no explanation here can tell you:** whether the model is *right*. Every map explains the
similarity the model computes, including the similarity of two unrelated images.
"""},
    "01_conditional_occlusion.ipynb": {
        "learn": """
**What you will learn**
* the idea of occlusion: remove a part of the input and watch the output change;
* why, for a pair, the map of one image is *conditional* on the other image;
* how patch size and stride trade resolution for noise.
""",
        "reading": """
**Reading the figure.** Image 2 is a zoomed, grayscale crop of image 1. Each map's colour bar says
how it is drawn. On image 1 the map is signed (a few windows have small negative drops) and the
largest drops (red, up to about 0.15) lie on the nose and the forehead between the eyes; on image 2 no
drop is negative, and one region around the cat's left eye (right of the picture) costs up to 0.4 of
the 0.91 similarity. For the model this means the similarity is carried by a few face regions, and that
they are not the same regions in the two views: the zoomed, grey view leans on one eye.

*Question:* why can a region matter in view 2 when the corresponding region of view 1 hardly does?
(Think of what else view 1 still offers when one window is covered.)
""",
        "limits": """
**What this method cannot tell you**
* **The fill is an intervention, not an absence.** A grey (mean-colour) window is an out-of-distribution
  input: part of a drop may come from the model reacting to an odd grey square, not from losing evidence.
  Try `baselines=` with another fill and see the map change.
* **Window size trades resolution for noise.** Small windows rarely cover a whole part (small, noisy
  drops); big windows blur the map. The "most important location" can move with the window size (see
  the experiment above).
* **Interactions are missed.** One window at a time: two redundant regions (two eyes) each look
  unimportant because the other still carries the similarity. See joint occlusion (notebook 13).
* It costs one forward pass per window: with stride 8 on 112 px, 121 passes per image.
"""},
    "02_context_agnostic_and_pairwise_occlusion.ipynb": {
        "learn": """
**What you will learn**
* two variants of occlusion for pairs: what a patch contributes *alone*, and what random erasures of
  both images do together;
* to measure whether two explanation methods agree (rank correlation).
""",
        "reading": """
**Reading the figures.** The two methods disagree, and that is the lesson. The context-agnostic map
(signed) is blue on the white rim of the cup in both views: the rim *alone*, minus the rest of the
image, points *away* from the other view's embedding; red patches on the saucer and the background
point towards it. Pairwise occlusion (all positive, normalised to 1) puts its maximum on the coffee in
the middle of the cup in view 1 and on the rim in view 2, with blocky edges because each drop is credited
to whole rectangles. The rank correlation printed below quantifies the (dis)agreement.

*Question:* which of the two questions ("what does a patch contribute alone?" and "what does erasing
parts of both images cost?") matches what you want to know about this pair?
""",
        "try_code": 'from ssl_widgets.widgets import OcclusionPanel\n'
                 'OcclusionPanel(model=model, images=IMAGE, method="context-agnostic-occlusion")',
        "tryit": """
**Try it.** In the panel, switch between `context-agnostic-occlusion` and `conditional-occlusion` on the
same pair. Which one highlights the background? Then change view 2's seed: which map changes more?
""",
        "limits": """
**What this method cannot tell you**
* "A patch alone" is a strongly out-of-distribution image (a small crop on a fill): the model's
  embedding of it may mean little.
* Pairwise occlusion's credit assignment (to the image whose embedding lost more norm) is a heuristic;
  with few samples (`SAMPLES`) the map is noisy, so rerun with another generator seed before reading
  small differences.
* A Spearman correlation near 0 between two methods does not tell you which one is right.
"""},
    "03_interaction_cam.ipynb": {
        "learn": """
**What you will learn**
* how Grad-CAM turns gradients at a layer into a coarse map of that layer's grid;
* how Interaction-CAM favours channels active in *both* views;
* that a CAM's resolution is the layer's (7x7 for the trunk output at 112 px).
""",
        "idea": """
**The idea in plain words.** The last convolutional layer has channels $A_c$ on a 7x7 grid; the
gradient of the similarity $S$ with respect to each channel says how much that channel pushes the
similarity up. Keep the positive pushes and weight the activations by them:
$$\\mathrm{CAM} = \\sum_c A_c \\odot \\mathrm{ReLU}\\!\\left(\\frac{\\partial S}{\\partial A_c}\\right), \\qquad
\\mathrm{ICAM} = \\sum_c P(A^1_c)\\,P(A^2_c)\\; A_c \\odot \\mathrm{ReLU}\\!\\left(\\frac{\\partial S}{\\partial A_c}\\right),$$
with $P$ a pooling (mean, max or attention) of each view's channel.
""",
        "reading": """
**Reading the figure.** Each panel upsamples a 7x7 map over its view (bright = large CAM). In
image 1 all four variants put their maximum on the astronaut's gold neck ring and lower face; in the
augmented view (zoomed, darker) the maps spread over the face and neck, and plain Grad-CAM also lights
the right edge, where the rocket is, which the Interaction-CAM variants suppress (that content is
not shared by both views' channels). The colour bars differ by up to 25 times between variants (about
0.02 for mean-pooled Interaction-CAM, 0.5 for max pooling): compare positions, not values. The smooth blobs are upsampling: each 16x16 px cell is one number.
""",
        "tryit": """
**Try it.** In the panel, switch pooling between mean, max and attention, and change view 2's crop:
does the hot region follow the content that both views share?
""",
        "limits": """
**What this method cannot tell you**
* **Resolution**: the map has the layer's 7x7 grid; it cannot separate details inside a 16 px cell.
  An earlier layer (`layer3`, 14x14) is finer but less semantic.
* **Gradient saturation**: where a ReLU is off or the similarity is flat, gradients are zero and the
  region looks unimportant even if it matters; the ReLU on the gradients also hides negative evidence.
* The channel weights explain a linearisation at this one pair of inputs, not the model's behaviour
  under larger changes.
"""},
    "04_averaged_transforms.ipynb": {
        "learn": """
**What you will learn**
* how to ask which pixels the similarity is sensitive to *while a transform happens*;
* why the answer depends on the transform you choose.
""",
        "idea": """
**The formula.** With $x^\\lambda = \\lambda x + (1-\\lambda) x_t$,
$$M = \\frac{1}{|\\Lambda|}\\sum_{\\lambda \\in \\Lambda} \\left| x \\odot \\frac{\\partial}{\\partial x}\\cos\\big(f(x), f(x^\\lambda)\\big)\\right|,
\\qquad \\Lambda = \\{1, 0.9, \\dots, 0.1\\},$$
an integrated-gradients-like average along the path from the transformed image to the original.
""",
        "reading": """
**Reading the figures.** View 2 is a darker, lower-contrast copy with the same geometry. The plain
map (top) is a set of blobs in the dark sky between the rocket and the launch towers, left and right
of the rocket, not on the rocket body; the guided map (bottom) concentrates on the rocket body and the towers,
a picture that follows the image's bright structures. The values are tiny (1e-3 and 1e-5): the
similarity (0.94) hardly changes along this colour path. A cleaner, edge-like map is not evidence of a
better explanation (see the sanity checks below).
""",
        "try_code": 'from ssl_widgets.widgets import Explorer\n'
                 'Explorer(model=model, images=IMAGE, method="averaged-transforms")',
        "tryit": """
**Try it.** In the explorer, change view 2's augmentation (colour jitter only, then grayscale only):
the map answers a different question for each transform.
""",
        "limits": """
**What this method cannot tell you**
* The map depends on the **chosen transform**: it explains sensitivity along that path only, not
  "importance" in general.
* Gradients are noisy and local; averaging 10 points helps only partly.
* Guided back-propagation produces edge-like maps even for random weights (Adebayo et al., 2018,
  "Sanity checks for saliency maps"): its sharpness is partly an image-reconstruction effect.
"""},
    "05_gradients.ipynb": {
        "learn": """
**What you will learn**
* the simplest attribution, gradient x input, for a pair;
* why SmoothGrad averages over noise, and what guided back-propagation changes;
* to measure a map's stability (max-sensitivity).
""",
        "reading": """
**Reading the figures.** Maps are blurred (`blur=True`), so read regions, not pixels. Plain
input x gradient spreads over the shoulders and collar of the uniform and over background (the flag at
the right of view 1, the purple background of view 2), not over the face. Guided back-propagation and
SmoothGrad (guided) both draw a band along the shoulders and collar: a cleaner picture, but it follows
the strongest edge of the image. The similarity (0.49: view 2 is colour-jittered and sharply different)
is the same for all three; only the explanation changes.
""",
        "try_code": 'from ssl_widgets.widgets import Explorer\n'
                 'Explorer(model=model, images=IMAGE, method="smoothgrad:guided")',
        "tryit": """
**Try it.** In the explorer switch between `input-x-gradient`, `input-x-gradient:guided` and
`smoothgrad`; then change the image to `chelsea`. Which map changes least when you change view 2's seed?
""",
        "limits": """
**What this method cannot tell you**
* Gradients are **noisy** (shattered gradients of deep ReLU networks) and describe an infinitesimal
  change only; saturated units give zero gradient.
* **Guided back-propagation fails the sanity checks** of Adebayo et al. (2018): its maps barely change
  when the model's weights are randomised, so a pretty guided map says little about what the model learned.
* Multiplying by the input ($x \\odot \\nabla$) favours bright pixels and edges regardless of the model.
"""},
    "06_pixel_invariance.ipynb": {
        "learn": """
**What you will learn**
* the opposite question to attribution: which pixels can change *without* changing the similarity;
* how a linear surrogate model turns random augmentations into a map.
""",
        "idea": """
**The formula.** Draw $n$ augmentations $\\tilde x_k$ (colour jitter, grayscale, erasing), compute
$y_k = \\cos(f(x), f(\\tilde x_k))$ and fit a linear model $y_k \\approx w^\\top d(\\tilde x_k) + b$ on the
down-sampled pixels $d(\\cdot)$; the map is $w$ reshaped to the image grid (values under a threshold zeroed).
""",
        "reading": """
**Reading the figure.** The left panel is the image, the right the surrogate's weights (min-max
normalised, thresholded, then blurred, so almost every pixel keeps a small value). The largest weights
lie on the background, the shelves at the top and the floor at the bottom left, and the motorcycle
itself gets low weights. Read it as: in the augmented copies, the state of those background pixels best
*predicts* how similar the copy stays; it does not say the model looks at the background. With 200
samples for a 64x64 grid (4096 inputs) the fit is heavily under-determined, so treat the map as a
hypothesis to test (with more samples, or another seed).
""",
        "try_code": 'from ssl_widgets.widgets import Explorer\n'
                 'Explorer(model=model, images=IMAGE, method="pixel-invariance")',
        "tryit": """
**Try it.** Raise `SAMPLES` (parameters cell) to 800 and rerun: which cells stay? Those are the ones you
can believe.
""",
        "limits": """
**What this method cannot tell you**
* It is a **linear surrogate** of a very non-linear function; when its fit is poor (few samples) its
  weights are noise. Check the fit before reading the map.
* The result depends on the augmentation distribution chosen for the fit.
* Invariance to *these* perturbations says nothing about other transforms (crops, rotations).
"""},
    "07_correspondence_and_sweeps.ipynb": {
        "reading": """
**Reading the figure.** The cyan cross marks the point (y, x) = (40, 56) of image 1: the bridge of the
nose between the cat's eyes. Image 2 is a zoomed, grey, blurred crop of image 1. The middle panel is
the cosine between the trunk feature under the cross and the feature of each of image 2's 7x7 cells
(upsampled; all positive here, so drawn from 0). It peaks at cell (3, 3) (the cyan box, cosine 0.88),
which is the same spot between the eyes in the zoomed view: the features find the right place although
the zoom and the colour changed. The peak is broad: the cells over both eyes and the nose stay
yellow-orange and only the fur at the borders turns purple, because one 16 px cell covers a large part
of the face. On the right, the invariance curves: grayscale (0.99 at full strength) and blur (0.91 at
sigma 3) barely move the embedding; colour jitter holds until s = 0.5 and then collapses (0.32 at 0.7);
solarisation falls in steps to 0.14; the centre crop falls first and furthest: 0.51 at s = 0.4 and about
0 from s = 0.6 (a crop keeping half of the side).

*Question:* the training used random crops, yet the crop curve falls fastest. What is different about a
centre crop that zooms 2x to 5x, compared with the crops the model was trained on?
""",
        "learn": """
**What you will learn**
* to find, for one point of image 1, where image 2 "answers" in feature space;
* to plot invariance curves as a transform grows.
""",
        "idea": """
**The formulas.** Correspondence: $C(u, v) = \\cos(F_1[p], F_2[u, v])$ for the feature vector $F_1[p]$
under the point $p$. Sweep: $\\mathrm{inv}(s) = \\cos(f(x), f(T_s(x)))$ for $s = 0, 0.1, \\dots, 1$.
""",
        "limits": """
**What this method cannot tell you**
* Correspondence compares trunk features on a 7x7 grid: it matches textures and colours as readily as
  object parts.
* A sweep uses one deterministic transform family per curve; invariance to a blur of sigma 3 does not
  imply invariance to real defocus or to other images.
"""},
    "08_metrics.ipynb": {
        "reading": """
**Reading the figure.** Mean curves over the driver's 2 pairs. *Insertion* (left, higher is better)
starts at 0.66, the similarity of the two blurred images, and ends at 0.72, the similarity of the pair
itself. Interaction-CAM (max) climbs to about 0.72 after inserting only 7% of the pixels; Grad-CAM first
*falls* (to 0.63) and passes 0.70 only after about 20-30%: Interaction-CAM puts the shared evidence
first, hence its higher SI in the table (0.730 against 0.717). Neither curve is monotone, and both
overshoot the final value (up to 0.75): adding true pixels can lower the similarity. *Deletion* (right,
lower is better) starts at 0.72; Grad-CAM's curve falls faster and deeper (0.27 at 15% deleted, 0.21
at about 43%) while Interaction-CAM's stays between 0.4 and 0.65 up to 40%, so Grad-CAM wins deletion
(SD 0.461 against 0.552). Both curves climb back once half of the pixels are gone and end at exactly 1:
with every pixel deleted both images are the same fill, and identical images have cosine 1. That end
point is an artefact of the protocol, and part of the area: compare methods on the same pairs, never
read a score as an absolute number. The two methods split the two games, which is why the table reports
both (and why 2 pairs are not enough: the curves are jagged).
""",
        "learn": """
**What you will learn**
* how explanation maps are scored without ground truth: deletion, insertion, average drop, max-sensitivity;
* why a random map is the baseline and what the metrics cannot measure.
""",
        "idea": """
**The formulas.** Deletion removes the top-ranked pixels in $K$ steps, $x^{(k)}$ with the $k$ most
important chunks removed: $\\mathrm{SD} = \\frac1K \\sum_k \\cos(f(x_1^{(k)}), f(x_2^{(k)}))$ (lower is
better). Insertion adds them into a blurred image (higher is better). Average drop:
$\\max(0, s - s_{\\text{masked}}) / s$.
""",
        "limits": """
**What this method cannot tell you**
* **Deletion rewards out-of-distribution artefacts**: removed pixels form patterns the model never saw,
  so a map can "win" by pointing at whatever removal breaks the image fastest, not at the model's evidence.
* Insertion and deletion often disagree; a method's rank depends on the fill, the step and the pair.
* One pair is an anecdote: the evaluation driver averages over many pairs; report the spread too.
* Max-sensitivity rewards smooth maps, including uninformative ones (a constant map is perfectly stable).
"""},
    "09_published_weights.ipynb": {
        "reading": """
**Reading the figure** (offline, with the stand-in `tiny-barlow-twins`). View 2 is a grey, blurred crop of
the coffee cup, and this model finds the pair barely similar (cosine 0.13): Barlow Twins is the least
invariant of the shipped models to grayscale (see the curves below). The Interaction-CAM of view 1 is
brightest on the front of the cup's rim and the cup body below it (up to about 4.5); in view 2 it is
spread over the rim's right side, the inside of the cup and the bottom corners (up to about 12). With so
weak a similarity the map explains a weak match: it says where the little shared evidence is, not why
the views look alike. A published ResNet-50 at 224 px gives a finer map of the same pair.
""",
        "learn": """
**What you will learn**
* which published self-supervised checkpoints the package knows, and their licences;
* how to use a checkpoint offline with `weights=PATH` (`--weights PATH` on the command line), and how to
  opt in to a download;
* what the three self-supervised objectives change, on the shipped tiny models.
""",
        "limits": """
**What this cannot tell you.** The shipped tiny models are trained on a small data set at 112 px; the
published ResNet-50s (224 px) give sharper, more semantic maps. An explanation of a tiny model is an
explanation of *that* model, not of SimCLR in general.
"""},
    "12_feature_visualization_and_model_difference.ipynb": {
        "reading": """
**Reading the figure.** The target is view 2, a grey, zoomed crop of the cat. Starting from faint noise,
`score` (maximise the cosine at layer3; 6 octaves of 10 steps) already shows the target's layout: two
dark eye shapes at the left and the right, the vertical stripes of the forehead above them, the nose
below, in browns with green corners. The colours are free, because a grey target says nothing about
colour and layer3 matches shapes and textures. `feature` (push along the target's feature direction)
exaggerates the same parts: darker, larger eyes and a stronger band of stripes. The Fourier
parametrisation is still saturated, many-coloured noise on white with dark eye-like blobs: with only 10
steps per octave it has not converged (raise `ITERATIONS`), so this panel shows the method's budget, not
the layer.
""",
        "learn": """
**What you will learn**
* to synthesise an image that a layer finds similar to a target (feature visualisation);
* to compare what two models keep of an image at three depths (feature inversion).
""",
        "idea": """
**The formula.** Gradient ascent on an image $z$: $z \\leftarrow z + \\eta \\nabla_z \\cos(g_\\ell(z), g_\\ell(x_2))$
(with jitter, multiple octaves, or a Fourier parametrisation), where $g_\\ell$ is the model up to layer $\\ell$.
""",
        "limits": """
**What this method cannot tell you**
* Synthesised images depend heavily on the regularisation (octaves, parametrisation, jitter): two
  settings give different pictures of the same layer.
* With few iterations (CI-sized parameters) the images are far from converged.
* Inversion shows what *can* be reconstructed from a layer, not what the model *uses*.
"""},
    "13_joint_explanations.ipynb": {
        "learn": """
**What you will learn**
* to explain a similarity by *pairs* of patches, one in each image;
* two ways to compute them (bilinear gradients, pair occlusion) and a benchmark with known answers.
""",
        "limits": """
**What this method cannot tell you**
* Joint occlusion inherits occlusion's fill artefacts, and costs a forward pass per pair of patches
  ($7^4 = 2401$ for a 7x7 grid: keep the grid small).
* The bilinear decomposition is exact only for bias-free models; with BatchNorm a part of the
  similarity is assigned to no pair.
* A strong pair relevance says the two patches make the similarity together, not that they show the
  same object part (see the correspondence benchmark).
"""},
}

QUICKSTART = [
    md("""
# ssl_widgets quickstart: why does the model find these two images similar?

A self-supervised model (here `tiny-simclr`, shipped with the package and trained with SimCLR) maps
two views of one image to nearby embeddings. The **Explorer** below shows, for a pair of views,
*which parts of each image carry the similarity*, with the methods of Sammani et al.,
"Visualizing and Understanding Self-Supervised Vision Learning".

* **Image 1** is a centre crop; **image 2** is an augmented view of it (open *view 2 augmentation*
  to change crop, flip, colour jitter, grayscale, blur or the seed), or any other image.
* Each **tab** is a method with its own controls: occlusion (patch size and stride), Interaction-CAM
  (pooling), averaged transforms, gradients, pairwise occlusion, pixel invariance.
* In the **Correspondence** tab, click a point of one image to see where the other image answers.
* The **curves** section plots insertion/deletion curves and the similarity as a transform grows.
"""),
    code('# Parameters (a smaller model or fewer threads for CI)\nMODEL = "tiny-simclr"\nIMAGE = "chelsea"\nTHREADS = 1',
         parameters=True),
    code("""
import torch
torch.set_num_threads(THREADS)

from ssl_widgets.widgets import Explorer

explorer = Explorer(model=MODEL, images=IMAGE, method="interaction-cam:max")
explorer
"""),
    md("""
The read-out above is the cosine similarity of the two embeddings. Everything the panel shows is
also available in code, e.g. the current maps and similarity:
"""),
    code("""
print(f"similarity {explorer.similarity:+.3f}; map of image 1: {tuple(explorer.maps[0].shape)}")
"""),
    md("""
**The same in code, as a static figure** (what you see without a running kernel):
"""),
    code("""
import matplotlib
matplotlib.rcParams["savefig.dpi"] = 72  # modest figures: the notebooks are stored with their outputs
import ssl_widgets
from ssl_widgets.attr import InteractionCAM
from ssl_widgets.data import make_pair
from ssl_widgets.plotting import pair_figure

model = ssl_widgets.load_model(MODEL)
x1, x2 = make_pair(IMAGE, "aug", model.input_size, seed=0)
cam = InteractionCAM(model).attribute((x1, x2), pooling="max")
pair_figure(x1, x2, cam[0], cam[1], float(cam.similarity), title="interaction-cam:max",
            labels=(IMAGE, f"augmented view of {IMAGE}"))
"""),
    md("""
**Reading the figure.** Image 2 is a zoomed, grey and blurred crop of image 1, and the model still
finds the two views very similar (cosine 0.91 in the title; the explorer above draws view 2 with its own
sliders, hence its slightly different read-out). Each map is Interaction-CAM: bright = the
cells whose channels, active in both views, push the similarity up (all values are >= 0). On image 1
the heat is a band across the eyes and the bridge of the nose, brightest on the eye at the left of the
picture and between the eyes (up to about 0.09), while the ears, the fur at the borders and the mouth
stay dark. On image 2 it concentrates on the eye at the right of the picture (up to about 0.14) and
the nose bridge; the other eye is dimmer. So for this model the two views are similar mostly because
of the eyes, which both views show. The map is a 7x7 grid upsampled to the image (each cell 16 px), so
it points at regions, not details, and its values are not comparable across models or methods: read
the positions, then check them with another method (the explorer's tabs).
"""),
    md("""
A one-line alternative in a classroom: `%load_ext ssl_widgets` once, then
`%ssl_explore coffee --method conditional-occlusion`.
"""),
    code("""
%load_ext ssl_widgets
"""),
]

_PANEL = re.compile(r"\b(\w*Panel|Explorer)\(")
_DRAWS = re.compile(r"\b(pair_figure|maps_figure|overlay|top_matches_figure|Image)\(|\bplt\.")


def tutorial(name: str, cells: list) -> list:
    """Inserts the tutorial sections of ``TUTORIAL[name]`` into a notebook's cells."""
    extra = TUTORIAL.get(name)
    if not extra:
        return cells
    cells = list(cells)
    head = [cells[0]] + [md(extra[key]) for key in ("learn", "idea") if key in extra]
    body = cells[1:]
    if "reading" in extra:
        at = next((k for k, c in enumerate(body) if c.cell_type == "code" and _DRAWS.search(c.source)), None)
        if at is not None:
            body.insert(at + 1, md(extra["reading"]))
    if "tryit" in extra:
        at = next((k for k, c in enumerate(body) if c.cell_type == "code" and _PANEL.search(c.source)), None)
        if at is None:
            # as a snippet to copy, not a live cell: an explorer's widget state would add ~0.4 MB to the stored notebook
            snippet = f"\n```python\n{extra['try_code']}\n```\n" if "try_code" in extra else ""
            body.append(md(extra["tryit"] + snippet))
        else:
            body.insert(at, md(extra["tryit"]))
    if "limits" in extra:
        body.append(md(extra["limits"]))
    return head + body


def all_notebooks() -> dict:
    notebooks = {"00_quickstart.ipynb": QUICKSTART, **NOTEBOOKS, **NOTEBOOKS_NEW}
    return {name: tutorial(name, cells) for name, cells in sorted(notebooks.items())}


def main(prefixes: list[str]) -> None:
    """Writes every notebook, or those whose names start with one of ``prefixes`` (e.g. ``07 08``)."""
    for name, cells in all_notebooks().items():
        if prefixes and not any(name.startswith(p) for p in prefixes):
            continue
        nb = nbf.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nb.cells = cells
        nbf.write(nb, HERE / name)
        print("wrote", name)


if __name__ == "__main__":
    main(sys.argv[1:])
