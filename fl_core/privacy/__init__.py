"""Differential privacy for federated rounds: clipping, noise, sampling, accounting, budget.

Three guarantees, composable:

- **Central user-level DP** (``privacy.mode: central``), DP-FedAvg (McMahan et al., ICLR
  2018): Poisson cohort sampling at rate ``q``, each update clipped to ``C`` (fixed, or
  adaptive per Andrew et al., NeurIPS 2021), the unweighted sum divided by the *expected*
  cohort size ``m = qN`` and Gaussian noise of std ``z C / m`` added by the server.
- **Local DP** (``privacy.mode: local``): each client clips and noises its own update
  (std ``z C``) before it leaves the device; per-client epsilon over its participations.
- **Record-level DP-SGD** (``privacy.client_dp_sgd``): Opacus ``PrivacyEngine`` inside each
  client; the client reports its own epsilon.

Epsilon always comes from Opacus's accountants (RDP, or the tighter PRV), never from
hand-written formulas.

Public API
----------
``settings``
    ``PrivacySettings`` (frozen; the ``privacy`` config section), ``LEVELS`` (off / low /
    medium / high presets as (epsilon, delta)), ``resolve(settings, *, num_clients,
    sampling_rate, rounds, keys=None) -> ResolvedPrivacy`` (validates, calibrates; errors
    start with the dotted key). ``ResolvedPrivacy`` has ``make_accountant()``,
    ``make_clipper()``, ``noise_std(clipping_norm)``, ``expected_cohort_size``,
    ``to_dict()``.
``accountant``
    ``PrivacyAccountant(*, noise_multiplier, sampling_rate, delta, kind="rdp")`` with
    ``step(r)``, ``epsilon()``, ``epsilon_if_step()``, ``would_exceed(target)``,
    ``state_dict()`` / ``load_state_dict()``; ``compute_epsilon(*, noise_multiplier,
    sampling_rate, steps, delta, kind="rdp")``; ``calibrate_noise_multiplier(...)``.
``clipping``
    ``clip_by_l2(update, clipping_norm) -> (clipped, norm)``, ``AdaptiveClipper``,
    ``update_noise_multiplier(*, noise_multiplier, count_stddev)``.
``noise``
    ``gaussian_noise_std(*, noise_multiplier, clipping_norm, expected_cohort_size)``,
    ``add_gaussian_noise(mean_update, *, std, rng)``, ``noisy_mean(sum_of_clipped, ...)``.
``sampling``
    ``poisson_cohort(client_ids, *, rate, rng)``.
``local``
    ``privatize_update_locally(update, *, clipping_norm, noise_multiplier, rng)``,
    ``local_epsilon(*, noise_multiplier, participations, delta, kind="rdp")``.
``dpsgd``
    ``train_dp_sgd(spec, global_vector, x, y, *, local_epochs, batch_size, lr,
    noise_multiplier, max_grad_norm, delta, seed) -> (ClientResult, epsilon)``.

Using it in a round (central mode)
----------------------------------
At campaign start: ``rp = resolve(settings, num_clients=N, sampling_rate=q, rounds=R)``;
store ``rp.to_dict()`` with the campaign (it fails before any work on a bad combination).

Round ``r`` (1-based):

1. *Budget gate, before dispatch*: ``acct = rp.make_accountant()``; load round ``r-1``'s
   persisted ``acct.state_dict()`` (none for ``r = 1``); if ``acct.would_exceed(rp.epsilon)``
   the round does not run and the campaign ends (reason: budget spent). Equivalently, the
   campaign has at most ``rp.rounds_within_budget`` rounds.
2. *Cohort*: ``poisson_cohort(ids, rate=q, rng=...)`` -- no fixed size, no over-selection,
   no replacement of dropouts; an empty cohort still runs (noise-only release) and spends.
3. *Clip*: ``C = clipper.current_norm`` (adaptive: clipper state loaded from round ``r-1``)
   or ``rp.clipping_norm``; ``clip_by_l2(update, C)`` per accepted update; sum with weight 1.
4. *Noise*: ``noisy_mean(sum, noise_multiplier=rp.update_noise_multiplier, clipping_norm=C,
   expected_cohort_size=rp.expected_cohort_size, rng=...)``.
5. *Adaptive*: ``clipper.update(unclipped_norms, rng)``; persist ``clipper.state_dict()``.
6. *Account*: ``acct.step(r)``; persist ``acct.state_dict()`` under round ``r`` together with
   the noised aggregate (write the aggregate first). ``step(r)`` is a no-op if round ``r``
   is already recorded and refuses to skip a round, so a crash/retry never double-counts
   or under-counts, provided round ``r``'s state is always built from round ``r-1``'s.

Noise randomness: a noised release must be produced once and then reused (never re-drawn
with fresh noise: two releases of the same sum spend twice). And the noise source must be
secret: noise derived from the campaign seed in ``params.yaml`` can be regenerated and
subtracted by anyone who reads the seed. Use a per-campaign secret seed kept with the
server's private state (or ``np.random.default_rng()`` entropy, persisting the release).

Local mode: ``rp.noise_multiplier`` is calibrated for a client that participates in every
round (no amplification: the server sees who sent), so no client can exceed the budget.
Clients call ``privatize_update_locally`` with their own unpredictable rng, count their
participations and report ``local_epsilon(...)``; the server averages as usual.
"""

from fl_core.privacy.accountant import (
    ACCOUNTANTS,
    PrivacyAccountant,
    calibrate_noise_multiplier,
    compute_epsilon,
)
from fl_core.privacy.clipping import AdaptiveClipper, clip_by_l2, update_noise_multiplier
from fl_core.privacy.dpsgd import train_dp_sgd
from fl_core.privacy.local import local_epsilon, privatize_update_locally
from fl_core.privacy.noise import add_gaussian_noise, gaussian_noise_std, noisy_mean
from fl_core.privacy.sampling import poisson_cohort
from fl_core.privacy.settings import LEVELS, PrivacySettings, ResolvedPrivacy, resolve

__all__ = [
    "ACCOUNTANTS",
    "LEVELS",
    "AdaptiveClipper",
    "PrivacyAccountant",
    "PrivacySettings",
    "ResolvedPrivacy",
    "add_gaussian_noise",
    "calibrate_noise_multiplier",
    "clip_by_l2",
    "compute_epsilon",
    "gaussian_noise_std",
    "local_epsilon",
    "noisy_mean",
    "poisson_cohort",
    "privatize_update_locally",
    "resolve",
    "train_dp_sgd",
    "update_noise_multiplier",
]
