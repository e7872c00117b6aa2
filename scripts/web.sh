#!/usr/bin/env bash
# The browser page: `scripts/web.sh build` writes a static site to web/dist/
# (index.html, the library compiled to wasm32 and wasm-bindgen's JS glue);
# `scripts/web.sh serve [PORT]` serves it on 127.0.0.1 (WebGPU, when the
# page uses it, needs a secure context: HTTPS or localhost).
set -euo pipefail
cd "$(dirname "$0")/.."

# The CLI must be the version web/Cargo.toml pins wasm-bindgen to.
WASM_BINDGEN_VERSION=$(sed -n 's/^wasm-bindgen = "=\(.*\)"$/\1/p' web/Cargo.toml)

build() {
  if ! command -v wasm-bindgen >/dev/null || [ "$(wasm-bindgen --version)" != "wasm-bindgen $WASM_BINDGEN_VERSION" ]; then
    echo "web.sh: installing wasm-bindgen-cli $WASM_BINDGEN_VERSION (once per machine)"
    cargo install wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION"
  fi
  rustup target add wasm32-unknown-unknown >/dev/null 2>&1 || true
  # From web/, so that web/.cargo/config.toml (its target features) applies.
  (cd web && cargo build --release --target wasm32-unknown-unknown)
  rm -rf web/dist
  mkdir -p web/dist
  wasm-bindgen --target web --no-typescript --out-dir web/dist/pkg \
    web/target/wasm32-unknown-unknown/release/rowstage_web.wasm
  cp web/static/* web/dist/
  # The library's waits import `rowstage_jspi` (src/gpu/browser.rs): a bare
  # name to wasm-bindgen, web/static/jspi.js to the browser.
  local glue=web/dist/pkg/rowstage_web.js
  grep -q 'from "rowstage_jspi"' "$glue" || { echo "web.sh: $glue does not import rowstage_jspi" >&2; exit 1; }
  sed -i 's|from "rowstage_jspi"|from "../jspi.js"|' "$glue"
  local wasm=web/dist/pkg/rowstage_web_bg.wasm
  echo "web.sh: wrote web/dist/ (wasm $(($(stat -c %s "$wasm") / 1024)) KiB, $(($(gzip -9c "$wasm" | wc -c) / 1024)) KiB gzipped)"
}

serve() {
  local port=${1:-8000}
  if ! [[ $port =~ ^[0-9]+$ ]] || [ "$port" -lt 1 ] || [ "$port" -gt 65535 ]; then
    echo "web.sh: serve: port '$port' is not a number from 1 to 65535" >&2
    exit 2
  fi
  [ -f web/dist/index.html ] || build
  # Said plainly rather than as Python's traceback (another server, or an
  # earlier serve, holds the port).
  if ! python3 -c "import socket, sys; socket.socket().bind(('127.0.0.1', int(sys.argv[1])))" "$port" 2>/dev/null; then
    echo "web.sh: serve: port $port on 127.0.0.1 is in use (or not yours to open): stop what holds it, or give another port" >&2
    exit 1
  fi
  echo "web.sh: serving web/dist/ at http://127.0.0.1:$port/ (Ctrl-C stops)"
  exec python3 -m http.server --bind 127.0.0.1 --directory web/dist "$port"
}

case "${1:-}" in
  build) build ;;
  serve) shift; serve "$@" ;;
  *) echo "usage: scripts/web.sh build | serve [PORT]" >&2; exit 2 ;;
esac
