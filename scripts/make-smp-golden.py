#!/usr/bin/env python3
"""Golden files for segtrain's encoder UNets and DeepLabV3+ against segmentation_models_pytorch (#16, #17).

Needs torch, segmentation-models-pytorch 0.6 and safetensors (pip install torch
segmentation-models-pytorch safetensors); the Swift tests (SMPGoldenTests) only read what this writes.
Run: python3 scripts/make-smp-golden.py [--models unet-resnet18 ...]  (a few minutes on 2 cores)
(torchvision's compiled operators need not load: see import_smp.)

For each model it builds smp.Unet(encoder, encoder_weights=None, classes=2) ("unet-<encoder>") or
smp.DeepLabV3Plus(encoder, encoder_weights=None, encoder_output_stride=16 or 8, classes=2,
decoder_aspp_dropout=0) ("deeplabv3plus-<encoder>[-os8]"; dropout is off so that a training
forward is deterministic, and its probability is no tensor) and writes to Tests/SegModelTests/Golden/:
  smp-<model>-state.txt   every state-dict entry in order: name, dtype, shape
  smp-<model>.safetensors the reference values below (small: no weights, few full gradients)

The weights are not stored (resnet18's alone are 57 MB): both sides set them from one rule.
  v(name, i), i = 0, 1, ...: SplitMix64's output function on z = FNV-1a-64(name) + (i + 1) * 0x9E3779B97F4A7C15
  (mod 2^64); k = top 24 bits; v = (k - 2^23) / 2^23, a float32 in [-1, 1) exactly.
  conv weight (4-D)        v * float32(sqrt(6 / fan_in)), fan_in = Cin k^2 (per group)
  BN weight / bias         1 + 0.25 v / 0.1 v        head bias 0.1 v
  running_mean / _var      0.1 v / 0.75 + 0.25 v     num_batches_tracked 0
Every product and sum is one float32 operation, so both sides get bitwise the same weights. Images
are v(input rule, i) in NCHW order. The reference values are smp's in float64, stored as float32:
  forward, 2 x 3 x 64 x 64 (metadata forward_input): eval.logits in model.eval(); then in
    model.train() train.logits and after.<name>, every buffer after that one training forward
    (running statistics with momentum 0.1 and unbiased variance, num_batches_tracked = 1).
  gradients, 1 x 3 x 32 x 32 (metadata gradient_input), in model.eval(): of the projection
    L = sum(r * logits), r = v("projection", i) (so dL/dlogits = r exactly, no loss function
    involved): grad.<name> for every 1-D parameter and every conv weight of at most 10,000 values,
    and for every parameter probe.<name> = sum_i grad_i * v("probe." + name, i).
  rule.check: the first 16 values of the first conv weight (a rule mismatch shows as such).

Why the gradients are compared in evaluation mode on a small image: the Swift test's bound (the
float32 rounding model, see SMPGoldenTests) holds for a well-conditioned problem only. A ReLU, ReLU6
or max-pool decision within rounding of its threshold flips between two float32 implementations and
moves a gradient by a whole term. With about 10^6 such decisions (64 x 64, batch 2) some always sit
that close: smp's own float32 training-mode gradients miss its float64 ones by 40 to 2,500 times
the bound on most inputs (resnet50: 40 of 40), and segtrain's flip at other places than smp's
(resnet18 passes under some OpenBLAS kernels and fails under others). Smaller training batches make
BatchNorm itself ill-conditioned (at 32 x 32 the 1/32 layer has 1 x 1 pixels: 2-4 values per
channel; misses of 60-1,200 times the bound). In evaluation mode at 32 x 32, batch 1, there are
about 20 times fewer decisions and no batch statistics: smp's float32 is within the bound on 31 of
32 inputs tried. Training-mode values are compared in the forward (logits and running statistics),
which a flip does not move (the function is continuous there); the training-mode backward is proved
by the finite-difference tests (EncoderUNetGradientTests).

The reference problem is certified well-conditioned by smp itself: a group of values is stored and
compared only where smp's own float32 run is within half the test's bound of float64 (CERTIFY; the
other half is segtrain's, a second float32 implementation; metadata certified and
smp_float32_error_over_bound). The forward has no kinks, so its input is "input" and a group that
misses is left out: mobilenet_v2's logits (evaluation 0.79 of the bound, training 1.1-1.5 on 8 of 8
inputs, where the ResNets stay below 0.32; segtrain's are 0.55-1.15 under the OpenBLAS kernel
families; a conditioning the chain bound does not model). The gradient input is the first of "input",
"input.1", ... (up to --tries) within CERTIFY.
"""
import argparse
import math
import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file


def import_smp():
    """segmentation_models_pytorch, importing it without torchvision's compiled operators when they
    do not load (PyPI's torchvision built for another torch than the CPU wheel here): smp's models
    do not use them, only torchvision's import registers them."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from torchvision_cpu import import_torchvision
    import_torchvision()
    import segmentation_models_pytorch
    return segmentation_models_pytorch


smp = import_smp()

MASK = (1 << 64) - 1
FULL_GRADIENT_LIMIT = 10_000
# (side, batch) of the forward comparison and of the gradient comparison (see the docstring).
FORWARD_SHAPE = (64, 2)
GRADIENT_SHAPE = (32, 1)
# A group is certified where smp's float32 error is within this fraction of the bound: the other
# half is left for segtrain's own rounding, a second float32 implementation tested against the same
# float64 reference.
CERTIFY = 0.5


def fnv1a(name: str) -> int:
    h = 0xCBF29CE484222325
    for b in name.encode():
        h = ((h ^ b) * 0x100000001B3) & MASK
    return h


def rule(name: str, count: int) -> np.ndarray:
    """v(name, i) for i < count, float32 in [-1, 1)."""
    i = np.arange(1, count + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = np.uint64(fnv1a(name)) + i * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    k = (z >> np.uint64(40)).astype(np.int64)
    return (k - (1 << 23)).astype(np.float32) / np.float32(1 << 23)


def rule_value(name: str, tensor: torch.Tensor) -> torch.Tensor:
    shape = tuple(tensor.shape)
    if name.endswith("num_batches_tracked"):
        return torch.zeros_like(tensor)
    v = rule(name, tensor.numel())
    if name.endswith("running_mean"):
        out = np.float32(0.1) * v
    elif name.endswith("running_var"):
        out = np.float32(0.75) + np.float32(0.25) * v
    elif len(shape) == 4:
        fan_in = shape[1] * shape[2] * shape[3]
        out = v * np.float32(np.sqrt(6.0 / fan_in))
    elif name.endswith(".weight"):
        out = np.float32(1) + np.float32(0.25) * v
    elif name.endswith(".bias"):
        out = np.float32(0.1) * v
    else:
        raise ValueError(f"no rule for {name}")
    return torch.from_numpy(out.astype(np.float32).reshape(shape))


def gamma(n: int) -> float:
    """SegEngineTestSupport/RoundingModel.swift's gamma(n): min(n u / (1 - n u), Higham & Mary's bound)."""
    u = 2.0 ** -24
    return min(n * u / (1 - n * u), math.expm1(9 * math.sqrt(n) * u + n * u * u / (1 - u)))


def chains(state: dict, pixels: int) -> tuple:
    """Roundings along the forward chain (sum of Cin k^2 over the convolutions) and the backward one
    (that, plus sum of Cout k^2, plus the batch's pixels for a weight gradient), as the Swift test."""
    forward = sum(t.shape[1] * t.shape[2] * t.shape[3] for n, t in state.items() if t.dim() == 4)
    backward = sum(t.shape[0] * t.shape[2] * t.shape[3] for n, t in state.items() if t.dim() == 4)
    return forward, forward + backward + pixels


def smp_model(spec: str, classes: int) -> torch.nn.Module:
    """unet-<encoder> or deeplabv3plus-<encoder>[-os8], randomly initialised."""
    arch, rest = spec.split("-", 1)
    if arch == "unet":
        return smp.Unet(rest, encoder_weights=None, classes=classes)
    if arch == "deeplabv3plus":
        encoder, stride = (rest[:-4], 8) if rest.endswith("-os8") else (rest, 16)
        return smp.DeepLabV3Plus(encoder, encoder_weights=None, encoder_output_stride=stride, classes=classes,
                                 decoder_aspp_dropout=0.0)
    raise SystemExit(f"unknown model {spec}")


def smp_call(spec: str, classes: int) -> str:
    arch, rest = spec.split("-", 1)
    if arch == "unet":
        return f"smp.Unet('{rest}', encoder_weights=None, classes={classes})"
    encoder, stride = (rest[:-4], 8) if rest.endswith("-os8") else (rest, 16)
    return (f"smp.DeepLabV3Plus('{encoder}', encoder_weights=None, encoder_output_stride={stride}, "
            f"classes={classes}, decoder_aspp_dropout=0.0)")


def build(spec: str, classes: int, dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    model = smp_model(spec, classes)
    model.load_state_dict({name: rule_value(name, t) for name, t in model.state_dict().items()}, strict=True)
    return model.to(dtype)


def images(input_rule: str, batch: int, size: int, dtype) -> torch.Tensor:
    return torch.from_numpy(rule(input_rule, batch * 3 * size * size).reshape(batch, 3, size, size)).to(dtype)


def run_forward(spec: str, classes: int, size: int, batch: int, input_rule: str, dtype) -> dict:
    """eval.logits (model.eval()), then in model.train() train.logits and after.<name> for every
    buffer after that one training forward."""
    model = build(spec, classes, dtype)
    x = images(input_rule, batch, size, dtype)
    out = {}
    model.eval()
    with torch.no_grad():
        out["eval.logits"] = model(x).clone()
        model.train()
        out["train.logits"] = model(x).clone()
    for name, b in model.named_buffers():
        out[f"after.{name}"] = b.clone()
    return out


def run_gradients(spec: str, classes: int, size: int, batch: int, input_rule: str, dtype) -> dict:
    """grad.<name>: the gradients of L = sum(r * logits) in model.eval() (BatchNorm on its running
    statistics, as when fine-tuning with a frozen encoder)."""
    model = build(spec, classes, dtype).eval()
    logits = model(images(input_rule, batch, size, dtype))
    r = torch.from_numpy(rule("projection", logits.numel()).reshape(logits.shape)).to(dtype)
    (logits * r).sum().backward()
    return {f"grad.{name}": p.grad.detach().clone() for name, p in model.named_parameters()}


def worst_ratio(f32: dict, f64: dict, roundings: int) -> tuple:
    """The largest |float32 - float64| / ((gamma(n) + u) max |float64|) over the tensors (the Swift
    test's bound), and where."""
    worst = (0.0, "")
    for key, exact in f64.items():
        if exact.dtype == torch.int64:
            continue
        bound = (gamma(roundings) + 2.0 ** -24) * exact.abs().max().item()
        error = (f32[key].double() - exact).abs().max().item()
        ratio = error / bound if bound > 0 else (0.0 if error == 0 else math.inf)
        if ratio > worst[0]:
            worst = (ratio, key)
    return worst


def certified_input(what: str, spec: str, tries: int, run, roundings: int) -> tuple:
    """The first of "input", "input.1", ... whose float32 run is within the bound of the float64 one."""
    for attempt in range(tries):
        input_rule = "input" if attempt == 0 else f"input.{attempt}"
        exact, single = run(input_rule, torch.float64), run(input_rule, torch.float32)
        ratio, where = worst_ratio(single, exact, roundings)
        print(f"{spec} {what} {input_rule}: smp float32 against float64, worst error/bound {ratio:.3g} ({where})",
              flush=True)
        if ratio <= CERTIFY:
            return input_rule, exact, ratio
    raise SystemExit(f"{spec}: no input among {tries} keeps smp's float32 {what} within the rounding bound")


def make(spec: str, classes: int, folder: str, tries: int) -> None:
    torch.set_num_threads(1)
    state = smp_model(spec, classes).state_dict()
    with open(os.path.join(folder, f"smp-{spec}-state.txt"), "w") as f:
        f.write(f"# {smp_call(spec, classes)} state dict, smp {smp.__version__}: name dtype shape\n")
        for name, t in state.items():
            f.write(f"{name} {str(t.dtype).replace('torch.', '')} {list(t.shape)}\n")
    (fsize, fbatch), (gsize, gbatch) = FORWARD_SHAPE, GRADIENT_SHAPE
    forward, _ = chains(state, fbatch * fsize * fsize)
    _, backward = chains(state, gbatch * gsize * gsize)

    # The forward values have no kinks (the function is continuous), so a miss of the bound is a
    # matter of conditioning, not of an unlucky input: no search, each group certified on "input".
    forward_input = "input"
    exact = run_forward(spec, classes, fsize, fbatch, forward_input, torch.float64)
    single = run_forward(spec, classes, fsize, fbatch, forward_input, torch.float32)
    out, certified, forward_ratios = {}, [], []
    for group, prefix in [("eval", "eval.logits"), ("train", "train.logits"), ("buffers", "after.")]:
        part = {k: v for k, v in exact.items() if k.startswith(prefix)}
        ratio, where = worst_ratio(single, part, forward)
        print(f"{spec} {group} {forward_input}: smp float32 against float64, worst error/bound {ratio:.3g} ({where})",
              flush=True)
        forward_ratios.append(f"{group} {ratio:.3g}")
        if ratio <= CERTIFY:
            certified.append(group)
            out.update({k: v.to(torch.int64 if v.dtype == torch.int64 else torch.float32) for k, v in part.items()})
    gradient_input, gradients, gradient_ratio = certified_input(
        "gradients", spec, tries, lambda i, d: run_gradients(spec, classes, gsize, gbatch, i, d), backward)
    for key, g in gradients.items():
        name = key[len("grad."):]
        if g.dim() == 1 or g.numel() <= FULL_GRADIENT_LIMIT:
            out[key] = g.float()
        q = torch.from_numpy(rule(f"probe.{name}", g.numel()).astype(np.float64))
        out[f"probe.{name}"] = torch.tensor([float((g.flatten() * q).sum())], dtype=torch.float32)
    first_conv = next(name for name, t in state.items() if t.dim() == 4)
    out["rule.check"] = rule_value(first_conv, state[first_conv]).flatten()[:16].clone()
    metadata = {"model": spec, "encoder": spec.split("-")[1], "classes": str(classes), "smp": smp.__version__, "torch": torch.__version__,
                "reference": "float64", "loss": "projection",
                "forward_input": forward_input, "forward_size": str(fsize), "forward_batch": str(fbatch),
                "gradient_input": gradient_input, "gradient_size": str(gsize), "gradient_batch": str(gbatch),
                "certified": ",".join(certified + ["gradients"]),
                "smp_float32_error_over_bound": ", ".join(forward_ratios + [f"gradients {gradient_ratio:.3g}"])}
    path = os.path.join(folder, f"smp-{spec}.safetensors")
    save_file({k: v.contiguous() for k, v in out.items()}, path, metadata=metadata)
    print(f"{path}: {os.path.getsize(path)} bytes", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+",
                        default=["unet-resnet18", "unet-resnet34", "unet-resnet50", "unet-mobilenet_v2",
                                 "deeplabv3plus-resnet50", "deeplabv3plus-mobilenet_v2", "deeplabv3plus-resnet50-os8"])
    parser.add_argument("--classes", type=int, default=2)
    parser.add_argument("--tries", type=int, default=16, help="inputs to try per model (see make)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "Tests", "SegModelTests", "Golden"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for model in args.models:
        make(model, args.classes, args.out, args.tries)


if __name__ == "__main__":
    sys.exit(main())
