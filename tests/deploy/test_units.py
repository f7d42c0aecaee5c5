"""The systemd units in systemd/: their sandbox score, and no drift from the Ansible roles' templates.

The templates are rendered by Ansible itself (the venv that run-deploy-test.sh keeps in its cache), with each
role's defaults, so a directive changed on one side only fails here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "systemd"
ANSIBLE = REPO / "ansible"
SCRIPT = Path(__file__).with_name("run-deploy-test.sh")
MAX_EXPOSURE = 2.0

Directive = tuple[str, str, str]


def directives(text: str) -> list[Directive]:
    """(section, key, value) in file order; comments, blank lines and continuation-free whitespace dropped."""
    out: list[Directive] = []
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), " ".join(value.split())))
    return out


def exposure(unit: Path) -> float:
    systemd_analyze = shutil.which("systemd-analyze")
    if systemd_analyze is None:
        pytest.skip("systemd-analyze not found (apt-get install systemd)")
    proc = subprocess.run(
        [systemd_analyze, "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout + proc.stderr)
    assert match, f"no score in systemd-analyze's output:\n{proc.stdout}{proc.stderr}"
    return float(match.group(1))


@pytest.mark.parametrize("name", ["cctv-agent.service", "cctv-collector.service"])
def test_security_exposure_is_low(name: str) -> None:
    assert exposure(UNITS / name) <= MAX_EXPOSURE


def test_exposure_rises_when_hardening_is_removed(tmp_path: Path) -> None:
    """The score reacts to the unit's content (the assertion above is not vacuous)."""
    text = (UNITS / "cctv-agent.service").read_text(encoding="utf-8")
    weakened = re.sub(r"^(CapabilityBoundingSet|SystemCallFilter|ProtectSystem|NoNewPrivileges)=.*$", "", text,
                      flags=re.MULTILINE)  # fmt: skip
    unit = tmp_path / "cctv-agent.service"
    unit.write_text(weakened, encoding="utf-8")
    assert exposure(unit) > exposure(UNITS / "cctv-agent.service") + 1.0


@pytest.mark.parametrize("name", ["cctv-agent.service", "cctv-collector.service"])
def test_unit_essentials(name: str) -> None:
    found = directives((UNITS / name).read_text(encoding="utf-8"))
    keys = {key for _, key, _ in found}
    values = {key: value for _, key, value in found}
    assert values["Type"] == "notify"
    assert values["Restart"] == "on-failure"
    assert int(values["WatchdogSec"].removesuffix("s")) > 0
    assert int(values["TimeoutStopSec"].removesuffix("s")) >= 20 + 10  # the agent's 20 s drain, and margin
    assert values["CapabilityBoundingSet"] == ""
    assert values["NoNewPrivileges"] == "yes"
    assert values["DevicePolicy"] == "closed"
    assert {"ExecStartPre", "StateDirectory", "LoadCredential", "User", "SystemCallFilter"} <= keys
    assert "check-config" in values["ExecStartPre"]
    if name == "cctv-agent.service":
        assert values["DeviceAllow"] == "char-video4linux rw"
        assert values["SupplementaryGroups"] == "video"
        assert "PrivateDevices" not in keys, "PrivateDevices= would hide /dev/video*"


# ------------------------------------------------------------------------------- drift from the roles


def ansible_playbook() -> Path:
    """ansible-playbook from the deploy test's cached venv (made on demand when this is root)."""
    cache = Path(os.environ.get("CCTV_DEPLOY_CACHE", "/var/cache/cctv-deploy"))
    binary = cache / "ansible-venv" / "bin" / "ansible-playbook"
    if not binary.exists():
        if os.geteuid() != 0:
            pytest.skip(
                f"no Ansible venv at {binary.parent} (run tests/deploy/run-deploy-test.sh as root once)"
            )
        subprocess.run(["bash", str(SCRIPT), "--ansible-venv-only"], check=True, timeout=900)
    return binary


def render_play(out: Path) -> list[dict[str, object]]:
    """A playbook (JSON is YAML) that loads each role's defaults and vars and renders its templates."""
    roles = ANSIBLE / "roles"
    tasks: list[dict[str, object]] = []
    for role, unit, config in (
        ("cctv_agent", "cctv-agent.service", "config.toml"),
        ("cctv_collector", "cctv-collector.service", "collector.toml"),
    ):
        block: list[dict[str, object]] = [
            {"ansible.builtin.include_vars": {"file": str(roles / role / "defaults" / "main.yml")}},
            {"ansible.builtin.include_vars": {"file": str(roles / role / "vars" / "main.yml")}},
            # The canonical units show one credential; the roles' default is none.
            {"ansible.builtin.set_fact": {f"{role}_credentials": {"mqtt-password": "unused"}}},
        ]
        block += [
            {
                "ansible.builtin.template": {
                    "src": str(roles / role / "templates" / f"{name}.j2"),
                    "dest": str(out / name),
                    "mode": "0644",
                }
            }
            for name in (unit, config)
        ]
        tasks.append({"name": role, "block": block})
    return [
        {"name": "Render", "hosts": "localhost", "connection": "local", "gather_facts": False, "tasks": tasks}
    ]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    binary = ansible_playbook()
    out = tmp_path_factory.mktemp("rendered")
    play = out / "render.yml"
    play.write_text(json.dumps(render_play(out)), encoding="utf-8")
    env = {"PATH": f"{binary.parent}:/usr/bin:/bin", "HOME": str(out), "LANG": "C.UTF-8",
           "ANSIBLE_LOCAL_TEMP": str(out / "tmp"), "ANSIBLE_NOCOLOR": "1"}  # fmt: skip
    proc = subprocess.run(
        [str(binary), "-i", "localhost,", str(play)],
        capture_output=True, text=True, env=env, check=False, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


@pytest.mark.parametrize("name", ["cctv-agent.service", "cctv-collector.service"])
def test_role_template_renders_the_canonical_unit(rendered: Path, name: str) -> None:
    canonical = directives((UNITS / name).read_text(encoding="utf-8"))
    from_role = directives((rendered / name).read_text(encoding="utf-8"))
    assert from_role == canonical


def test_rendered_agent_config_passes_check_config(rendered: Path) -> None:
    proc = subprocess.run(
        [str(REPO / ".venv" / "bin" / "python"), "-m", "agent", "check-config", str(rendered / "config.toml")],
        capture_output=True, text=True, check=False, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "cam1" in proc.stdout


def test_rendered_collector_config_passes_check_config(rendered: Path) -> None:
    proc = subprocess.run(
        [str(REPO / ".venv" / "bin" / "python"), "-m", "agent", "check-config", "--collector",
         str(rendered / "collector.toml")],
        capture_output=True, text=True, check=False, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
