#!/bin/sh
# Session 18 research script (not part of the package): see README.md in this folder.
# Fetch real vendor test files that ship inside source distributions on PyPI (the only
# registry reachable here) into $1 (default /tmp/vendor): HyperSpy 1.7.6's I/O test data
# (before it moved to RosettaSciIO) and mrcfile's test data. Archives among them are unpacked.
set -e
OUT=${1:-/tmp/vendor}
PIP=${PIP:-pip}
mkdir -p "$OUT" && cd "$OUT"
$PIP download --no-deps --no-binary :all: hyperspy==1.7.6 mrcfile==1.5.4 >/dev/null
mkdir -p hs mrc arch arch/feiold
tar xzf hyperspy-1.7.6.tar.gz -C hs --wildcards "*/tests/io/*"
tar xzf mrcfile-1.5.4.tar.gz -C mrc
for z in $(find hs -name "*.zip"); do d=arch/$(basename "$z" .zip); mkdir -p "$d"; unzip -q -o "$z" -d "$d"; done
for g in $(find hs -name "*.tif.gz"); do gunzip -c "$g" > "arch/$(basename "$g" .gz)"; done
tar xzf "$(find hs -name 'non_float*tar.gz')" -C arch/feiold
for f in mrc/mrcfile-1.5.4/tests/test_data/*.map; do cp "$f" "${f%.map}.mrc"; done
echo "$OUT/hs/hyperspy-1.7.6/hyperspy/tests/io $OUT/arch $OUT/mrc/mrcfile-1.5.4/tests/test_data"
