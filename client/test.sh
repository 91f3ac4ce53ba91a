#!/usr/bin/env bash
# The browser client's single CI entry point: unit tests of the primitives (fake socket, no
# browser), then end-to-end tests in headless Chromium against the release binary.
#
#   client/test.sh                      # from anywhere
#   MESSAGING_BIN=/path/to/messaging client/test.sh
#
# Exits non-zero if anything fails. Screenshots land in client/artifacts/.
set -uo pipefail

cd "$(dirname "$0")"
CLIENT_DIR=$(pwd)

step() { printf '\n== %s\n' "$*"; }
die() { printf 'client/test.sh: %s\n' "$*" >&2; exit 1; }

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then
    apt-get update -qq || return 1
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

# 1. Chromium from Debian (playwright cannot download browsers here).
if [ ! -x /usr/bin/chromium ]; then
  step "installing Debian chromium"
  apt_install chromium || die "could not install chromium"
fi
# Emoji in the screenshots need a colour emoji font; cosmetic, so failure is not fatal.
if command -v fc-list >/dev/null && ! fc-list 2>/dev/null | grep -qi emoji; then
  apt_install fonts-noto-color-emoji >/dev/null 2>&1 || printf 'note: no emoji font; screenshots show boxes for emoji\n'
fi

# 2. Node dependencies, exactly as locked.
command -v node >/dev/null || die "node is required (>= 20)"
step "npm ci"
npm ci --no-audit --no-fund --loglevel=error || die "npm ci failed"

# 3. The release binary the browser tests start (built if missing).
BIN="${MESSAGING_BIN:-../target/release/messaging}"
case "$BIN" in /*) ;; *) BIN="$CLIENT_DIR/$BIN" ;; esac
if [ ! -x "$BIN" ]; then
  step "building the release binary ($BIN is missing)"
  (cd "$CLIENT_DIR/.." && cargo build --release) || die "cargo build --release failed"
  [ -x "$BIN" ] || die "no binary at $BIN after the build"
fi
export MESSAGING_BIN="$BIN"

# 4. Tests. Each run's output is kept to add up one summary at the end.
log_dir=$(mktemp -d)
trap 'rm -rf "$log_dir"' EXIT
status=0

step "unit tests (node --test, fake socket)"
node --test --test-reporter=spec test/unit/*.test.mjs 2>&1 | tee "$log_dir/unit.log"
[ "${PIPESTATUS[0]}" = 0 ] || status=1

step "browser tests (headless Chromium, $MESSAGING_BIN)"
node --test --test-concurrency=1 --test-reporter=spec test/browser/*.test.mjs 2>&1 | tee "$log_dir/browser.log"
[ "${PIPESTATUS[0]}" = 0 ] || status=1

count() { grep -hE "^ℹ $1 [0-9]+$" "$log_dir"/*.log | awk '{ n += $3 } END { print n + 0 }'; }
passed=$(count pass)
failed=$(count fail)
total=$(count tests)
[ "$total" -gt 0 ] || { status=1; printf 'no test ran\n'; }
[ "$failed" = 0 ] || status=1

step "summary"
printf '%s passed, %s failed\n' "$passed" "$failed"
exit "$status"
