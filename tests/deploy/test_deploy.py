"""The Ansible roles (broker, collector, agent) deployed into a booted Debian 12 system: see run-deploy-test.sh."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("run-deploy-test.sh")
SKIPPED = 77
TOOLS = ("debootstrap", "systemd-nspawn", "nsenter", "mosquitto_sub", "openssl")


@pytest.mark.deploy
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_roles_deploy_a_running_hardened_broker_collector_and_agent() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: debootstrap, chroot and systemd-nspawn")
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (apt-get install debootstrap systemd-container "
                    "mosquitto-clients openssl)")  # fmt: skip
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, check=False, timeout=1150)
    if proc.returncode == SKIPPED:
        pytest.skip(proc.stderr.strip().splitlines()[-1])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    assert "PASS" in proc.stderr
