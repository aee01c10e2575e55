#!/usr/bin/env python3
"""PyTorch CPU baseline for segtrain.

Builds the same UNet that segtrain trains (in 3, classes 1, base 32, depth 4,
MaxPool after every encoder level, no bottleneck conv, bilinear x2 upsampling,
concat [skip, up], 3x3 head; 3,717,121 parameters) and times full training
steps (zero_grad, forward, BCEWithLogits loss, backward, Adam step) on random
data, the way segtrain measures itself: images/s, seconds/step, peak RSS. With --inference it
times forward passes in eval mode under torch.inference_mode() instead (segtrain bench --inference).

With --ddp N it runs N processes (torch.multiprocessing.spawn) that train the
model wrapped in DistributedDataParallel (gloo backend, rendezvous on
127.0.0.1 only); --batch-size is then the global batch, split evenly, each
process uses --threads threads, and rank 0 reports (its own peak RSS).

With --encoder NAME it trains segmentation_models_pytorch's Unet(NAME, encoder_weights=None,
classes=1) instead (with --arch deeplabv3plus its DeepLabV3Plus(NAME, encoder_weights=None,
classes=1) with smp's defaults: output stride 16, ASPP dropout 0.5; issue #17) (issue #16's comparison; needs segmentation-models-pytorch, which pulls
torchvision and timm). torchvision's compiled ops are not needed by smp's Unet: when the installed
torchvision's ops library does not match torch (a CPU torch wheel beside PyPI's CUDA torchvision),
its import fails on registering them, so this script skips that registration module
(scripts/torchvision_cpu.py).

Requires torch (pip install torch). Run e.g.:
    python3 scripts/pytorch_baseline.py --image-size 128 --batch-size 8 \
        --threads 2 --steps 5 --warmup 2 --json
    python3 scripts/pytorch_baseline.py --ddp 2 --threads 1 --image-size 128 \
        --batch-size 8 --steps 10 --warmup 3 --json
"""
import argparse
import json
import os
import resource
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F


def conv_pair(cin, c):
    return nn.Sequential(nn.Conv2d(cin, c, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(c, c, 3, padding=1), nn.ReLU())


class UNet(nn.Module):
    def __init__(self, in_channels=3, classes=1, base=32, depth=4):
        super().__init__()
        chans = [base * 2 ** i for i in range(depth)]  # 32, 64, 128, 256
        self.enc = nn.ModuleList()
        cin = in_channels
        for c in chans:
            self.enc.append(conv_pair(cin, c))
            cin = c
        # Decoder j = 0..depth-1 works on level L = depth-1-j; the tensor
        # coming from below has c_below channels (c_L at the deepest level).
        self.dec = nn.ModuleList()
        below = chans[-1]
        for L in reversed(range(depth)):
            self.dec.append(conv_pair(chans[L] + below, chans[L]))
            below = chans[L]
        self.head = nn.Conv2d(base, classes, 3, padding=1)

    def forward(self, x):
        skips = []
        for block in self.enc:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        for block, skip in zip(self.dec, reversed(skips)):
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            dh, dw = skip.shape[2] - x.shape[2], skip.shape[3] - x.shape[3]
            if dh or dw:
                x = F.pad(x, (0, dw, 0, dh))
            x = block(torch.cat([skip, x], dim=1))
        return self.head(x)


def smp_unet(encoder, arch="unet"):
    """smp.Unet(encoder, encoder_weights=None, classes=1), importing smp without torchvision's
    operator registrations (see the module docstring)."""
    from torchvision_cpu import import_torchvision
    import_torchvision()
    import segmentation_models_pytorch as smp
    if arch == "deeplabv3plus":
        return smp.DeepLabV3Plus(encoder, encoder_weights=None, classes=1)
    return smp.Unet(encoder, encoder_weights=None, classes=1)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--base-channels", type=int, default=32,
                   help="the UNet's first level width (segtrain's --base-channels)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--json", action="store_true")
    p.add_argument("--encoder", default=None, metavar="NAME",
                   help="train smp.Unet(NAME) (resnet18/34/50, mobilenet_v2) instead of segtrain's plain UNet")
    p.add_argument("--arch", default="unet", choices=["unet", "deeplabv3plus"],
                   help="with --encoder: smp.Unet or smp.DeepLabV3Plus")
    p.add_argument("--inference", action="store_true",
                   help="time forward passes in eval mode under torch.inference_mode() (and the sigmoid) "
                        "instead of training steps: segtrain bench --inference's counterpart (issue #19)")
    p.add_argument("--ddp", type=int, default=0, metavar="N",
                   help="run N DistributedDataParallel processes (gloo)")
    a = p.parse_args()
    if a.ddp:
        if a.ddp < 1 or a.batch_size % a.ddp:
            p.error("--batch-size must be divisible by --ddp N (N >= 1)")
        with socket.socket() as sock:  # free port on loopback
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                          GLOO_SOCKET_IFNAME="lo")
        mp.spawn(run, args=(a,), nprocs=a.ddp)
    else:
        run(0, a)


def run(rank, a):
    world = a.ddp or 1
    if a.ddp:
        dist.init_process_group("gloo", init_method="env://",
                                rank=rank, world_size=world)
    torch.set_num_threads(a.threads)
    torch.set_num_interop_threads(1)
    torch.manual_seed(a.seed)

    if a.encoder:
        model = smp_unet(a.encoder, a.arch)
        params = sum(t.numel() for t in model.parameters())
    else:
        model = UNet(base=a.base_channels)
        params = sum(t.numel() for t in model.parameters())
        assert a.base_channels != 32 or params == 3_717_121, params
    fmt = torch.channels_last if a.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    if a.inference:
        if a.ddp:
            raise SystemExit("--inference times one process; it does not go with --ddp")
        model.eval()
    if a.ddp:
        model = nn.parallel.DistributedDataParallel(model)
        torch.manual_seed(a.seed + rank)  # each rank its own local batch
    s, local = a.image_size, a.batch_size // world
    images = torch.rand(local, 3, s, s).to(memory_format=fmt)
    masks = torch.randint(0, 2, (local, 1, s, s)).float()
    loss_fn = nn.BCEWithLogitsLoss()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step():
        if a.inference:
            with torch.inference_mode():
                return torch.sigmoid(model(images)).mean().item()
        opt.zero_grad()
        loss = loss_fn(model(images), masks)
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(a.warmup):
        step()
    if a.ddp:
        dist.barrier()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        loss = step()
    if a.ddp:
        dist.barrier()
    elapsed = time.perf_counter() - t0
    if a.ddp:
        dist.destroy_process_group()
    if rank:
        return

    res = {
        "framework": "pytorch",
        "torch_version": torch.__version__,
        "image_size": s,
        "batch_size": a.batch_size,
        "threads": a.threads,
        "steps": a.steps,
        "images_per_second": a.steps * a.batch_size / elapsed,
        "seconds_per_step": elapsed / a.steps,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "parameters": params,
    }
    if a.channels_last:
        res["channels_last"] = True
    if a.inference:
        res["mode"] = "inference"
    if not a.encoder:
        res["base_channels"] = a.base_channels
    if a.encoder:
        res["encoder"] = a.encoder
        res["arch"] = a.arch
    if a.ddp:
        res["ddp_processes"] = a.ddp
    if a.json:
        print(json.dumps(res))
    else:
        print(f"pytorch {torch.__version__} {s}x{s} batch {a.batch_size} "
              f"threads {a.threads}{' channels_last' if a.channels_last else ''}"
              f"{f' ddp {a.ddp}' if a.ddp else ''}: "
              f"{res['images_per_second']:.2f} img/s, "
              f"{res['seconds_per_step']:.3f} s/step, "
              f"peak RSS {res['peak_rss_mib']:.0f} MiB, loss {loss:.4f}, "
              f"{params} params")


if __name__ == "__main__":
    main()
