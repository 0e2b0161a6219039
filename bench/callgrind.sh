#!/bin/sh
#
# User-space instructions per relayed message in the nginx worker, with
# valgrind's callgrind: unlike times on a shared machine, the count barely
# moves between runs, so it shows what a change to the per-message path
# saves.  nginx runs as one process (master_process off) under callgrind,
# relaying a flood of 20 connections to bench/fakegw; the figure is the
# event loop's inclusive count divided by the messages sent, so start-up
# is left out.
#
#   bench/callgrind.sh [MODULE.so]       (make bench-profile)
#
# The profile stays in build/bench/callgrind/callgrind.out for
# callgrind_annotate.

set -e

TOP=$(cd "$(dirname "$0")/.." && pwd)
BB=$TOP/build/bench
DIR=$BB/callgrind
MODULE=${1:-$TOP/build/ngx_http_openclaw_bridge_module.so}
PORT=${CG_PORT:-19900}
GW_PORT=$((PORT + 1))
DURATION=${CG_SECONDS:-6}

command -v valgrind >/dev/null || {
    echo "valgrind is needed: apt-get install valgrind" >&2
    exit 1
}

for p in loadgen fakegw; do
    if [ ! -x "$BB/$p" ] || [ "$TOP/bench/$p.c" -nt "$BB/$p" ]; then
        mkdir -p "$BB"
        cc -O2 -Wall -Wextra -o "$BB/$p" "$TOP/bench/$p.c" -lcrypto
    fi
done

rm -rf "$DIR"
mkdir -p "$DIR/logs" "$DIR/conf"

cat > "$DIR/conf/nginx.conf" <<EOF
load_module $MODULE;
worker_processes 1;
pid logs/nginx.pid;
error_log logs/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path logs; proxy_temp_path logs;
    fastcgi_temp_path logs; uwsgi_temp_path logs; scgi_temp_path logs;
    openclaw_gateway ws://127.0.0.1:$GW_PORT;
    openclaw_gateway_token bench;
    server {
        listen 127.0.0.1:$PORT;
        location / {
            openclaw_bridge;
            openclaw_bridge_ping_interval 0;
            openclaw_bridge_max_in_flight 1000;
        }
    }
}
EOF

"$BB/fakegw" -p "$GW_PORT" -k bench > "$DIR/fakegw.log" 2>&1 &
GW=$!
trap 'kill $GW 2>/dev/null || true' EXIT

valgrind --tool=callgrind --callgrind-out-file="$DIR/callgrind.out" \
    --log-file="$DIR/valgrind.log" \
    /usr/sbin/nginx -p "$DIR/" -c conf/nginx.conf \
    -g 'daemon off; master_process off;' &
NGX=$!

# valgrind starts nginx slowly; the link must be up before the load
sleep 4

"$BB/loadgen" -p "$PORT" -c 20 -f -W 4 -d "$DURATION" -w 1 -m bridge \
    > "$DIR/loadgen.out" 2>&1

kill -QUIT $NGX
wait $NGX || true

SENT=$(sed -n 's/.* sent=\([0-9]*\) .*/\1/p' "$DIR/loadgen.out" | head -1)
ERRS=$(sed -n 's/.* error_replies=\([0-9]*\) lost=\([0-9]*\) .*/\1 \2/p' \
       "$DIR/loadgen.out" | head -1)
LOOP=$(callgrind_annotate --inclusive=yes "$DIR/callgrind.out" 2>/dev/null \
       | grep 'ngx_process_events_and_timers' | head -1 | awk '{print $1}' \
       | tr -d ,)

if [ -z "$SENT" ] || [ "$SENT" -eq 0 ] || [ -z "$LOOP" ]; then
    echo "no figure: see $DIR" >&2
    exit 1
fi

echo "module: $MODULE"
echo "messages: $SENT (error replies, lost: $ERRS)"
echo "instructions per message in the event loop: $((LOOP / SENT))"
echo "profile: $DIR/callgrind.out"
