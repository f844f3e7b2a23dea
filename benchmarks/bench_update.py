"""One on-device training step with the ``pulsed`` update model vs a plain SGD step.

    python benchmarks/bench_update.py [--repeats 7] [--backend numpy]

Shape 3072→1024, batch 1000, float32. The plain step is three NumPy operations:
``y = x Wᵀ``; ``ΔW = (y − t)ᵀ x / B``; ``W ← W − η ΔW``. The device step is the same
computation through the simulator: ``Network.forward`` (DAC, noise, ADC), the digital outer
product of the observed error and input, and ``Network.apply_update`` through the pulsed
model (stochastic pulse counts, soft bounds, d2d, cycle-to-cycle noise). The printed figure
is the median over repeats of the ratio of the two, timed back to back. Where aihwkit
imports, its ``AnalogLinear`` + ``AnalogSGD`` step with a pulsed single-device config is
timed against the same plain step.
"""
from __future__ import annotations

import argparse

import numpy as np

import noisesim

from bench_forward import paired_ratio

N_IN, N_OUT, BATCH, LR = 3072, 1024, 1000, 0.01


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--backend", default="numpy", choices=["numpy", "cupy"])
    ap.add_argument("--no-aihwkit", action="store_true")
    args = ap.parse_args(argv)
    be = noisesim.get_backend(args.backend, "float32")
    xp = be.xp
    sync = (lambda: xp.cuda.Device().synchronize()) if be.name == "cupy" else (lambda: None)
    rng = np.random.default_rng(0)
    x_h = rng.uniform(0, 1, (BATCH, N_IN)).astype(np.float32)
    t_h = rng.standard_normal((BATCH, N_OUT)).astype(np.float32)
    w_h = (rng.standard_normal((N_OUT, N_IN)) * np.sqrt(2 / N_IN)).astype(np.float32)
    x, t = be.asarray(x_h), be.asarray(t_h)
    W = be.asarray(w_h).copy()

    def plain():
        nonlocal W
        y = x @ W.T
        dW = (y - t).T @ x
        dW *= 1.0 / BATCH
        W -= LR * dW

    print(f"backend={be.name} float32 {N_IN}→{N_OUT} batch={BATCH} repeats={args.repeats}; "
          "ratio = median of t(step)/t(plain SGD step), timed back to back")
    for name in ("reram", "ecram"):
        net = noisesim.Network.mlp([N_IN, N_OUT], noisesim.DeviceConfig.preset(name), seed=0, backend=be)

        def device_step(net=net):
            p = net.forward(x)
            dW = (p.out - t).T @ p.inputs[0]
            dW *= -LR / BATCH
            net.apply_update(0, dW)

        r, tf, tg = paired_ratio(device_step, plain, args.repeats, sync)
        print(f"  noisesim {name:<8} pulsed step {r:6.2f}×   ({tf*1e3:7.1f} ms vs plain {tg*1e3:6.1f} ms)", flush=True)
    if args.no_aihwkit:
        return
    try:
        import torch
        from aihwkit.nn import AnalogLinear
        from aihwkit.optim import AnalogSGD
        from aihwkit.simulator.configs import SingleRPUConfig
        from aihwkit.simulator.presets.devices import ReRamSBPresetDevice
    except Exception as exc:
        print(f"  aihwkit comparison skipped: aihwkit is not importable ({type(exc).__name__}: {exc}); "
              "install the 'compare' extra to include it")
        return
    layer = AnalogLinear(N_IN, N_OUT, bias=False, rpu_config=SingleRPUConfig(device=ReRamSBPresetDevice()))
    layer.set_weights(torch.from_numpy(w_h))
    opt = AnalogSGD(layer.parameters(), lr=LR)
    opt.regroup_param_groups(layer)
    xt, tt = torch.from_numpy(x_h), torch.from_numpy(t_h)

    def aihw_step():
        opt.zero_grad()
        loss = ((layer(xt) - tt) ** 2).sum() / (2 * BATCH)
        loss.backward()
        opt.step()

    r, tf, tg = paired_ratio(aihw_step, plain, args.repeats, sync)
    print(f"  aihwkit ReRamSBPresetDevice step {r:6.2f}×   ({tf*1e3:7.1f} ms vs plain {tg*1e3:6.1f} ms)")


if __name__ == "__main__":
    main()
