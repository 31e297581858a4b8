#!/usr/bin/env bash
# scripts/citus.sh N  (N = 15, 17 or 18)
#
# Makes sure Citus is installed for PostgreSQL N as a Debian package `postgresql-N-citus`, for pg_clip's Citus
# tests and benchmark. No package registry reachable from these machines ships Citus (users install it from
# apt.postgresql.org's `postgresql-N-citus-13.x`, the citusdata images or a managed service), so it is built
# here from its released source, kept outside the project in $CITUS_SRC (default ../shared/vendor/citus beside
# the clone): Citus 13.2.2 for 15 and 17, 14.0.1 for 18, each tarball checked against its SHA-256 first.
# Citus 13.2.2 also defines PostgreSQL's have_createdb_privilege() as a private function for PostgreSQL 15, whose
# latest minor (15.20) headers now export: the vendor's one-line patch renames Citus's copy when they declare it.
# The .deb is cached in $PG_CLIP_CACHE (default /var/cache/pg_clip/debs) like PostgreSQL 17's: a later run
# installs from the cache and builds nothing. A Citus already installed for N (any version >= 13) is used as is.
# With neither the source nor a cached package nor an installed Citus, it says so and fails.
set -euo pipefail
usage() { echo "usage: $0 15|17|18" >&2; exit 2; }
[ $# -eq 1 ] || usage
N=$1
case $N in 15|17|18) ;; *) usage ;; esac
unset MAKELEVEL MAKEFLAGS MFLAGS  # a top-level make of its own (see scripts/postgres.sh)

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${PG_CLIP_CACHE:-/var/cache/pg_clip/debs}
LOGS=$CACHE/logs
CITUS_SRC=${CITUS_SRC:-$ROOT/../shared/vendor/citus}
REV=0pgclip1
ARCH=$(dpkg --print-architecture)
PG_CONFIG=/usr/lib/postgresql/$N/bin/pg_config
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
log() { printf '\033[1m[citus %s]\033[0m %s\n' "$N" "$*" >&2; }
die() { printf '\033[1m[citus %s]\033[0m ERROR: %s\n' "$N" "$*" >&2; exit 1; }

case $N in
  15|17) VERSION=13.2.2; SHA256=029ac92b200cb825de0560f6a18b98a91579d6678673250da01542d6c33f4d86 ;;
  18)    VERSION=14.0.1; SHA256=9a47461d57b4f9b4ed28bdd4ee627dd94f16d333f9b7d307984dadba5affccf8 ;;
esac
PKG=postgresql-$N-citus
DEB=$CACHE/${PKG}_$VERSION-${REV}_$ARCH.deb
mkdir -p "$CACHE" "$LOGS"

[ -x "$PG_CONFIG" ] || die "PostgreSQL $N is not installed (scripts/postgres.sh $N first)"
installed=$(dpkg-query -W -f='${db:Status-Status} ${Version}\n' "$PKG" 2>/dev/null | awk '$1 == "installed" {print $2}' || true)
if [ "$installed" = "$VERSION-$REV" ] && [ -f "$("$PG_CONFIG" --pkglibdir)/citus.so" ]; then
  log "ready: Citus $VERSION for PostgreSQL $N ($PKG $installed)"; exit 0
fi
if [ -z "$installed" ] && [ -f "$("$PG_CONFIG" --pkglibdir)/citus.so" ] \
    && [ -f "$("$PG_CONFIG" --sharedir)/extension/citus.control" ]; then
  log "ready: a Citus installed otherwise for PostgreSQL $N ($(grep default_version "$("$PG_CONFIG" --sharedir)/extension/citus.control"))"
  exit 0
fi

if [ ! -f "$DEB" ] || [ "${PG_CLIP_REBUILD:-0}" = 1 ]; then
  tarball=$CITUS_SRC/citus-$VERSION.tar.gz
  [ -f "$tarball" ] || die "no Citus for PostgreSQL $N: neither installed, nor cached ($DEB), nor its source ($tarball; set CITUS_SRC to the directory holding citus-$VERSION.tar.gz)"
  [ "$(sha256sum "$tarball" | cut -d' ' -f1)" = "$SHA256" ] || die "$tarball: SHA-256 is not Citus $VERSION's"
  deps=(build-essential pkg-config libkrb5-dev liblz4-dev libzstd-dev libcurl4-openssl-dev libssl-dev libicu-dev)
  need=()
  for p in "${deps[@]}"; do dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -q installed || need+=("$p"); done
  if [ ${#need[@]} -gt 0 ]; then
    log "apt: installing ${need[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
  b=$(mktemp -d /var/tmp/citus-build.XXXXXX)
  t0=$(date +%s)
  log "building Citus $VERSION against PostgreSQL $N ($(basename "$tarball"), about a minute)"
  tar -xzf "$tarball" -C "$b"
  src=$(find "$b" -mindepth 1 -maxdepth 1 -type d | head -n1)
  patch_file=$CITUS_SRC/citus-13.2.2-pg15.20.patch
  if [ "$VERSION" = 13.2.2 ] && [ "$N" = 15 ] && grep -q 'have_createdb_privilege' "$("$PG_CONFIG" --includedir-server)/commands/dbcommands.h"; then
    [ -f "$patch_file" ] || die "PostgreSQL $N's headers export have_createdb_privilege(): Citus $VERSION needs $patch_file"
    log "applying $(basename "$patch_file") (these headers export have_createdb_privilege)"
    (cd "$src" && patch -p1 < "$patch_file" >"$LOGS/$PKG-patch.log") || die "patch failed: $LOGS/$PKG-patch.log"
  fi
  (cd "$src" && ./configure PG_CONFIG="$PG_CONFIG" >"$LOGS/$PKG-configure.log" 2>&1) \
    || die "configure failed: $LOGS/$PKG-configure.log"
  (cd "$src" && make -j2 >"$LOGS/$PKG-make.log" 2>&1 && make install DESTDIR="$b/stage" >>"$LOGS/$PKG-make.log" 2>&1) \
    || die "make failed: $LOGS/$PKG-make.log"
  find "$b/stage" -name '*.so' -exec strip --strip-unneeded {} +
  mkdir -p "$b/stage/DEBIAN"
  pgdep=postgresql-$N
  cat > "$b/stage/DEBIAN/control" <<EOF
Package: $PKG
Version: $VERSION-$REV
Architecture: $ARCH
Maintainer: pg_clip local build <root@localhost>
Installed-Size: $(du -sk --exclude=DEBIAN "$b/stage" | cut -f1)
Depends: $pgdep, libcurl4, liblz4-1, libzstd1
Section: database
Priority: optional
Description: Citus $VERSION for PostgreSQL $N (local build for pg_clip's tests)
 Built from the released source by pg_clip's scripts/citus.sh; not an official Citus Data or
 apt.postgresql.org package. GNU AGPL 3.0.
EOF
  chmod -R u+rwX,go+rX,go-w "$b/stage"
  dpkg-deb --root-owner-group -Zxz -z6 --build "$b/stage" "$DEB" >/dev/null
  rm -rf "$b"
  log "built $(basename "$DEB") in $(( $(date +%s) - t0 )) s"
fi
log "dpkg -i $(basename "$DEB")"
$SUDO dpkg -i "$DEB" >"$LOGS/$PKG-dpkg.log" 2>&1 || { cat "$LOGS/$PKG-dpkg.log" >&2; die "dpkg -i $DEB failed"; }
log "ready: Citus $VERSION for PostgreSQL $N"
