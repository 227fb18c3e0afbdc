# Sourced by scripts/setup.sh and scripts/package.sh: the pinned wheels of several hundred MB (DALI) are
# fetched once into .work/wheelhouse and installed from there into every environment. pip's cache does not
# keep files this large, so each environment would download them again, and each download of 400 MB is a
# chance for the network to cut it off (seen here: pip gave up at 213 of 424 MB).
#   install_big_wheels PYTHON CONSTRAINTS PACKAGE...
#   e.g. install_big_wheels "$venv/bin/python" "$root/constraints.txt" nvidia-dali-cuda120
install_big_wheels() {
  local python="$1" constraints="$2" wheelhouse="$root/.work/wheelhouse" package pin file attempt
  shift 2
  mkdir -p "$wheelhouse"
  for package in "$@"; do
    pin="$(grep -E "^${package}==" "$constraints")"
    for attempt in 0 1 2 3; do
      file="$(ls "$wheelhouse"/"${package//-/_}"-"${pin#*==}"-*.whl 2>/dev/null | head -1 || true)"
      [[ -n "$file" || "$attempt" == 3 ]] && break
      "$python" -m pip download --quiet --no-deps --dest "$wheelhouse" "$pin" >&2 ||
        printf '[setup] download of %s failed (attempt %d of 3)\n' "$pin" "$((attempt + 1))" >&2
    done
    [[ -n "$file" ]] || { printf '[setup] could not download %s\n' "$pin" >&2; return 1; }
    "$python" -m pip install --quiet --no-deps "$file"
  done
}
