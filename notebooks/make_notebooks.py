"""Writes the tutorial and classroom notebooks (run from the repository root: python notebooks/make_notebooks.py).

Each notebook has a cell tagged ``parameters`` with small defaults that run on a 2-core CPU in well
under 5 minutes; papermill (or editing that cell) scales them up.
"""
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
import ssl_widgets
from ssl_widgets.data import make_pair, make_view
model = ssl_widgets.load_model(MODEL)
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
from ssl_widgets.analysis import dense_correspondence, similarity_sweep, SWEEPS

x1, x2 = make_pair(IMAGE, "aug", model.input_size, seed=0)
heat = dense_correspondence(model, x1, x2, POINT)
i, j = divmod(int(heat.argmax()), heat.shape[1])
print(f"the point {POINT} of image 1 answers best at cell ({i}, {j}) of image 2, cosine {float(heat.max()):.2f}")
for kind in SWEEPS:
    print(f"{kind:13s}", " ".join(f"{v:.2f}" for v in similarity_sweep(model, x1, kind).tolist()))
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
        code('MODEL = "tiny-simclr"\nIMAGE = "coffee"\nTHREADS = 1', parameters=True),
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
    si = insertion_deletion(model, x1, x2, m1, m2, mode="insertion").score
    sd = insertion_deletion(model, x1, x2, m1, m2, mode="deletion").score
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
evaluate(EvaluationConfig(data=str(folder), model=MODEL, methods=["grad-cam", "interaction-cam:max"], pairs=2,
                          out=str(out), sensitivity_samples=2, show_progress=False))
print((out / "table.md").read_text())
"""),
        md("The driver also plots the mean insertion and deletion curves of each method (`curves.png`):"),
        code("""
from IPython.display import Image
Image(filename=str(out / "curves.png"))
"""),
    ],
    "09_published_weights.ipynb": [
        md("""
# Loading published weights

`ssl_widgets.load_model` knows the published SimCLR v2 (1x, 2x), Barlow Twins, SimSiam and the
supervised torchvision ResNet-50. Downloads go to torch.hub's cache (`$TORCH_HOME/hub/checkpoints`)
and are checked; `weights=PATH` always works offline.

| name | licence of the weights |
|---|---|
| simclr-v2-r50-1x / 2x | Apache-2.0 (convert the TF checkpoint, pass `weights=PATH`) |
| barlow-twins-r50 | CC-BY-NC 4.0 (the full checkpoint with the projector) |
| simsiam-r50 | CC-BY-NC 4.0 |
| resnet50-supervised | BSD-3-Clause |
"""),
        code('MODEL = "barlow-twins-r50"\nTHREADS = 1', parameters=True),
        code("""
import torch
torch.set_num_threads(THREADS)
import ssl_widgets
from ssl_widgets.models import model_info
for name in ssl_widgets.available_models():
    spec = model_info(name)
    print(f"{name:20s} {spec.license:45s} {spec.url or 'weights=PATH'}")
"""),
        md("Without network access a missing file says exactly what to fetch and where to put it:"),
        code("""
try:
    model = ssl_widgets.load_model(MODEL)
    print("loaded", model)
except FileNotFoundError as error:
    print(error)
"""),
        md("""
With the file in place (or `weights="/path/to/checkpoint.pth"`), every method and the explorer work
as with the default models: `Explorer(model=ssl_widgets.load_model("barlow-twins-r50"))`.
"""),
    ],
    "10_classroom_invariance.ipynb": [
        md("""
# Classroom exercise 1: which augmentation is the model most invariant to?

Self-supervised models are trained to give the same embedding to two augmentations of one image.
Are they equally invariant to every augmentation?

**Task.** Use `similarity_sweep` (or the explorer's *curves* section) on a few images. For each
transform compute the mean similarity over strengths, then put the name of the transform with the
**highest** mean similarity in `MY_ANSWER`. Run the check cell.
"""),
        code('MODEL = "tiny-simclr"\nIMAGES = ["chelsea", "coffee", "rocket"]\nTHREADS = 1', parameters=True),
        code(SETUP),
        code("""
from ssl_widgets.analysis import similarity_sweep, SWEEPS
print("transforms:", list(SWEEPS))
# your exploration here, e.g.
print(similarity_sweep(model, make_view(IMAGES[0], "pure", model.input_size), "blur"))
"""),
        code("""
MY_ANSWER = "blur"  # <- change me
"""),
        code("""
# check (self-grading)
scores = {kind: float(torch.stack([similarity_sweep(model, make_view(im, "pure", model.input_size), kind).mean()
                                   for im in IMAGES]).mean()) for kind in SWEEPS}
best = max(scores, key=scores.get)
print({k: round(v, 3) for k, v in scores.items()})
print("correct!" if MY_ANSWER == best else f"not quite: the model is most invariant to {best!r}")
"""),
        md("""
**Discuss.** The training augmentations included colour jitter, grayscale and blur but not
solarisation (for SimCLR). Does the ranking match what the model was trained to ignore?
"""),
    ],
    "11_classroom_patch.ipynb": [
        md("""
# Classroom exercise 2: find the patch the similarity depends on most

**Task.** Look at the two views below. Guess the top-left corner `(row, col)` of the 32x32 patch of
image 1 whose occlusion lowers the similarity the most, and put it in `MY_GUESS` (multiples of 8).
The check cell computes the answer with conditional occlusion and tells you how far off you were.
Then try the explorer's occlusion tab to see the whole map.
"""),
        code('MODEL = "tiny-simclr"\nIMAGE = "astronaut"\nPATCH = 32\nSTRIDE = 8\nTHREADS = 1', parameters=True),
        code(SETUP),
        code("""
from ssl_widgets.plotting import pair_figure
x1, x2 = make_pair(IMAGE, "aug", model.input_size, seed=6)
with torch.no_grad():
    similarity = float(model.similarity(x1, x2))
pair_figure(x1, x2, None, None, similarity, title="which patch matters?",
            labels=(IMAGE, f"augmented view of {IMAGE}"))
"""),
        code("""
MY_GUESS = (40, 40)  # <- change me: (row, col) of the patch's top-left corner
"""),
        code("""
# check (self-grading)
from ssl_widgets.attr import ConditionalOcclusion
grid = ConditionalOcclusion(model).attribute((x1, x2), PATCH, STRIDE, grid=True)[0][0]
i, j = divmod(int(grid.argmax()), grid.shape[1])
answer = (i * STRIDE, j * STRIDE)
distance = max(abs(answer[0] - MY_GUESS[0]), abs(answer[1] - MY_GUESS[1]))
print(f"the most important patch starts at {answer} (drop {float(grid.max()):.3f})")
print("correct!" if distance <= STRIDE else f"off by {distance} pixels: look again at the map")
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
        code(SETUP),
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
from ssl_widgets.evaluate.correspondence import (CORRESPONDENCE_METHODS, correspondence_hits, correspondence_matrix,
                                                 geometric_view)
totals = {m: [0.0, 0.0, 0.0] for m in CORRESPONDENCE_METHODS}
for k, name in enumerate(["chelsea", "coffee", "astronaut", "rocket", "motorcycle"][:PAIRS]):
    a = make_view(name, "pure", model.input_size, seed=None)
    b, params = geometric_view(a, torch.Generator().manual_seed(k))
    for method in CORRESPONDENCE_METHODS:
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


def main() -> None:
    for name, cells in NOTEBOOKS.items():
        nb = nbf.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nb.cells = cells
        nbf.write(nb, HERE / name)
        print("wrote", name)


if __name__ == "__main__":
    main()
