#!/usr/bin/env python3
"""Convert an ImageNet classification checkpoint into the safetensors file that
`segtrain train --encoder E --encoder-weights FILE` reads.

Input: a torchvision checkpoint (.pth: a state dict, or a pickled model) of resnet18, resnet34,
resnet50 or mobilenet_v2, or a timm checkpoint of a ResNet (timm's ResNets use torchvision's names;
a training checkpoint's "state_dict", "state_dict_ema" or "model" entry is taken, "module."
prefixes of DistributedDataParallel are dropped). Output: the same tensors under torchvision's
names (conv1, bn1, layer1.0.conv1, ... / features.N...), float32, BatchNorm counters int64; the
classifier (fc / classifier) is kept and segtrain ignores it.

The names are checked against torchvision's own model of --encoder (randomly initialised, nothing
is downloaded). Needs torch, torchvision and safetensors:

    pip install torch torchvision safetensors
    python3 scripts/convert-weights.py resnet34-b627a593.pth resnet34.safetensors --encoder resnet34

Pretrained weights cannot be downloaded on every machine; fetch them where you can and copy them.
"""

import argparse
import os
import sys

ENCODERS = ["resnet18", "resnet34", "resnet50", "mobilenet_v2"]


def state_dict_of(obj, torch):
    if isinstance(obj, torch.nn.Module):
        return obj.state_dict()
    if isinstance(obj, dict):
        for key in ("state_dict_ema", "state_dict", "model"):
            if key in obj and isinstance(obj[key], (dict, torch.nn.Module)):
                return state_dict_of(obj[key], torch)
        return obj
    sys.exit(f"convert-weights: not a state dict or model: {type(obj).__name__}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="a .pth/.pt (torchvision or timm) checkpoint")
    parser.add_argument("output", help="the .safetensors file to write")
    parser.add_argument("--encoder", required=True, choices=ENCODERS)
    args = parser.parse_args()
    try:
        import torch
        from safetensors.torch import save_file
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from torchvision_cpu import import_torchvision
        torchvision = import_torchvision()
    except ImportError as error:
        sys.exit(f"convert-weights: {error.name} is missing: pip install torch torchvision safetensors")

    state = state_dict_of(torch.load(args.input, map_location="cpu", weights_only=False), torch)
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    if args.encoder == "mobilenet_v2" and any(k.startswith(("conv_stem.", "blocks.")) for k in state):
        sys.exit("convert-weights: this is timm's MobileNetV2 naming (conv_stem, blocks...), which differs from "
                 "torchvision's; use torchvision's mobilenet_v2 weights")
    reference = getattr(torchvision.models, args.encoder)(weights=None).state_dict()
    missing = [k for k in reference if k not in state]
    extra = [k for k in state if k not in reference]
    if missing or extra:
        sys.exit(f"convert-weights: {args.input} is not a torchvision {args.encoder} checkpoint: "
                 f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
                 f"unexpected {extra[:3]}{'...' if len(extra) > 3 else ''}")
    for k, v in reference.items():
        if tuple(state[k].shape) != tuple(v.shape):
            sys.exit(f"convert-weights: {k} has shape {tuple(state[k].shape)}, torchvision's {args.encoder} has {tuple(v.shape)}")
    tensors = {k: (v.to(torch.int64) if k.endswith("num_batches_tracked") else v.to(torch.float32)).contiguous()
               for k, v in state.items()}
    save_file(tensors, args.output, metadata={"format": "pt", "encoder": args.encoder})
    print(f"wrote {len(tensors)} tensors of torchvision's {args.encoder} to {args.output}")


if __name__ == "__main__":
    main()
