"""Coverage checks beside FID: does a model draw every class, vary within each, and make new images rather
than copies of training ones? Measured on the same N samples FID scores, with the first N test images (never
trained on) as the reference a good model should resemble.

    class histogram   the classifier's predicted class for each sample, per asked class (a confusion matrix)
    diversity         mean pairwise pixel distance between samples of one class, over the same for the real
                      test digits of that class (all of them, up to 1,000): about 1 for a model that covers
                      the class, near 0 for one collapsed onto a few modes
    memorisation      each sample's pixel distance to its nearest training image, beside the same distance
                      for real test images: a model that copies training digits shows much smaller ones
"""
from __future__ import annotations

import torch

from .data import load_images

COPY_QUANTILE = 0.01  # "copy-close": as near to a training image as the nearest 1% of real test digits


def nearest_distances(queries, references, chunk=256):
    """L2 distance of each query (n, ...) to its nearest reference (m, ...), pixels in [0, 1]: (n,)."""
    refs = references.flatten(1).float() / 255
    out = []
    for start in range(0, len(queries), chunk):
        q = queries[start:start + chunk].flatten(1).float() / 255
        out.append(torch.cdist(q, refs).min(dim=1).values)
    return torch.cat(out)


def mean_pairwise_distance(images):
    """Mean L2 distance between distinct pairs of images (n, ...) in [0, 1] pixels; None for fewer than two."""
    if len(images) < 2:
        return None
    flat = images.flatten(1).float() / 255
    d = torch.cdist(flat, flat)
    return float(d.sum() / (len(flat) * (len(flat) - 1)))


def diversity_ratio(generated, real, max_real=1000):
    """mean_pairwise_distance of `generated` over that of (the first max_real of) `real`; None when either
    has fewer than two images or the real ones do not vary."""
    ours, theirs = mean_pairwise_distance(generated), mean_pairwise_distance(real[:max_real])
    return ours / theirs if ours is not None and theirs else None


def quantiles(values):
    q = torch.quantile(values, torch.tensor([0.0, 0.01, 0.05, 0.5]))
    return {"min": float(q[0]), "p1": float(q[1]), "p5": float(q[2]), "median": float(q[3])}


def coverage_report(images, labels, dataset, data_dir, classifier=None):
    """The checks above for generated uint8 images (N, 1, 28, 28) drawn for `labels` (N,) (None: no
    classes asked), against the data set's training images and its first N test images."""
    train_images = load_images(dataset, data_dir, train=True)[0]
    test_images, test_labels = load_images(dataset, data_dir, train=False)
    real = test_images[:len(images)].unsqueeze(1)
    # one pass over the training set for both sets of queries: its float copy is the costly part
    generated_nn, real_nn = nearest_distances(torch.cat([images.cpu(), real]), train_images).split(len(images))
    threshold = float(torch.quantile(real_nn, COPY_QUANTILE))
    report = {
        "nearest_training_distance": {"generated": quantiles(generated_nn), "real_test": quantiles(real_nn),
                                      "what": "L2 pixel distance (pixels in [0, 1]) to the nearest of the "
                                              f"{len(train_images)} training images"},
        "copy_close_share": float((generated_nn <= threshold).float().mean()),
        "copy_close_threshold": threshold,
    }
    if labels is not None:
        labels = labels.cpu()
        classes = sorted(set(labels.tolist()))
        report["diversity_ratio"] = {int(c): diversity_ratio(images[labels == c].cpu(), test_images[test_labels == c])
                                     for c in classes}
        if classifier is not None:
            predicted = classifier.predict(images).cpu()
            num_classes = int(max(labels.max(), predicted.max())) + 1
            confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
            confusion.index_put_((labels, predicted), torch.ones_like(labels), accumulate=True)
            report["class_histogram"] = confusion.sum(dim=0).tolist()
            report["confusion"] = {int(c): confusion[c].tolist() for c in classes}
    return report


def describe_coverage(report):
    """Two lines for the console."""
    nn, lines = report["nearest_training_distance"], []
    lines.append(f"Nearest training image (L2, pixels in [0, 1]): median {nn['generated']['median']:.2f} for samples, "
                 f"{nn['real_test']['median']:.2f} for real test images; {report['copy_close_share']:.1%} of samples "
                 f"are as near to one as the nearest 1% of test images (<= {report['copy_close_threshold']:.2f})")
    if "diversity_ratio" in report:
        ratios = [r for r in report["diversity_ratio"].values() if r is not None] or [float("nan")]
        hist = report.get("class_histogram")
        lines.append(f"Within-class diversity against real test images: {min(ratios):.2f}-{max(ratios):.2f} "
                     f"(1 = as varied as real)" + (f"; predicted classes {hist}" if hist else ""))
    return "\n".join(lines)
