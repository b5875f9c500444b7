#!/usr/bin/env python3
"""End-to-end test of the daemon through the Python client (client/python).

    QLORAD_BINARY=build/server/qlorad python3 tests/integration/python_client_test.py [-v] [-k name]

Starts $QLORAD_BINARY on a free port with a fresh data folder and three tenants (ops: admin;
acme: limited; globex), then registers stories260K, uploads tests/data/facts_train.jsonl,
fine-tunes, downloads, generates, evaluates and cancels through the API.
Environment: QLORAD_BINARY (required; exit 77 = skipped without it), QLORAD_TEST_MODELS
(default <repo>/../shared/models), QLORAD_KEEP_TMP=1 keeps the temporary folder.
"""

import hashlib
import json
import math
import re
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import uuid
from pathlib import Path

SKIP = 77
REPO = Path(__file__).resolve().parent.parent.parent
BINARY = os.environ.get("QLORAD_BINARY", "")
MODELS = Path(os.environ.get("QLORAD_TEST_MODELS", str(REPO.parent / "shared" / "models")))
MODEL_PATH = MODELS / "stories260K" / "stories260K.gguf"
TRAIN = REPO / "tests" / "data" / "facts_train.jsonl"
KEYS = {"ops": "ops-key", "acme": "acme-key", "globex": "globex-key"}
RPC_TIMEOUT = 120      # seconds, each unary call
TRAIN_TIMEOUT = 900    # seconds, a whole 20-step job on a shared CPU

if not BINARY or not os.path.isfile(BINARY) or not os.access(BINARY, os.X_OK):
    print(f"python_client_test: skipped, QLORAD_BINARY is {'unset' if not BINARY else 'missing'}"
          f"{'' if not BINARY else ': ' + BINARY} (point it at the qlorad daemon)")
    sys.exit(SKIP)
if not MODEL_PATH.is_file():
    print(f"python_client_test: skipped, no test model at {MODEL_PATH} (set QLORAD_TEST_MODELS)")
    sys.exit(SKIP)

sys.path.insert(0, str(REPO / "client" / "python"))
from qlorad_client import (TERMINAL_STATES, Client, QloradError, adapters_pb2,  # noqa: E402
                           jobs_pb2, statefulset_target)

JobState = jobs_pb2.JobState
_tmp = None  # the temporary folder; main() prints the daemon's log from it when a test failed


def _sha256(data):
    return hashlib.sha256(data).hexdigest()


def _log_tail(limit=20000):
    try:
        text = (Path(_tmp) / "qlorad.log").read_text(errors="replace")
    except (OSError, TypeError):
        return "(no daemon log)"
    return text if len(text) <= limit else "...\n" + text[-limit:]


def _state(s):
    return JobState.Name(s)


class PythonClientTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        global _tmp
        _tmp = tempfile.mkdtemp(prefix="qlorad-pytest-")
        cls.tmp = Path(_tmp)
        tenants = {"tenants": [
            {"name": "ops", "key_sha256": _sha256(b"ops-key"), "admin": True},
            {"name": "acme", "key_sha256": _sha256(b"acme-key"), "admin": False,
             "limits": {"max_concurrent_jobs": 2, "max_dataset_bytes": 1048576,
                        "max_adapters": 10}},
            {"name": "globex", "key_sha256": _sha256(b"globex-key"), "admin": False},
        ]}
        (cls.tmp / "tenants.json").write_text(json.dumps(tenants, indent=2))
        cls.target = f"127.0.0.1:{cls._start_daemon()}"
        cls.clients = {name: Client(cls.target, token=key, timeout=RPC_TIMEOUT)
                       for name, key in KEYS.items()}
        cls.ops, cls.acme, cls.globex = (cls.clients[n] for n in ("ops", "acme", "globex"))
        cls._dataset = None

    @classmethod
    def _start_daemon(cls, port=0):
        """Starts qlorad on 127.0.0.1:port (0: a free port it picks) with the class's data
        folder; returns the port."""
        port_file = cls.tmp / "port"
        if port_file.exists():
            port_file.unlink()
        cls.log = open(cls.tmp / "qlorad.log", "ab")
        cmd = [BINARY, "--listen", f"127.0.0.1:{port}", "--port-file", str(port_file),
               "--data-dir", str(cls.tmp / "data"), "--tenants", str(cls.tmp / "tenants.json"),
               "--devices", "cpu:0", "--checkpoint-every", "5",
               "--metrics-listen", "127.0.0.1:0"]
        cls.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=cls.log,
                                    stderr=subprocess.STDOUT)
        port, deadline = None, time.monotonic() + 30
        while time.monotonic() < deadline and cls.proc.poll() is None:
            try:
                text = port_file.read_text().strip()
                if text.isdigit() and int(text) > 0:
                    port = int(text)
                    break
            except OSError:
                pass
            time.sleep(0.05)
        if port is None:
            why = (f"exited with {cls.proc.returncode}" if cls.proc.poll() is not None
                   else "wrote no port file within 30 s")
            cls._stop_daemon()
            raise RuntimeError(f"qlorad {why}: {' '.join(cmd)}")  # main() prints its log
        return port

    @classmethod
    def tearDownClass(cls):
        for c in getattr(cls, "clients", {}).values():
            c.close()
        hung = cls._stop_daemon()
        if hung:
            raise AssertionError("qlorad did not exit within 30 s of SIGTERM (killed)")

    @classmethod
    def _stop_daemon(cls):
        """SIGTERM, 30 s, then SIGKILL; True when it had to be killed."""
        hung = False
        if cls.proc.poll() is None:
            cls.proc.send_signal(signal.SIGTERM)
            try:
                cls.proc.wait(30)
            except subprocess.TimeoutExpired:
                hung = True
                cls.proc.kill()
                cls.proc.wait()
        cls.log.close()
        return hung

    # -- shared fixtures (each test can run alone with -k) ----------------------------------

    @classmethod
    def model(cls):
        """Registers "stories" (idempotent) and returns its name."""
        cls.ops.register_model("stories", str(MODEL_PATH))
        return "stories"

    @classmethod
    def dataset(cls):
        """acme's upload of facts_train.jsonl, made once."""
        if cls._dataset is None:
            cls._dataset = cls.acme.upload_dataset(str(TRAIN))
        return cls._dataset

    def assertRpcError(self, code, fn, *args, contains=None, **kwargs):
        with self.assertRaises(QloradError) as cm:
            fn(*args, **kwargs)
        self.assertEqual(cm.exception.code, code, cm.exception.message)
        if contains is not None:
            self.assertIn(contains, cm.exception.message)
        return cm.exception

    def finish(self, job_id):
        """Cancels a job unless it has ended, and waits for the end (keeps acme's two slots
        free for the next test)."""
        try:
            self.acme.cancel_job(job_id)
        except QloradError as e:
            if e.code != "FAILED_PRECONDITION":
                raise
        return self.acme.wait_job(job_id, timeout=TRAIN_TIMEOUT)

    # -- (a) models, authentication, authorization ------------------------------------------

    def test_a_models_and_auth(self):
        m = self.ops.register_model("stories", str(MODEL_PATH))
        self.assertEqual(m.name, "stories")
        self.assertEqual(m.format, "gguf")
        self.assertGreater(m.architecture.vocab_size, 0)
        self.assertGreater(m.parameter_count, 0)
        again = self.ops.register_model("stories", str(MODEL_PATH))  # idempotent
        self.assertEqual(again.source_path, m.source_path)
        self.assertIn("stories", [x.name for x in self.ops.list_models()])
        self.assertEqual(self.ops.get_model("stories").name, "stories")

        self.assertRpcError("PERMISSION_DENIED", self.acme.register_model, "mine",
                            str(MODEL_PATH))
        self.assertRpcError("PERMISSION_DENIED", self.acme.delete_model, "stories")
        # A tenant sees the models it may train on, but not where their files lie.
        seen = [x for x in self.acme.list_models() if x.name == "stories"]
        self.assertEqual(len(seen), 1)
        self.assertEqual(seen[0].source_path, "")
        self.assertGreater(seen[0].architecture.vocab_size, 0)
        self.assertEqual(self.acme.get_model("stories").source_path, "")
        with Client(self.target, token="", timeout=RPC_TIMEOUT) as anonymous:
            self.assertRpcError("UNAUTHENTICATED", anonymous.register_model, "stories",
                                str(MODEL_PATH))
            self.assertRpcError("UNAUTHENTICATED", anonymous.list_datasets)
        with Client(self.target, token="not-a-key", timeout=RPC_TIMEOUT) as stranger:
            self.assertRpcError("UNAUTHENTICATED", stranger.get_limits)
            self.assertRpcError("UNAUTHENTICATED", stranger.list_devices)

        limits = self.acme.get_limits()
        self.assertEqual(limits.max_concurrent_jobs, 2)
        self.assertEqual(limits.max_dataset_bytes, 1048576)
        self.assertEqual(limits.max_adapters, 10)

        devices = self.acme.list_devices()
        self.assertEqual([d.name for d in devices.devices], ["cpu:0"])
        self.assertTrue(devices.devices[0].description.startswith("cpu (gemm: "))
        self.assertFalse(devices.devices[0].lost)
        self.assertEqual(devices.max_job_bytes, devices.devices[0].memory_budget)
        self.assertGreater(devices.max_job_bytes, 0)
        self.assertFalse(devices.activity_shown)  # a tenant key: no one's activity
        self.assertFalse(devices.devices[0].HasField("memory"))
        self.assertTrue(self.ops.list_devices().activity_shown)

        # No target: $QLORAD_SERVER, as qloractl reads it (the README exports it for both).
        saved = os.environ.get("QLORAD_SERVER")
        os.environ["QLORAD_SERVER"] = self.target
        try:
            with Client(token="acme-key", timeout=RPC_TIMEOUT) as from_environment:
                self.assertEqual(from_environment.get_limits().max_concurrent_jobs, 2)
        finally:
            if saved is None:
                del os.environ["QLORAD_SERVER"]
            else:
                os.environ["QLORAD_SERVER"] = saved

    # -- (b) datasets -----------------------------------------------------------------------

    def test_b_datasets(self):
        data = TRAIN.read_bytes()
        expected_examples = sum(1 for line in data.splitlines() if line.strip())
        ds = self.dataset()
        self.assertTrue(ds.id)
        self.assertEqual(ds.examples, expected_examples)
        self.assertEqual(ds.bytes, len(data))
        self.assertEqual(ds.sha256, _sha256(data))
        self.assertEqual(self.acme.get_dataset(ds.id).sha256, ds.sha256)
        self.assertIn(ds.id, [d.id for d in self.acme.list_datasets()])
        # Tenant-scoped: globex cannot see it.
        self.assertRpcError("NOT_FOUND", self.globex.get_dataset, ds.id)
        self.assertNotIn(ds.id, [d.id for d in self.globex.list_datasets()])

        before = len(self.acme.list_datasets())
        lines = data.splitlines(keepends=True)
        bad = b"".join(lines[:2]) + b'{"prompt": "cut short", "completion": \n' + b"".join(lines[3:])
        self.assertRpcError("INVALID_ARGUMENT", self.acme.upload_dataset, bad, name="bad",
                            contains="line 3")
        self.assertEqual(len(self.acme.list_datasets()), before)

        # A file whose name is not UTF-8 (Latin-1 bytes on disk, a str path with surrogates in
        # Python) uploads under the readable part of its name. It failed with gRPC's UNKNOWN
        # "Exception iterating requests!", the protobuf error hidden.
        latin1 = os.path.join(os.fsencode(str(self.tmp)), b"donn\xe9es.jsonl")
        with open(latin1, "wb") as f:
            f.write(b'{"text": "Tom has a red ball."}\n')
        odd = self.acme.upload_dataset(os.fsdecode(latin1))
        try:
            self.assertEqual(odd.name, "donn\ufffdes.jsonl")
            self.assertEqual(odd.examples, 1)
        finally:
            self.acme.delete_dataset(odd.id)

    # -- (c) a job from start to end, and what it made --------------------------------------

    def test_c_job_lifecycle(self):
        model, ds = self.model(), self.dataset()
        job = self.acme.create_job(
            model=model, training_dataset=ds.id, rank=4, alpha=8, dropout=0.0,
            learning_rate=3e-3, schedule="constant", warmup_ratio=0.0, max_steps=20,
            batch_size=8, seq_len=64, seed=1, labels={"test": "lifecycle"})
        try:
            self.assertIn(_state(job.state), ("QUEUED", "RUNNING"))
            self.assertEqual(job.tenant, "acme")
            self.assertEqual(job.requested.rank, 4)
            self.assertIn(job.id, [j.id for j in self.acme.list_jobs(labels={"test": "lifecycle"})])

            events = []
            final = self.acme.wait_job(job.id, on_event=events.append, timeout=TRAIN_TIMEOUT)
        finally:
            if self.acme.get_job(job.id).state not in TERMINAL_STATES:
                self.finish(job.id)
        self.assertEqual(_state(final.state), "SUCCEEDED", final.error)

        seqs = [e.sequence for e in events]
        self.assertEqual(seqs, sorted(set(seqs)), "event sequences not increasing")
        states = [_state(e.state_change.to) for e in events if e.WhichOneof("kind") == "state_change"]
        self.assertIn("RUNNING", states)
        self.assertEqual(states[-1], "SUCCEEDED")
        self.assertLess(states.index("RUNNING"), states.index("SUCCEEDED"))
        steps = [e.progress.step for e in events if e.WhichOneof("kind") == "progress"]
        self.assertTrue(steps, "no progress events")
        self.assertEqual(steps, sorted(steps), f"progress steps decrease: {steps}")
        self.assertGreaterEqual(steps[0], 1)
        self.assertEqual(steps[-1], 20)
        for e in events:
            if e.WhichOneof("kind") == "progress":
                self.assertTrue(math.isfinite(e.progress.loss), e)
        # The stored events are the ones streamed.
        self.assertEqual([e.sequence for e in self.acme.job_events(job.id)], seqs)

        self.assertEqual(final.steps_completed, 20)
        self.assertTrue(final.adapter_id)
        self.assertEqual(final.resolved.rank, 4)
        self.assertRpcError("NOT_FOUND", self.globex.get_job, job.id)
        self.assertRpcError("NOT_FOUND", self.globex.get_adapter, final.adapter_id)

        adapter = self.acme.get_adapter(final.adapter_id)
        self.assertEqual(adapter.job_id, job.id)
        self.assertEqual(adapter.rank, 4)
        self.assertIn(adapter.id, [a.id for a in self.acme.list_adapters()])

        out = self.tmp / "download"
        paths = self.acme.download_adapter(final.adapter_id, str(out))
        names = sorted(os.path.basename(p) for p in paths)
        self.assertEqual(names, ["adapter_config.json", "adapter_model.safetensors"])
        config = json.loads((out / "adapter_config.json").read_text())
        self.assertEqual(config["r"], 4)
        self.assertEqual(config["peft_type"], "LORA")
        st = (out / "adapter_model.safetensors").read_bytes()
        self.assertGreater(len(st), 8)
        (header_len,) = struct.unpack("<Q", st[:8])
        header = json.loads(st[8:8 + header_len])
        self.assertTrue(any("lora_A" in k for k in header), list(header)[:5])

        text = self.acme.generate(model, "The name of the dragon in Pipville is",
                                  adapter_id=final.adapter_id, max_tokens=16)
        self.assertIsInstance(text, str)
        self.assertTrue(text, "empty generation")
        # Sampling without a seed draws one, given on the last message: two requests draw two,
        # and the seed given back repeats the text.
        prompt = "Once upon a time"
        runs = [list(self.acme.generate_stream(model, prompt, adapter_id=final.adapter_id,
                                               max_tokens=24, temperature=1.0))
                for _ in range(2)]
        for parts in runs:
            self.assertTrue(parts[-1].finished)
            self.assertIn(parts[-1].finish_reason, ("eos", "max_tokens"))
        seeds = [parts[-1].seed for parts in runs]
        self.assertNotEqual(seeds[0], seeds[1])
        again = self.acme.generate(model, prompt, adapter_id=final.adapter_id, max_tokens=24,
                                   temperature=1.0, seed=seeds[0])
        self.assertEqual(again, "".join(p.text for p in runs[0]))
        # A conversation, in the chat layout jobs train on; not with a prompt besides.
        chat = [{"role": "user", "content": "Tell me about Pipville."}]
        answer = list(self.acme.generate_stream(model, messages=chat, max_tokens=8))
        self.assertTrue(answer[-1].finished)
        self.assertRpcError("INVALID_ARGUMENT", self.acme.generate, model, "Hi", messages=chat)

        tuned = self.acme.evaluate(model, final.adapter_id, ds.id)
        base = self.acme.evaluate(model, "", ds.id)
        self.assertTrue(math.isfinite(tuned.loss), tuned)
        self.assertTrue(math.isfinite(base.loss), base)
        self.assertGreater(tuned.target_tokens, 0)
        self.assertLess(tuned.loss, base.loss)

    # -- (d) bad requests -------------------------------------------------------------------

    def test_d_bad_input(self):
        model, ds = self.model(), self.dataset()
        small = dict(rank=4, alpha=8, max_steps=2, batch_size=4, seq_len=32, seed=1)
        self.assertRpcError("INVALID_ARGUMENT", self.acme.create_job, model, ds.id,
                            **dict(small, rank=0), contains="rank")
        self.assertRpcError("INVALID_ARGUMENT", self.acme.create_job, model, ds.id,
                            **dict(small, learning_rate=-1.0), contains="learning_rate")
        self.assertRpcError("NOT_FOUND", self.acme.create_job, "no-such-model", ds.id, **small)
        self.assertRpcError("NOT_FOUND", self.acme.create_job, model, "no-such-dataset", **small)
        with self.assertRaises(TypeError):
            self.acme.create_job(model, ds.id, rnak=4)

        key = "idem-" + uuid.uuid4().hex
        first = self.acme.create_job(model, ds.id, idempotency_key=key, **small)
        try:
            same = self.acme.create_job(model, ds.id, idempotency_key=key, **small)
            self.assertEqual(same.id, first.id)
            self.assertRpcError("ALREADY_EXISTS", self.acme.create_job, model, ds.id,
                                idempotency_key=key, **dict(small, max_steps=3))
        finally:
            self.finish(first.id)

    # -- (e) cancelling a running job -------------------------------------------------------

    def test_e_cancel(self):
        model, ds = self.model(), self.dataset()
        job = self.acme.create_job(model, ds.id, rank=4, alpha=8, max_steps=100000, batch_size=8,
                                   seq_len=64, seed=1, target_modules="q_proj, v_proj")
        # Modules as qloractl takes them (a comma list), states in any case.
        self.assertEqual(list(job.resolved.target_modules), ["q_proj", "v_proj"])
        self.assertIn(job.id, [j.id for j in self.acme.list_jobs(states=["queued", "Running"])])
        try:
            watch = self.acme.watch_job(job.id, timeout=TRAIN_TIMEOUT)
            try:
                for event in watch:
                    if event.WhichOneof("kind") == "progress":
                        break
                else:
                    self.fail(f"job ended before any progress: {self.acme.get_job(job.id)}")
            finally:
                watch.close()
            self.assertEqual(_state(self.acme.get_job(job.id).state), "RUNNING")
            # Paused after its step, a wait returns it; resumed, it trains on.
            paused = self.acme.pause_job(job.id)
            self.assertEqual(_state(paused.state), "PAUSED")
            self.assertEqual(_state(self.acme.wait_job(job.id, timeout=60).state), "PAUSED")
            self.assertIn(job.id, [j.id for j in self.acme.list_jobs(states=["paused"])])
            self.assertIn(_state(self.acme.resume_job(job.id).state), ("QUEUED", "RUNNING"))
            cancelled = self.acme.cancel_job(job.id)
            self.assertIn(_state(cancelled.state), ("RUNNING", "CANCELLED"))
            final = self.acme.wait_job(job.id, timeout=120)
        finally:
            if self.acme.get_job(job.id).state not in TERMINAL_STATES:
                self.finish(job.id)
        self.assertEqual(_state(final.state), "CANCELLED")
        self.assertFalse(final.adapter_id)
        self.assertLess(final.steps_completed, 100000)
        # A finished job can be deleted, record and events.
        self.acme.delete_job(job.id)
        self.assertRpcError("NOT_FOUND", self.acme.get_job, job.id, contains=job.id)
        self.assertNotIn(job.id, [j.id for j in self.acme.list_jobs()])

    def test_f_health_and_reflection(self):
        """Standard gRPC health checking and server reflection, called as raw methods (the
        messages are tiny enough to write by hand)."""
        import grpc
        with grpc.insecure_channel(self.target) as channel:
            check = channel.unary_unary("/grpc.health.v1.Health/Check",
                                        request_serializer=None, response_deserializer=None)
            # HealthCheckResponse{status: SERVING (1)} is field 1 varint 1; no auth needed.
            self.assertEqual(check(b"", timeout=RPC_TIMEOUT), b"\x08\x01")
            reflect = channel.stream_stream(
                "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                request_serializer=None, response_deserializer=None)
            # ServerReflectionRequest{list_services: ""} is field 7, length 0.
            replies = list(reflect(iter([b"\x3a\x00"]), timeout=RPC_TIMEOUT))
        self.assertEqual(len(replies), 1)
        for service in (b"qlorad.v1.JobService", b"qlorad.v1.DatasetService",
                        b"qlorad.v1.AdapterService", b"qlorad.v1.ModelService",
                        b"qlorad.v1.InferenceService", b"qlorad.v1.LimitsService",
                        b"grpc.health.v1.Health"):
            self.assertIn(service, replies[0])

    def test_h_wait_outlives_a_restart(self):
        """A deploy restarts the daemon under wait_job: SIGTERM ends the watch with UNAVAILABLE
        and checkpoints the job, the new daemon (same address) resumes it, and wait_job returns
        the job's end. It used to raise UNAVAILABLE at the stop."""
        job = self.acme.create_job(
            model=self.model(), training_dataset=self.dataset().id, rank=4, max_steps=150,
            batch_size=8, seq_len=64)
        events, outcome = [], {}
        training = threading.Event()

        def on_event(e):
            events.append(e)
            if e.WhichOneof("kind") == "progress" and e.progress.step >= 5:
                training.set()

        def wait():
            try:
                outcome["job"] = self.acme.wait_job(job.id, on_event=on_event,
                                                    timeout=TRAIN_TIMEOUT, reconnect_for=120)
            except Exception as e:  # noqa: BLE001 - reported by the test thread
                outcome["error"] = e

        # A daemon thread: a failed restart must not keep the test process alive.
        waiter = threading.Thread(target=wait, daemon=True)
        waiter.start()
        try:
            self.assertTrue(training.wait(120), "the job never reached step 5")
            port = int(self.target.rsplit(":", 1)[1])
            self.assertFalse(self._stop_daemon(), "qlorad did not stop on SIGTERM")
            self._start_daemon(port)
            waiter.join(TRAIN_TIMEOUT)
        finally:
            if waiter.is_alive() or "job" not in outcome:
                try:
                    self.finish(job.id)
                finally:
                    waiter.join(150)
        self.assertNotIn("error", outcome)
        self.assertEqual(_state(outcome["job"].state), "SUCCEEDED", outcome["job"].error)
        reasons = [e.state_change.reason for e in events
                   if e.WhichOneof("kind") == "state_change"]
        self.assertTrue(any("resumed from the checkpoint" in r for r in reasons), reasons)
        self.assertEqual(max(e.progress.step for e in events
                             if e.WhichOneof("kind") == "progress"), 150)

    def test_i_a_download_cut_short_keeps_the_old_files(self):
        """The download's files move into place only once all came: one cut inside its second
        file leaves the folder's older adapter whole (before, the new adapter_config.json sat
        beside the old weights, which PEFT loads without complaint)."""
        out = self.tmp / "cut-download"
        out.mkdir()
        (out / "adapter_config.json").write_text("old config")
        (out / "adapter_model.safetensors").write_text("old weights")
        # A download killed outright two hours ago left its staging folder: this one removes it.
        stale = out / ".qlorad-download-killed"
        stale.mkdir()
        (stale / "adapter_model.safetensors").write_text("cut")
        two_hours_ago = time.time() - 7200
        os.utime(stale / "adapter_model.safetensors", (two_hours_ago, two_hours_ago))
        os.utime(stale, (two_hours_ago, two_hours_ago))
        chunk = adapters_pb2.AdapterFileChunk

        def cut_stream(*args, **kwargs):
            yield chunk(file_name="adapter_config.json", data=b"new config", end_of_file=True)
            yield chunk(file_name="adapter_model.safetensors", data=b"new wei")
            raise QloradError("UNAVAILABLE", "the connection dropped")

        def download_cut_short(dest):
            client = Client("127.0.0.1:1", token="")
            client._stream = cut_stream
            try:
                self.assertRpcError("UNAVAILABLE", client.download_adapter, "a-1", str(dest))
            finally:
                client.close()

        download_cut_short(out)
        self.assertEqual((out / "adapter_config.json").read_text(), "old config")
        self.assertEqual((out / "adapter_model.safetensors").read_text(), "old weights")
        self.assertEqual(sorted(os.listdir(out)),
                         ["adapter_config.json", "adapter_model.safetensors"])
        # Into folders it makes, a failed download takes them away again.
        download_cut_short(out.parent / "fresh" / "adapter")
        self.assertFalse((out.parent / "fresh").exists())

    def test_j_a_create_without_an_answer_names_its_key(self):
        """create_job sends an idempotency key always; where the answer is lost (here no daemon
        answers) it tries again with it and then names it, and a call with that key gets one
        job however often it is made."""
        lost = Client("127.0.0.1:1", token="acme-key", timeout=5)
        try:
            start = time.monotonic()
            err = self.assertRpcError("UNAVAILABLE", lost.create_job, self.model(),
                                      self.dataset().id, max_steps=2)
            self.assertGreaterEqual(time.monotonic() - start, 3.0)  # two paced retries
        finally:
            lost.close()
        key = re.search(r"idempotency_key='(python-[0-9a-f]+)'", err.message)
        self.assertIsNotNone(key, err.message)
        first = self.acme.create_job(self.model(), self.dataset().id, max_steps=2,
                                     idempotency_key=key.group(1))
        again = self.acme.create_job(self.model(), self.dataset().id, max_steps=2,
                                     idempotency_key=key.group(1))
        self.assertEqual(first.id, again.id)
        self.finish(first.id)

    def test_g_routing_matches_qloractl(self):
        """The Python client sends a tenant to the same StatefulSet pod as qloractl."""
        ctl = os.environ.get("QLORAD_CTL", "")
        self.assertTrue(ctl and os.access(ctl, os.X_OK), "QLORAD_CTL must name qloractl")
        for replicas in (1, 2, 3, 5, 8):
            for tenant in ("acme", "globex", "initech", "t-17", "umbrella"):
                out = subprocess.run(
                    [ctl, "--statefulset", "qlorad", "--replicas", str(replicas), "--tenant",
                     tenant, "--namespace", "ml", "route"],
                    capture_output=True, text=True, check=True).stdout.strip()
                self.assertEqual(out, statefulset_target(tenant, replicas, namespace="ml"))
        # Without --statefulset those flags would be ignored: refused, naming the flag.
        lone = subprocess.run([ctl, "--port", "9999", "route"], capture_output=True, text=True)
        self.assertEqual(lone.returncode, 2, lone.stderr)
        self.assertIn("--port goes with --statefulset", lone.stderr)


def main():
    program = unittest.main(exit=False)
    ok = program.result.wasSuccessful()
    if not ok:
        print(f"\n--- qlorad log ({_tmp}) ---\n{_log_tail()}\n---", file=sys.stderr)
    if _tmp and not os.environ.get("QLORAD_KEEP_TMP"):
        shutil.rmtree(_tmp, ignore_errors=True)
    elif _tmp:
        print(f"python_client_test: kept {_tmp}", file=sys.stderr)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
