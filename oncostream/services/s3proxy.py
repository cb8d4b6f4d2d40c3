"""S3Proxy (Apache-2.0) on loopback: the S3-compatible object store of the claim-store tests.

The jars come from `scripts/fetch_s3proxy.sh` (pinned in scripts/s3proxy/pom.xml) into
`.cache/s3proxy/libs`; nothing here downloads anything. `start()` writes a configuration with the
jclouds file-system backend under `workdir`, AWS signature authentication with an access key and
secret drawn at run time, a free port on 127.0.0.1, waits until the server answers HTTP, and creates
the bucket of `S3_CLAIM_CHECK_URL` with those credentials (which proves they work).
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import subprocess
from pathlib import Path

from oncostream.services.base import (
    RunningService,
    ServiceStartError,
    free_port,
    java_executable,
    port_open,
    wait_until,
)
from oncostream.settings import REPO_ROOT

log = logging.getLogger(__name__)

DEFAULT_LIBS = REPO_ROOT / ".cache" / "s3proxy" / "libs"
READY_TIMEOUT_S = 60.0
CLAIMS_BUCKET = "oncostream-claims"

_LOGBACK = """\
<configuration>
  <appender name="FILE" class="ch.qos.logback.core.FileAppender">
    <file>{log_file}</file>
    <encoder><pattern>%d %-5level %logger{{36}} - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="FILE"/></root>
</configuration>
"""


def _answers_http(port: int) -> bool:
    import requests

    # unauthenticated: S3Proxy answers 403 AccessDenied, which is enough to know it serves requests
    return requests.get(f"http://127.0.0.1:{port}/", timeout=2).status_code in (200, 403)


def _create_bucket(endpoint: str, access_key: str, secret_key: str, bucket: str) -> None:
    import boto3
    from botocore.config import Config

    client = boto3.session.Session().client(
        "s3", endpoint_url=endpoint, aws_access_key_id=access_key, aws_secret_access_key=secret_key,
        region_name="us-east-1", config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))
    client.create_bucket(Bucket=bucket)


def start(workdir: Path, libs: Path | None = None, ready_timeout_s: float = READY_TIMEOUT_S) -> RunningService:
    """Start S3Proxy with an empty file-system backend under `workdir`. ``env`` gives
    ``S3_ENDPOINT_URL``, ``S3_ACCESS_KEY_ID``, ``S3_SECRET_ACCESS_KEY`` and ``S3_CLAIM_CHECK_URL``
    (s3://oncostream-claims/claims, for ONCOSTREAM_CLAIM_CHECK_URL)."""
    libs = libs or Path(os.environ.get("ONCOSTREAM_S3PROXY_LIBS", DEFAULT_LIBS))
    if not any(libs.glob("s3proxy-*.jar")):
        raise ServiceStartError(f"s3proxy: no jars in {libs}; run scripts/fetch_s3proxy.sh first")
    workdir = Path(workdir).resolve()
    data_dir = workdir / "data"
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    access_key, secret_key = f"oncostream-{secrets.token_hex(4)}", secrets.token_hex(20)
    props = workdir / "s3proxy.conf"
    props.write_text("\n".join([
        f"s3proxy.endpoint={endpoint}",
        "s3proxy.authorization=aws-v2-or-v4",
        f"s3proxy.identity={access_key}",
        f"s3proxy.credential={secret_key}",
        "jclouds.provider=filesystem-nio2",
        # the file-system backend asks for credentials of its own but does not check them
        "jclouds.identity=local",
        "jclouds.credential=local",
        f"jclouds.filesystem.basedir={data_dir}",
        "",
    ]))
    props.chmod(0o600)
    log_path = workdir / "s3proxy.log"
    logback = workdir / "logback.xml"
    logback.write_text(_LOGBACK.format(log_file=log_path))

    console = open(workdir / "console.log", "ab")  # noqa: SIM115 - owned by the child for its lifetime
    process = subprocess.Popen([java_executable(), "-Xms64m", "-Xmx512m", "-Djava.awt.headless=true",
                                f"-Dlogback.configurationFile={logback}", "-cp", str(libs / "*"),
                                "org.gaul.s3proxy.Main", "--properties", str(props)],
                               stdout=console, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               cwd=workdir, start_new_session=True)
    console.close()
    service = RunningService(name="s3proxy", process=process, workdir=workdir, log_path=log_path,
                             env={"S3_ENDPOINT_URL": endpoint, "S3_ACCESS_KEY_ID": access_key,
                                  "S3_SECRET_ACCESS_KEY": secret_key,
                                  "S3_CLAIM_CHECK_URL": f"s3://{CLAIMS_BUCKET}/claims"})
    try:
        wait_until(lambda: port_open(port), ready_timeout_s, f"s3proxy listener on {endpoint}",
                   process=process, log_path=log_path)
        wait_until(lambda: _answers_http(port), ready_timeout_s, f"s3proxy on {endpoint}",
                   process=process, log_path=log_path)
        _create_bucket(endpoint, access_key, secret_key, CLAIMS_BUCKET)
    except BaseException:
        service.stop()
        raise
    log.info("s3proxy ready on %s (pid %d)", endpoint, process.pid)
    return service
