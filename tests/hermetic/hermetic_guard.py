"""Hermetic tests (issue 31): no test reads anything outside the repository and the installed packages.

tests/conftest.py points :func:`environment`'s variables (the data folder, home, caches) at empty folders made for
the run, then calls :func:`install` before ``adapt`` or jax is imported; the ``sitecustomize.py`` beside this
file installs the same guards in every Python process a test starts (conftest puts this folder first on
``PYTHONPATH``). The guards raise :class:`HermeticError` on

- a socket reaching outside this host: a connection or datagram to an address that is not loopback (127.0.0.0/8,
  ::1) or unspecified (Unix sockets are local), and a DNS lookup of a name other than this host's;
- a file opened outside :func:`allowed_roots` (an audit hook on ``open``, which ``open()``, ``os.open`` and
  imports raise): the repository, Python's prefixes and site-packages, the run's own folder (its home, caches
  and temp folder: ``TMPDIR`` points inside it, so a repository that itself lies in the system's temp folder has
  no allowed neighbours) and the system's folders. Files native code opens (XLA, tokenizers) are not seen.

Each one is also written to ``$ADAPT_HERMETIC_LOG`` (conftest fails the test that wrote it), so code that
catches the error cannot hide it; only the cloud metadata probes of :data:`PROBES` fail as they would offline.
"""

import errno
import ipaddress
import os
import site
import socket
import sys
import tempfile

LOG = "ADAPT_HERMETIC_LOG"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SYSTEM = ("/dev", "/proc", "/sys", "/etc", "/usr", "/lib", "/lib32", "/lib64", "/bin", "/sbin")
LOCAL_NAMES = {"", "localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback", socket.gethostname().lower()}
# cloud metadata endpoints that libraries probe to learn where they run (Ray's dashboard, at every start) and do
# without: refused as on a machine with no network (an OSError), and not counted against the test
PROBES = {"169.254.169.254", "metadata.google.internal"}
# variables a user may have set that would lead a test to their own caches; cleared, so each falls back to a
# folder under the run's home (HF_HOME, XDG_CACHE_HOME)
CLEARED = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_DATASETS_CACHE", "HF_ASSETS_CACHE", "TRANSFORMERS_CACHE",
           "TORCH_HOME", "MPLCONFIGDIR", "JAX_COMPILATION_CACHE_DIR", "PYTHONUSERBASE")


class HermeticError(RuntimeError):
    """A test reached outside the repository, the installed packages or loopback. Not an OSError, so code that
    falls back on a failed download or a missing file does not take it for one."""


def environment(root: str) -> dict[str, str]:
    """The variables that give a process an empty data folder, home, caches and temp folder under ``root`` (made
    here)."""
    home = os.path.join(root, "home")
    folders = {"ADAPT_DATA_DIR": os.path.join(root, "data"), "HOME": home, "TMPDIR": os.path.join(root, "tmp"),
               "XDG_CACHE_HOME": os.path.join(home, ".cache"), "XDG_CONFIG_HOME": os.path.join(home, ".config"),
               "XDG_DATA_HOME": os.path.join(home, ".local", "share"),
               "HF_HOME": os.path.join(home, ".cache", "huggingface"),
               # libtpu's logs (a plan's compiles for a TPU), which Ray links into its own and reads: not /tmp/tpu_logs
               "TPU_LOG_DIR": os.path.join(root, "tpu_logs")}
    for folder in folders.values():
        os.makedirs(folder, exist_ok=True)
    # and no usage reports: Ray's dashboard would send one to usage-stats.ray.io a minute after it starts
    return {**folders, "RAY_USAGE_STATS_ENABLED": "0"}


def allowed_roots() -> tuple[str, ...]:
    run = os.environ.get("ADAPT_HERMETIC_ROOT") or tempfile.gettempdir()  # the run's folders, its temp one included
    folders = [REPO, sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, run,
               *site.getsitepackages(), *SYSTEM]
    return tuple(sorted({os.path.join(os.path.realpath(f), "") for f in folders}))


def _refuse(message: str):
    log = os.environ.get(LOG)
    if log:
        with open(log, "a", encoding="utf-8") as f:  # in the run's folder: the audit hook lets it through
            f.write(f"{message}\n")
    raise HermeticError(f"hermetic tests: {message} (tests/hermetic/hermetic_guard.py)")


def _address(host):
    """``host`` as an IP address (an IPv4-mapped IPv6 one as IPv4), or None for a name."""
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return None
    return getattr(ip, "ipv4_mapped", None) or ip


def _local_host(host) -> bool:
    """``host`` (a name or an address) is this host: loopback, or the unspecified address (which reaches it)."""
    if isinstance(host, bytes):
        host = host.decode()
    if not isinstance(host, str):
        return False
    ip = _address(host)
    return host.lower().rstrip(".") in LOCAL_NAMES if ip is None else ip.is_loopback or ip.is_unspecified


def _checked(method):
    def guarded(self, *args):
        where = args[-1] if method.__name__ == "sendto" else args[0]  # sendto(data[, flags], address)
        if self.family in (socket.AF_INET, socket.AF_INET6) and where[0] in PROBES:
            raise ConnectionRefusedError(errno.ECONNREFUSED, f"hermetic tests: {where[0]} is not reachable")
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _local_host(where[0]):
            _refuse(f"socket.{method.__name__} to {where!r}: network access outside loopback")
        return method(self, *args)

    return guarded


def _lookup(function):
    def guarded(host, *args, **kwargs):
        name = host.decode() if isinstance(host, bytes) else host
        if name in PROBES:
            raise socket.gaierror(socket.EAI_NONAME, f"hermetic tests: {name} is not looked up")
        if isinstance(name, str) and _address(name) is None and not _local_host(name):  # an address: no lookup
            _refuse(f"socket.{function.__name__}({host!r}): a DNS lookup of a name that is not this host's")
        return function(host, *args, **kwargs)

    return guarded


def _audit_open(roots: tuple[str, ...]):
    def hook(event, args):
        if event != "open" or isinstance(args[0], int) or args[0] is None:
            return
        path = os.path.realpath(os.fsdecode(args[0]))
        if not (path + os.sep).startswith(roots):
            _refuse(f"{path} was opened: it is outside the repository, the installed packages and the temp folder")

    return hook


_installed = False


def install() -> None:
    """The socket guard and the audit hook, once per process (an audit hook cannot be removed)."""
    global _installed
    if _installed:
        return
    _installed = True
    for name in ("connect", "connect_ex", "sendto"):
        setattr(socket.socket, name, _checked(getattr(socket.socket, name)))
    for name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex"):
        setattr(socket, name, _lookup(getattr(socket, name)))
    sys.addaudithook(_audit_open(allowed_roots()))


def take_violations() -> list[str]:
    """What was refused since the last call, in this process and in the processes it started (which inherit
    ``$ADAPT_HERMETIC_LOG``); forgets them."""
    log = os.environ.get(LOG)
    if not log or not os.path.exists(log):
        return []
    with open(log, "r+", encoding="utf-8") as f:
        found = f.read().splitlines()
        f.truncate(0)
    return found
