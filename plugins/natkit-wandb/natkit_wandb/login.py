"""Online or offline: the user's WANDB_MODE, else online only when a W&B API key is configured.

wandb finds an API key without prompting in ``WANDB_API_KEY`` (or a
``WANDB_IDENTITY_TOKEN_FILE``), else in the netrc entry ``wandb login`` writes for the
server (``WANDB_BASE_URL``, by default https://api.wandb.ai; the file is ``NETRC``, else
``~/.netrc`` or ``~/_netrc``). :func:`logged_in` looks in the same places, without
importing wandb, prompting or touching the network: ``wandb.login(prompt=False)``
would ask the server who the user is, and ``wandb.api.api_key`` is deprecated.
"""

from __future__ import annotations

import netrc
import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

MODE_ENV = "WANDB_MODE"
DEFAULT_SERVER = "https://api.wandb.ai"
# WANDB_MODE values under which wandb needs no credentials
LOCAL_MODES = frozenset({"offline", "dryrun", "disabled"})


class NotLoggedIn(RuntimeError):
    """WANDB_MODE asks for online logging but no API key is configured: wandb would prompt."""


def netrc_file(environ: Mapping[str, str]) -> Path:
    """The netrc file wandb reads: ``NETRC``, else ``~/.netrc`` or ``~/_netrc``, whichever exists."""
    if environ.get("NETRC"):
        return Path(environ["NETRC"]).expanduser()
    unix, windows = Path("~/.netrc").expanduser(), Path("~/_netrc").expanduser()
    return windows if windows.exists() and not unix.exists() else unix


def logged_in(environ: Mapping[str, str] | None = None) -> bool:
    """Whether wandb would find credentials for its server without prompting."""
    environ = os.environ if environ is None else environ
    if environ.get("WANDB_API_KEY") or environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    server = urlsplit(environ.get("WANDB_BASE_URL") or DEFAULT_SERVER).netloc
    try:
        entry = netrc.netrc(netrc_file(environ)).authenticators(server)
    except (OSError, netrc.NetrcParseError):  # no file, or one wandb would not read either
        return False
    return bool(server and entry and entry[2])


def disabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the user turned W&B off (``WANDB_MODE=disabled``): nothing is started or written."""
    environ = os.environ if environ is None else environ
    return environ.get(MODE_ENV, "").strip().lower() == "disabled"


def choose_mode(environ: Mapping[str, str] | None = None) -> str | None:
    """The ``mode`` for ``wandb.init``: None when WANDB_MODE decides, else online when logged in.

    Raises NotLoggedIn when WANDB_MODE asks for online logging without credentials,
    where wandb would stop the run to prompt for a key.
    """
    environ = os.environ if environ is None else environ
    mode = environ.get(MODE_ENV, "").strip().lower()
    if not mode:
        return "online" if logged_in(environ) else "offline"
    if mode not in LOCAL_MODES and not logged_in(environ):
        raise NotLoggedIn(f"{MODE_ENV}={mode} but no W&B API key is configured; log in with "
                          "`wandb login` or set WANDB_API_KEY")
    return None
