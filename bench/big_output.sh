#!/usr/bin/env bash
# Peak RSS of a coordinator and an agent (separate processes, loopback) while one run
# prints about 1 GiB of output, and the store's size afterwards.
#
#   bench/big_output.sh target/release/ladder lines     # 1 GiB of 1 KiB log lines
#   bench/big_output.sh target/release/ladder noline    # 1 GiB without a newline
#   bench/big_output.sh target/release/ladder metrics   # 1 GiB of @ladder metric lines
set -euo pipefail
B=$(realpath "$1"); MODE=$2
D=$(mktemp -d /tmp/ladder-big-output.XXXXXX)
trap 'kill $AP $CP 2>/dev/null; wait 2>/dev/null; rm -rf "$D"' EXIT
AP=; CP=
mkdir -p "$D/code" "$D/work"
cat > "$D"/code/out.py <<'PY'
import sys
mode = sys.argv[1]
out = sys.stdout.buffer
if mode == "lines":
    line = b"x" * 1023 + b"\n"
    block = line * 1024
    for _ in range(1024):
        out.write(block)
elif mode == "noline":
    block = b"y" * (1 << 20)
    for _ in range(1024):
        out.write(block)
elif mode == "metrics":
    # about 1 GB of @ladder metric lines
    n = 0
    for i in range(1, 10_000_000):
        s = b'@ladder {"step": %d, "loss": %f, "acc": %f, "lr": 0.1, "grad_norm": %f}\n' % (i, 1.0/i, i/1e7, 0.5)
        out.write(s); n += len(s)
        if n > 1 << 30: break
out.flush()
PY
$B coordinator --data "$D"/data --listen 127.0.0.1:0 > "$D"/coord.log 2>&1 &
CP=$!
for i in $(seq 100); do grep -q "listening on" "$D"/coord.log && break; sleep 0.2; done
ADDR=$(grep -o "listening on [0-9.:]*" "$D"/coord.log | awk '{print $3}')
URL=http://$ADDR
$B agent --coordinator $URL --name a1 --slots 1 --work-dir "$D"/work --code-dir "$D"/code > "$D"/agent.log 2>&1 &
AP=$!
cat > "$D"/s.yaml <<Y
name: big
method: grid
parameters:
  x: {value: 1}
command: [python3, "{{ladder.code_dir}}/out.py", "$MODE"]
Y
peak() { awk '/VmHWM/{print $2/1024}' /proc/$1/status 2>/dev/null; }
START=$(date +%s%N)
ID=$($B sweep submit --coordinator $URL "$D"/s.yaml)
$B sweep watch --coordinator $URL $ID > "$D"/watch.log 2>&1
END=$(date +%s%N)
echo "mode=$MODE wall=$(( (END - START) / 1000000 )) ms coordinator_peak_MiB=$(peak $CP) agent_peak_MiB=$(peak $AP) store=$(du -sm "$D"/data | cut -f1)MiB"
RUN=$($B runs ls --coordinator "$URL" --sweep "$ID" --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["runs"][0]["id"])')
$B runs show --coordinator "$URL" "$RUN" | grep -E "^status|capped|points\)" || true
