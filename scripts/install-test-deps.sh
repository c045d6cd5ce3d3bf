#!/usr/bin/env bash
# Installs everything the integration tests need (pkg/testharness):
# PostgreSQL 15, MariaDB, kcat, a JRE and Maven from Debian packages, then
# the Apache Kafka jars and OpenSearch from Maven Central into $PLUME_CACHE (default
# ~/.cache/plume). Idempotent; run as root (or with sudo available).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
	SUDO=(sudo)
fi

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

pkgs=()
[ -x /usr/lib/postgresql/15/bin/postgres ] || pkgs+=(postgresql-15)
have mariadbd && have mariadb-install-db || pkgs+=(mariadb-server)
have kcat || pkgs+=(kcat)
have java || pkgs+=(default-jre-headless)
have mvn || pkgs+=(maven)
have node && have npm || pkgs+=(nodejs npm) # DuckDB (npm @duckdb/node-api) reads the lake target's Parquet files

if [ "${#pkgs[@]}" -gt 0 ]; then
	echo "install-test-deps: installing ${pkgs[*]}"
	apt=("${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -q)
	# Update the package lists once: when there are none, or when the
	# install fails on stale ones.
	if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
		"${apt[@]}" update
		"${apt[@]}" install -y --no-install-recommends "${pkgs[@]}"
	elif ! "${apt[@]}" install -y --no-install-recommends "${pkgs[@]}"; then
		"${apt[@]}" update
		"${apt[@]}" install -y --no-install-recommends "${pkgs[@]}"
	fi
fi

# The OS users postgres and plume-opensearch (both servers refuse to run as
# root), the Kafka jars and the OpenSearch distribution (Maven Central).
go run ./pkg/testharness/cmd/install
