#!/usr/bin/env bash
# Fetch the pinned S3Proxy (org.gaul:s3proxy, Apache-2.0, version in scripts/s3proxy/pom.xml) and its
# runtime dependencies into .cache/s3proxy/libs with Maven's default repository. S3Proxy is the
# S3-compatible server the claim-store tests start (MinIO server is AGPL and is not used).
# Idempotent: skipped when the cache already holds the jars of the pinned version.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
pom="$root/scripts/s3proxy/pom.xml"
libs="${ONCOSTREAM_S3PROXY_LIBS:-$root/.cache/s3proxy/libs}"
version="$(sed -n 's:.*<s3proxy.version>\(.*\)</s3proxy.version>.*:\1:p' "$pom")"
stamp="$libs/.complete-$version"
[ -e "$stamp" ] && exit 0
need=()
command -v java >/dev/null || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need+=(maven)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing Debian packages for S3Proxy: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
echo "fetching S3Proxy $version jars into $libs"
tmp="$libs.tmp.$$"
rm -rf "$tmp"
trap 'rm -rf "$tmp"' EXIT
mvn -q -B -Dstyle.color=never -f "$pom" dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp"
[ -e "$tmp/s3proxy-$version.jar" ] || { echo "fetch_s3proxy.sh: s3proxy-$version.jar missing after mvn" >&2; exit 1; }
rm -rf "$libs"
mkdir -p "$(dirname "$libs")"
mv "$tmp" "$libs"
touch "$stamp"
echo "s3proxy $version: $(ls "$libs"/*.jar | wc -l) jars in $libs"
