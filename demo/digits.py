"""The demo's Digits tab: the image checkpoint's samples, drawn as `image_gen.py --mode infer` draws them, as a
grid and as single PNGs to download."""
from __future__ import annotations

import io
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import streamlit as st
from imagegen.checkpoint import MODEL_KINDS
from imagegen.common import read_json
from imagegen.data import class_names, class_slug, dataset_title, to_unit_range
from imagegen.diffusion import SamplerSettings
from imagegen.guidance import DEFAULT_GUIDANCE_SCALE
from imagegen.plots import save_class_grid, save_grid, save_individual
from imagegen.pretrained import ImageGenerator

from demo.common import errors_as_messages, open_checkpoint, same_checkpoint

MAX_IMAGES = 64         # per click: 4x the time of 16 digits (README), under half a minute of one CPU core


@st.cache_resource(show_spinner="Loading the image checkpoint (and compiling the U-Net) ...", max_entries=2)
def load_image_checkpoint(path, stamp, device, precision="fp32", compile_model=False):
    """(what the page says about the checkpoint, its EMA sampler in `precision`, compiled if asked and
    possible): loaded by imagegen.pretrained, compiled and warmed up once per server and file version."""
    generator = ImageGenerator.load(path, device, precision, compile_model)
    compile_error = None
    try:
        warm_up(generator.sampler, generator.dataset)  # with compile_model this compiles: on the first call
    except Exception as err:
        if not compile_model:
            raise
        # no C++ compiler, say: eager sampling still works
        compile_error = ": ".join([type(err).__name__, *str(err).strip().splitlines()[:1]])
        generator = ImageGenerator.load(path, device, precision)
        warm_up(generator.sampler, generator.dataset)
    state = generator.state
    about = {"dataset": generator.dataset, "kind": generator.kind, "position": generator.position,
             "guidance": generator.default_guidance, "step": state["step"], "history": state["history"],
             "args": state.get("args", {}), "model_config": state["model_config"],
             "compiled": compile_model and compile_error is None, "compile_error": compile_error,
             "precision": generator.precision}
    return about, generator.sampler


@dataclass
class Images:
    """One click's images, kept in the session: any later click reruns the page, which still shows them."""
    grid_png: bytes
    singles_zip: bytes
    count: int
    seconds: float
    sampler: str


def image_scores(about, path, results_dir):
    """Lines about the checkpoint's measured FID: its last per-epoch evaluation, and infer's record for it
    in `results_dir`/metrics.json."""
    lines = []
    evaluated = [h for h in about["history"] if h.get("fid") is not None]
    if evaluated:
        h, args = evaluated[-1], about["args"]
        accuracy = f", class accuracy {h['accuracy']:.1%}" if h.get("accuracy") is not None else ""
        sampler = (f"{args.get('sampler', 'ddim')}-{args.get('sampling_steps')}" if about["kind"] == "ddpm"
                   else "one generator pass")
        lines.append(f"FID {h['fid']:.2f}, KID {h['kid']:.4f}{accuracy} after epoch {h['epoch']} (training's "
                     f"evaluation: {sampler}, N = {h.get('fid_samples', args.get('fid_samples'))}, "
                     f"--fid_backbone {args.get('fid_backbone')})")
    infer = read_json(results_dir / "metrics.json").get("infer", {})
    if infer.get("fid") is not None and same_checkpoint(infer.get("checkpoint"), path) \
            and infer.get("step") == about["step"]:
        accuracy = f", class accuracy {infer['accuracy']:.1%}" if infer.get("accuracy") is not None else ""
        drawn = f"{infer['fid_samples_drawn']}, " if infer.get("fid_samples_drawn") else ""
        lines.append(f"FID {infer['fid']:.2f}, KID {infer['kid']:.4f}{accuracy} in infer ({infer['fid_sampler']}, "
                     f"{drawn}N = {infer['fid_samples']}, {infer['fid_backbone']} features)")
    return lines or ["No FID measured for this checkpoint yet (train with --fid_samples > 0, or run image_gen/infer.sh)."]


def describe_image_checkpoint(about, path, results_dir):
    config = about["model_config"]
    kind = f"class-conditional ({config['num_classes']} classes)" if config["num_classes"] else "unconditional"
    kind = f"{MODEL_KINDS[about['kind']]}, {kind}"
    lines = [f"Checkpoint `{path}`: {dataset_title(about['dataset'])}, {kind}, base channels "
             f"{config['base_channels']}, {about['position']}."] + image_scores(about, path, results_dir)
    st.markdown("\n".join(f"- {line}" for line in lines))


def draw_images(diffusion, classes, per_class, sampler, steps, seed, guidance):
    """(images in [0, 1], seconds of sampling): `per_class` of each class in `classes` (None = the null
    class) for a conditional model, `per_class` images in all for an unconditional one."""
    start = time.perf_counter()
    settings = SamplerSettings(sampler, steps, 0.0, guidance, seed)
    if diffusion.num_classes:
        samples = diffusion.sample_classes(classes, per_class, settings)
    else:
        samples = diffusion.sample(per_class, settings)
    return to_unit_range(samples), time.perf_counter() - start


def warm_up(diffusion, dataset):
    """Draw one DDIM step for a small and a large batch and make a grid and PNGs, then drop them. Otherwise
    the first click pays for matplotlib's import and font set-up and the first oneDNN kernels (measured in
    the browser: 16 digits on screen 4.75 s after the first click, 2.7 s after later ones) and, with
    --compile, for compiling: in fp32 torch compiles one graph for batches of 2-15 and one for 16 or more."""
    classes = [0] if diffusion.num_classes else None
    for count in (1, 8) if diffusion.num_classes else (2, 16):  # a guided pass doubles the batch
        images, _ = draw_images(diffusion, classes, count, "ddim", 1, 0, DEFAULT_GUIDANCE_SCALE)
    image_files(images, dataset, classes, count, "warm-up")


def image_files(images, dataset, classes, per_class, title):
    """(grid PNG, ZIP of one PNG per image) as image_gen's infer writes them: a grid with one labelled row
    per class (a plain grid for an unconditional model) and files named like infer's samples/."""
    if classes is None:
        names = [f"sample_{i:03d}" for i in range(len(images))]
    else:
        names = [f"{'unconditional' if c is None else class_slug(dataset, c)}_{i:03d}"
                 for c in classes for i in range(per_class)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if classes is None:
            save_grid(images, tmp / "grid.png")
        else:
            row_names = ["unconditional" if c is None else class_names(dataset)[c] for c in classes]
            save_class_grid(images, row_names, tmp / "grid.png", title=title)
        save_individual(images, tmp / "samples", names)
        singles = io.BytesIO()
        with zipfile.ZipFile(singles, "w") as archive:
            for name in names:
                archive.write(tmp / "samples" / f"{name}.png", f"{name}.png")
        return (tmp / "grid.png").read_bytes(), singles.getvalue()


def image_controls(diffusion, dataset, default_guidance, kind):
    """The sampling settings chosen in the page: (classes or None, per_class, sampler, steps, seed, guidance).
    A GAN draws in one pass: no sampler, steps or guidance, and a conditional one has no null class."""
    classes, guidance, sampler, steps = None, 0.0, SamplerSettings.sampler, SamplerSettings.steps
    ddpm = kind == "ddpm"
    if diffusion.num_classes:
        labels = {name: c for c, name in enumerate(class_names(dataset))}
        if ddpm:
            labels["unconditional (no class)"] = None
        chosen = st.multiselect("Classes, one grid row each", list(labels),
                                default=list(labels)[:diffusion.num_classes], key="classes")
        classes = [labels[name] for name in chosen]
        if ddpm:
            guidance = st.slider("Classifier-free guidance w (0: the plain conditional model)", 0.0, 5.0,
                                 float(default_guidance), 0.5, key="guidance")
    if ddpm:
        choices = ["dpm++2m", "ddim", "ddpm"]
        sampler = st.radio("Sampler", choices, index=choices.index(sampler), key="sampler", horizontal=True,
                           format_func=lambda s: {"ddim": "DDIM", "dpm++2m": "DPM-Solver++(2M)",
                                                  "ddpm": "DDPM (all 1000 steps: slow)"}[s])
    left, middle, right = st.columns(3)
    if ddpm:
        steps = left.number_input("Steps (DPM-Solver++, DDIM)", 1, diffusion.num_timesteps, steps, key="steps",
                                  disabled=sampler == "ddpm")
    else:
        left.caption("GAN: one generator pass per image")
    seed = middle.number_input("Seed", 0, 2**31 - 1, 0, key="seed")
    per_class = right.number_input("Images per class" if diffusion.num_classes else "Images", 1, MAX_IMAGES,
                                   2 if diffusion.num_classes else 16, key="count")
    return classes, int(per_class), sampler, int(steps), int(seed), guidance


def image_tab(args):
    loaded, problem = open_checkpoint(load_image_checkpoint, args.image_checkpoint, args.device,
                                      "image_gen/train.sh", args.precision, args.compile)
    if problem:
        st.warning(problem)
        return
    about, diffusion = loaded
    describe_image_checkpoint(about, args.image_checkpoint, args.image_results)
    if about["precision"] == "bf16":
        st.caption("Sampling in bf16 (this CPU has bfloat16 instructions: about 1.7x faster). The digits differ "
                   "from infer's fp32 ones by well under one grey level on average; `--precision fp32 "
                   "--no-compile` draws exactly infer's.")
    if about["compiled"]:
        st.caption("The U-Net is compiled (torch.compile, once when the checkpoint loaded): about 1.6x faster "
                   "sampling. In fp32 its digits differ from eager ones by at most one grey level; `--no-compile` "
                   "turns it off.")
    elif about["compile_error"]:
        st.caption(f"torch.compile failed here ({about['compile_error']}), so the digits are sampled without it.")
    digits_panel(diffusion, about["dataset"], about["guidance"], about["kind"])


@st.fragment
def digits_panel(diffusion, dataset, default_guidance, kind):
    """Controls, Generate and the result. A fragment: a click here reruns only this panel, not the whole
    page with its audio tab, so the grid reaches the screen sooner (main's guard does not run then, hence
    its own)."""
    with errors_as_messages():
        controls, output = st.columns([2, 3], gap="large")
        with controls:
            settings = image_controls(diffusion, dataset, default_guidance, kind)
            clicked = st.button("Generate", type="primary", key="generate")
        with output:
            if clicked:
                generate(diffusion, dataset, *settings)
            show_images(st.session_state.get("images"))


def generate(diffusion, dataset, classes, per_class, sampler, steps, seed, guidance):
    """Check the count, then draw, save and keep the images in the session; a message when they are too many."""
    count = per_class * (len(classes) if classes is not None else 1)
    if classes == []:
        st.error("Choose at least one class.")
        return
    if count > MAX_IMAGES:
        st.error(f"{count} images asked ({per_class} x {len(classes)} classes): the limit is {MAX_IMAGES} per "
                 f"click. Choose fewer classes or fewer images per class.")
        return
    guided = classes is not None and classes != [None]
    name = diffusion.name(SamplerSettings(sampler, steps, 0.0, guidance, seed), guided)
    with st.spinner(f"Sampling {count} images with {name} ..."):
        images, seconds = draw_images(diffusion, classes, per_class, sampler, steps, seed, guidance)
        grid, singles = image_files(images, dataset, classes, per_class,
                                    f"{dataset_title(dataset)}, {name}, seed {seed}")
    st.session_state["images"] = Images(grid, singles, count, seconds, name)


def show_images(shown):
    if not shown:
        return
    st.image(shown.grid_png, caption=f"{shown.count} images, {shown.sampler}: sampled in {shown.seconds:.2f} s")
    left, right = st.columns(2)
    left.download_button("Download the grid (PNG)", shown.grid_png, "grid.png", "image/png", key="download_grid",
                         on_click="ignore")
    right.download_button(f"Download the {shown.count} single PNGs (ZIP)", shown.singles_zip, "samples.zip",
                          "application/zip", key="download_singles", on_click="ignore")
