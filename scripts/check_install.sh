#!/usr/bin/env bash
# What a stranger gets from `pip install`: build a wheel and an sdist of this checkout, install
# each into its own fresh venv outside the checkout, and from a directory that is not the
# checkout run `fabric up`, a tiny alloc/write/read/free from Python, and `fabric down` (the
# CLI from a directory holding a user's own package named `fabric`, which must not be used).
# Also checks that the wheel holds what it needs (the compiled C core, the daemons, data files)
# and no build script or tests.  Prints one JSON line per artifact; exits nonzero on any failure.
#
#   bash scripts/check_install.sh            # both artifacts
#   bash scripts/check_install.sh wheel      # just one: wheel | sdist
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
kinds=${1:-"wheel sdist"}
work=$(mktemp -d /tmp/cxl-fabric-pkg.XXXXXX)
state=$(mktemp -d /dev/shm/cxl-fabric-pkg.XXXXXX)
cleanup() {
    for v in "$work"/venv-*; do
        [ -x "$v/bin/fabric" ] && FABRIC_STATE_DIR="$state" "$v/bin/fabric" down >/dev/null 2>&1 || true
    done
    rm -rf "$work" "$state"
}
trap cleanup EXIT

echo "building wheel and sdist of $root ..." >&2
python3 -m build --outdir "$work/dist" "$root" >"$work/build.log" 2>&1 \
    || { tail -30 "$work/build.log" >&2; echo "check_install: building failed" >&2; exit 1; }
wheel=$(ls "$work"/dist/*.whl)
sdist=$(ls "$work"/dist/*.tar.gz)

# The wheel's contents: what must be there, and what must not.
python3 - "$wheel" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
need = ["fabric/__init__.py", "fabric/py.typed", "fabric/daemons/node.py",
        "fabric/daemons/base.py", "fabric/topology/curves.toml", "fabric/_binding/__init__.py"]
missing = [n for n in need if n not in names]
if not any(n.startswith("fabric/_native") and n.endswith(".so") for n in names):
    missing.append("fabric/_native*.so (the compiled C core)")
if not any(n.startswith("fabric/daemons/manager") for n in names):
    missing.append("fabric/daemons/manager")
bad = [n for n in names if n.startswith(("tests/", "csrc/", "daemons/", "scripts/"))
       or n.endswith("build.py") or "/tests/" in n or n.endswith(".c")]
if missing or bad:
    sys.exit(f"check_install: wheel lacks {missing}; wheel must not ship {bad}")
PY

for kind in $kinds; do
    artifact=$wheel; [ "$kind" = sdist ] && artifact=$sdist
    venv="$work/venv-$kind"
    t0=$(date +%s)
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "$artifact" >"$work/install-$kind.log" 2>&1 \
        || { tail -30 "$work/install-$kind.log" >&2; echo "check_install: installing the $kind failed" >&2; exit 1; }
    # Not the checkout (nothing may come from the source tree), and a user's directory that
    # holds a package of the same name: the CLI and the daemons it starts must not import it.
    mkdir -p "$work/project/fabric"
    echo "raise ImportError('a user package named fabric was imported')" \
        >"$work/project/fabric/__init__.py"
    cd "$work/project"
    export FABRIC_STATE_DIR="$state"
    version=$("$venv/bin/fabric" --version)
    "$venv/bin/fabric" up --hosts 2 --devices 2 --device-size 64MiB >/dev/null
    cd "$work"   # a script of the user's own imports from where it runs: not from there
    "$venv/bin/python" - <<'PY'
import numpy as np
import fabric
assert "/venv-" in fabric.__file__, f"imported {fabric.__file__}, not the installed package"
with fabric.connect("h0") as s:
    r = s.alloc("pkg-check", 1 << 20, share="shared")
    r.write(np.arange(1024, dtype=np.uint32))
    with fabric.connect("h1") as s1:
        got = s1.open("pkg-check").read(0, 4096).view(np.uint32)
        assert (got == np.arange(1024, dtype=np.uint32)).all(), got[:8]
    s.free("pkg-check")
PY
    cd "$work/project"
    "$venv/bin/fabric" down >/dev/null
    if pgrep -f "fabric.daemons.*$state" >/dev/null; then
        echo "check_install: daemons of $state still running after fabric down" >&2; exit 1
    fi
    [ ! -e "$state/cluster.json" ] || { echo "check_install: $state not cleaned by fabric down" >&2; exit 1; }
    mkdir -p "$state"
    cd "$root"
    printf '{"check": "install", "artifact": "%s", "file": "%s", "version": "%s", "ok": true, "seconds": %d}\n' \
        "$kind" "$(basename "$artifact")" "$version" "$(( $(date +%s) - t0 ))"
done
