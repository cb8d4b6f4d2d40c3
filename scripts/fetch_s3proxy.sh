#!/usr/bin/env bash
# Fetch the pinned S3Proxy (org.gaul:s3proxy, Apache-2.0, version in scripts/s3proxy/pom.xml) and its
# runtime dependencies into .cache/s3proxy/libs (ONCOSTREAM_S3PROXY_LIBS overrides). S3Proxy is the
# S3-compatible server the claim-store tests start (MinIO server is AGPL and is not used).
exec "$(dirname "$0")/fetch_jars.sh" s3proxy s3proxy
