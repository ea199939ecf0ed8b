#!/usr/bin/env bash
# tests/layers.sh - folders are layers: a file under engine/<layer>/ may
# include headers of its own folder or of a lower layer only. Prints each
# problem and "layers: N problems"; exits 1 if any.
cd "$(dirname "$0")/.." || exit 1
rank() { # the layer order of the engine, bottom up
  case $1 in
  core) echo 0 ;; codec) echo 1 ;; config) echo 2 ;;
  net | lua | delivery) echo 3 ;; worker) echo 4 ;;
  inputs | outputs) echo 5 ;; admin) echo 6 ;; cli) echo 7 ;; *) echo 99 ;;
  esac
}
bad=0
for f in engine/*.[ch]; do
  [ -e "$f" ] || continue
  echo "$f: not in a layer's folder"
  bad=$((bad + 1))
done
for f in engine/*/*.[ch]; do
  layer=$(basename "$(dirname "$f")")
  [ "$(rank "$layer")" = 99 ] && { echo "$f: folder $layer is not a layer"; bad=$((bad + 1)); continue; }
  for h in $(sed -n 's/^#include "\([^"]*\)".*/\1/p' "$f"); do
    hdr=$(ls engine/*/"$h" 2>/dev/null | head -n 1)
    [ -n "$hdr" ] || { echo "$f: includes $h, which no layer holds"; bad=$((bad + 1)); continue; }
    hl=$(basename "$(dirname "$hdr")")
    if [ "$hl" != "$layer" ] && [ "$(rank "$hl")" -ge "$(rank "$layer")" ]; then
      echo "$f ($layer) includes $hdr ($hl): not below it"
      bad=$((bad + 1))
    fi
  done
done
echo "layers: $bad problems"
[ "$bad" -eq 0 ]
