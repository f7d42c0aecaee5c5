#!/usr/bin/env bash
# Deploys all three roles, cctv_mosquitto, cctv_collector and cctv_agent, into one Debian 12 tree with Ansible's
# chroot connection (twice: the second run must change nothing), boots the tree with systemd-nspawn and checks
# the running services from inside: the broker speaks TLS only and enforces its users; frames reach it (read
# from the host over TLS) and come back from it into the collector's archive, which verifies frame by frame;
# NoNewPrivs/seccomp/no capabilities for agent and collector; the watchdog restarts a frozen agent.
#
# Needs root, debootstrap, systemd-nspawn (systemd-container), mosquitto-clients, openssl, python3 with venv, and
# Debian's mirror (the broker role installs mosquitto in the tree with apt).
# Exit codes: 0 passed, 1 failed, 77 cannot run here (not root, a tool missing).
# Caches (CCTV_DEPLOY_CACHE, default /var/cache/cctv-deploy): the Ansible venv, the debootstrap tree as a tar,
# and the dependency wheels; a warm run skips all three. Everything else lives in a temporary directory that is
# removed on exit, with the container stopped and every mount under it released.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE=${CCTV_DEPLOY_CACHE:-/var/cache/cctv-deploy}
SUITE=bookworm
ANSIBLE_SPEC=('ansible-core>=2.17,<2.18' 'ansible>=10,<11' 'ansible-lint>=24,<26')
CAMERA=cam-ci
SITE=ci
WATCHDOG_S=10
PASSWORD=ci-$RANDOM-$RANDOM
COLLECTOR_PASSWORD=ci-collector-$RANDOM-$RANDOM
START=$(date +%s)

log() { printf '[deploy %4ds] %s\n' "$(($(date +%s) - START))" "$*" >&2; }
fail() { log "FAIL: $*"; exit 1; }
skip() { log "SKIP: $*"; exit 77; }

# ------------------------------------------------------------------------------------------ Ansible venv
AVENV=$CACHE/ansible-venv
ensure_ansible_venv() {
    if [[ ! -x $AVENV/bin/ansible-playbook || $(cat "$AVENV/.spec" 2>/dev/null) != "${ANSIBLE_SPEC[*]}" ]]; then
        log "creating the Ansible venv in $AVENV"
        rm -rf "$AVENV"
        python3 -m venv "$AVENV"
        "$AVENV/bin/pip" install -q "${ANSIBLE_SPEC[@]}" 2> >(grep -v "^WARNING: Location" >&2)
        echo "${ANSIBLE_SPEC[*]}" >"$AVENV/.spec"
    fi
    "$AVENV/bin/ansible-galaxy" collection list community.general 2>/dev/null | grep -q community.general \
        || fail "community.general is missing from the ansible package in $AVENV"
}

# --ansible-venv-only: make (or check) the cached Ansible venv and stop; tests/deploy/test_units.py uses it.
if [[ ${1:-} == --ansible-venv-only ]]; then
    mkdir -p "$CACHE"
    ensure_ansible_venv
    exit 0
fi

[[ $(id -u) -eq 0 ]] || skip "needs root (debootstrap, chroot, systemd-nspawn)"
for tool in debootstrap systemd-nspawn nsenter mosquitto_sub openssl python3 tar findmnt; do
    command -v "$tool" >/dev/null || skip "$tool not found (apt-get install debootstrap systemd-container mosquitto-clients openssl)"
done

WORK=$(mktemp -d /var/tmp/cctv-deploy.XXXXXX)
ROOT=$WORK/root
MACHINE=cctv-deploy-$$
NSPAWN_PID=
LEADER=

cleanup() {
    local rc=$?
    set +e
    if [[ -n $NSPAWN_PID ]] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
        # The container is thrown away: killing its init ends its whole pid namespace at once, and nspawn then
        # exits and undoes its own mounts. (An orderly shutdown waits for the agent's 20 s spool drain.)
        [[ -n $LEADER ]] && kill -KILL "$LEADER" 2>/dev/null
        kill -TERM "$NSPAWN_PID"
        for _ in $(seq 100); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$NSPAWN_PID" 2>/dev/null
        wait "$NSPAWN_PID" 2>/dev/null
    fi
    rm -rf "/run/systemd/nspawn/propagate/$MACHINE"
    # Deepest mounts first; a lazy unmount for whatever is still busy.
    findmnt -rn -o TARGET | grep -F "$WORK/" | sort -r | while read -r m; do umount "$m" 2>/dev/null || umount -l "$m"; done
    if findmnt -rn -o TARGET | grep -qF "$WORK/"; then
        log "mounts left under $WORK; not removing it"
    else
        rm -rf --one-file-system "$WORK"
    fi
    if [[ $rc -ne 0 && $rc -ne 77 && -f $WORK/boot.log ]]; then tail -n 30 "$WORK/boot.log" >&2; fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$CACHE"
ensure_ansible_venv

# ------------------------------------------------------------------------------ the Debian tree, cached
mirror() {
    # The Debian mirror apt already uses (deb822 or one-line sources), else the default one.
    local uri
    uri=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '
        /^URIs:/ { u = $2 } /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == "'$SUITE'") print u }' | head -n1)
    [[ -n $uri ]] || uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
        | awk '$1 == "deb" && $3 == "'$SUITE'" { print $2; exit }')
    echo "${uri:-http://deb.debian.org/debian}"
}
TREE_TAR=$CACHE/$SUITE.tar
if [[ ! -s $TREE_TAR ]]; then
    MIRROR=$(mirror)
    log "debootstrap $SUITE from $MIRROR (cold run, about 2 minutes)"
    rm -rf "$CACHE/bootstrap.tmp"
    debootstrap --variant=minbase --include=python3,python3-venv,systemd,systemd-sysv,dbus,ca-certificates \
        "$SUITE" "$CACHE/bootstrap.tmp" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
        || { tail -n 20 "$CACHE/debootstrap.log" >&2; fail "debootstrap failed"; }
    tar -C "$CACHE/bootstrap.tmp" --numeric-owner -cf "$TREE_TAR.tmp" .
    mv "$TREE_TAR.tmp" "$TREE_TAR"
    rm -rf "$CACHE/bootstrap.tmp"
fi
mkdir -p "$ROOT"
tar -C "$ROOT" --numeric-owner -xf "$TREE_TAR"
log "tree ready in $ROOT"

# The host's CA bundle (it may hold a proxy's CA) becomes one more local CA of the target, so pip there works.
if [[ -s /etc/ssl/certs/ca-certificates.crt ]]; then
    cp /etc/ssl/certs/ca-certificates.crt "$ROOT/usr/local/share/ca-certificates/host-bundle.crt"
    chroot "$ROOT" update-ca-certificates >/dev/null 2>&1 || log "update-ca-certificates failed in the tree"
fi
echo "$MACHINE" >"$ROOT/etc/hostname"

# --------------------------------------------------------------------------------------------- wheels
PY=$REPO/.venv/bin/python
[[ -x $PY ]] || PY=python3
mkdir -p "$WORK/dist"
"$PY" -m pip wheel -q --no-deps -w "$WORK/dist" "$REPO" 2> >(grep -v "^WARNING: Location" >&2)
WHEEL=$(ls "$WORK"/dist/cctv_agent-*.whl)
DEPS_KEY=$(sed -n '/^dependencies = \[/,/^\]/p' "$REPO/pyproject.toml" | sha256sum | cut -c1-12)
WHEELHOUSE=$CACHE/wheels-$(uname -m)-py311-$DEPS_KEY
if [[ ! -d $WHEELHOUSE ]]; then
    log "downloading the dependency wheels into $WHEELHOUSE"
    "$PY" -m pip download -q --only-binary=:all: --python-version 3.11 -d "$WHEELHOUSE.tmp" "$WHEEL" \
        2> >(grep -v "^WARNING: Location" >&2)
    rm -f "$WHEELHOUSE.tmp"/cctv_agent-*.whl
    mv "$WHEELHOUSE.tmp" "$WHEELHOUSE"
fi

# ------------------------------------------------------------------- the broker's TLS certificate
# A CA and a server certificate for 127.0.0.1 (the container shares the host's network), made fresh each run.
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=cctv deploy test CA" \
    -keyout "$WORK/ca.key" -out "$WORK/ca.pem" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout "$WORK/server.key" -out "$WORK/server.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$WORK/san.ext"
openssl x509 -req -in "$WORK/server.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" -CAcreateserial -days 2 \
    -extfile "$WORK/san.ext" -out "$WORK/server.pem" 2>/dev/null
BROKER_USER=$SITE-$CAMERA  # the role's default username for a camera

# ------------------------------------------------------------------------------------------- deploy
cat >"$WORK/inventory.yml" <<EOF
all:
  vars:
    ansible_connection: community.general.chroot
    ansible_host: $ROOT
    ansible_python_interpreter: /usr/bin/python3
  children:
    cctv_brokers:
      hosts:
        edge:
          cctv_mosquitto_port: $PORT
          cctv_mosquitto_bind_address: 127.0.0.1
          cctv_mosquitto_tls_cert_file: $WORK/server.pem
          cctv_mosquitto_tls_key_file: $WORK/server.key
          cctv_mosquitto_cameras: [{site: $SITE, camera_id: $CAMERA, password: "$PASSWORD"}]
          cctv_mosquitto_collectors: [{username: collector, password: "$COLLECTOR_PASSWORD"}]
    cctv_agents:
      hosts:
        edge:
          cctv_agent_wheel_path: $WHEEL
          cctv_agent_wheelhouse: $WHEELHOUSE
          cctv_agent_camera_id: $CAMERA
          cctv_agent_site: $SITE
          cctv_agent_watchdog_sec: $WATCHDOG_S
          cctv_agent_restart_sec: 1
          cctv_agent_capture_simulated: {width: 320, height: 240, fps: 10.0}
          cctv_agent_install_ffmpeg: false  # a simulated camera decodes no video; ffmpeg is 100 MB of packages
          cctv_agent_agent: {stats_interval_s: 10.0}
          cctv_agent_mqtt: {host: 127.0.0.1, port: $PORT, username: $BROKER_USER, password_file: mqtt-password}
          cctv_agent_mqtt_tls: {enabled: true, ca_file: "credential:broker-ca"}
          cctv_agent_credentials:
            mqtt-password: "$PASSWORD"
            broker-ca: "{{ lookup('file', '$WORK/ca.pem') }}"
    cctv_collectors:
      hosts:
        edge:
          cctv_collector_wheel_path: $WHEEL
          cctv_collector_wheelhouse: $WHEELHOUSE
          cctv_collector_watchdog_sec: 30
          cctv_collector_mqtt: {host: 127.0.0.1, port: $PORT, client_id: cctv-collector-ci, username: collector,
                                password_file: mqtt-password}
          cctv_collector_mqtt_tls: {enabled: true, ca_file: "credential:broker-ca"}
          cctv_collector_credentials:
            mqtt-password: "$COLLECTOR_PASSWORD"
            broker-ca: "{{ lookup('file', '$WORK/ca.pem') }}"
EOF
ansible_env=(env -i PATH="$AVENV/bin:/usr/sbin:/usr/bin:/sbin:/bin" HOME="$WORK" LANG=C.UTF-8
    ANSIBLE_CONFIG="$REPO/ansible/ansible.cfg" ANSIBLE_LOCAL_TEMP="$WORK/ansible-local"
    ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0)

if [[ -z ${CCTV_DEPLOY_SKIP_LINT:-} ]]; then log "ansible-lint"
(cd "$REPO/ansible" && "${ansible_env[@]}" ansible-lint --offline -q) || fail "ansible-lint"; fi

mount -t proc proc "$ROOT/proc"  # for the chroot deploy only; unmounted before boot
deploy() {
    "${ansible_env[@]}" ansible-playbook -i "$WORK/inventory.yml" "${CCTV_DEPLOY_PLAYBOOK:-$REPO/ansible/site.yml}" --limit edge \
        >"$WORK/deploy-$1.log" 2>&1 || { tail -n 40 "$WORK/deploy-$1.log" >&2; fail "deploy run $1"; }
    grep -E '^edge +:' "$WORK/deploy-$1.log" >&2
}
log "preflight refuses a wheel built for another architecture"
OTHER_ARCH=aarch64; [[ $(uname -m) == aarch64 ]] && OTHER_ARCH=x86_64
FOREIGN=$WORK/foreign/$(basename "$WHEEL" | sed -E "s/_[a-z0-9_]+\.whl$/_$OTHER_ARCH.whl/")
mkdir -p "$WORK/foreign" && cp "$WHEEL" "$FOREIGN"
if "${ansible_env[@]}" ansible-playbook -i "$WORK/inventory.yml" "$REPO/ansible/site.yml" --limit edge \
    --tags cctv_agent_preflight -e "cctv_agent_wheel_path=$FOREIGN" >"$WORK/deploy-foreign.log" 2>&1; then
    fail "preflight accepted $(basename "$FOREIGN") on $(uname -m)"
fi
grep -q "was built for another machine" "$WORK/deploy-foreign.log" || {
    tail -n 20 "$WORK/deploy-foreign.log" >&2
    fail "preflight refused the foreign wheel without saying why"
}
log "deploy 1 (chroot)"
deploy 1
log "deploy 2 (chroot): must change nothing"
deploy 2
grep -qE '^edge +:.* changed=0 ' "$WORK/deploy-2.log" || {
    grep -E '^changed:' "$WORK/deploy-2.log" >&2
    fail "the second deploy changed something"
}
umount "$ROOT/proc"
# On one host, start the agent after the collector, as a new installation should (collectors first): the
# collector's READY=1 means it is subscribed, so the broker keeps every record for it from the first key on.
mkdir -p "$ROOT/etc/systemd/system/cctv-agent.service.d"
printf '[Unit]\nAfter=cctv-collector.service\n' >"$ROOT/etc/systemd/system/cctv-agent.service.d/after-collector.conf"

# --------------------------------------------------------------------------------------------- boot
log "booting $MACHINE"
systemd-nspawn -D "$ROOT" -M "$MACHINE" -b --register=no --keep-unit --console=read-only \
    >"$WORK/boot.log" 2>&1 </dev/null &
NSPAWN_PID=$!
for _ in $(seq 100); do  # nspawn's first child is transient: wait for the one that runs systemd
    LEADER=$(ps -o pid=,comm= --ppid "$NSPAWN_PID" | awk '$2 == "systemd" { print $1; exit }' || true)
    [[ -n $LEADER ]] && break
    sleep 0.1
done
[[ -n $LEADER ]] || fail "the container did not start"
in_ct() { nsenter -t "$LEADER" -a -- "$@"; }
state=
for _ in $(seq 90); do  # systemctl needs the container's bus, which comes up during the boot
    state=$(in_ct systemctl is-system-running 2>/dev/null || true)
    [[ $state == running || $state == degraded ]] && break
    sleep 1
done
log "container booted: $state"
in_ct systemctl --failed --no-legend --plain >&2 || true

main_pid() { in_ct systemctl show -P MainPID cctv-agent.service; }
wait_active() {
    for _ in $(seq 60); do
        [[ $(in_ct systemctl is-active cctv-agent.service || true) == active && $(main_pid) != 0 ]] && return 0
        sleep 1
    done
    in_ct journalctl -u cctv-agent.service --no-pager -n 40 >&2
    fail "cctv-agent.service is not active"
}
wait_active
PID1=$(main_pid)
log "cctv-agent.service active, MainPID $PID1"

# The deployed broker: active, TLS only, users only; frames reach it (read from the host: shared network).
[[ $(in_ct systemctl is-active mosquitto.service || true) == active ]] || {
    in_ct journalctl -u mosquitto.service --no-pager -n 40 >&2
    fail "mosquitto.service is not active"
}
sub() { timeout 60 mosquitto_sub -h 127.0.0.1 -p "$PORT" --cafile "$WORK/ca.pem" "$@" 2>&1; }
for _ in $(seq 10); do  # a wrong password is refused by MQTT; anything else at the TCP/TLS level is retried
    out=$(sub -u collector -P wrong -t 'cctv/none' -C 1 -W 3 || true)
    grep -qi "not authori[sz]ed" <<<"$out" && break
    [[ $out == *rror* ]] || fail "the broker let a wrong password in (mosquitto_sub: ${out:-nothing})"
    sleep 1
done
grep -qi "not authori[sz]ed" <<<"$out" || fail "the broker did not refuse a wrong password (mosquitto_sub: $out)"
if timeout 10 mosquitto_sub -h 127.0.0.1 -p "$PORT" -u collector -P "$COLLECTOR_PASSWORD" -t '#' -C 1 -W 5 \
    >/dev/null 2>&1; then fail "the broker answered MQTT without TLS"; fi
FRAMES=20
count=$(sub -u collector -P "$COLLECTOR_PASSWORD" -i cctv-deploy-probe -t "cctv/$SITE/$CAMERA/frame" -q 1 \
    -C "$FRAMES" -F '%t' | grep -c "^cctv/$SITE/$CAMERA/frame$" || true)
[[ $count -ge $FRAMES ]] || { in_ct journalctl -u cctv-agent.service --no-pager -n 40 >&2; fail "$count/$FRAMES frames reached the broker"; }
log "mosquitto.service active (TLS only, passwords); $count frame messages read from it on the host"

# The sandbox is in effect on the running processes.
sandboxed() {  # unit, user
    local pid status uid
    pid=$(in_ct systemctl show -P MainPID "$1")
    status=$(in_ct cat "/proc/$pid/status")
    field() { awk -v k="$1:" '$1 == k { print $2 }' <<<"$status"; }
    [[ $(field NoNewPrivs) == 1 ]] || fail "$1: NoNewPrivs is $(field NoNewPrivs)"
    [[ $(field Seccomp) == 2 ]] || fail "$1: Seccomp is $(field Seccomp), not 2 (filter)"
    for cap in CapEff CapPrm CapBnd CapAmb; do
        [[ $(field $cap) =~ ^0+$ ]] || fail "$1: $cap is $(field $cap), not empty"
    done
    uid=$(in_ct id -u "$2")
    [[ $(field Uid) == "$uid" ]] || fail "$1 runs as uid $(field Uid), not $2 ($uid)"
    log "$1: NoNewPrivs=1 Seccomp=2 capabilities empty, uid $uid ($2)"
}
sandboxed cctv-agent.service cctv-agent
groups=$(in_ct id -nG cctv-agent)
grep -qw video <<<"$groups" || fail "cctv-agent is not in the video group"

# The collector, deployed beside the agent, files the frames it gets back from the broker.
for _ in $(seq 60); do
    [[ $(in_ct systemctl is-active cctv-collector.service || true) == active ]] && break
    sleep 1
done
[[ $(in_ct systemctl is-active cctv-collector.service || true) == active ]] || {
    in_ct journalctl -u cctv-collector.service --no-pager -n 40 >&2
    fail "cctv-collector.service is not active"
}
sandboxed cctv-collector.service cctv-collector
as_collector() { in_ct runuser -u cctv-collector -- /opt/cctv-agent/venv/bin/cctv-agent "$@"; }  # files stay its own
archived() {
    as_collector --log-level ERROR archive info /srv/cctv/archive --json 2>/dev/null |
        python3 -c 'import json, sys; print(sum(c["frames"] for c in json.load(sys.stdin)))' 2>/dev/null || echo 0
}
for _ in $(seq 60); do
    [[ $(archived) -ge $FRAMES ]] && break
    sleep 1
done
[[ $(archived) -ge $FRAMES ]] || {
    in_ct journalctl -u cctv-collector.service --no-pager -n 40 >&2
    fail "$(archived)/$FRAMES frames in the collector's archive"
}
log "$(archived) frames in the collector's archive"

# A frozen agent stops pinging: the watchdog kills it and Restart= brings a new one.
in_ct /bin/sh -c "kill -STOP $PID1"  # a pid of the container's pid namespace; dash has kill built in
log "agent $PID1 frozen (SIGSTOP); waiting for the watchdog (WatchdogSec=${WATCHDOG_S}s)"
PID2=$PID1
for _ in $(seq $((WATCHDOG_S + 30))); do
    sleep 1
    PID2=$(main_pid)
    [[ $PID2 != 0 && $PID2 != "$PID1" ]] && break
done
[[ $PID2 != 0 && $PID2 != "$PID1" ]] || fail "no restart after SIGSTOP (MainPID still $PID2)"
journal=$(in_ct journalctl -u cctv-agent.service --no-pager -o cat)
grep -q "Watchdog timeout" <<<"$journal" || fail "the restart was not the watchdog's"
wait_active
log "watchdog restarted the agent: MainPID $PID1 -> $(main_pid)"

# A clean stop within TimeoutStopSec: the agent flushes and exits 0.
t0=$(date +%s)
in_ct systemctl stop cctv-agent.service
result=$(in_ct systemctl show -P Result cctv-agent.service)
[[ $result == success ]] || fail "stop ended with Result=$result"
log "stopped cleanly in $(($(date +%s) - t0)) s"

# The collector stops cleanly too, and its archive decodes: every frame hash checked.
in_ct systemctl stop cctv-collector.service
result=$(in_ct systemctl show -P Result cctv-collector.service)
[[ $result == success ]] || fail "collector stop ended with Result=$result"
as_collector archive verify /srv/cctv/archive >"$WORK/verify.log" 2>&1 || {
    cat "$WORK/verify.log" >&2
    fail "archive verify"
}
log "collector stopped cleanly; archive verify: $(tail -n 1 "$WORK/verify.log")"

log "PASS in $(($(date +%s) - START)) s"
