#!/usr/bin/env bash
# The project's test command (README "Run the tests"; CI runs exactly this).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --locked
