"""Secrets of the ``[mqtt]`` and ``[capture]`` tables: read at load time from the environment, a file or a
systemd credential.

Precedence for a password (first found wins):

1. the environment variable: ``CCTV_MQTT_PASSWORD`` for the broker, ``CCTV_CAMERA_PASSWORD`` for the camera;
2. ``password_file`` (a path; a relative one is looked up in ``$CREDENTIALS_DIRECTORY`` when systemd set it
   with ``LoadCredential=``, otherwise next to the config file);
3. ``password = "credential:NAME"``: the file ``$CREDENTIALS_DIRECTORY/NAME``;
4. ``password`` as a literal in the TOML (allowed, but then the config file is a secret too); for the camera
   also the password written in ``url`` itself (``rtsp://user:password@host/...``).

The camera's password, read so, goes into ``capture.url`` (percent-encoded after the user the URL names), so
the capture code sees one URL as before; the ffmpeg child reads that URL from its stdin, never from its
command line (``agent.capture.ffmpeg``).

TLS files (``ca_file``, ``cert_file``, ``key_file``) follow the same lookup (``credential:NAME``, relative
names) and must exist and be readable when TLS is enabled; so does the camera's ``capture.ca_file``. Paths are
resolved here, on the raw table, so that the models only ever see final values and error messages never show
a secret.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent.config.schema import Problems
from agent.urls import with_password, without_password

PASSWORD_ENV = "CCTV_MQTT_PASSWORD"  # noqa: S105 — the variable's name, not a password
CAMERA_PASSWORD_ENV = "CCTV_CAMERA_PASSWORD"  # noqa: S105 — idem
CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"
CREDENTIAL_PREFIX = "credential:"
TLS_FILES = ("ca_file", "cert_file", "key_file")


def resolve_mqtt_secrets(
    table: Any, path: str, env: Mapping[str, str], base_dir: Path | None, problems: Problems
) -> Any:
    """A copy of the raw ``[mqtt]`` table with the password read and the file names made absolute."""
    if not isinstance(table, Mapping):
        return table  # the schema reports the wrong type
    out = dict(table)
    creds = env.get(CREDENTIALS_ENV) or None
    resolve_password(out, path, env.get(PASSWORD_ENV), creds, base_dir, problems)
    tls = out.get("tls")
    if isinstance(tls, Mapping) and tls.get("enabled") is True:
        tls = dict(tls)
        for name in TLS_FILES:
            value = tls.get(name)
            if isinstance(value, str) and value:
                file = locate(value, creds, base_dir, f"{path}.tls.{name}", problems)
                tls[name] = str(file) if file is not None else value
        out["tls"] = tls
    return out


def resolve_capture_secrets(
    table: Any, path: str, env: Mapping[str, str], base_dir: Path | None, problems: Problems
) -> Any:
    """A copy of the raw ``[capture]`` table whose ``url`` carries the camera's password, when one is given
    apart from it (``CCTV_CAMERA_PASSWORD``, ``password_file``, ``password``), and whose ``ca_file`` is found
    as the TLS files are. The environment variable only counts for a camera, a table with a ``url``."""
    if not isinstance(table, Mapping):
        return table  # the schema reports the wrong type
    out = dict(table)
    ca_file = out.get("ca_file")
    if isinstance(ca_file, str) and ca_file:
        file = locate(ca_file, env.get(CREDENTIALS_ENV) or None, base_dir, f"{path}.ca_file", problems)
        out["ca_file"] = str(file) if file is not None else ca_file
    url = out.get("url")
    in_file = "password" in out or "password_file" in out
    from_env = env.get(CAMERA_PASSWORD_ENV) if isinstance(url, str) else None
    if not in_file and not from_env:
        return out
    resolved = resolve_password(out, path, from_env, env.get(CREDENTIALS_ENV) or None, base_dir, problems)
    if resolved is None or not isinstance(url, str):
        return out  # a problem is reported, or the model says the keys need a camera's url
    if in_file and not from_env and urlsplit(url).password is not None:
        problems.add(f"{path}.url", "holds a password, and password or password_file gives one too: keep one")
        return out
    try:
        out["url"] = with_password(without_password(url) if from_env else url, resolved)
    except ValueError as e:
        problems.add(f"{path}.url", f"cannot take the password: {e}")
    return out


def resolve_password(
    out: dict[str, Any],
    path: str,
    from_env: str | None,
    creds: str | None,
    base_dir: Path | None,
    problems: Problems,
) -> str | None:
    """Read the password of the table ``out`` (in place: ``password`` becomes the secret, ``password_file``
    the file it came from) by the module's precedence; returns it, or None when there is none or a problem."""
    if "password" in out and "password_file" in out:
        problems.add(f"{path}.password_file", "give either password or password_file, not both")
    pointer = out.get("password_file")
    literal = out.get("password")
    if from_env:
        out["password"] = from_env
        return from_env
    if isinstance(pointer, str) and pointer:
        key, source = f"{path}.password_file", pointer
    elif isinstance(literal, str) and literal.startswith(CREDENTIAL_PREFIX):
        key, source = f"{path}.password", literal
    else:
        return literal if isinstance(literal, str) else None
    file = locate(source, creds, base_dir, key, problems)
    if file is None:
        return None
    out["password_file"] = str(file)
    secret = read_secret(file, key, problems)
    if secret is not None:
        out["password"] = secret
    return secret


def locate(value: str, creds: str | None, base_dir: Path | None, key: str, problems: Problems) -> Path | None:
    """The readable file ``value`` names, or None after adding why it cannot be used."""
    if value.startswith(CREDENTIAL_PREFIX):
        name = value.removeprefix(CREDENTIAL_PREFIX)
        if not name or "/" in name:
            problems.add(key, f"{value!r}: a credential name is one file name, without '/'")
            return None
        if creds is None:
            problems.add(key, f"{value!r} needs ${CREDENTIALS_ENV} (systemd sets it with LoadCredential=)")
            return None
        file = Path(creds) / name
    else:
        file = Path(value)
        if not file.is_absolute():
            if creds is not None:
                file = Path(creds) / file
            elif base_dir is not None:
                file = base_dir / file
    if not file.is_file():
        problems.add(key, f"file not found: {file}")
        return None
    if not os.access(file, os.R_OK):
        problems.add(key, f"file not readable by this user: {file}")
        return None
    return file


def read_secret(file: Path, key: str, problems: Problems) -> str | None:
    """The file's text without its trailing newline (``echo secret > file`` adds one)."""
    try:
        secret = file.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as e:
        problems.add(key, f"cannot read {file}: {e}")
        return None
    if not secret:
        problems.add(key, f"file is empty: {file}")
        return None
    return secret
