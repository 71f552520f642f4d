#!/bin/sh
# The first 16 particles of the particle test set (seed 9003) at fixed tilts off [110]
# (uniformly random tilt direction), 4 images each (optics, pixel size, dose as drawn).
# Usage: sh report/tilt_s27/simulate.sh DATA_DIR [TILT_MRAD ...]
set -e
out=${1:-data/tilt}; shift || true
tilts=${*:-"0 20 40 10 30"}
mkdir -p "$out"
for t in $tilts; do
  cfg="$out/particles_tilt$t.yaml"
  sed "s/^  tilt_mrad: .*/  tilt_mrad: [$t, $t]/" configs/simulate/ceo2_110_particles.yaml > "$cfg"
  grep -q "tilt_mrad: \[$t, $t\]" "$cfg"
  atom3d simulate --config "$cfg" --out "$out/tilt$t.zarr" --n 64 --images-per-structure 4 \
    --seed 9003 --workers 2 --quiet --resume
done
