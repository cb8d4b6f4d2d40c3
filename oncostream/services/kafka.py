"""Apache Kafka 4.x, KRaft combined mode, one node on loopback: the broker for `make stack` and the tests.

The jars come from `scripts/fetch_kafka.sh` (pinned in scripts/kafka/pom.xml) into `.cache/kafka/libs`;
nothing here downloads anything. `start()` formats a fresh data dir, starts `kafka.Kafka` in its own
session (so `make stack` can exit and leave it running), waits for a metadata answer and creates the
oncostream topics with explicit configs. `RunningService.restart()` starts the same broker again on the
same ports and data dir (no format): its topics, records and committed offsets are still there.
"""

from __future__ import annotations

import base64
import logging
import os
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from oncostream.services.base import (
    RunningService,
    ServiceStartError,
    free_port,
    java_executable,
    port_open,
    wait_until,
)
from oncostream.settings import REPO_ROOT, Settings

log = logging.getLogger(__name__)

DEFAULT_LIBS = REPO_ROOT / ".cache" / "kafka" / "libs"
# a mammogram at full size is tens of MiB as DICOM; the claim check handles anything larger
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
RETENTION_MS = 7 * 24 * 3600 * 1000
TOPIC_CONFIGS = {
    "max.message.bytes": str(MAX_MESSAGE_BYTES),
    "retention.ms": str(RETENTION_MS),
    # keep whatever codec the producer chose (lz4 or gzip), no broker-side recompression
    "compression.type": "producer",
}
READY_TIMEOUT_S = 120.0

_LOG4J2 = """\
Configuration:
  status: warn
  Appenders:
    File:
      name: broker
      fileName: "{log_file}"
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: INFO
      AppenderRef:
        - ref: broker
    Logger:
      - name: kafka.request.logger
        level: WARN
      - name: org.apache.kafka.controller
        level: INFO
      - name: state.change.logger
        level: WARN
"""


@dataclass(frozen=True)
class BrokerTls:
    """TLS listeners to open beside the loopback PLAINTEXT one (which the broker itself, the controller
    and topic administration keep using): ``SSL`` (mutual TLS when ``require_client_cert``) and
    ``SASL_SSL`` (TLS + SASL PLAIN and SCRAM-SHA-512 for ``users``, name -> password).

    ``keystore`` is one PEM file with the broker's unencrypted PKCS#8 private key and its certificate
    chain (Kafka's ``ssl.keystore.type=PEM``); ``truststore`` a PEM file of the CA that signs clients."""

    keystore: Path
    truststore: Path
    require_client_cert: bool = True
    users: dict[str, str] = field(default_factory=dict)


def topic_partitions(settings: Settings) -> dict[str, int]:
    """Partitions per oncostream topic: input spread over workers, outputs keyed by study."""
    return {settings.topic_dicom: 6, settings.topic_triage: 3, settings.topic_results: 3, settings.topic_dlq: 1}


def create_topics(bootstrap: str, partitions: dict[str, int], configs: dict[str, str] | None = None,
                  timeout_s: float = 30.0) -> None:
    """Create topics (idempotent: existing ones are left as they are) with explicit configs."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="oncostream-admin",
                             request_timeout_ms=int(timeout_s * 1000))
    try:
        existing = set(admin.list_topics())
        new = [NewTopic(name, num_partitions=n, replication_factor=1, topic_configs=dict(configs or TOPIC_CONFIGS))
               for name, n in partitions.items() if name not in existing]
        if new:
            try:
                admin.create_topics(new, timeout_ms=int(timeout_s * 1000))
            except TopicAlreadyExistsError:
                pass  # created concurrently: same outcome
        wait_until(lambda: set(partitions) <= set(admin.list_topics()), timeout_s, "kafka topic creation")
    finally:
        admin.close()


def delete_topics(bootstrap: str, names: list[str], timeout_s: float = 30.0) -> None:
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="oncostream-admin")
    try:
        admin.delete_topics(names, timeout_ms=int(timeout_s * 1000))
    finally:
        admin.close()


def _metadata_ready(bootstrap: str) -> bool:
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="oncostream-ready", request_timeout_ms=5000)
    try:
        return bool(admin.describe_cluster().get("brokers"))
    finally:
        admin.close()


def _tls_properties(tls: BrokerTls) -> list[str]:
    jaas_plain = "org.apache.kafka.common.security.plain.PlainLoginModule required " + " ".join(
        f'user_{name}="{password}"' for name, password in tls.users.items()) + ";"
    return [
        "ssl.keystore.type=PEM",
        f"ssl.keystore.location={tls.keystore}",
        "ssl.truststore.type=PEM",
        f"ssl.truststore.location={tls.truststore}",
        "ssl.enabled.protocols=TLSv1.3,TLSv1.2",
        f"listener.name.ssl.ssl.client.auth={'required' if tls.require_client_cert else 'none'}",
        "listener.name.sasl_ssl.ssl.client.auth=none",
        "sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-512",
        f"listener.name.sasl_ssl.plain.sasl.jaas.config={jaas_plain}",
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config="
        "org.apache.kafka.common.security.scram.ScramLoginModule required;",
    ]


def _server_properties(data_dir: Path, port: int, controller_port: int,
                       tls_ports: tuple[int, int] | None = None, tls: BrokerTls | None = None) -> str:
    listeners = [f"PLAINTEXT://127.0.0.1:{port}"]
    protocols = "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
    if tls is not None and tls_ports is not None:
        listeners += [f"SSL://127.0.0.1:{tls_ports[0]}", f"SASL_SSL://127.0.0.1:{tls_ports[1]}"]
        protocols += ",SSL:SSL,SASL_SSL:SASL_SSL"
    return "\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
        f"listeners={','.join(listeners)},CONTROLLER://127.0.0.1:{controller_port}",
        f"advertised.listeners={','.join(listeners)}",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=PLAINTEXT",
        f"listener.security.protocol.map={protocols}",
        *(_tls_properties(tls) if tls is not None else []),
        f"log.dirs={data_dir}",
        "num.partitions=3",
        "auto.create.topics.enable=false",
        # one node: every internal topic has a single replica
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=3",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        # tests start and stop consumers often; do not wait 3 s before the first rebalance
        "group.initial.rebalance.delay.ms=0",
        f"message.max.bytes={MAX_MESSAGE_BYTES}",
        f"replica.fetch.max.bytes={MAX_MESSAGE_BYTES}",
        "num.network.threads=2",
        "num.io.threads=4",
        "log.retention.hours=168",
        "",
    ])


def new_cluster_id() -> str:
    """A random KRaft cluster id (22 URL-safe base64 characters) that never starts with '-'.

    One uuid in 64 encodes to a leading '-', which kafka-storage's argument parser reads as an option
    ("argument --cluster-id/-t: expected one argument"); Kafka's own Uuid.randomUuid redraws those too."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def start(workdir: Path, libs: Path | None = None, ready_timeout_s: float = READY_TIMEOUT_S,
          settings: Settings | None = None, tls: BrokerTls | None = None) -> RunningService:
    """Format a fresh KRaft data dir under `workdir`, start the broker, create the oncostream topics.

    With ``tls``, ``env`` also names ``KAFKA_SSL_BOOTSTRAP`` and ``KAFKA_SASL_SSL_BOOTSTRAP``; SCRAM
    credentials of ``tls.users`` are written into the metadata when the data dir is formatted."""
    libs = libs or Path(os.environ.get("ONCOSTREAM_KAFKA_LIBS", DEFAULT_LIBS))
    if not any(libs.glob("kafka_2.13-*.jar")):
        raise ServiceStartError(f"kafka: no broker jars in {libs}; run scripts/fetch_kafka.sh first")
    workdir = Path(workdir).resolve()
    data_dir = workdir / "data"
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    ports = {free_port()}
    while len(ports) < (4 if tls is not None else 2):
        ports.add(free_port())
    port, controller_port, *tls_ports = sorted(ports)
    props = workdir / "server.properties"
    props.write_text(_server_properties(data_dir, port, controller_port, tuple(tls_ports) or None, tls))
    props.chmod(0o600)  # SASL PLAIN passwords live in it
    log_path = workdir / "broker.log"
    log4j = workdir / "log4j2.yaml"
    log4j.write_text(_LOG4J2.format(log_file=log_path))

    java = java_executable()
    classpath = str(libs / "*")
    jvm = ["-Xms256m", "-Xmx1g", "-XX:+UseG1GC", "-Djava.awt.headless=true",
           f"-Dlog4j2.configurationFile={log4j}", f"-Dkafka.logs.dir={workdir}"]
    cluster_id = new_cluster_id()
    scram = [arg for name, password in (tls.users.items() if tls is not None else ())
             for arg in ("--add-scram", f"SCRAM-SHA-512=[name={name},password={password}]")]
    fmt = subprocess.run([java, *jvm, "-cp", classpath, "kafka.tools.StorageTool", "format",
                          "-t", cluster_id, "-c", str(props), *scram],
                         capture_output=True, text=True, timeout=120)
    if fmt.returncode != 0:
        raise ServiceStartError(f"kafka storage format failed ({fmt.returncode}): {fmt.stdout[-2000:]}"
                                f"{fmt.stderr[-2000:]}")

    def launch() -> subprocess.Popen:
        # the same properties and data dir every time: a broker started again keeps its ports and its log
        with open(workdir / "console.log", "ab") as console:
            return subprocess.Popen([java, *jvm, "-cp", classpath, "kafka.Kafka", str(props)],
                                    stdout=console, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=workdir, start_new_session=True)

    process = launch()
    bootstrap = f"127.0.0.1:{port}"
    env = {"KAFKA_BOOTSTRAP": bootstrap}
    if tls_ports:
        env |= {"KAFKA_SSL_BOOTSTRAP": f"127.0.0.1:{tls_ports[0]}", "KAFKA_SASL_SSL_BOOTSTRAP": f"127.0.0.1:{tls_ports[1]}"}
    service = RunningService(name="kafka", env=env, process=process,
                             workdir=workdir, log_path=log_path,
                             extra={"controller_port": controller_port, "cluster_id": cluster_id},
                             launch=launch, ready=lambda: _metadata_ready(bootstrap), ready_timeout_s=ready_timeout_s)
    try:
        deadline = time.monotonic() + ready_timeout_s
        # the listener first (cheap, quiet), then a metadata answer naming this broker
        wait_until(lambda: port_open(port), ready_timeout_s, f"kafka listener on {bootstrap}",
                   process=process, log_path=log_path)
        wait_until(lambda: _metadata_ready(bootstrap), max(deadline - time.monotonic(), 5.0),
                   f"kafka broker on {bootstrap}", process=process, log_path=log_path)
        create_topics(bootstrap, topic_partitions(settings or Settings()))
    except BaseException:
        service.stop()
        raise
    log.info("kafka broker ready on %s (pid %d)", bootstrap, process.pid)
    return service
