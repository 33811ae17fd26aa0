#!/usr/bin/env bash
# Prepare the GPU check for a machine without network (run here, from the repo root):
# the SmolLM2 tokenizer and config into .gpu/smollm2, and the wheels that machine lacks
# (tests/gpu/WHEELS.txt: trl, datasets, pydantic, psycopg, ...) into .gpu/whl.
# .gpu/ is git-ignored; carry it to the GPU machine with the working tree.
set -euo pipefail
mkdir -p .gpu/smollm2 .gpu/whl

src=models/base
[ -f "$src/tokenizer.json" ] || { echo "no $src: run 'ratchet model bootstrap' first" >&2; exit 1; }
cp "$src"/{config.json,tokenizer.json,tokenizer_config.json,chat_template.jinja} .gpu/smollm2/ 2>/dev/null || true
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  -d .gpu/whl $(grep -v '^#' tests/gpu/WHEELS.txt | sed -E 's/^([A-Za-z0-9_]+)-([^-]+)-.*/\1==\2/')
du -sh .gpu
