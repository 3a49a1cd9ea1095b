"""The deployment client: a method's ClientAlgorithm on this machine's own data.

``fedweave join`` connects to a server, joins with its token (bound to one client id),
receives the run's config, builds the same :class:`~fedweave.sim.worker.Worker` the
simulator uses, and then repeats: long-poll for a task, train it exactly as the simulator
would — a :class:`~fedweave.core.client.ClientJob` with the client id, the job counter
and the round the server sent, and the round's learning rate — and upload the Update.
The worker's random generators are keyed by ``(seed, client id, job counter)``, so the
update is the one the simulation computes.

Data: an ``.npz`` file of its own (``x``, ``y``), or, for demos and tests, partition N of
the config's dataset (``--partition N --config CONFIG``; N must be the token's client id).

When the server goes away the client reconnects with exponential backoff (with jitter)
and joins again; it gives up after ``give_up_s`` seconds without reaching the server.
A client state that a method keeps between rounds (SCAFFOLD's control variate...) lives in
this process and is kept only for accepted updates, as in the simulator.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import signal
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from ..config import Config, load_config
from ..core.client import ClientJob
from ..core.errors import ConfigError, DataError, FedweaveError
from .sessions import SESSION_METADATA, SUPERSEDED
from .wire import (
    DEFAULT_FRAME_BYTES, MAX_MESSAGE_BYTES, PROTOCOL, Assembler, WireError, decode_broadcast, encode_update,
)

log = logging.getLogger("fedweave.deploy.client")

# a server may send a large model; a client trusts the server it chose, within reason
MAX_TASK_BYTES = 16 << 30
EXIT_DONE = 0


class ClientError(FedweaveError):
    """The client cannot go on (bad token, the server unreachable for too long...)."""


class _ServerAway(Exception):
    pass


def _channel(server: str, root_ca: str | Path | None, tls: bool):
    import grpc

    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.enable_retries", 0),
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.min_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2000),
        ("grpc.keepalive_time_ms", 20000),
        ("grpc.keepalive_timeout_ms", 10000),
    ]
    if tls or root_ca is not None:
        from .tls import channel_credentials

        return grpc.secure_channel(server, channel_credentials(root_ca), options=options)
    return grpc.insecure_channel(server, options=options)


class DeployClient:
    """One client process (or thread): ``run()`` returns when the server says the run is done."""

    def __init__(
        self,
        server: str,
        token: str,
        *,
        root_ca: str | Path | None = None,
        tls: bool = False,
        data: str | Path | None = None,
        partition: int | None = None,
        config: Any = None,
        overrides: list[str] | None = None,
        dataset=None,
        give_up_s: float = 600.0,
        poll_ms: int = 5000,
        backoff_s: tuple[float, float] = (0.25, 5.0),
        crash_at_round: int | None = None,
    ):
        if (data is None) == (partition is None):
            raise ConfigError("Give either --data FILE.npz (this client's own data) or --partition N (a partition of "
                              "the config's dataset), not both or neither.")
        if not token:
            raise ConfigError("--token is required: the token that `fedweave tokens new` printed for this client.")
        self.server, self.token = server, token
        self.root_ca, self.tls = root_ca, tls or root_ca is not None
        self.data_path = Path(data) if data is not None else None
        self.partition = partition
        self.config_source, self.overrides = config, overrides
        self.give_up_s, self.poll_ms, self.backoff_s = give_up_s, poll_ms, backoff_s
        self.crash_at_round = crash_at_round
        # a session id per client object: a second process with the same token supersedes this one
        self.session = secrets.token_hex(16)
        self.metadata = (("authorization", f"Bearer {token}"), (SESSION_METADATA, self.session))
        self.tasks_done = 0
        self.rejected = 0
        self._dataset = dataset  # a prebuilt FederatedDataset (benchmarks: many clients in one process)
        self._local = None  # (x, y) of an npz client, or the FederatedDataset of a partition client
        self._config_yaml: str | None = None
        self._worker = None
        self._exp = None
        self._state: dict | None = None  # the method's client state between rounds
        self.client_id: int | None = None
        self.frame_bytes = DEFAULT_FRAME_BYTES
        self._channel = None
        self._stub = None
        if partition is not None and partition < 0:
            raise ConfigError(f"--partition must be >= 0, got {partition}.")
        self._num_examples = self._load_local_data()

    # -- data --------------------------------------------------------------------------------
    def _load_local_data(self) -> int:
        if self.data_path is not None:
            from ..data.sources import load_source

            src = load_source("npz", root=str(self.data_path))
            self._local = (src.x_train, src.y_train)
            return len(src.y_train)
        if self._dataset is None:
            if self.config_source is None:
                raise ConfigError("--partition N needs --config CONFIG: the config whose dataset is partitioned.")
            from ..data.federated import build_federated

            cfg = load_config(self.config_source, self.overrides)
            self._dataset = build_federated(cfg.data)
        ds = self._dataset
        if self.partition >= ds.num_clients:
            raise ConfigError(f"--partition {self.partition} is out of range: the config's dataset has "
                              f"{ds.num_clients} clients (0..{ds.num_clients - 1}).")
        self._local = ds
        return len(ds.client_train[self.partition])

    def _federated_view(self, cid: int, num_clients: int, num_classes: int, input_shape: tuple[int, ...]):
        """A FederatedDataset in which this client's examples are partition ``cid``."""
        from ..data.federated import FederatedDataset

        if self.data_path is None:
            ds = self._local
            if ds.num_clients != num_clients or ds.num_classes != num_classes or tuple(ds.input_shape) != input_shape:
                raise ConfigError(f"The local config's dataset ({ds.num_clients} clients, {ds.num_classes} classes, inputs "
                                  f"{tuple(ds.input_shape)}) does not match the server's ({num_clients} clients, "
                                  f"{num_classes} classes, inputs {input_shape}); use the server's config.")
            return ds
        x, y = self._local
        if tuple(x.shape[1:]) != input_shape:
            raise DataError(f"{self.data_path}: inputs have shape {tuple(x.shape[1:])}; the run's model expects {input_shape}.")
        if len(y) and int(y.max()) >= num_classes:
            raise DataError(f"{self.data_path}: labels go up to {int(y.max())}; the run has {num_classes} classes (0..{num_classes - 1}).")
        empty = torch.zeros(0, dtype=torch.long)
        train = [empty] * num_clients
        train[cid] = torch.arange(len(y))
        return FederatedDataset(name=f"npz:{self.data_path.name}", x=x, y=y, client_train=train,
                                client_val=[empty] * num_clients, x_test=x[:0], y_test=y[:0], server_idx=empty,
                                num_classes=num_classes, input_shape=input_shape)

    def _build_worker(self, reply) -> None:
        from ..experiment import build_experiment
        from ..sim.worker import Worker

        cfg: Config = load_config(yaml.safe_load(reply.config_yaml))
        if self.data_path is None and self.partition != reply.client_id:
            raise ConfigError(f"This token is bound to client {reply.client_id}, but --partition is {self.partition}; "
                              f"use --partition {reply.client_id} (or that client's token).")
        # the client trains only: no executor, trackers or output of its own
        cfg.executor.kind = "serial"
        cfg.output.tensorboard = False
        cfg.output.mlflow = False
        data = self._federated_view(int(reply.client_id), int(reply.num_clients), int(reply.num_classes),
                                    tuple(int(d) for d in reply.input_shape))
        self._exp = build_experiment(cfg, data=data)
        torch.set_num_threads(cfg.executor.threads)
        self._worker = Worker(self._exp.worker_setup())
        self._config_yaml = reply.config_yaml

    # -- connection --------------------------------------------------------------------------
    def _connect(self) -> None:
        from . import fedweave_pb2_grpc as pb2_grpc

        if self._channel is not None:
            self._channel.close()
        self._channel = _channel(self.server, self.root_ca, self.tls)
        self._stub = pb2_grpc.FederationStub(self._channel)

    def _join(self) -> None:
        from . import fedweave_pb2 as pb2

        reply = self._stub.Join(pb2.JoinRequest(num_examples=self._num_examples, protocol=PROTOCOL),
                                metadata=self.metadata, timeout=30)
        if reply.protocol != PROTOCOL:
            raise ClientError(f"The server speaks {reply.protocol!r}; this client speaks {PROTOCOL!r}.")
        if self.client_id is not None and reply.client_id != self.client_id:
            raise ClientError(f"The server now binds this token to client {reply.client_id} (was {self.client_id}).")
        if reply.config_yaml != self._config_yaml:
            if self._config_yaml is not None:
                log.warning("the server's run changed (%s); starting a fresh client state", reply.run_id)
                self._state = None
            self.client_id = int(reply.client_id)
            self._build_worker(reply)
        self.frame_bytes = int(reply.frame_bytes) or DEFAULT_FRAME_BYTES
        log.info("client %d joined %s (%s), run %s, %d examples", self.client_id, self.server,
                 "TLS" if self.tls else "UNENCRYPTED", reply.run_id, self._num_examples)

    def run(self) -> int:
        """Serve tasks until the run is done; returns the number of tasks trained."""
        import grpc

        if not self.tls:
            log.warning("connecting to %s WITHOUT TLS: the token and the model travel unencrypted", self.server)
        delay = self.backoff_s[0]
        failing_since: float | None = None
        joined = False
        rng = random.Random()
        try:
            while True:
                try:
                    if self._stub is None:
                        self._connect()
                    if not joined:
                        self._join()
                        joined = True
                    status = self._poll_once()
                    failing_since, delay = None, self.backoff_s[0]
                    if status == "done":
                        log.info("client %d: the run is complete after %d tasks", self.client_id, self.tasks_done)
                        return self.tasks_done
                    if status == "shutdown":
                        raise _ServerAway("the server is shutting down")
                    continue
                except grpc.RpcError as exc:
                    code, details = exc.code(), exc.details()
                    if code == grpc.StatusCode.UNAUTHENTICATED:
                        raise ClientError(f"The server at {self.server} rejected the token ({details}).") from None
                    if code == grpc.StatusCode.FAILED_PRECONDITION and details == "join first":
                        joined = False  # the server restarted and forgot us: join again at once
                        continue
                    if code == grpc.StatusCode.FAILED_PRECONDITION and str(details).startswith(SUPERSEDED):
                        log.error("client %s: %s", self.client_id, details)
                        raise ClientError(f"Another process joined with this token and took over: {details}") from None
                    if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT,
                                grpc.StatusCode.PERMISSION_DENIED):
                        raise ClientError(f"The server refused this client: {details}") from None
                    if code == grpc.StatusCode.UNAVAILABLE:
                        mismatch = tls_mismatch(self.server, self.tls, self.root_ca, details or "")
                        if mismatch:  # retrying cannot help: say so now, not after give_up_s
                            raise ClientError(mismatch) from None
                    log.info("server %s unreachable (%s: %s); retrying", self.server, code.name, details)
                except _ServerAway as exc:
                    log.info("%s; reconnecting with backoff", exc)
                # the server went away: back off, reconnect, join again (it may have restarted)
                joined = False
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since > self.give_up_s:
                    raise ClientError(f"The server at {self.server} has been unreachable for {self.give_up_s:g} s; giving up.")
                time.sleep(delay * (0.5 + rng.random()))
                delay = min(2 * delay, self.backoff_s[1])
                self._connect()
        finally:
            if self._channel is not None:
                self._channel.close()

    def _poll_once(self) -> str:
        import grpc

        from . import fedweave_pb2 as pb2

        stream = self._stub.GetTask(pb2.TaskRequest(wait_ms=self.poll_ms), metadata=self.metadata,
                                    timeout=self.poll_ms / 1000 + 600)
        a = Assembler(MAX_TASK_BYTES)
        try:
            for f in stream:
                a.feed(f.header, f.data, f.ByteSize())
            header, data = a.done()
        except WireError as exc:
            raise ClientError(f"The server sent a malformed task: {exc}") from None
        status = header.get("status")
        if status != "task":
            return str(status)
        r, counter = int(header["round"]), int(header["counter"])
        if self.crash_at_round is not None and r == self.crash_at_round:  # tests: die mid-round, as a crash would
            os.kill(os.getpid(), signal.SIGKILL)
        if int(header["client_id"]) != self.client_id:
            raise ClientError(f"The server sent a task for client {header['client_id']}; this is client {self.client_id}.")
        broadcast = decode_broadcast(header, data)
        exp = self._exp
        job = ClientJob(self.client_id, counter, r, broadcast, self._state, exp.train_settings(float(header["lr"])))
        job.fetch_fraction = exp.algorithm.fetch_fraction(job)
        if job.fetch_fraction is not None:
            raise ClientError(f"Method {exp.config.method.name!r} fetches a fresh model part-way through local training; "
                              "deployments do not support that yet.")
        t0 = time.perf_counter()
        result = self._worker.run(job)
        encoded = encode_update(result.update, round=r, counter=counter)
        frames = (pb2.Frame(header=h, data=d) for h, d in encoded.frames(self.frame_bytes))
        try:
            self._stub.SendUpdate(frames, metadata=self.metadata, timeout=600)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.INVALID_ARGUMENT:
                raise
            self.rejected += 1
            log.warning("round %d: the server rejected this update: %s", r + 1, exc.details())
            return "task"
        if result.state is not None:
            self._state = result.state
        self.tasks_done += 1
        log.info("round %d: update sent (job %d, %.2f s of training, loss %.4f)", r + 1, counter,
                 time.perf_counter() - t0, result.update.metrics.get("loss", float("nan")))
        return "task"


def tls_mismatch(server: str, tls: bool, root_ca, details: str) -> str | None:
    """What is wrong when a connection failed because the two sides disagree on TLS (one
    side without it, or a certificate this client does not trust), or None."""
    d = details.lower()
    if tls:
        trusted = f"--root-ca {root_ca}" if root_ca is not None else "the system's root certificates (--tls)"
        if "wrong_version_number" in d or "wrong version number" in d:
            return (f"The server at {server} does not speak TLS (the TLS handshake got a plain reply). Connect "
                    "without --root-ca/--tls, or start the server with --tls-cert and --tls-key.")
        if "certificate_verify_failed" in d or "certificate verify failed" in d:
            return (f"The server at {server} presented a certificate that {trusted} does not trust ({details}). Give "
                    "--root-ca the server's certificate (self-signed) or the CA that signed it.")
        if "peer name" in d or "hostname" in d:  # not a bare "handshake failed": a restart can cause that
            return (f"The TLS handshake with {server} failed ({details}). Check that the server's certificate names "
                    f"this host and is trusted by {trusted}.")
        return None
    if "socket closed" in d and speaks_tls(server):
        return (f"The server at {server} speaks TLS, but this client connected without it. Give --root-ca CERT (the "
                "server's certificate or its CA) or --tls (trust the system's roots).")
    return None


def speaks_tls(server: str, timeout_s: float = 3.0) -> bool:
    """Whether ``HOST:PORT`` completes a TLS handshake (certificate not checked: this only
    tells a TLS server from a plain one)."""
    import socket
    import ssl

    host, _, port = server.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        return False
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
            with ctx.wrap_socket(sock, server_hostname=host):
                return True
    except (OSError, ValueError):  # ssl.SSLError is an OSError
        return False


def join(server: str, token: str, **kwargs) -> int:
    """``fedweave join``: run a client until the server's run is done."""
    return DeployClient(server, token, **kwargs).run()

