#!/usr/bin/env python3
"""Predicted data-parallel efficiency of segtrain on N nodes (docs/SCALING.md).

    python3 scripts/scaling-model.py [--compute 0.70] [--fraction 0.80] [--fixed 4.8e-3] [--latency 10e-6]

Per optimizer step every node computes its share of the global batch (per-node batch fixed, so
compute per step T_c does not change with N) and then the ranks sum the gradient with a ring
allreduce:

    T_comm(N) = c0 + 2(N-1)/N * bytes * 8 / (f * rate) + 2(N-1) * alpha

bytes = 4 x parameters (fp32 gradient), f = the fraction of the link's rate MPI achieves, c0 = the
fixed part per step (the small allreduces of loss terms and the stop flag, copies), alpha = the
latency of one message. Efficiency = T_c / (T_c + T_comm) with today's blocking allreduce; the last line gives the bound
T_c / (T_c + max(0, T_comm - T_backward)) for an allreduce fully overlapped with backward.
Defaults: the measurements of scripts/bench-cluster.sh on the development machine.
"""
import argparse

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--parameters", type=int, default=3_717_121, help="model parameters (default UNet)")
p.add_argument("--compute", type=float, default=0.70,
               help="seconds of compute per step per node (measured: 0.70 s, 2 cores, 8 images 128x128)")
p.add_argument("--backward", type=float, default=0.63, help="share of the step in the backward convolutions (measured 0.63)")
p.add_argument("--fraction", type=float, default=0.80, help="achieved fraction of the link rate (measured 0.80)")
p.add_argument("--fixed", type=float, default=4.8e-3, help="fixed communication seconds per step (measured 4.8 ms)")
p.add_argument("--latency", type=float, default=10e-6, help="seconds per message (assumed 10 us, TCP on a LAN)")
p.add_argument("--rates", default="10,25,100", help="link rates in Gbit/s")
p.add_argument("--nodes", default="2,4,8,16,32,64,128,256")
p.add_argument("--title", default="")
a = p.parse_args()

bits = a.parameters * 4 * 8
rates = [float(r) for r in a.rates.split(",")]
nodes = [int(n) for n in a.nodes.split(",")]


def comm(n, gbit):
    return a.fixed + 2 * (n - 1) / n * bits / (a.fraction * gbit * 1e9) + 2 * (n - 1) * a.latency


if a.title:
    print(f"**{a.title}** (T_c = {a.compute * 1000:.0f} ms per step)\n")
print("| nodes | " + " | ".join(f"{r:g} Gbit/s: T_comm, efficiency" for r in rates) + " |")
print("|---|" + "---|" * len(rates))
worst_overlapped = 1.0
for n in nodes:
    cells = []
    for r in rates:
        t = comm(n, r)
        cells.append(f"{t * 1000:.1f} ms, {a.compute / (a.compute + t):.0%}")
        worst_overlapped = min(worst_overlapped, a.compute / (a.compute + max(0.0, t - a.backward * a.compute)))
    print(f"| {n} | " + " | ".join(cells) + " |")
print(f"\nWith the allreduce fully overlapped with backward ({a.backward:.0%} of the step): "
      f"at least {worst_overlapped:.0%} in every cell above.")
