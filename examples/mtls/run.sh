#!/usr/bin/env bash
# A two-sidecar mesh on this machine, the sidecars talking mutual TLS:
#
#   curl -> web's outbound :18082 ==mTLS==> orders' inbound :18083 -> app :16060
#   curl -> orders' outbound :28082 ==mTLS==> web's inbound :28083 -> app :26060
#
# Each sidecar has its own certificate, naming its SPIFFE ID, from a
# development CA made here.  orders accepts only web's identity; web
# accepts only orders' identity as its peer.  The apps are the sidecars'
# built-in hello-world app (--demo).  Everything listens on 127.0.0.1.
#
# Usage: examples/mtls/run.sh [DIR]
#
#   DIR     where the certificates and the sidecars' logs go (default: a
#           new temporary directory); a CA already in DIR is reused.
#   PYTHON  the interpreter easymesh is installed in (default: python3).
#
# Runs in the foreground until Ctrl-C or SIGTERM, then stops both sidecars.
set -euo pipefail

PYTHON=${PYTHON:-python3}
ORDERS_ID=spiffe://example.org/ns/default/sa/orders
WEB_ID=spiffe://example.org/ns/default/sa/web

if ! "$PYTHON" -c 'import easymesh' 2>/dev/null; then
    echo "run.sh: $PYTHON cannot import easymesh: install it (pip install .) or set PYTHON" >&2
    exit 1
fi

DIR=${1:-$(mktemp -d "${TMPDIR:-/tmp}/easymesh-mtls.XXXXXX")}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)

"$PYTHON" -m easymesh certs "$DIR" --identity "$ORDERS_ID" --identity "$WEB_ID"

pids=()

stop() {
    trap - INT TERM EXIT
    local pid
    for pid in ${pids[@]+"${pids[@]}"}; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in ${pids[@]+"${pids[@]}"}; do
        wait "$pid" 2>/dev/null || true
    done
}
trap 'echo "stopping"; stop; exit 0' INT TERM
trap stop EXIT

# sidecar NAME ARGS...: run NAME's sidecar with its certificate, mTLS on its
# inbound listener, logging to DIR/NAME.log.
sidecar() {
    local name=$1
    shift
    "$PYTHON" -m twisted --log-format text --log-file "$DIR/$name.log" \
        easymesh \
        --node-id "$name" \
        --tls-cert "$DIR/$name.pem" --tls-key "$DIR/$name-key.pem" --tls-ca "$DIR/ca.pem" \
        --inbound-tls mtls \
        --admin none \
        "$@" &
    pids+=("$!")
}

sidecar orders \
    --inbound tcp:18083:interface=127.0.0.1 --demo 16060 \
    --inbound-allow "$WEB_ID" \
    --outbound 28082 --peer https://127.0.0.1:28083 --peer-identity "$WEB_ID"

sidecar web \
    --inbound tcp:28083:interface=127.0.0.1 --demo 26060 \
    --inbound-allow "$ORDERS_ID" \
    --outbound 18082 --peer https://127.0.0.1:18083 --peer-identity "$ORDERS_ID"

# Wait for the plaintext listeners (a sidecar binds all of its listeners at
# once; connecting to an mTLS one without a certificate would only be
# logged as a refused handshake).
listening() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}
deadline=$((SECONDS + 30))
for port in 16060 28082 26060 18082; do
    until listening "$port"; do
        for pid in "${pids[@]}"; do
            if ! kill -0 "$pid" 2>/dev/null; then
                echo "run.sh: a sidecar exited before listening; its log:" >&2
                tail -n 20 "$DIR"/orders.log "$DIR"/web.log >&2 || true
                exit 1
            fi
        done
        if ((SECONDS > deadline)); then
            echo "run.sh: port $port not listening after 30s; see $DIR/*.log" >&2
            exit 1
        fi
        sleep 0.1
    done
done

cat <<EOF

mTLS mesh running (certificates and logs in $DIR):
  web:    outbound 127.0.0.1:18082 -> orders' inbound 127.0.0.1:18083 (mTLS) -> app 127.0.0.1:16060
  orders: outbound 127.0.0.1:28082 -> web's inbound 127.0.0.1:28083 (mTLS) -> app 127.0.0.1:26060

Try:
  curl -i http://127.0.0.1:18082/
  curl -i http://127.0.0.1:18083/     # refused: 18083 speaks mTLS only
  tail -f $DIR/orders.log

Ctrl-C stops both sidecars.
EOF

# Until a signal (the trap stops the sidecars) or a sidecar exits by itself.
status=0
wait -n || status=$?
echo "run.sh: a sidecar exited (status $status); stopping the other" >&2
exit 1
