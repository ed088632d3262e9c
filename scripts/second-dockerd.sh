#!/usr/bin/env bash
# A second Docker daemon on this machine, for the several-hosts tests: its own socket, data root, exec root and pid
# file and bridge, no iptables changes (sandboxes have no network), live-restore so that stopping it leaves its
# containers running (a host that goes away and comes back). `start` also loads the sandbox image into it.
# Usage: bash scripts/second-dockerd.sh start|stop
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=/run/is-docker2
SOCK=$DIR/docker.sock
say () { printf '[second-dockerd] %s\n' "$*"; }
d2 () { docker -H "unix://$SOCK" "$@"; }
case "${1:-}" in
  start)
    if ! d2 info >/dev/null 2>&1; then
      mkdir -p "$DIR" /var/lib/is-docker2
      if [ -f "$DIR/dockerd.pid" ] && ! kill -0 "$(cat "$DIR/dockerd.pid")" 2>/dev/null; then rm -f "$DIR/dockerd.pid"; fi
      # A bridge of its own: with --bridge=none dockerd deletes docker0, which the first daemon still uses.
      if ! ip link show isdocker2 >/dev/null 2>&1; then
        ip link add name isdocker2 type bridge
        ip addr add 172.31.250.1/24 dev isdocker2
        ip link set isdocker2 up
      fi
      nohup dockerd --host "unix://$SOCK" --data-root /var/lib/is-docker2 --exec-root "$DIR/exec" --pidfile "$DIR/dockerd.pid" \
        --iptables=false --ip6tables=false --bridge=isdocker2 --ip-masq=false --live-restore >/var/log/is-docker2.log 2>&1 &
      for _ in $(seq 1 60); do d2 info >/dev/null 2>&1 && break; sleep 0.5; done
      d2 info >/dev/null 2>&1 || { say "did not come up; see /var/log/is-docker2.log"; exit 1; }
    fi
    # Without hooks inherited from a test runner (tap's coverage: NODE_OPTIONS, NODE_V8_COVERAGE): run from the hosts
    # test, this helper would report services/sandbox/image.ts without its source map and spoil the coverage report.
    tag=$(env -u NODE_OPTIONS -u NODE_V8_COVERAGE npx --no-install tsx -e "import('./services/sandbox/image.ts').then(m => console.log(m.sandboxImageTag()))")
    if ! d2 image inspect "$tag" >/dev/null 2>&1; then
      say "loading $tag"
      docker save "$tag" | d2 load -q
    fi
    say "ready at unix://$SOCK with $tag"
    ;;
  stop)
    if [ -f "$DIR/dockerd.pid" ]; then
      pid=$(cat "$DIR/dockerd.pid")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done # until it has exited
      rm -f "$DIR/dockerd.pid"
    fi
    say "stopped"
    ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
