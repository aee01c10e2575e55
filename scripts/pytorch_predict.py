#!/usr/bin/env python3
"""PyTorch's side of `segtrain predict` on a folder (issue #19): the whole process, timed by the
caller, doing what `segtrain predict --mask` does for each image.

For every .png/.jpg/.jpeg of --input (sorted): decode with Pillow (RGB), resize to --image-size
(bilinear) when the image has another size, normalise ((x/255 - mean) / std per channel), forward
in batches of --batch-size under torch.inference_mode() in eval mode, sigmoid, threshold at 0.5,
resize the mask back to the image's size (nearest) and write IMAGE_mask.png (0/255) with Pillow.

The model is the one scripts/pytorch_baseline.py trains: the default segtrain UNet, or with
--encoder NAME (--arch deeplabv3plus) segmentation_models_pytorch's model. Its weights are random
(seed 0): the time of a forward pass does not depend on the values of the weights.

Needs torch and Pillow (pip install torch pillow). Run e.g.:
    python3 scripts/pytorch_predict.py --input DIR --output OUT --image-size 128 --batch-size 8 \
        --threads 2
It prints one line: images, seconds from the first read to the last write, and img/s.
"""
import argparse
import os
import time

import numpy as np
import torch
from PIL import Image

from pytorch_baseline import UNet, smp_unet


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--encoder", default=None)
    p.add_argument("--arch", default="unet", choices=["unet", "deeplabv3plus"])
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.set_num_interop_threads(1)
    torch.manual_seed(0)
    model = smp_unet(a.encoder, a.arch) if a.encoder else UNet()
    fmt = torch.channels_last if a.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).eval()
    mean = np.array([0.485, 0.456, 0.406], dtype=np.float32) if a.encoder else np.zeros(3, np.float32)
    std = np.array([0.229, 0.224, 0.225], dtype=np.float32) if a.encoder else np.ones(3, np.float32)
    os.makedirs(a.output, exist_ok=True)
    files = sorted(f for f in os.listdir(a.input) if f.lower().endswith((".png", ".jpg", ".jpeg")))
    s = a.image_size
    start = time.perf_counter()
    with torch.inference_mode():
        for k in range(0, len(files), a.batch_size):
            names = files[k:k + a.batch_size]
            images = [Image.open(os.path.join(a.input, n)).convert("RGB") for n in names]
            sized = [im if im.size == (s, s) else im.resize((s, s), Image.BILINEAR) for im in images]
            x = np.stack([(np.asarray(im, dtype=np.float32) / 255 - mean) / std for im in sized])
            x = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=fmt)
            masks = (torch.sigmoid(model(x)) >= 0.5).to(torch.uint8).mul_(255).numpy()
            for name, im, m in zip(names, images, masks):
                out = Image.fromarray(m[0])
                if out.size != im.size:
                    out = out.resize(im.size, Image.NEAREST)
                out.save(os.path.join(a.output, os.path.splitext(name)[0] + "_mask.png"))
    elapsed = time.perf_counter() - start
    print(f"pytorch predict: {len(files)} images in {elapsed:.2f} s, {len(files) / elapsed:.2f} img/s")


if __name__ == "__main__":
    main()
