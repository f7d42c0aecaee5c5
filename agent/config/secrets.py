"""Secrets for the ``[mqtt]`` table: read at load time from the environment, a file or a systemd credential.

Precedence for the MQTT password (first found wins):

1. the environment variable ``CCTV_MQTT_PASSWORD``;
2. ``password_file`` (a path; a relative one is looked up in ``$CREDENTIALS_DIRECTORY`` when systemd set it
   with ``LoadCredential=``, otherwise next to the config file);
3. ``password = "credential:NAME"``: the file ``$CREDENTIALS_DIRECTORY/NAME``;
4. ``password`` as a literal in the TOML (allowed, but then the config file is a secret too).

TLS files (``ca_file``, ``cert_file``, ``key_file``) follow the same lookup (``credential:NAME``, relative
names) and must exist and be readable when TLS is enabled. Paths are resolved here, on the raw table, so that
the models only ever see final values and error messages never show a secret.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.config.schema import Problems

PASSWORD_ENV = "CCTV_MQTT_PASSWORD"  # noqa: S105 — the variable's name, not a password
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
    if "password" in out and "password_file" in out:
        problems.add(f"{path}.password_file", "give either password or password_file, not both")
    from_env = env.get(PASSWORD_ENV)
    pointer = out.get("password_file")
    literal = out.get("password")
    if from_env:
        out["password"] = from_env
    elif isinstance(pointer, str) and pointer:
        file = locate(pointer, creds, base_dir, f"{path}.password_file", problems)
        if file is not None:
            out["password_file"] = str(file)
            secret = read_secret(file, f"{path}.password_file", problems)
            if secret is not None:
                out["password"] = secret
    elif isinstance(literal, str) and literal.startswith(CREDENTIAL_PREFIX):
        file = locate(literal, creds, base_dir, f"{path}.password", problems)
        if file is not None:
            out["password_file"] = str(file)
            secret = read_secret(file, f"{path}.password", problems)
            if secret is not None:
                out["password"] = secret
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
