#!/usr/bin/env python3
"""Runs a model exported by `segtrain export` with onnxruntime and compares it with `segtrain predict`.

    python3 scripts/onnx-check.py --logits-model L.onnx --probabilities-model P.onnx \
        --images DIR --predicted DIR [--batches 1,3]

DIR holds PNG images of the size `segtrain predict` ran the model at (its state.json's image size,
so predict's resize is the identity); --predicted holds what `segtrain predict --mask --logits`
wrote for them (IMAGE_mask.png, IMAGE_logits.npy). The images are normalised from the ONNX file's
own metadata_props (mean, std; the contract in README "Export to ONNX") and run in batches of each
size given (dynamic batch). Checks, failing with exit code 1 and one line each:
  - logits: max |onnx - segtrain| <= 1e-4 * max |segtrain| over each image (see TOLERANCE);
  - the same logits whatever the batch (within the same bound);
  - probabilities model = sigmoid/softmax of the logits model (within 1e-5 absolute);
  - masks from the probabilities model (p >= 0.5, or the most probable class) equal predict's
    masks on at least 99.9 % of the pixels of every image.
onnxruntime missing is an error (exit 2), never a pass: the test command installs it.
Prints one JSON line with what it measured.
"""

import argparse
import json
import os
import struct
import sys
import zlib

import numpy as np

try:
    import onnxruntime as ort
except ImportError as error:  # the test must fail, not skip
    print(f"onnx-check: onnxruntime is not installed ({error}); run scripts/install-test-python.sh", file=sys.stderr)
    sys.exit(2)

# TOLERANCE. Both engines compute each output in float32 as sums of products; a KxK convolution
# over C input channels adds L = K*K*C terms, and two summation orders (segtrain's Winograd/GEMM
# blocking, onnxruntime's MLAS) differ by at most ~L * u * sum|terms| (u = 2^-24 = 6e-8) and
# typically ~sqrt(L) * u * sum|terms|. The widest sums here: 9 * 128 for the tiny UNets, 9 * 768
# (resnet18's first decoder block: 512 + 256 channels) and 1280 (mobilenet_v2's last pointwise
# conv) for the encoders, so sqrt(L) * u <= 5e-6, and sum|terms| is a few times |output| (weights
# of both signs): ~1e-5 of a layer's scale per layer at worst. BatchNorm and GroupNorm rescale, so
# the relative errors of 10-60 layers add (as a random walk, ~sqrt(layers) times) rather than
# multiply: a few 1e-5 of the logits' scale at most. The issue's 1e-4, relative to the largest
# logit of the image, keeps that margin (measured: 1e-6 to 4e-6); per element a relative bound
# would mean nothing for logits near 0.
RELATIVE = 1e-4
MASK_AGREEMENT = 0.999


def fail(message):
    print(f"onnx-check: {message}", file=sys.stderr)
    sys.exit(1)


def metadata(session):
    props = session.get_modelmeta().custom_metadata_map
    mean = std = None
    if "mean" in props:
        mean = np.array([float(v) for v in props["mean"].split(",")], dtype=np.float32)
        std = np.array([float(v) for v in props["std"].split(",")], dtype=np.float32)
    return props, mean, std


def read_png(path):
    """An 8-bit, non-interlaced PNG (what segtrain synth and predict write) as (H, W, C) uint8, read
    here rather than with Pillow, which the test command does not install."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        fail(f"{path}: not a PNG")
    pos, chunks, header = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            chunks.append(body)
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = header
    channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(colour)
    if depth != 8 or channels is None or interlace != 0:
        fail(f"{path}: bit depth {depth}, colour type {colour}, interlace {interlace}: not read here")
    raw = zlib.decompress(b"".join(chunks))
    stride = width * channels
    out = np.zeros((height, stride), dtype=np.uint8)
    previous = np.zeros(stride, dtype=np.int32)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = np.frombuffer(raw, dtype=np.uint8, count=stride, offset=y * (stride + 1) + 1).astype(np.int32)
        if kind == 0:
            row = line
        elif kind == 2:
            row = (line + previous) & 255
        else:  # Sub, Average, Paeth: each byte depends on the one to its left
            row = np.zeros(stride, dtype=np.int32)
            for i in range(stride):
                left = row[i - channels] if i >= channels else 0
                up, corner = previous[i], (previous[i - channels] if i >= channels else 0)
                if kind == 1:
                    predictor = left
                elif kind == 3:
                    predictor = (left + up) // 2
                elif kind == 4:
                    p = left + up - corner
                    pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                    predictor = left if pa <= pb and pa <= pc else (up if pb <= pc else corner)
                else:
                    fail(f"{path}: unknown PNG filter {kind}")
                row[i] = (line[i] + predictor) & 255
        out[y] = row
        previous = row
    return out.reshape(height, width, channels)


def normalise(path, channels, mean, std):
    """As segtrain's Preprocess.normalize, in float32: v / 255, then (x - mean) / std."""
    x = read_png(path)
    if x.shape[2] != channels:
        fail(f"{path}: {x.shape[2]} channels for a model of {channels} (give images of the model's channels)")
    x = x.astype(np.float32) / np.float32(255)
    if mean is not None:
        x = (x - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def run(session, batch, size):
    outputs = []
    for start in range(0, len(batch), size):
        outputs.append(session.run(None, {"image": np.stack(batch[start:start + size])})[0])
    return np.concatenate(outputs)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--logits-model", required=True)
    parser.add_argument("--probabilities-model", required=True)
    parser.add_argument("--images", required=True)
    parser.add_argument("--predicted", required=True)
    parser.add_argument("--batches", default="1,3")
    args = parser.parse_args()

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    logits_session = ort.InferenceSession(args.logits_model, options, providers=["CPUExecutionProvider"])
    prob_session = ort.InferenceSession(args.probabilities_model, options, providers=["CPUExecutionProvider"])
    props, mean, std = metadata(logits_session)
    inputs = logits_session.get_inputs()
    if [i.name for i in inputs] != ["image"] or logits_session.get_outputs()[0].name != "logits":
        fail(f"{args.logits_model}: inputs {[i.name for i in inputs]}, outputs "
             f"{[o.name for o in logits_session.get_outputs()]}; expected image -> logits")
    if prob_session.get_outputs()[0].name != "probabilities":
        fail(f"{args.probabilities_model}: output {prob_session.get_outputs()[0].name}, expected probabilities")
    channels = inputs[0].shape[1]
    classes = int(props["classes"])

    stems = sorted(os.path.splitext(f)[0] for f in os.listdir(args.images) if f.endswith(".png"))
    if not stems:
        fail(f"{args.images}: no PNG images")
    batch = [normalise(os.path.join(args.images, s + ".png"), channels, mean, std) for s in stems]
    reference = [np.load(os.path.join(args.predicted, s + "_logits.npy")) for s in stems]

    measured = {"images": len(stems), "size": list(batch[0].shape[1:]), "classes": classes,
                "normalised": mean is not None}
    results = {}
    for size in [int(b) for b in args.batches.split(",")]:
        results[size] = run(logits_session, batch, size)
    worst = 0.0
    for size, logits in results.items():
        if logits.shape != (len(stems), classes) + batch[0].shape[1:]:
            fail(f"batch {size}: logits of shape {logits.shape}")
        for n, stem in enumerate(stems):
            ref = reference[n]
            if ref.shape != logits[n].shape:
                fail(f"{stem}: segtrain's logits have shape {ref.shape}, onnxruntime's {logits[n].shape}")
            scale = float(np.abs(ref).max())
            error = float(np.abs(logits[n] - ref).max()) / max(scale, 1e-30)
            worst = max(worst, error)
            if not error <= RELATIVE:
                fail(f"{stem} (batch {size}): max |onnx - segtrain| is {error:.3g} of the largest logit {scale:.4g} "
                     f"(limit {RELATIVE})")
    sizes = sorted(results)
    for size in sizes[1:]:
        spread = float(np.abs(results[size] - results[sizes[0]]).max() / max(np.abs(results[sizes[0]]).max(), 1e-30))
        if not spread <= RELATIVE:
            fail(f"batch {size} differs from batch {sizes[0]} by {spread:.3g} of the largest logit")
    measured["max_relative_logit_error"] = worst

    logits = results[sizes[0]]
    probabilities = run(prob_session, batch, sizes[-1])
    if classes == 1:
        expected = 1 / (1 + np.exp(-logits.astype(np.float64)))
        masks = (probabilities[:, 0] >= 0.5).astype(np.uint8) * 255
    else:
        shifted = np.exp(logits.astype(np.float64) - logits.max(axis=1, keepdims=True))
        expected = shifted / shifted.sum(axis=1, keepdims=True)
        masks = probabilities.argmax(axis=1).astype(np.uint8)
    gap = float(np.abs(probabilities - expected).max())
    if not gap <= 1e-5:
        fail(f"probabilities differ from the activation of the logits by {gap:.3g}")
    measured["max_probability_gap"] = gap

    worst_agreement = 1.0
    for n, stem in enumerate(stems):
        predicted = read_png(os.path.join(args.predicted, stem + "_mask.png"))[:, :, 0]
        if predicted.shape != masks[n].shape:
            fail(f"{stem}: predict's mask is {predicted.shape}, onnxruntime's {masks[n].shape}")
        agreement = float((predicted == masks[n]).mean())
        worst_agreement = min(worst_agreement, agreement)
        if not agreement >= MASK_AGREEMENT:
            fail(f"{stem}: masks agree on {100 * agreement:.3f} % of the pixels (at least {100 * MASK_AGREEMENT} % needed)")
    measured["min_mask_agreement"] = worst_agreement
    measured["foreground_fraction"] = float((masks != 0).mean())
    print(json.dumps(measured))


if __name__ == "__main__":
    main()
