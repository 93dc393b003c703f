# wal-e development tasks (the tox of this project). `just --list` shows them.

set shell := ["bash", "-euo", "pipefail", "-c"]

default:
    @just --list

# Install the system packages builds and tests need (idempotent).
setup:
    scripts/install-deps.sh

# Formatting and lints, warnings are errors.
lint:
    cargo fmt --all -- --check
    cargo clippy --locked --all-targets -- -D warnings

# Everything CI checks: setup, lints and the whole test suite.
test: setup lint
    cargo test --locked --no-fail-fast

# The main job on a file:// store: archive, base backup, restore, PITR.
demo: setup
    cargo build --locked
    scripts/demo.sh

# Throughput and latency beside lzop and cp, measured in the same run.
bench: setup
    cargo bench --locked --bench pipeline
