#!/bin/sh
# el's event source for elipc (el finds executable sources.d/<name>.sh and runs it once per
# event): `event-listen.sh elipc CHANNEL AGENT [--key FILE] [--server URL] [--limit N]`.
# It blocks until AGENT has unread messages on CHANNEL, prints them as one JSON array on
# stdout (nothing on stderr but a real error: el merges stderr into the event) and exits; the
# watermark keeps whatever arrives before el starts it again.
set -eu
if [ "$#" -lt 2 ]; then
    echo "usage: elipc.sh CHANNEL AGENT [read options]" >&2
    exit 2
fi
channel=$1 agent=$2
shift 2
if ! command -v elipc >/dev/null 2>&1; then
    echo "elipc.sh: elipc is not on PATH (install it: pip install elipc)" >&2
    exit 1
fi
# A day is the CLI's longest wait; an empty [] after it is el's cue to start again.
exec elipc read "$channel" "$agent" --wait --timeout 86400 "$@"
