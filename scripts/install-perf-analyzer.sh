#!/usr/bin/env bash
# Installs Triton's perf_analyzer 2.60 under .tools/perf_analyzer without touching the system.
# The PyPI wheel is built for glibc 2.38 (Debian 12 has 2.36), so this also unpacks Debian 13's
# libc, libstdc++ and friends into a private directory, fetched with a private apt state, and
# writes a wrapper that runs the binary through that loader. Idempotent.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEST="$ROOT/.tools/perf_analyzer"
WRAPPER="$DEST/perf_analyzer"
starts() { local out; out=$("$WRAPPER" 2>&1 || true); [[ "$out" == *"Usage:"* ]]; }
if [ -x "$WRAPPER" ] && starts; then
  echo "perf_analyzer already installed: $WRAPPER"
  exit 0
fi
rm -rf "$DEST" && mkdir -p "$DEST"/{wheel,apt/lists/partial,apt/cache/archives/partial,debs,libs}
PY=${PYTHON:-python3}
"$PY" -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_38_x86_64 \
  --python-version 3.11 -d "$DEST/wheel" perf-analyzer==2.60.0
(cd "$DEST/wheel" && "$PY" -m zipfile -e ./*.whl unpacked)
BIN=$(find "$DEST/wheel/unpacked" -type f -name perf_analyzer -perm -u+x | head -n1)
if [ -z "$BIN" ]; then BIN=$(find "$DEST/wheel/unpacked" -type f -name perf_analyzer | head -n1); fi
chmod +x "$BIN"

echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" > "$DEST/apt/sources.list"
APT=(-o Dir::Etc::SourceList="$DEST/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
     -o Dir::State::Lists="$DEST/apt/lists" -o Dir::Cache="$DEST/apt/cache" -o Debug::NoLocking=1)
apt-get "${APT[@]}" update -qq
(cd "$DEST/debs" && apt-get "${APT[@]}" download libc6 libstdc++6 libgcc-s1 libssl3t64 zlib1g >/dev/null 2>&1)
for deb in "$DEST"/debs/*.deb; do dpkg-deb -x "$deb" "$DEST/libs"; done
LIBDIR="$DEST/libs/usr/lib/x86_64-linux-gnu"
LOADER="$DEST/libs/usr/lib64/ld-linux-x86-64.so.2"
[ -e "$LOADER" ] || LOADER="$LIBDIR/ld-linux-x86-64.so.2"
BINLIBS=$(dirname "$BIN")
cat > "$WRAPPER" <<WRAP
#!/usr/bin/env bash
exec "$LOADER" --library-path "$LIBDIR:$BINLIBS:$BINLIBS/../lib" "$BIN" "\$@"
WRAP
chmod +x "$WRAPPER"
starts || { echo "perf_analyzer does not start:" >&2; "$WRAPPER" 2>&1 | tail -5 >&2; exit 1; }
echo "perf_analyzer installed: $WRAPPER"
