"""Weight files of published models in torch.hub's cache: download, checksum, pin on first use.

Files live in ``torch.hub.get_dir()/checkpoints`` (torch.hub's own cache, ``$TORCH_HOME``). A download
goes through the call's own temporary file renamed into place (``os.replace``), so that processes or
threads fetching one file at once never see a partial one. It is not ``torch.hub.download_url_to_file``
because that one has no timeout: a server that accepts and never answers would hang the caller.
"""
from __future__ import annotations

import hashlib
import os
import secrets
import urllib.request
from importlib import resources
from pathlib import Path

import torch

from .converters import CheckpointError
from .registry import SIMCLR_HELP, ModelSpec

__all__ = ["DEFAULT_DOWNLOAD_TIMEOUT", "DOWNLOAD_TIMEOUT_ENV", "cached_download", "shipped_weights", "write_pin"]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


DOWNLOAD_TIMEOUT_ENV = "SSL_WIDGETS_DOWNLOAD_TIMEOUT"
DEFAULT_DOWNLOAD_TIMEOUT = 60.0


def _download_timeout() -> float:
    """Seconds a download may wait for the server (``$SSL_WIDGETS_DOWNLOAD_TIMEOUT``, default 60)."""
    raw = os.environ.get(DOWNLOAD_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_DOWNLOAD_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise ValueError(f"{DOWNLOAD_TIMEOUT_ENV} must be a positive number of seconds, got {raw!r}")
    return value


def _pin_file(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _verify_checksum(path: Path, spec: ModelSpec) -> str | None:
    """Check ``path`` against the spec's hash or the hash pinned on first use.

    Returns:
        The file's hash when it has neither (to be pinned once the file has loaded successfully,
        so that a truncated or wrong file is never pinned), else ``None``.
    """
    actual = _sha256(path)
    pin = _pin_file(path)
    if spec.sha256 is not None:
        if not actual.startswith(spec.sha256.lower()):
            raise CheckpointError(
                f"checksum mismatch for the {spec.name!r} weights at {path}: sha256 {actual[:16]}... does not match the published "
                f"{spec.sha256[:16]}... of {spec.name!r}; the file is corrupt or not the published one. "
                f"Delete {path} and download {spec.url} again"
            )
        return None
    if not pin.exists():
        return actual
    expected = pin.read_text().strip().lower()
    if actual != expected:
        raise CheckpointError(
            f"checksum mismatch for the {spec.name!r} weights at {path}: sha256 {actual[:16]}... differs from {expected[:16]}..., pinned in "
            f"{pin} when a file at that place first loaded successfully. If {path} is the file you want (you "
            f"replaced it on purpose), delete the pin file {pin}; otherwise the file is corrupt: delete {path} and "
            f"download {spec.url} again"
        )
    return None


def _download(url: str, path: Path, timeout: float) -> None:
    """Fetch ``url`` to ``path`` through this call's own temporary file, renamed into place atomically.

    The temporary file is ``<file>.<pid>.<random>.partial``: processes (e.g. torchrun ranks) or threads
    downloading the same file at once each write their own, and ``os.replace`` makes ``path`` appear
    only complete (the last rename wins; each is a whole copy). Every connection attempt and every
    read waits at most ``timeout`` seconds.
    """
    from tqdm.auto import tqdm

    partial = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.partial")
    request = urllib.request.Request(url, headers={"User-Agent": "ssl_widgets"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, open(partial, "xb") as handle:
            size = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=size, unit="B", unit_scale=True, desc=path.name, leave=False) as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    handle.write(block)
                    bar.update(len(block))
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _is_timeout(error: BaseException) -> bool:
    reason = getattr(error, "reason", None)
    return isinstance(error, TimeoutError) or isinstance(reason, TimeoutError)


def cached_download(spec: ModelSpec) -> tuple[Path, str | None]:
    """The cached file (downloaded if missing) and the hash to pin after a successful load, if any."""
    hub_dir = Path(torch.hub.get_dir()) / "checkpoints"
    path = hub_dir / str(spec.file_name)
    if not path.exists():
        if spec.url is None:
            raise FileNotFoundError(
                SIMCLR_HELP.format(w=spec.name[-2]) + f", or place the converted file at {path}."
            )
        hub_dir.mkdir(parents=True, exist_ok=True)
        timeout = _download_timeout()
        try:
            _download(spec.url, path, timeout)
        except Exception as error:  # network errors come in many types
            if path.is_file():  # another process completed the same download meanwhile: load its file
                return path, _verify_checksum(path, spec)
            what = (f"no answer within {timeout:g} s (set {DOWNLOAD_TIMEOUT_ENV} to wait longer)"
                    if _is_timeout(error) else f"{type(error).__name__}: {error}")
            raise FileNotFoundError(
                f"could not download the weights of {spec.name!r} from {spec.url} ({what}). "
                f"For offline use, download that file yourself and place it at {path}, or give its path: "
                f"--weights PATH on the command line, weights=PATH in Python (load_model)."
            ) from error
    return path, _verify_checksum(path, spec)


def shipped_weights(spec: ModelSpec) -> Path:
    return Path(str(resources.files("ssl_widgets") / "weights" / str(spec.file_name)))


def write_pin(path: Path, digest: str) -> None:
    """Write the pin file of ``path`` atomically (a process checking it never reads a half-written one)."""
    pin = _pin_file(path)
    partial = pin.with_name(f"{pin.name}.{os.getpid()}.{secrets.token_hex(4)}.partial")
    try:
        partial.write_text(digest + "\n")
        os.replace(partial, pin)
    finally:
        partial.unlink(missing_ok=True)
