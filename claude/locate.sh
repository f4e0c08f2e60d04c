# Sourced by bin/elipc and claude/setup.sh with $root set to the plugin's folder: sets $data,
# the plugin's data folder (its Python environment lives in $data/venv).
#
# CLAUDE_PLUGIN_DATA when Claude Code gives it (hooks, MCP servers, monitors); else the folder
# Claude Code derives for an installed copy: <plugins>/cache/<market>/<plugin>/<version> ->
# <plugins>/data/<plugin>-<market>, characters other than [A-Za-z0-9_-] made '-' (the Bash
# tool's PATH finds bin/elipc without the variable); else, for a checkout loaded with
# --plugin-dir, .plugin-data inside it.
if [ -n "${CLAUDE_PLUGIN_DATA:-}" ]; then
    data=$CLAUDE_PLUGIN_DATA
else
    _plugin=$(dirname -- "$root")
    _market=$(dirname -- "$_plugin")
    _cache=$(dirname -- "$_market")
    if [ "$(basename -- "$_cache")" = cache ]; then
        _id=$(printf '%s@%s' "$(basename -- "$_plugin")" "$(basename -- "$_market")" |
              LC_ALL=C tr -c 'A-Za-z0-9_-' '-')
        data="$(dirname -- "$_cache")/data/$_id"
    else
        data="$root/.plugin-data"
    fi
fi
