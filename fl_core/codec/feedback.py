"""Client-side error feedback (error compensation) for lossy update codecs.

The client keeps what compression lost and adds it to its next update (Stich et al.,
"Sparsified SGD with Memory", NeurIPS 2018; Karimireddy et al., "Error Feedback Fixes
SignSGD and other Gradient Compression Schemes", ICML 2019)::

    corrected = update + residual
    payload   = codec.encode(corrected)
    residual  = corrected - codec.decode(payload)

so after any number of rounds ``sum(transmitted) + residual == sum(updates)`` (up to float32
rounding of the additions), and with top-k on float32 values the new residual is exactly
the entries top-k dropped. With a lossless codec the residual stays zero.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

from fl_core.codec.base import Codec, as_vector
from fl_core.codec.registry import parse_codec

logger = logging.getLogger(__name__)


class ErrorFeedback:
    """One client's error-feedback memory: a float32 residual of the model's dimension.

    Parameters
    ----------
    dim
        Number of parameters (the flat vector's length).

    Notes
    -----
    The residual is client state: persist :meth:`state_dict` after each round next to the
    client's other state and :meth:`load_state_dict` it before the next one. For idempotent
    retries, load the state saved *before* the round being retried.
    """

    def __init__(self, dim: int) -> None:
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be an int >= 1, got {dim!r}")
        self.dim = dim
        self._residual = np.zeros(dim, dtype=np.float32)

    @property
    def residual(self) -> np.ndarray:
        """A read-only view of the current residual."""
        view = self._residual.view()
        view.flags.writeable = False
        return view

    def compress(
        self,
        update: np.ndarray,
        codec: Codec | str,
        *,
        rng: np.random.Generator | None = None,
    ) -> tuple[bytes, np.ndarray]:
        """Encode ``update + residual`` with ``codec`` and keep what it lost.

        Parameters
        ----------
        update
            This round's raw update (length ``dim``, finite).
        codec
            A :class:`Codec` or a codec name.
        rng
            Needed by stochastic codecs (``q*``, ``topk:...+q*``).

        Returns
        -------
        payload, transmitted
            The codec payload and what the server will decode from it (dense float32).
            The residual becomes ``update + old_residual - transmitted``. On an error the
            residual is left unchanged.
        """
        codec = parse_codec(codec) if isinstance(codec, str) else codec
        u = as_vector(update, name="update")
        if u.size != self.dim:
            raise ValueError(f"update has {u.size} values, error feedback holds {self.dim}")
        if not np.isfinite(u).all():
            raise ValueError("update has non-finite values; the residual would be poisoned")
        corrected = u + self._residual
        payload = codec.encode(corrected, rng=rng)
        transmitted = codec.decode(payload, self.dim)
        self._residual = corrected - transmitted
        logger.debug(
            "error feedback: %s sent, residual norm %.4g",
            codec.name,
            float(np.linalg.norm(self._residual)),
        )
        return payload, transmitted

    def reset(self) -> None:
        """Forget the residual (e.g. when the client rejoins a new campaign)."""
        self._residual = np.zeros(self.dim, dtype=np.float32)

    def state_dict(self) -> dict[str, np.ndarray]:
        """``{"residual": float32 array}`` (a copy), fit for ``np.savez``."""
        return {"residual": self._residual.copy()}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore from :meth:`state_dict`; ``ValueError`` on a wrong key, shape or value."""
        if "residual" not in state:
            raise ValueError("state: missing key 'residual'")
        residual = np.asarray(state["residual"])
        if residual.shape != (self.dim,):
            raise ValueError(f"state: residual has shape {residual.shape}, expected ({self.dim},)")
        if not np.isfinite(residual).all():
            raise ValueError("state: residual has non-finite values")
        self._residual = residual.astype(np.float32, copy=True)
