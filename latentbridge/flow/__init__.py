"""Flow matching, independent of any network: path, time samplers, loss, ODE solvers, guidance.

Everything here sees tensors and velocity callables `v(x, t) -> dx/dt`, never a model or a codec.
Convention (ARCHITECTURE.md §5): z_t = (1 - t) z_0 + t eps, t = 1 is noise, t = 0 is data.
"""

from latentbridge.flow.guidance import guided_velocity
from latentbridge.flow.path import flow_matching_loss, flow_matching_sums, interpolate, velocity_target
from latentbridge.flow.solvers import SOLVERS, integrate, time_grid
from latentbridge.flow.time import LogitNormal, TimeSampler, Uniform, default_logit_normal_loc, make_time_sampler

__all__ = [
    "SOLVERS", "LogitNormal", "TimeSampler", "Uniform", "default_logit_normal_loc", "flow_matching_loss", "flow_matching_sums",
    "guided_velocity", "integrate", "interpolate", "make_time_sampler", "time_grid", "velocity_target",
]
