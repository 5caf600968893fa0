# Sourced by the GPU scripts: puts this checkout on PYTHONPATH as the `moecheck` namespace without
# installing it (the GPU machine is offline and starts bare). The parts sit at the repository's top
# level, so a folder of links, moecheck/<part> -> <checkout>/<part>, stands in for the installed
# package; `pip install -e .` where pip works does the same through setuptools' package-dir.
_mc_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
_mc_ns=${TMPDIR:-/tmp}/moecheck-ns-$$
mkdir -p "$_mc_ns/moecheck"
for _p in reference backends properties e2e ci tests; do ln -sfn "$_mc_root/$_p" "$_mc_ns/moecheck/$_p"; done
mkdir -p "$_mc_ns/bin"  # the `moecheck` command, so printed repro commands run as printed
printf '#!/bin/sh\nexec python3 -m moecheck.ci.cli "$@"\n' > "$_mc_ns/bin/moecheck"; chmod +x "$_mc_ns/bin/moecheck"
export PATH=$_mc_ns/bin:$PATH PYTHONPATH=$_mc_ns${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 PYTHONSAFEPATH=1
unset _p _mc_ns _mc_root
