"""aihwkit's inference tile configured like noisesim's ``pcm`` preset (shared by the benchmarks
that compare with it; needs the ``compare`` extra)."""
from __future__ import annotations


def pcm_like(rpu, weight_noise: bool = True):
    """Set ``rpu`` (an aihwkit ``InferenceRPUConfig``) to the ``pcm`` preset's periphery: read
    noise 0.0175 (additive, where the tile has per-read weight noise), output noise 0.04, 8-bit
    DAC and ADC, output bound 10, abs-max input scaling, no bound management, PCM programming
    noise and drift (Rasch et al. 2023). Returns ``rpu``."""
    from aihwkit.inference.noise.pcm import PCMLikeNoiseModel
    from aihwkit.simulator.parameters.enums import BoundManagementType, NoiseManagementType, WeightNoiseType

    if weight_noise:
        rpu.forward.w_noise = 0.0175
        rpu.forward.w_noise_type = WeightNoiseType.ADDITIVE_CONSTANT
    else:
        rpu.forward.w_noise = 0.0
        rpu.forward.w_noise_type = WeightNoiseType.NONE
    rpu.forward.out_noise = 0.04
    rpu.forward.inp_res = 1 / 254
    rpu.forward.out_res = 1 / 254
    rpu.forward.out_bound = 10.0
    rpu.forward.noise_management = NoiseManagementType.ABS_MAX
    rpu.forward.bound_management = BoundManagementType.NONE
    rpu.noise_model = PCMLikeNoiseModel(g_max=25.0)
    return rpu
