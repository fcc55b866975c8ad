"""Where LossLens runs: a local single-user server, or a shared one (a hosted demo, a workshop).

One setting, `LOSSLENS_SHARED`: unset or 0 is a local server (today's behaviour: one visitor's
models are everybody's, paths may be typed); 1 is a shared server (each visitor's models and runs
are their own, training is capped, uploads are small). On Streamlit Community Cloud set it as a
root-level secret (`LOSSLENS_SHARED = "1"`): Streamlit exposes those as environment variables.
"""

from __future__ import annotations

import os

SHARED_ENV = "LOSSLENS_SHARED"


def shared_server() -> bool:
    """True when this process serves a crowd (LOSSLENS_SHARED=1/true/yes/on)."""
    return os.environ.get(SHARED_ENV, "").strip().lower() in {"1", "true", "yes", "on"}
