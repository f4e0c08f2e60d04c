"""elipc's plugin for el's sidecar (the path el looks for: <plugin>/sidecar/plugin.py).

el's sidecar runs under the user's own python3 and calls `register(api)` at start. This file
only finds the elipc package and hands over to `elipc.sidecar.register`, which keeps el-ipc's
routes and drain events on elipc's own queue (see that module). It looks for elipc where this
python3 can import it, then in the plugin's virtual environment (built at session start in
${CLAUDE_PLUGIN_DATA}), then in the source bundled beside this file. If none of them works,
it says so once, on stderr, and registers nothing.

Written for any python3 the sidecar may run under: stdlib only, no newer syntax.
"""

import os
import sys

PLUGIN = "elipc"
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _data_dirs():
    """Where the plugin's data folder may be: the variable Claude Code sets, else the one it
    derives for an installed copy (<plugins>/cache/<market>/<plugin>/<version> ->
    <plugins>/data/<plugin>-<market>, characters other than [A-Za-z0-9_-] made '-')."""
    found = []
    if os.environ.get("CLAUDE_PLUGIN_DATA"):
        found.append(os.environ["CLAUDE_PLUGIN_DATA"])
    parts = _ROOT.split(os.sep)
    if len(parts) >= 5 and parts[-4] == "cache":
        ident = "".join(c if c.isascii() and (c.isalnum() or c in "_-") else "-"
                        for c in "%s@%s" % (parts[-2], parts[-3]))
        found.append(os.sep.join(parts[:-4] + ["data", ident]))
    return found


def _candidates():
    """Paths that may hold an importable elipc, best first."""
    version = "python%d.%d" % sys.version_info[:2]
    paths = [os.path.join(data, "venv", "lib", version, "site-packages")
             for data in _data_dirs()]
    return [p for p in paths if os.path.isdir(p)] + [_ROOT]


def _import_sidecar():
    try:
        from elipc import sidecar
        return sidecar
    except Exception as first:  # ImportError, or a SyntaxError on a python3 too old
        problem = first
    for path in _candidates():
        if path in sys.path:
            continue
        sys.path.append(path)
        for name in [m for m in sys.modules if m == "elipc" or m.startswith("elipc.")]:
            del sys.modules[name]  # a half-imported package from the last try
        try:
            from elipc import sidecar
            return sidecar
        except Exception as e:
            problem = e
            sys.path.remove(path)
    sys.stderr.write(
        "[elipc] sidecar plugin not loaded: %s (Python %d.%d) cannot import elipc (%s: %s); "
        "elipc needs Python 3.11+ with its dependencies: start a Claude Code session with the "
        "plugin once (it builds its environment), or pip install elipc for this python3\n"
        % (sys.executable, sys.version_info[0], sys.version_info[1],
           type(problem).__name__, problem))
    return None


def register(api):
    """el's entry point: register elipc's routes and drain follower, or nothing."""
    sidecar = _import_sidecar()
    if sidecar is not None:
        sidecar.register(api)
