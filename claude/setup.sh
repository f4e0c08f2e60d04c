#!/bin/sh
# Build the plugin's Python environment ($data/venv, see locate.sh) from the bundled source
# when it is missing or the bundled pyproject.toml changed (Claude Code's SessionStart hook
# runs this; so does bin/elipc when the environment is not there yet). Quiet when there is
# nothing to do. Progress and errors go to stderr; a failure leaves no stamp, so the next
# session tries again. ELIPC_PYTHON picks the interpreter (default python3, 3.11 or later).
set -eu
root=$(CDPATH='' cd -- "$(dirname -- "$0")/.." && pwd)
. "$root/claude/locate.sh"
venv="$data/venv"
stamp="$data/pyproject.toml"
ready() { [ -x "$venv/bin/elipc" ] && cmp -s "$root/pyproject.toml" "$stamp"; }
ready && exit 0

python=${ELIPC_PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "elipc: the plugin needs Python 3.11 or later; '$python' is not (set ELIPC_PYTHON)" >&2
    exit 1
fi
mkdir -p "$data"
# One build at a time: another session starting now waits for it (up to 5 minutes).
lock="$data/build.lock"
waited=0
until mkdir "$lock" 2>/dev/null; do
    if [ "$waited" -ge 300 ]; then
        echo "elipc: $lock is held for 5 minutes; remove it if no build is running" >&2
        exit 1
    fi
    sleep 1
    waited=$((waited + 1))
done
trap 'rmdir "$lock" 2>/dev/null' EXIT
trap 'exit 1' INT TERM
ready && exit 0
echo "elipc: building the plugin's environment in $venv" >&2
rm -f "$stamp"
"$python" -m venv --clear "$venv" >&2
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$root[mcp]" >&2
cp "$root/pyproject.toml" "$stamp"
echo "elipc: ready ($("$venv/bin/elipc" --version))" >&2
