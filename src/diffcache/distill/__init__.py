"""Few-step students by iterative consistency distillation with a data cache (``diffcache distill``).

Iterative distillation with a data cache distils a few-step video student from a teacher in rounds; each round
first adds a *data cache* slice, then continues distilling from the previous round's student. This package does
that for the embedded ``tiny-shapes-t2v`` (here and in :mod:`.rounds`) and for diffusers text-to-video pipelines
(:mod:`.pipelines`, :mod:`.teachers`).

Formulation (consistency distillation for flow matching, as latent consistency models do it, with the
teacher's guided ODE as the target and guidance distilled into the student):

- Flow matching: ``x_σ = (1 − σ)·x0 + σ·ε``; the denoiser predicts ``v`` at ``timestep = 1000·σ``.
- Consistency function of the student ``θ``: ``f_θ(x, σ) = x − σ·v_θ(x, σ, c)`` (its clean-clip estimate);
  ``f(x, 0) = x`` holds by construction (the boundary condition).
- Teacher ODE: ``dx/dσ = v_u + w·(v_c − v_u)`` with the teacher's guidance ``w`` (5), solved by Euler on
  ``solver_steps`` (32) uniform σ steps — the teacher's own sampler — from noise ``ε`` at σ = 1.
  Those trajectories are the data cache (:mod:`.cache`): computed once, stored, reused by every later round.
- Loss, for a cached trajectory, an upper point σ_i and a later point σ_j < σ_i on it:
  ``weight · ‖f_θ(x_{σ_i}, σ_i) − f_θ⁻(x_{σ_j}, σ_j)‖²`` with ``θ⁻`` the target network (an exponential moving
  average of ``θ``, decay 0.9, carried across rounds) and ``f_θ⁻(x, 0) = x`` (pairs that end at σ = 0
  regress on the teacher's sample). ``weight`` is 1 + 3 on the shape's pixels, as in the teacher's training.
- Pairs: σ_j is drawn uniformly among the later stored points (LCM's skipping-step solver with a random
  skip; it is the same consistency condition, reached in fewer bootstrap steps); σ_i is drawn where the
  few-step sampler evaluates the student (:func:`.rounds.upper_point_weights`).
- The student starts from the teacher's weights and sees only the conditional prompt: the teacher's CFG is
  in its targets, so it samples with one denoiser call per step and no guidance.
- Sampling: multistep consistency sampling (Song et al. 2023, Algorithm 1) on the σ grid ``1 − k/N``:
  ``x0 = f_θ(x, σ_k)``, then ``x ← (1 − σ_{k+1})·x0 + σ_{k+1}·ε'`` with fresh noise (:mod:`.sampler`).

Departures from the data-cache scheme, stated: there a slice holds real training clips; here a slice holds the
teacher's trajectories (noise → sample) with the prompts' embeddings, which is what consistency *distillation*
needs and saves the teacher's two guided calls per training pair; the previous round's student outputs are not
cached (the target network plays their role). Round sizes are scaled to a CPU (about 3–4 minutes a round on
one thread). Real diffusers pipelines (Wan 2.1, ModelScope, AnimateDiff) are distilled by :mod:`.pipelines`.
"""

from .cache import DataCache, Slice, teacher_trajectory
from .gallery import write_gallery
from .rounds import DistillConfig, Distiller, finished_rounds
from .sampler import ConsistencyFlowMatchScheduler, DistilledShapesT2VPipeline, GuidanceDistilledWarning

__all__ = [
    "ConsistencyFlowMatchScheduler",
    "DataCache",
    "DistillConfig",
    "DistilledShapesT2VPipeline",
    "Distiller",
    "GuidanceDistilledWarning",
    "Slice",
    "finished_rounds",
    "teacher_trajectory",
    "write_gallery",
]
