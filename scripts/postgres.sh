#!/usr/bin/env bash
# scripts/postgres.sh N  (N = 15, 17 or 18)
#
# Makes sure PostgreSQL N (server, clients, headers; pg_config at /usr/lib/postgresql/N/bin/pg_config) and
# pgvector for N are installed as Debian packages, laid out as apt.postgresql.org lays them out.
#   15:     postgresql-15 + postgresql-server-dev-15 from Debian bookworm (apt).
#   17, 18: the upstream tarball inside Debian's source package (17: trixie, 18: sid), built here and wrapped into
#           a .deb `postgresql-N` (bookworm ships neither). Its libpq stays private in /usr/lib/postgresql/N/lib
#           (the binaries find it by RUNPATH): bookworm's system libpq5 is left alone. No docs, no contrib.
#   pgvector: Debian sid's pgvector source package (0.8.x; trixie's 0.8.0 does not build against 18), one version
#           for every major, built with PGXS against N and wrapped into `postgresql-N-pgvector`
#           (Depends: postgresql-N), so that a package of pg_clip can depend on it.
# Built .debs are cached in $PG_CLIP_CACHE (default /var/cache/pg_clip/debs), with the downloaded sources and
# the build logs beside them; a later run installs from that cache and builds nothing. PG_CLIP_REBUILD=1 rebuilds.
# PG_CLIP_DEB_ONLY=1 builds (or finds) the pgvector .deb without installing it (PostgreSQL N itself is still
# installed: pgvector is built against it).
set -euo pipefail
usage() { echo "usage: $0 15|17|18" >&2; exit 2; }
[ $# -eq 1 ] || usage
N=$1
case $N in 15|17|18) ;; *) usage ;; esac

# Run from `make test PG=N`, this script inherits the outer make's MAKELEVEL and MAKEFLAGS. PostgreSQL's build
# then believes it is a sub-make and skips building its generated headers first (utils/errcodes.h), which
# breaks `make -j2` at random. Each build here is a top-level make of its own.
unset MAKELEVEL MAKEFLAGS MFLAGS

CACHE=${PG_CLIP_CACHE:-/var/cache/pg_clip/debs}
SRC=$CACHE/src
LOGS=$CACHE/logs
REV=0pgclip1                    # Debian revision of every package made here
ARCH=$(dpkg --print-architecture)
PG_CONFIG=/usr/lib/postgresql/$N/bin/pg_config
MIRROR=http://deb.debian.org/debian
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
log() { printf '\033[1m[postgres %s]\033[0m %s\n' "$N" "$*" >&2; }  # stderr: functions print results on stdout
die() { printf '\033[1m[postgres %s]\033[0m ERROR: %s\n' "$N" "$*" >&2; exit 1; }
elapsed() { local s=$(( $(date +%s) - $1 )); printf '%dm%02ds' $((s / 60)) $((s % 60)); }

installed_version() {  # PKG -> its version if installed, else nothing
  dpkg-query -W -f='${db:Status-Status} ${Version}\n' "$1" 2>/dev/null | awk '$1 == "installed" {print $2}'
}
cached_deb() {  # PKG -> newest cached .deb of PKG, or nothing
  ls -v "$CACHE/${1}_"*"_$ARCH.deb" 2>/dev/null | tail -n1 || true
}
install_deb() {  # FILE
  log "dpkg -i $(basename "$1")"
  $SUDO dpkg -i "$1" >"$LOGS/dpkg.log" 2>&1 || { cat "$LOGS/dpkg.log" >&2; die "dpkg -i $1 failed"; }
}
apt_install() {  # PKG... (only the missing ones)
  local p need=()
  for p in "$@"; do [ -n "$(installed_version "$p")" ] || need+=("$p"); done
  [ ${#need[@]} -eq 0 ] && return
  log "apt: installing ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}
# A deb-src entry for a Debian suite, written as the project's other entries are (Signed-By the archive keyring).
ensure_deb_src() {  # SUITE
  local f=/etc/apt/sources.list.d/$1-src.sources
  [ -f "$f" ] && return
  log "apt: adding deb-src $1"
  printf 'Types: deb-src\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "$MIRROR" "$1" | $SUDO tee "$f" >/dev/null
  $SUDO apt-get update -qq >&2   # (stdout is fetch_orig's answer)
}

# fetch_orig SRCPKG SUITE [DEBVERSION]: prints the path of the upstream (.orig) tarball of Debian's source package,
# downloaded once into $SRC. `apt-get source --download-only` first. When the archive no longer serves the version
# its index names (it serves a point release's files some time after the index moves on), the same source
# package's previous point releases are tried in the same pool directory, newest first, and taken only when the
# .orig tarball's SHA-256 matches the one in that release's .dsc.
fetch_orig() {
  local pkg=$1 suite=$2 want=${3:-} dir=$SRC/$1 orig
  mkdir -p "$dir"
  orig=$(ls -v "$dir"/*.orig.tar.* 2>/dev/null | tail -n1 || true)
  if [ -n "$orig" ]; then echo "$orig"; return; fi
  ensure_deb_src "$suite"
  local spec="$pkg/$suite"; [ -n "$want" ] && spec="$pkg=$want"
  if (cd "$dir" && apt-get source --download-only -qq "$spec" >"$LOGS/$pkg-download.log" 2>&1); then
    ls -v "$dir"/*.orig.tar.* | tail -n1
    return
  fi
  rm -f "$dir"/*
  local ver pool up rev prefix last m base dsc tarball sum
  ver=${want:-$(apt-cache showsrc "$pkg" 2>/dev/null | awk '/^Version:/ {print $2}' | sort -V | tail -n1)}
  pool=$(apt-cache showsrc "$pkg" 2>/dev/null | awk '/^Directory:/ {print $2; exit}')
  [ -n "$ver" ] && [ -n "$pool" ] || die "no source package $spec (see $LOGS/$pkg-download.log)"
  up=${ver%-*}; rev=${ver##*-}; prefix=${up%.*}; last=${up##*.}
  case $last in *[!0-9]*) die "apt-get source $spec failed (see $LOGS/$pkg-download.log)" ;; esac
  log "$pkg $ver: not served by the archive; trying its previous point releases"
  for m in $((last - 1)) $((last - 2)) $((last - 3)); do
    [ "$m" -ge 0 ] || break
    base=$MIRROR/$pool/${pkg}_$prefix.$m
    dsc=$dir/${pkg}_$prefix.$m-$rev.dsc
    curl -fsS -o "$dsc" "$base-${rev//+/%2b}.dsc" 2>/dev/null || { rm -f "$dsc"; continue; }
    tarball=$(awk '/^Checksums-Sha256:/ {on = 1; next} /^[^ ]/ {on = 0} on && $3 ~ /\.orig\.tar\./ {print $3}' "$dsc")
    sum=$(awk '/^Checksums-Sha256:/ {on = 1; next} /^[^ ]/ {on = 0} on && $3 ~ /\.orig\.tar\./ {print $1}' "$dsc")
    [ -n "$tarball" ] || { rm -f "$dsc"; continue; }
    curl -fsS -o "$dir/$tarball" "$MIRROR/$pool/$tarball" || { rm -f "$dsc" "$dir/$tarball"; continue; }
    if [ "$(sha256sum "$dir/$tarball" | cut -d' ' -f1)" != "$sum" ]; then
      rm -f "$dsc" "$dir/$tarball"; die "$tarball: SHA-256 differs from $(basename "$dsc")"
    fi
    log "using $pkg $prefix.$m-$rev ($tarball, SHA-256 as in its .dsc)"
    echo "$dir/$tarball"
    return
  done
  die "could not download a source of $pkg (see $LOGS/$pkg-download.log)"
}

# deps_of STAGE PRIVATE_LIBDIR: the Debian packages that own the shared libraries the ELF files in STAGE load
# (libraries found in STAGE itself, such as the private libpq, are not dependencies).
deps_of() {
  local stage=$1 privlib=$2 f lib
  find "$stage" -type f | while read -r f; do
    head -c4 "$f" 2>/dev/null | grep -q 'ELF' || continue
    LD_LIBRARY_PATH=$privlib ldd "$f" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3}'
  done | sort -u | while read -r lib; do
    case $lib in "$stage"/*) continue ;; esac
    dpkg -S "$lib" 2>/dev/null || dpkg -S "/usr$lib" 2>/dev/null || dpkg -S "${lib#/usr}" 2>/dev/null || true
  done | cut -d: -f1 | sort -u | paste -sd, | sed 's/,/, /g'
}

# make_deb STAGE PKG VERSION DEPENDS DESCRIPTION-LINE [EXTRA-CONTROL-LINES]: writes $CACHE/PKG_VERSION_ARCH.deb.
make_deb() {
  local stage=$1 pkg=$2 ver=$3 deps=$4 desc=$5 extra=${6:-}
  mkdir -p "$stage/DEBIAN"
  {
    echo "Package: $pkg"
    echo "Version: $ver"
    echo "Architecture: $ARCH"
    echo "Maintainer: pg_clip local build <root@localhost>"
    echo "Installed-Size: $(du -sk --exclude=DEBIAN "$stage" | cut -f1)"
    echo "Depends: $deps"
    [ -n "$extra" ] && printf '%s\n' "$extra"
    echo "Section: database"
    echo "Priority: optional"
    echo "Description: $desc"
    echo " Built locally from Debian's source package by pg_clip's scripts/postgres.sh, for pg_clip's tests;"
    echo " not an official Debian or apt.postgresql.org package."
  } > "$stage/DEBIAN/control"
  chmod -R u+rwX,go+rX,go-w "$stage"
  dpkg-deb --root-owner-group -Zxz -z6 --build "$stage" "$CACHE/${pkg}_${ver}_$ARCH.deb" >/dev/null
  echo "$CACHE/${pkg}_${ver}_$ARCH.deb"
}

strip_elf() {  # STAGE: strip debug info and unneeded symbols from its ELF files, as dh_strip would
  local f
  find "$1" -type f | while read -r f; do
    head -c4 "$f" 2>/dev/null | grep -q 'ELF' && strip --strip-unneeded "$f" 2>/dev/null || true
  done
}

build_postgres() {
  local orig up ver b stage t0 deps
  apt_install build-essential pkg-config bison flex perl curl zlib1g-dev libssl-dev libicu-dev libreadline-dev
  case $N in 17) orig=$(fetch_orig postgresql-17 trixie) ;; 18) orig=$(fetch_orig postgresql-18 sid) ;; esac
  up=$(basename "$orig"); up=${up#postgresql-"$N"_}; up=${up%.orig.tar.*}
  ver=$up-$REV
  b=$(mktemp -d /var/tmp/pg_clip-build.XXXXXX)
  stage=$b/stage
  log "building postgresql-$N $ver from $(basename "$orig") (configure + make -j2, a few minutes)"
  t0=$(date +%s)
  tar -xf "$orig" -C "$b"
  # apt.postgresql.org's layout (Debian's postgresql.mk): binaries and private libraries per major under
  # /usr/lib/postgresql/N, data under /usr/share/postgresql/N, headers under /usr/include/postgresql/N (server
  # headers in .../N/server). Debian gets pkglibdir and includedir_server there by patching Makefile.global; an
  # upstream tree gets the same by naming "postgresql" in libdir and includedir, which then are used as they are.
  # Unlike Debian, libdir is the private /usr/lib/postgresql/N/lib (so libpq goes there, not over bookworm's
  # libpq5) and rpath stays enabled so that the binaries find it.
  (cd "$b/postgresql-$up" && ./configure \
      --prefix=/usr/lib/postgresql/"$N" \
      --bindir=/usr/lib/postgresql/"$N"/bin \
      --libdir=/usr/lib/postgresql/"$N"/lib \
      --includedir=/usr/include/postgresql/"$N" \
      --datarootdir=/usr/share \
      --datadir=/usr/share/postgresql/"$N" \
      --mandir=/usr/share/postgresql/"$N"/man \
      --docdir=/usr/share/doc/postgresql-"$N" \
      --sysconfdir=/etc/postgresql-common \
      --with-extra-version=" (pg_clip local build $ver)" \
      --with-pgport=5432 \
      --with-system-tzdata=/usr/share/zoneinfo \
      --with-openssl --with-icu --with-readline --with-zlib \
      CFLAGS="-O2 -g0 -fno-omit-frame-pointer -ffile-prefix-map=$b=." \
      >"$LOGS/postgresql-$N-configure.log" 2>&1) \
    || die "configure failed: $LOGS/postgresql-$N-configure.log"
  # `make` / `make install` at the top cover src/ and config/: no docs, no contrib.
  (cd "$b/postgresql-$up" && make -j2 >"$LOGS/postgresql-$N-make.log" 2>&1 \
      && make install DESTDIR="$stage" >>"$LOGS/postgresql-$N-make.log" 2>&1) \
    || die "make failed: $LOGS/postgresql-$N-make.log"
  strip_elf "$stage"
  deps=$(deps_of "$stage" "$stage/usr/lib/postgresql/$N/lib"); deps="$deps, tzdata"
  make_deb "$stage" "postgresql-$N" "$ver" "$deps" \
    "PostgreSQL $N server, clients and headers (local build of $(basename "$orig"))" \
    "Provides: postgresql-client-$N, postgresql-server-dev-$N" >/dev/null
  rm -rf "$b"
  log "built postgresql-$N $ver in $(elapsed "$t0") ($(du -h "$CACHE/postgresql-${N}_${ver}_$ARCH.deb" | cut -f1))"
}

build_pgvector() {
  local orig up ver b stage t0 deps pgv
  pgv=$(installed_version "postgresql-$N")
  apt_install build-essential curl
  # sid's, not trixie's: 0.8.0 (trixie) does not compile against PostgreSQL 18 (vacuum_delay_point() takes an
  # argument there); 0.8.1 and later support 13 to 18.
  orig=$(fetch_orig pgvector sid)
  up=$(basename "$orig"); up=${up#pgvector_}; up=${up%.orig.tar.*}
  ver=$up-$REV
  b=$(mktemp -d /var/tmp/pg_clip-build.XXXXXX)
  stage=$b/stage
  log "building postgresql-$N-pgvector $ver (PGXS, PostgreSQL $pgv)"
  t0=$(date +%s)
  mkdir "$b/src" && tar -xf "$orig" -C "$b/src"   # GitHub's tarball: its top directory is named by commit
  # OPTFLAGS="": pgvector's default adds -march=native, which a package must not.
  (cd "$b"/src/*/ \
      && make -j2 PG_CONFIG="$PG_CONFIG" OPTFLAGS="" COPT="-ffile-prefix-map=$b=." >"$LOGS/pgvector-$N.log" 2>&1 \
      && make PG_CONFIG="$PG_CONFIG" OPTFLAGS="" install DESTDIR="$stage" >>"$LOGS/pgvector-$N.log" 2>&1) \
    || die "pgvector build failed: $LOGS/pgvector-$N.log"
  strip_elf "$stage"
  deps=$(deps_of "$stage" /nonexistent)
  make_deb "$stage" "postgresql-$N-pgvector" "$ver" "postgresql-$N${deps:+, $deps}" \
    "pgvector $up (vector data type, ivfflat and hnsw) for PostgreSQL $N" >/dev/null
  rm -rf "$b"
  log "built postgresql-$N-pgvector $ver in $(elapsed "$t0") ($(du -h "$CACHE/postgresql-$N-pgvector_${ver}_$ARCH.deb" | cut -f1))"
}

$SUDO mkdir -p "$CACHE" "$SRC" "$LOGS"

# 1. PostgreSQL N
if [ "$N" = 15 ]; then
  if [ -z "$(installed_version postgresql-15)" ] || [ -z "$(installed_version postgresql-server-dev-15)" ]; then
    # Don't let the Debian package create and start a cluster on 5432: pg_clip runs its own clusters.
    $SUDO mkdir -p /etc/postgresql-common
    grep -qs '^create_main_cluster' /etc/postgresql-common/createcluster.conf \
      || echo 'create_main_cluster = false' | $SUDO tee -a /etc/postgresql-common/createcluster.conf >/dev/null
    apt_install postgresql-15 postgresql-server-dev-15
  fi
elif [ -z "$(installed_version "postgresql-$N")" ] || [ -n "${PG_CLIP_REBUILD:-}" ]; then
  [ -z "${PG_CLIP_REBUILD:-}" ] && deb=$(cached_deb "postgresql-$N") || deb=""
  [ -n "$deb" ] || { build_postgres; deb=$(cached_deb "postgresql-$N"); }
  install_deb "$deb"
fi
[ -x "$PG_CONFIG" ] || die "$PG_CONFIG missing after install"

# 2. pgvector for N
if [ -z "$(installed_version "postgresql-$N-pgvector")" ] || [ -n "${PG_CLIP_REBUILD:-}" ]; then
  [ -z "${PG_CLIP_REBUILD:-}" ] && deb=$(cached_deb "postgresql-$N-pgvector") || deb=""
  [ -n "$deb" ] || { build_pgvector; deb=$(cached_deb "postgresql-$N-pgvector"); }
  if [ -n "${PG_CLIP_DEB_ONLY:-}" ]; then log "not installing $deb (PG_CLIP_DEB_ONLY)"; else install_deb "$deb"; fi
fi
log "ready: PostgreSQL $($PG_CONFIG --version | cut -d' ' -f2-), postgresql-$N-pgvector $(installed_version "postgresql-$N-pgvector" || true)"
