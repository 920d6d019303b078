#!/usr/bin/env bash
# Installs what the end-to-end tests need beyond Rust: Debian packages (slurm-wlm and
# munge for tests/tests/slurm.rs; systemd for systemd-analyze and kubernetes-client for
# `kubectl kustomize` in tests/tests/deploy.rs, chromium for the browser tests of the web
# pages in tests/tests/web.rs)
# when their commands are missing, the Python packages of clients/python, and
# lm-evaluation-harness 0.4.13 for clients/python/test_export_tasks.py (tests/tests/tasks.rs),
# and moto's S3 server for the S3 artifact tests.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v slurmctld >/dev/null || missing+=(slurm-wlm)
command -v munged >/dev/null || missing+=(munge)
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v kubectl >/dev/null || missing+=(kubernetes-client)
command -v chromium >/dev/null || missing+=(chromium)

if ((${#missing[@]})); then
  sudo=()
  if ((EUID != 0)); then
    sudo=(sudo)
  fi
  install=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}")
  # A fresh image has no package lists: fetch them only when the install needs them.
  if ! "${install[@]}"; then
    "${sudo[@]}" apt-get update
    "${install[@]}"
  fi
fi

python3 -m pip install --quiet --disable-pip-version-check -r clients/python/requirements.txt
# lm-eval's task YAML and utils.py, without its dependencies (torch, datasets): the export
# check needs only its prompt-building code, whose imports requirements.txt covers.
python3 -m pip install --quiet --disable-pip-version-check --no-deps lm-eval==0.4.13
# moto's S3 server, for the S3 artifact backend's tests (tests/s3_server.py).
python3 -m pip install --quiet --disable-pip-version-check "moto[server]==5.2.1"
