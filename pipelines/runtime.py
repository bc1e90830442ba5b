"""Engine environment in one place: Ray, Beam and img2dataset settings for offline, local runs.

Every entry point calls :func:`configure_environment` first (before importing ray / beam /
img2dataset), so a run on a laptop, in CI or on a cluster head behaves the same:

- no usage stats, no update checks (albumentations, pulled in by img2dataset, phones home
  from every worker otherwise);
- a local Ray (no RAY_ADDRESS) runs on 127.0.0.1 only;
- Ray's token authentication on (``RAY_AUTH_MODE=token``) for every cluster the project starts
  and every client it makes; :func:`ensure_auth_token` gives a cluster this process starts a
  token (``~/.ray/auth_token``, mode 0600, never printed) unless ``RAY_AUTH_TOKEN`` /
  ``RAY_AUTH_TOKEN_PATH`` name one. Connecting to a cluster without authentication takes an
  explicit ``RAY_AUTH_MODE=disabled``;
- Ray temp files under a short project temp dir (unix socket paths are limited to 107 bytes);
- Beam gets an explicit runner: the default first tries to download the Prism binary.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

DEFAULT_BEAM_RUNNER = "DirectRunner"

_ENV_DEFAULTS = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "token",  # Ray's token authentication (2.60): off only by an explicit setting
    "RAY_DEDUP_LOGS": "1",
    # Ray Data prints a progress bar per operator; keep it but without the noisy ASCII spinners.
    "RAY_DATA_DISABLE_PROGRESS_BARS": "0",
    # Ray starts its workers at niceness 15 (the driver stays responsive); on a machine shared
    # with other work that starves every task (measured: the distributed dedup 39x slower under
    # a load of 4 on 2 cores). A local Ray's workers run at normal priority, as the driver does.
    "RAY_worker_niceness": "0",
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
}


def ray_tmpdir() -> str:
    """A short, per-user temp dir for Ray sessions (``$RAY_TMPDIR`` wins)."""
    return os.environ.get("RAY_TMPDIR") or str(Path(tempfile.gettempdir()) / f"openwit-ray-{os.getuid()}")


def configure_environment() -> None:
    """Set the environment defaults above (an explicit user setting always wins)."""
    for key, value in _ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if not os.environ.get("RAY_ADDRESS"):
        # Not joining a cluster: keep a local Ray on loopback. Ray otherwise swaps 127.0.0.1 for
        # the host's routable IP (services.resolve_ip_for_localhost); this switch is Ray's own
        # single-node mode (read when ray is first imported, so set it before that).
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    tmp = ray_tmpdir()
    Path(tmp).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RAY_TMPDIR", tmp)


def ensure_auth_token() -> None:
    """Before starting a cluster: with token authentication on and no token named by
    ``RAY_AUTH_TOKEN`` / ``RAY_AUTH_TOKEN_PATH``, make sure Ray's default token file
    (``~/.ray/auth_token``) exists: created once, readable by this user only, never printed.
    Every process that starts a head, a node or a local Ray here shares it; a remote cluster's
    nodes and clients need the same token (copy the file, or set ``RAY_AUTH_TOKEN``)."""
    import secrets

    if os.environ.get("RAY_AUTH_MODE", "token").lower() != "token":
        return
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return
    path = Path.home() / ".ray" / "auth_token"
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".auth_token.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    try:
        os.link(temp, path)  # whole or not at all: another process never reads it half written
    except FileExistsError:  # another process made it first
        pass
    finally:
        os.unlink(temp)


def auth_headers() -> dict[str, str]:
    """The HTTP header carrying this process's Ray token (``RAY_AUTH_TOKEN``, else the file at
    ``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``) when token authentication is on and a
    token exists; else none. For raw HTTP calls to a head (Ray's own clients add it themselves)."""
    if os.environ.get("RAY_AUTH_MODE", "token").lower() != "token":
        return {}
    token = os.environ.get("RAY_AUTH_TOKEN")
    if not token:
        path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
        token = path.read_text().strip() if path.is_file() else None
    return {"Authorization": f"Bearer {token}"} if token else {}


def init_ray(address: str | None = None, num_cpus: int | None = None, state_api: bool = False, **kwargs):
    """Connect to ``address`` (or ``$RAY_ADDRESS``, e.g. inside `ray job submit`), else start a
    local Ray bound to 127.0.0.1. Idempotent: returns at once if Ray is already initialised.

    ``state_api``: a local Ray also runs its dashboard head (on 127.0.0.1, behind the token), the
    server of Ray's state API, and names it to every worker (``RAY_API_SERVER_ADDRESS``). Ray
    Train needs it: its PlacementGroupCleaner (Ray 2.60) asks the state API once a second whether
    the train controller is alive. Without a dashboard every ask fails and logs "Failed to query
    Ray Train Controller actor state"; with other Ray instances on the machine the ask cannot tell
    which cluster is meant and the cleaner's thread dies (or asks another cluster, whose "no such
    actor" it would take for a dead controller and remove the run's placement group)."""
    configure_environment()
    import ray

    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True, **kwargs)
    else:
        # address="local": always a fresh local runtime, never a stale `ray_current_cluster`
        # file left behind by an earlier head in the same temp dir.
        ensure_auth_token()
        dashboard = {}
        if state_api:
            # Ray's state-API client in a worker finds the cluster by guessing (the head `ray start`
            # recorded last, else the only GCS on the machine): wrong or ambiguous when other
            # clusters run here. This variable names our dashboard instead; the raylet and every
            # worker inherit it from this process.
            port = _free_loopback_port()
            os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
            dashboard = {"dashboard_port": port}
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=state_api,
            dashboard_host="127.0.0.1",
            **dashboard,
            _temp_dir=ray_tmpdir(),
            _node_ip_address="127.0.0.1",
            log_to_driver=True,
            **kwargs,
        )
    return ray


def _free_loopback_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def beam_pipeline_options(runner: str | None = None, extra_args: list[str] | None = None,
                          parallelism: int | None = None):
    """Beam ``PipelineOptions`` with an explicit runner (default: the DirectRunner on one
    in-process worker, which works offline; ``parallelism`` > 1 gives it that many worker
    processes). Other runners (FlinkRunner, SparkRunner, DataflowRunner) take their own flags
    through ``extra_args``."""
    configure_environment()
    from apache_beam.options.pipeline_options import PipelineOptions

    args = [f"--runner={runner or DEFAULT_BEAM_RUNNER}", *(extra_args or [])]
    if (runner or DEFAULT_BEAM_RUNNER) == "DirectRunner" and not any(
        a.startswith("--direct_num_workers") for a in args
    ):
        workers = parallelism or 1
        mode = "multi_processing" if workers > 1 else "in_memory"
        args += [f"--direct_num_workers={workers}", f"--direct_running_mode={mode}"]
    return PipelineOptions(args)
