#!/usr/bin/env bash
# Sets up this machine to run and test the server: Debian packages, the Docker daemon, Redis, npm packages,
# the sandbox image, and (outside CI) a .env with a fresh admin key. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

say () { printf '[setup] %s\n' "$*"; }
PACKAGES=(redis-server docker.io docker-compose debootstrap tmux chromium prometheus iproute2 criu openssl)  # openssl: the egress CA and its certificates; prometheus: promtool; iproute2: the second dockerd's bridge; criu: Docker's checkpoints under runc
# SANDBOX_RUNSC=1 also installs gVisor's runsc and registers it with Docker as the `runsc` runtime (CI does).
[ "${SANDBOX_RUNSC:-0}" = "1" ] && PACKAGES+=(runsc)

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    say "missing Debian packages: ${missing[*]}"
    say "install them as root: apt-get install -y ${missing[*]}"
    exit 1
  fi
  say "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The Debian docker client may be shadowed by another on PATH; the daemon is Debian's.
docker_ok () { docker info >/dev/null 2>&1; }

# Merged into daemon.json (other settings kept). "experimental": Docker's checkpoint API, which pausing a sandbox with
# its memory uses (CRIU under runc, gVisor's own checkpoint under runsc). SANDBOX_RUNSC=1 also registers runsc, with
# --host-uds=all: a unix socket made inside gVisor is a host socket, so the server reaches the agent over its socket and
# the egress relay reaches the server's proxy (the server reads these arguments from docker info).
mkdir -p /etc/docker
changed=$(SANDBOX_RUNSC="${SANDBOX_RUNSC:-0}" python3 - <<'PY'
import json, os
path = '/etc/docker/daemon.json'
conf = json.load(open(path)) if os.path.exists(path) and os.path.getsize(path) else {}
changed = []
if conf.get('experimental') is not True:
    conf['experimental'] = True
    changed.append('experimental')
want = {'path': '/usr/bin/runsc', 'runtimeArgs': ['--network=none', '--host-uds=all']}
if os.environ['SANDBOX_RUNSC'] == '1' and conf.get('runtimes', {}).get('runsc') != want:
    conf.setdefault('runtimes', {})['runsc'] = want
    changed.append('runtimes')
if changed:
    json.dump(conf, open(path, 'w'), indent=2)
print(' '.join(changed))
PY
)
if docker_ok && [ -n "$changed" ]; then
  if [[ "$changed" == *experimental* ]]; then
    # Experimental features are read at start only: the daemon restarts (its running containers stop).
    say "restarting dockerd with experimental features (the checkpoint API)"
    if command -v systemctl >/dev/null && systemctl restart docker >/dev/null 2>&1; then :; else
      pid=$(cat /var/run/docker.pid 2>/dev/null || pidof -s dockerd)
      kill "$pid"
      for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    fi
  else
    say "registering runsc with the running dockerd"
    kill -HUP "$(cat /var/run/docker.pid 2>/dev/null || pidof -s dockerd)"
    for _ in $(seq 1 40); do docker info --format '{{json .Runtimes}}' | grep -q 'host-uds=all' && break; sleep 0.25; done
  fi
fi
if ! docker_ok; then
  say "starting dockerd"
  if command -v systemctl >/dev/null && systemctl start docker >/dev/null 2>&1; then :; else
    [ "$(id -u)" -eq 0 ] || { say "the Docker daemon is not running and I am not root: start it (sudo dockerd &)"; exit 1; }
    nohup dockerd >/var/log/dockerd.log 2>&1 &
  fi
  for _ in $(seq 1 60); do docker_ok && break; sleep 0.5; done
  docker_ok || { say "dockerd did not come up; see /var/log/dockerd.log"; exit 1; }
fi

if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  say "starting redis-server on 127.0.0.1:6379 (AOF on)"
  mkdir -p /var/lib/interpreter-server-redis
  redis-server --bind 127.0.0.1 --port 6379 --daemonize yes --appendonly yes --appendfsync everysec \
    --dir /var/lib/interpreter-server-redis --logfile /var/log/interpreter-server-redis.log
  for _ in $(seq 1 40); do redis-cli ping >/dev/null 2>&1 && break; sleep 0.25; done
  redis-cli ping >/dev/null || { say "redis-server did not start"; exit 1; }
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules ]; then
  say "installing npm packages"
  npm ci --no-audit --no-fund --loglevel=error
fi

say "sandbox image: $(npx --no-install tsx scripts/build-image.ts)"
# The slim profile too (python and node only): the server's image is built on its base, and the several-hosts test
# loads it into a second Docker daemon (half the bytes of the full one). Built once here, not in the tests.
say "slim sandbox image: $(SANDBOX_IMAGE_PROFILE=slim npx --no-install tsx scripts/build-image.ts)"

if [ "${CI:-}" != "true" ] && [ ! -f .env ]; then
  key=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
  # The deployment CA of the egress proxy (its key readable by this user only), and the key that seals secrets.
  ca_dir="${EGRESS_CA_DIR:-/var/lib/interpreter-server/egress-ca}"
  npx --no-install tsx scripts/make-ca.ts "$ca_dir" >/dev/null
  cat > .env <<ENV
# written by npm run setup; see docs/configuration.md for every setting
API_KEYS=admin:admin:${key}
REDIS_URL=redis://127.0.0.1:6379
SECRETS_KEY=$(head -c 32 /dev/urandom | base64 | tr -d '/+=')
EGRESS_CA_DIR=${ca_dir}
ENV
  chmod 600 .env
  say "wrote .env with an admin API key: ${key}, a SECRETS_KEY and the egress CA in ${ca_dir}"
fi
say "ready"
