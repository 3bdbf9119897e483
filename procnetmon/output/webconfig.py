"""``--web-config FILE``: TLS and basic auth for ``--serve``, in node_exporter's format.

The file is the YAML of the Prometheus exporter-toolkit (node_exporter's
``--web.config.file``), of which procnetmon reads this part::

    tls_server_config:
      cert_file: server.crt        # relative to the file's directory
      key_file: server.key
      client_ca_file: ca.crt       # optional: clients' certificates
      client_auth_type: RequireAndVerifyClientCert  # or VerifyClientCertIfGiven, NoClientCert
      min_version: TLS12           # TLS10 .. TLS13; TLS12 by default
      max_version: TLS13
    basic_auth_users:
      alice: $2y$10$...            # bcrypt hashes (htpasswd -nBC 10 alice)

Any other key is an error rather than a setting silently ignored. Root
obeys this file and reads the key it names, so the file and the TLS files
must be changeable by root alone (``procnetmon.trust``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import ssl
import stat
import threading
import warnings
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Mapping, Optional

from procnetmon.trust import Untrusted, check_writers

MAX_FILE_BYTES = 1 << 20
TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
CLIENT_AUTH = {"NoClientCert": ssl.CERT_NONE, "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
               "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}
TLS_KEYS = {"cert_file", "key_file", "client_ca_file", "client_auth_type", "min_version", "max_version"}
# Checked for users that do not exist, so that the answer takes as long as
# for a wrong password (the hash of a password nobody is told).
DUMMY_HASH = "$2b$10$u/Xsk4CkNe/q7gGGggrPbe4pZgwGrtgbvhRD9H8q.V56ppb7uczNu"
BCRYPT_PREFIXES = ("$2a$", "$2b$", "$2y$")
CACHED_SUCCESSES = 64


class WebConfigError(Exception):
    """The web config cannot be used; the message is one line naming the file."""


@dataclass(frozen=True)
class WebConfig:
    path: str
    tls: Optional[ssl.SSLContext] = None
    users: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    verify: Optional[Callable[[str, str], bool]] = None  # (password, bcrypt hash) -> matches
    _passed: set = field(default_factory=set, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, compare=False)

    def check(self, user: str, password: str) -> bool:
        """Whether the user and password are allowed. bcrypt is slow on
        purpose; a pair that passed is remembered (by digest) so that a
        scrape every second does not pay for it each time."""
        hashed = self.users.get(user)
        key = hashlib.sha256(f"{user}\0{password}\0{hashed}".encode("utf-8", "surrogatepass")).digest()
        with self._lock:
            if hashed is not None and key in self._passed:
                return True
        matches = self.verify(password, hashed or DUMMY_HASH)
        if hashed is None or not matches:
            return False
        with self._lock:
            if len(self._passed) >= CACHED_SUCCESSES:
                self._passed.clear()
            self._passed.add(key)
        return True


def load(path: str) -> WebConfig:
    """The web config at ``path``, checked whole; ``WebConfigError`` otherwise."""
    document = _parse(_read_trusted(path, "the web config"), path)
    if document is None:
        return WebConfig(path)  # an empty file: plain HTTP, no auth, as the exporter-toolkit has it
    if not isinstance(document, dict):
        raise WebConfigError(f"{path}: expected a mapping of tls_server_config and basic_auth_users")
    _only_keys(path, document, {"tls_server_config", "basic_auth_users"}, "")
    base = os.path.dirname(os.path.abspath(path))
    tls = _tls_context(path, document["tls_server_config"], base) if "tls_server_config" in document else None
    users = _users(path, document.get("basic_auth_users"))
    verify = _bcrypt_verifier(path) if users else None
    return WebConfig(path, tls, MappingProxyType(users), verify)


def _read_trusted(path: str, what: str) -> bytes:
    real = os.path.realpath(path)
    try:
        check_writers(real, f"{what} {path}")
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except Untrusted as e:
        raise WebConfigError(str(e)) from None
    except OSError as e:
        raise WebConfigError(f"cannot read {what} {path}: {e.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise WebConfigError(f"{what} {path} is not a regular file")
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise WebConfigError(f"{what} {path} is larger than {MAX_FILE_BYTES} bytes")
    return data


def _parse(data: bytes, path: str):
    try:
        import yaml
    except ImportError:
        raise WebConfigError("--web-config needs PyYAML (Debian: apt-get install python3-yaml)") from None
    try:
        return yaml.safe_load(data)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or "not YAML"
        raise WebConfigError(f"{path}: {problem}{where}") from None


def _only_keys(path: str, mapping: dict, known: set, within: str) -> None:
    for key in mapping:
        if key not in known:
            raise WebConfigError(f"{path}: {within}{key!s} is not supported by procnetmon "
                                 f"(it reads {', '.join(sorted(known))})")


def _text(path: str, mapping: dict, key: str, within: str) -> Optional[str]:
    value = mapping.get(key)
    if value is not None and not isinstance(value, str):
        raise WebConfigError(f"{path}: {within}{key} must be a string")
    return value


def _tls_context(path: str, section, base: str) -> ssl.SSLContext:
    within = "tls_server_config."
    if not isinstance(section, dict):
        raise WebConfigError(f"{path}: tls_server_config must be a mapping")
    _only_keys(path, section, TLS_KEYS, within)
    files = {}
    for key in ("cert_file", "key_file", "client_ca_file"):
        value = _text(path, section, key, within)
        if value:
            files[key] = os.path.join(base, value)
    for key in ("cert_file", "key_file"):
        if key not in files:
            raise WebConfigError(f"{path}: {within}{key} is missing")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    for key, default in (("min_version", "TLS12"), ("max_version", None)):
        name = _text(path, section, key, within) or default
        if name is None:
            continue
        if name not in TLS_VERSIONS:
            raise WebConfigError(f"{path}: {within}{key} {name!r} is not one of {', '.join(TLS_VERSIONS)}")
        try:
            setattr(context, "minimum_version" if key == "min_version" else "maximum_version", TLS_VERSIONS[name])
        except ValueError as e:
            raise WebConfigError(f"{path}: {within}{key} {name}: {e}") from None
    auth = _text(path, section, "client_auth_type", within) or "NoClientCert"
    if auth not in CLIENT_AUTH:
        raise WebConfigError(f"{path}: {within}client_auth_type {auth!r} is not one of {', '.join(CLIENT_AUTH)}")
    if auth != "NoClientCert" and "client_ca_file" not in files:
        raise WebConfigError(f"{path}: {within}client_auth_type {auth} needs client_ca_file")
    for key, file in files.items():
        try:
            check_writers(os.path.realpath(file), f"{within}{key} {file}")
        except Untrusted as e:
            raise WebConfigError(f"{path}: {e}") from None
    try:
        context.load_cert_chain(files["cert_file"], files["key_file"])
        if "client_ca_file" in files:
            context.load_verify_locations(cafile=files["client_ca_file"])
    except (OSError, ssl.SSLError) as e:
        reason = getattr(e, "reason", None) or e.strerror or str(e)
        raise WebConfigError(f"{path}: cannot load the TLS certificate and key: {reason}") from None
    context.verify_mode = CLIENT_AUTH[auth]
    return context


def _users(path: str, section) -> dict:
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise WebConfigError(f"{path}: basic_auth_users must be a mapping of user names to bcrypt hashes")
    users = {}
    for user, hashed in section.items():
        if not isinstance(user, str) or not user or ":" in user:
            raise WebConfigError(f"{path}: basic_auth_users: {user!r} is not a user name")
        if not isinstance(hashed, str) or not hashed.startswith(BCRYPT_PREFIXES) or len(hashed) != 60:
            raise WebConfigError(f"{path}: basic_auth_users.{user} is not a bcrypt hash "
                                 "(make one with htpasswd -nBC 10 USER)")
        users[user] = hashed
    return users


def _bcrypt_verifier(path: str) -> Callable[[str, str], bool]:
    """bcrypt from the ``bcrypt`` module (Debian python3-bcrypt) if present,
    else from the C library's crypt(3): glibc's libxcrypt (Debian 11 on)
    knows bcrypt, and the standard ``crypt`` module reaches it up to Python 3.12."""
    try:
        import bcrypt

        def with_module(password: str, hashed: str) -> bool:
            try:
                return bcrypt.checkpw(password.encode("utf-8", "surrogatepass"), hashed.encode())
            except ValueError:
                return False

        return with_module
    except ImportError:
        pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt
    except ImportError:
        crypt = None

    def with_libc(password: str, hashed: str) -> bool:
        try:
            result = crypt.crypt(password, hashed)
        except (ValueError, OSError):  # a NUL in the password; a hash the library refuses
            return False
        return result is not None and hmac.compare_digest(result, hashed)

    if crypt is None or not with_libc("procnetmon-no-such-user", DUMMY_HASH):
        raise WebConfigError(f"{path}: basic_auth_users needs bcrypt, which this Python lacks "
                             "(Debian: apt-get install python3-bcrypt)")
    return with_libc
